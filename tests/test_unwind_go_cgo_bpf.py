"""Go calling C through cgo (tests/workloads/fid_cgo), sampled with `podflame record --pid`.

runtime.asmcgocall moves onto the system stack and calls C; Go's .debug_frame says CFA = rsp + 8 all through
it, which there reads a saved slot as the return address. So every sample in C called from Go had a bogus
`[no mapping]` frame where runtime.cgocall should be: `...;main._Cfunc_c_leaf.abi0;[no mapping];
runtime.asmcgocall.abi0;_cgo_..._Cfunc_c_leaf;c_leaf` in 97% of the samples (0% exact); perf --call-graph dwarf
stops at asmcgocall (`runtime.asmcgocall.abi0;_cgo_..;c_leaf`, 0.3% reach runtime.goexit). The builder now
finds asmcgocall's restore of the goroutine's stack pointer in Go binaries' code and gives that range a row
the walker reads it from (CFA_GO_SWITCH: g.stack.hi - the depth saved on the system stack).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import commonest, record, running, share

pytestmark = pytest.mark.bpf

ROOT = ("runtime.goexit.abi0", "runtime.main", "main.main")
INTO_C = ("runtime.cgocall", "runtime.asmcgocall.abi0")


@pytest.fixture(scope="module")
def fid_cgo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("cgo") / "fid_cgo"
    subprocess.run(["go", "build", "-o", str(exe), "."], check=True, cwd=WORKLOADS / "fid_cgo")
    return exe


def test_a_cgo_call_unwinds_through_asmcgocall_to_the_goroutine(fid_cgo: Path) -> None:
    with running([str(fid_cgo), "600", "plain"]) as pid:
        stacks = record(pid)

    def chain(s: tuple[str, ...]) -> bool:
        return len(s) == 9 and s[:3] == ROOT and s[3:5] == ("main.plain1", "main._Cfunc_c_leaf.abi0") and \
            s[5:7] == INTO_C and s[7].endswith("_Cfunc_c_leaf") and s[8] == "c_leaf"
    got = share(stacks, chain)
    print(f"\ncgo call: {got:.1%} of {sum(stacks.values())} samples exact from runtime.goexit")
    assert got >= 0.85, f"{got:.1%}; commonest: {commonest(stacks)}"


def test_c_called_back_from_go_unwinds_as_gos_traceback_does(fid_cgo: Path) -> None:
    """C -> Go -> C, as Go's own traceback (pprof) shows it: runtime.cgocallback's return address on the goroutine's
    stack is runtime.systemstack_switch's first byte (the goroutine's saved pc), whose frame leads to the
    runtime.cgocall that called into C. Before, the walk ended there (1.0% reached runtime.goexit), with the bogus
    frame under the inner call. The C frames that called back (c_outer, c_mid on the system stack) are not shown,
    as Go's traceback does not show them (docs/benchmarks.md "Stop 24 fid24")."""
    with running([str(fid_cgo), "600", "callback"]) as pid:
        stacks = record(pid)
    outer = (*ROOT, "main.level1", "main._Cfunc_c_outer.abi0", "runtime.cgocall", "runtime.systemstack_switch.abi0",
             "runtime.cgocallback.abi0")
    inner = ("main.goCallback", "main.goMid", "main._Cfunc_c_leaf.abi0", *INTO_C)

    def chain(s: tuple[str, ...]) -> bool:
        return s[:len(outer)] == outer and s[-1:] == ("c_leaf",) and \
            any(s[i:i + len(inner)] == inner for i in range(len(s))) and "[no mapping]" not in s
    got = share(stacks, chain)
    print(f"\ncgo callback: {got:.1%} of {sum(stacks.values())} samples with Go's chain from runtime.goexit")
    assert got >= 0.85, f"{got:.1%}; commonest: {commonest(stacks)}"
