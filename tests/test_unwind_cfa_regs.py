"""Call frame information that needs a register other than rsp/rbp (table.CFA_LEAF_REG): libgcc_s's
context install keeps the CFA in rcx, libc's longjmp in rdi with the return address in rdx. The kernel
has those registers for the sampled frame only, so such a row unwinds the leaf and ends a walk anywhere
else. Before, every such row was unsupported and ended the walk at the leaf.

The rows are checked against readelf (the tables' oracle); the walk on tests/workloads/cfa_regs.c, whose
hot loops run under such rows, against its known chain and `perf record --call-graph dwarf`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from profiler.unwind.build import build_table
from profiler.unwind.table import CFA_LEAF_REG, CFA_UNSUPPORTED, RA_REG_SHIFT, RBP_TYPE_MASK
from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import perf_stacks, record, running, share

LIBGCC_S = Path("/lib/x86_64-linux-gnu/libgcc_s.so.1")
LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
REGS = ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16))]


def register_rows(path: Path) -> dict[int, tuple[str, int, str | None]]:
    """readelf's rows whose CFA is a register other than rsp/rbp or whose return address is in a
    register (and otherwise at CFA-8): pc -> (CFA register, offset, return address register or None)."""
    # readelf exits 1 on libc for a warning about a section it does not decode; its frames are all there
    text = subprocess.run(["readelf", "--debug-dump=frames-interp", str(path)], capture_output=True,
                          text=True).stdout
    assert "FDE" in text, f"readelf printed no frames for {path}"
    out: dict[int, tuple[str, int, str | None]] = {}
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]{8,16}) (\w+)([+-]\d+) ", line)
        if not m or m[2] not in REGS:
            continue
        in_reg = re.search(r"r\d+ \((\w+)\)\s*$", line)
        if not in_reg and not line.rstrip().endswith(" c-8"):
            continue  # the return address elsewhere than CFA-8 or a register (setcontext): unsupported
        ra = in_reg[1] if in_reg else None
        if m[2] not in ("rsp", "rbp") or ra is not None:
            out[int(m[1], 16)] = (m[2], int(m[3]), ra)
    return out


@pytest.mark.parametrize("path", [LIBGCC_S, LIBC], ids=["libgcc_s", "libc"])
def test_register_rows_agree_with_readelf(path: Path) -> None:
    want = register_rows(path)
    table = build_table(str(path))
    assert len(want) >= 4, f"{path} has no rows needing a register any more: pick another binary"
    for pc, (reg, offset, ra) in want.items():
        rule = table.lookup(pc)
        assert rule is not None
        cfa_type, cfa_offset, rbp_type, _ = rule
        assert cfa_type == CFA_LEAF_REG | REGS.index(reg) and cfa_offset == offset, (hex(pc), rule, reg, offset)
        assert rbp_type >> RA_REG_SHIFT == (REGS.index(ra) + 1 if ra else 0), (hex(pc), rule, ra)
        assert rbp_type & RBP_TYPE_MASK <= 2
    if path == LIBGCC_S:  # its context install was the one kind of row it had unsupported
        assert table.stats["unsupported_rows"] == 0
        assert all((table.lookup(pc) or (CFA_UNSUPPORTED,))[0] != CFA_UNSUPPORTED for pc in want)


@pytest.fixture(scope="module")
def cfa_regs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("cfa") / "cfa_regs"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(WORKLOADS / "cfa_regs.c")], check=True)
    return exe


@pytest.mark.bpf
@pytest.mark.parametrize("mode", ["rcx", "rdx"])
def test_a_leaf_under_a_register_rule_reaches_main(cfa_regs: Path, mode: str, tmp_path: Path) -> None:
    """rcx: CFA = rcx + 8 with rsp 256 bytes away; rdx: the return address popped into rdx."""
    leaf = "spin_cfa_rcx" if mode == "rcx" else "spin_ra_rdx"
    chain = ("_start", "__libc_start_main_impl", "__libc_start_call_main", "main", f"outer_{mode}", leaf)
    with running([str(cfa_regs), mode]) as pid:
        ours = record(pid)
        theirs = perf_stacks(pid, tmp_path)
    in_leaf = {s: n for s, n in ours.items() if s and s[-1] == leaf}
    got = share(ours, lambda s: s == chain)
    oracle = share(theirs, lambda s: s[-3:] == chain[-3:] and s[0] == "_start")
    print(f"\n{mode}: {got:.1%} of samples are {';'.join(chain)} (perf --call-graph dwarf: {oracle:.1%})")
    assert sum(in_leaf.values()) >= 0.9 * sum(ours.values())
    assert oracle >= 0.8, f"perf: {theirs.most_common(2)}"
    assert got >= 0.9, f"{got:.1%}; commonest: {ours.most_common(2)}"
