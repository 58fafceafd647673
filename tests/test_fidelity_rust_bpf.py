"""A Rust release binary (tests/workloads/fid_rust.rs, rustc -C opt-level=3: no frame pointers, linked by
rust-lld) sampled by the real agent (`podflame record --pid`) in a pod-shaped cgroup, against its known
chain and `perf record --call-graph dwarf`.

lld starts the code segment in the page where the read-only segment ends, one page away in the
address space: the table walk placed such a mapping by the read-only segment and looked every pc up
a page off, so every sample was the leaf alone (0% from _start; now ~100%).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS
from tests.test_fidelity_builds_bpf import llvm_functions, record_program
from tests.test_unwind_bpf import Stacks, commonest, perf_stacks, record, running, share

pytestmark = pytest.mark.bpf

CHAIN = ("fid_rust::main", "fid_rust::level1", "fid_rust::level2", "fid_rust::leaf_work")


def rustc() -> str:
    found = shutil.which("rustc") or str(Path.home() / ".cargo" / "bin" / "rustc")
    if not Path(found).exists():
        pytest.fail("no rustc (these machines have it in ~/.cargo/bin)")
    return found


def plain(stack: tuple[str, ...]) -> tuple[str, ...]:
    """Names without Rust's legacy hash suffix, for perf's stacks (podflame drops it too: asserted below)."""
    return tuple(re.sub(r"::h[0-9a-f]{16}$", "", f) for f in stack)


def exact(stack: tuple[str, ...]) -> bool:
    s = plain(stack)
    return bool(s) and s[0] == "_start" and s[-len(CHAIN):] == CHAIN


@pytest.fixture(scope="module")
def fid_rust(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("rust") / "fid_rust"
    subprocess.run([rustc(), "-C", "opt-level=3", "-o", str(exe), str(WORKLOADS / "fid_rust.rs")], check=True)
    assert b"LLD" in subprocess.run(["readelf", "-p", ".comment", str(exe)], capture_output=True).stdout
    return exe


def test_a_rust_release_binary_unwinds_from_start_to_its_leaf(fid_rust: Path, tmp_path: Path) -> None:
    with running([str(fid_rust), "600"]) as pid:
        ours: Stacks = record(pid)
        theirs = perf_stacks(pid, tmp_path)
    got, oracle = share(ours, exact), share(theirs, exact)
    entry = share(ours, lambda s: bool(s) and s[0] == "_start")
    print(f"\nRust -O3: {entry:.1%} reach _start, {got:.1%} the exact chain (perf --call-graph dwarf: {oracle:.1%})")
    assert oracle >= 0.8, f"perf: {theirs.most_common(1)}"
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(ours)}"
    hashed = {f for s in ours for f in s if f != plain((f,))[0]}
    assert not hashed, f"legacy hashes kept (addr2line -C and perf drop them): {sorted(hashed)[:3]}"


V0_CHAIN = ("fid_rust_v0::main", "fid_rust_v0::with_closure::<fid_rust_v0::main::{closure#1}>",
            "fid_rust_v0::main::{closure#1}", "fid_rust_v0::generic_level::<fid_rust_v0::Square>",
            "<fid_rust_v0::Square as fid_rust_v0::Shape>::area", "fid_rust_v0::spin")


def test_rust_v0_names_and_inlined_frames_match_llvm_symbolizer(tmp_path: Path) -> None:
    """v0-mangled symbols (`_RNv...`) and DWARF inline chains: every frame of the program has the function
    names per inline level that `llvm-symbolizer --inlining` gives for its address, and the stack (inline
    levels included) reads the chain the program is built with from _start. The rust-demangler package names
    an unnamed v0 closure `{closure:#1}` where DWARF (the inline levels) says `{closure#1}`: symbolizer/demangle.py
    writes rustc-demangle's form, else one closure had two names (70% of frames as the oracle says)."""
    exe = tmp_path / "fid_rust_v0"
    subprocess.run([rustc(), "-C", "opt-level=3", "-C", "symbol-mangling-version=v0", "-g", "-o", str(exe),
                    str(WORKLOADS / "fid_rust_v0.rs")], check=True)
    assert "_RNvCs" in subprocess.run(["nm", str(exe)], capture_output=True, text=True).stdout
    samples, vaddr, own = record_program(exe, ["600"], tmp_path)
    asked = sorted({vaddr(f, leaf) for stack in samples for f, leaf in own(stack)})
    names = llvm_functions(exe, asked)
    frames = same = inlined = chained = 0
    for stack, n in samples.items():
        for f, leaf in own(stack):
            at = vaddr(f, leaf)
            frames += n
            same += n if [x.function for x in f.lines] == names[at] else 0
            inlined += n if len(names[at]) > 1 else 0
        flat = [x.function for f in stack for x in reversed(f.lines)]  # root first, inline levels outermost first
        runs = [tuple(flat[i:i + len(V0_CHAIN)]) for i in range(len(flat))]
        chained += n if flat and flat[0] == "_start" and V0_CHAIN in runs else 0
    total = sum(samples.values())
    commonest = [x.function for f in samples.most_common(1)[0][0] for x in reversed(f.lines)]
    mismatch = next(([x.function for x in f.lines], names[vaddr(f, leaf)]) for s in samples for f, leaf in own(s)
                    if [x.function for x in f.lines] != names[vaddr(f, leaf)]) if same < frames else None
    print(f"\nRust v0 -O3 -g: {chained / total:.1%} of {total} samples with the chain; by frame {same / frames:.1%} "
          f"the inline chain of llvm-symbolizer; {inlined / frames:.1%} hold inlined code; first mismatch {mismatch}")
    assert total >= 30 and inlined / frames >= 0.2
    assert same / frames >= 0.95, mismatch
    assert chained / total >= 0.9, f"commonest: {';'.join(commonest)}"
