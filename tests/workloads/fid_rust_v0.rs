// A Rust release binary with v0 symbol names and debug info (rustc -C opt-level=3 -C symbol-mangling-version=v0 -g)
// spinning under generic, trait and closure frames, with inlined std code in its leaf, for
// tests/test_fidelity_rust_bpf.py: main -> with_closure::<closure> -> closure -> generic_level::<Square> ->
// <Square as Shape>::area -> spin (mix, and core's integer and range code inlined into it).
// Usage: fid_rust_v0 SECONDS
use std::hint::black_box;
use std::time::{Duration, Instant};
trait Shape { fn area(&self, n: u64) -> u64; }
struct Square(u64);
impl Shape for Square {
    #[inline(never)]
    fn area(&self, n: u64) -> u64 { spin(n) ^ self.0 }
}
#[inline(always)]
fn mix(i: u64) -> u64 { black_box(i).wrapping_mul(i) }
#[inline(never)]
fn spin(n: u64) -> u64 { let mut s = 0u64; for i in 0..n { s = s.wrapping_add(mix(i)); } s }
#[inline(never)]
fn generic_level<T: Shape>(t: &T, n: u64) -> u64 { black_box(t.area(n)) ^ 1 }
#[inline(never)]
fn with_closure<F: Fn(u64) -> u64>(f: F, n: u64) -> u64 { black_box(f(n)) ^ 2 }
fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let until = Instant::now() + Duration::from_secs(seconds);
    let sq = Square(3);
    let mut total = 0u64;
    while Instant::now() < until {
        total = total.wrapping_add(with_closure(|n| generic_level(&sq, n), black_box(200_000)));
    }
    println!("{total}");
}
