"""Native stacks of programs built the ways services are and the other unwind tests do not build, each
sampled with `podflame record --pid` in a pod-shaped cgroup (bench/unwind.py --matrix has the figures
against profile-bpfcc and perf):

- C++ -O2 (tests/workloads/fid_cpp.cc): std::sort with a lambda comparator (libstdc++'s templates), and
  an exception thrown and caught every iteration, whose samples sit in libstdc++ and libgcc_s (code
  the test did not build): every sample reaches _start through main -> run_*, and the shares of the
  three frames under run_throw (thrower, __cxa_throw, libgcc's unwinder) agree with perf --call-graph
  dwarf (the oracle).
- Go (tests/workloads/fid_go.go): frame pointers and .debug_frame only, no libc; the goroutine's chain
  from runtime.goexit down to the leaf is exact (perf cannot unwind Go: the chain itself is the oracle).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import Stacks, commonest, perf_stacks, reaches_entry, record, running, share

pytestmark = pytest.mark.bpf


def short(name: str) -> str:
    """A C++ frame as perf prints it: no parameters, no return type, no [clone .cold]."""
    name = name.replace(" [clone .cold]", "")
    name = re.sub(r"^(\w+ )+(?=[\w:~]+[<(])", "", name)
    m = re.match(r"[^<(]*", name)
    return m.group(0) if m and m.group(0) else name


@pytest.fixture(scope="module")
def cpp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("cpp") / "fid_cpp"
    subprocess.run(["g++", "-O2", "-o", str(exe), str(WORKLOADS / "fid_cpp.cc")], check=True)
    return exe


def named(stacks: Stacks) -> Stacks:
    out: Stacks = Counter()
    for s, n in stacks.items():
        out[tuple(short(f) for f in s)] += n
    return out


@pytest.mark.parametrize("mode", ["sort", "throw"])
def test_cpp_reaches_main_through_libstdcxx(cpp: Path, mode: str) -> None:
    with running([str(cpp), mode, "600"]) as pid:
        stacks = named(record(pid))
    head = ("_start", "__libc_start_main_impl", "__libc_start_call_main", "main", f"run_{mode}")
    got = share(stacks, lambda s: s[:5] == head and len(s) > 5)
    print(f"\nC++ {mode}: {got:.1%} of samples from _start through main -> run_{mode} into its callees")
    assert got >= 0.95, f"{got:.1%}; commonest: {commonest(stacks)}"


def test_cpp_throw_agrees_with_perf(cpp: Path, tmp_path: Path) -> None:
    """Where the throwing loop spends its time, by run_throw's callee, ours against perf's."""
    with running([str(cpp), "throw", "600"]) as pid:
        ours = named(record(pid))
        theirs = named(perf_stacks(pid, tmp_path))

    def by_callee(stacks: Stacks) -> dict[tuple[str, ...], float]:
        """Shares by the three frames under run_throw (thrower, __cxa_throw, the unwinder); unnamed as "?"."""
        c: Counter[tuple[str, ...]] = Counter()
        for s, n in stacks.items():
            at = s.index("run_throw") if "run_throw" in s else len(s)
            c[tuple("?" if f == "[unknown]" or "+0x" in f else f for f in s[at + 1:at + 4])] += n
        total = sum(c.values())
        return {k: v / total for k, v in c.items()}

    a, b = by_callee(ours), by_callee(theirs)
    assert sum(theirs.values()) >= 30 and share(theirs, reaches_entry) >= 0.9  # the oracle sees it whole
    overlap = sum(min(a.get(k, 0.0), v) for k, v in b.items())
    print(f"\nC++ throw: run_throw's callees {a} ours, {b} perf: overlap {overlap:.1%}")
    assert share(ours, reaches_entry) >= 0.95
    assert overlap >= 0.7, (a, b)


def test_go_goroutine_chain_is_exact(tmp_path: Path) -> None:
    exe = tmp_path / "fid_go"
    subprocess.run(["go", "build", "-o", str(exe), str(WORKLOADS / "fid_go.go")], check=True, cwd=tmp_path)
    with running([str(exe), "600"]) as pid:
        stacks = record(pid)
    chain = ("runtime.goexit.abi0", "runtime.main", "main.main", "main.level1", "main.level2", "main.leafWork")
    got = share(stacks, lambda s: s == chain)
    print(f"\nGo: {got:.1%} of samples with {';'.join(chain)}")
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(stacks)}"
