"""A hot leaf in hand-written assembly without CFI (tests/workloads/asm_nocfi.c), sampled with the real agent
(`podflame record --pid`) in a pod-shaped cgroup. The oracle is the chain the program is built with
(main -> caller1 -> caller2 -> the assembly), and `readelf --debug-dump=frames` that no FDE covers the
assembly (the precondition: the unwinder meets a gap in a binary that has CFI for the rest).

NASM/YASM code (ffmpeg, x264, libjpeg-turbo, ISA-L) and .S files written without `.cfi_` directives have no
unwind rows. The walker stepped such a sampled leaf with rbp, which in code without frame pointers is any
value: every sample read `[no mapping];asm_spin` (0% from _start). A leaf that pushed nothing has its return
address at [rsp]; one that saved rbp first (`framed`, in a -fno-omit-frame-pointer build) still steps by rbp.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import commonest, perf_stacks, record, running, share

pytestmark = pytest.mark.bpf

CHAIN = ("main", "caller1", "caller2")


def covered(exe: Path, symbol: str) -> bool:
    """Whether an FDE of `exe`'s .eh_frame covers `symbol`'s address (readelf as the oracle)."""
    nm = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
    at = next(int(line.split()[0], 16) for line in nm.splitlines() if line.endswith(f" {symbol}"))
    frames = subprocess.run(["readelf", "--debug-dump=frames", str(exe)], capture_output=True, text=True,
                            check=True).stdout
    for line in frames.splitlines():
        if " FDE " in line and "pc=" in line:
            lo, hi = (int(x, 16) for x in line.split("pc=")[1].split(".."))
            if lo <= at < hi:
                return True
    return False


@pytest.mark.parametrize("mode", ["plain", "framed"])
def test_a_leaf_in_assembly_without_cfi_keeps_its_callers(mode: str, tmp_path: Path) -> None:
    exe = tmp_path / "asm_nocfi"
    flags = ["-O2"] if mode == "plain" else ["-O2", "-fno-omit-frame-pointer"]
    subprocess.run(["gcc", *flags, "-o", str(exe), str(WORKLOADS / "asm_nocfi.c")], check=True)
    leaf = "asm_spin" if mode == "plain" else "asm_spin_framed"
    assert covered(exe, "caller2") and not covered(exe, leaf)
    with running([str(exe), mode, "600"]) as pid:
        stacks = record(pid)
        theirs = perf_stacks(pid, tmp_path)
    in_leaf = share(stacks, lambda s: bool(s) and s[-1] == leaf)

    def exact(s: tuple[str, ...]) -> bool:
        return bool(s) and s[0] == "_start" and s[-4:] == (*CHAIN, leaf)

    got, perf = share(stacks, exact), share(theirs, exact, least=1)
    print(f"\nassembly leaf without CFI ({mode}): {got:.1%} of samples from _start with {';'.join((*CHAIN, leaf))} "
          f"({in_leaf:.1%} in the leaf; perf --call-graph dwarf: {perf:.1%})")
    assert in_leaf >= 0.8  # the program spends its time there
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(stacks)}"
