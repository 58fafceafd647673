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
from tests.test_unwind_bpf import Stacks, perf_stacks, record, running, share

pytestmark = pytest.mark.bpf

CHAIN = ("fid_rust::main", "fid_rust::level1", "fid_rust::level2", "fid_rust::leaf_work")


def rustc() -> str:
    found = shutil.which("rustc") or str(Path.home() / ".cargo" / "bin" / "rustc")
    if not Path(found).exists():
        pytest.fail("no rustc (these machines have it in ~/.cargo/bin)")
    return found


def plain(stack: tuple[str, ...]) -> tuple[str, ...]:
    """Names without Rust's legacy hash suffix (podflame keeps it, perf drops it)."""
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
    assert got >= 0.9, f"{got:.1%}; commonest: {';'.join(ours.most_common(1)[0][0])}"
