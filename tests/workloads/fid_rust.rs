// A Rust release binary's hot path under a known chain, for the fidelity matrix (bench/unwind.py
// --matrix): main -> level1 -> level2 -> leaf_work, each kept out of line. rustc -C opt-level=3 keeps no
// frame pointers and writes .eh_frame (panic=unwind), as `cargo build --release` does.
// Usage: fid_rust SECONDS
use std::hint::black_box;
use std::time::{Duration, Instant};

#[inline(never)]
fn leaf_work(n: u64) -> u64 {
    let mut s = 0u64;
    for i in 0..n {
        s = s.wrapping_add(black_box(i).wrapping_mul(i));
    }
    s
}

#[inline(never)]
fn level2(n: u64) -> u64 {
    black_box(leaf_work(n)) ^ 1
}

#[inline(never)]
fn level1(n: u64) -> u64 {
    black_box(level2(n)) ^ 2
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut total = 0u64;
    while Instant::now() < until {
        total = total.wrapping_add(level1(black_box(200_000)));
    }
    println!("{total}");
}
