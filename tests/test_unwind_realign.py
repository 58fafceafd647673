"""CFA expressions that read the CFA from the stack (table.CFA_DEREF), against readelf.

gcc realigns the stack of a function with over-aligned locals (AVX, alignas(64)) and a variable frame,
and of every function when built -mstackrealign, through a DRAP register: the prologue keeps the entry
rsp + 8 in r10, pushes it below the new frame pointer, and says `DW_CFA_def_cfa_expression (DW_OP_breg6
(rbp): -8; DW_OP_deref)` with the caller's rbp at `DW_OP_breg6 (rbp): 0`. OpenSSL's assembly saves the entry
rsp in a stack slot (`DW_OP_breg7 (rsp): N; DW_OP_deref; DW_OP_plus_uconst: 8`). These rows used to be
CFA_UNSUPPORTED: a walk ended at the first such frame (tests/test_unwind_wide_bpf.py has the real stacks).
The oracle is readelf: its raw instructions (-wf) give each FDE's expressions, its interpreted table
(--debug-dump=frames-interp) the rows where they hold.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from profiler.unwind.build import build_table, deref_cfa, rbp_at_rbp
from profiler.unwind.table import (
    CFA_DEREF,
    CFA_DEREF_RBP,
    CFA_UNSUPPORTED,
    RBP_AT_RBP,
    RBP_OFFSET,
    RBP_SAME,
    RBP_UNDEFINED,
    UnwindTable,
)
from tests.realsys import WORKLOADS
from tests.test_unwind_tables import _ENTRY, _readelf, readelf_frames

LIBCRYPTO = Path("/usr/lib/x86_64-linux-gnu/libcrypto.so.3")
_DEREF_TEXT = re.compile(r"DW_CFA_def_cfa_expression \(DW_OP_breg([67]) \(r[bs]p\): (-?\d+); DW_OP_deref"
                         r"(?:; DW_OP_plus_uconst: (\d+))?\)$")
_RBP_TEXT = re.compile(r"DW_CFA_expression: r6 \(rbp\) \(DW_OP_breg6 \(rbp\): (-?\d+)\)$")


def test_expressions_decoded() -> None:
    assert deref_cfa(bytes([0x76, 0x78, 0x06])) == (CFA_DEREF | CFA_DEREF_RBP, -8)  # breg6 -8; deref
    assert deref_cfa(bytes([0x77, 0x20, 0x06, 0x23, 0x08])) == (CFA_DEREF | 1, 32)  # breg7 32; deref; plus 8
    assert deref_cfa(bytes([0x77, 0x20, 0x06, 0x23, 0x40])) == (CFA_DEREF | 8, 32)  # plus 64
    assert deref_cfa(bytes([0x77, 0x20, 0x06, 0x23, 0x04])) is None  # plus 4: not a multiple of 8
    assert deref_cfa(bytes([0x77, 0x20, 0x06, 0x23, 0x80, 0x01])) is None  # plus 128: past 8 * 15
    assert deref_cfa(bytes([0x79, 0x20, 0x06])) is None  # breg9: not rsp/rbp
    assert deref_cfa(bytes([0x76, 0x78])) is None  # no deref
    assert deref_cfa(bytes([0x76, 0x78, 0x06, 0x06])) is None  # something after it
    assert deref_cfa(bytes([0x76, 0x80, 0x80, 0x04, 0x06])) is None  # offset past s16
    assert deref_cfa(bytes([0x76, 0xF8])) is None  # LEB128 runs off the end
    assert rbp_at_rbp(bytes([0x76, 0x00])) == 0 and rbp_at_rbp(bytes([0x76, 0x70])) == -16
    assert rbp_at_rbp(bytes([0x77, 0x00])) is None and rbp_at_rbp(bytes([0x76, 0x00, 0x06])) is None


def _raw_expressions(path: Path) -> dict[tuple[str, int], tuple[set[str], set[str]]]:
    """FDE -> (its def_cfa_expression texts, its rbp DW_CFA_expression texts), from readelf -wf."""
    out: dict[tuple[str, int], tuple[set[str], set[str]]] = {}
    section, key = "", None
    for line in _readelf("-wf", path).splitlines():
        if line.startswith("Contents of the "):
            section = line.split()[3]
            continue
        m = _ENTRY.match(line)
        if m:
            key = (section, int(m[1], 16))
            out[key] = (set(), set())
            continue
        line = line.strip()
        if key is not None and line.startswith("DW_CFA_def_cfa_expression"):
            out[key][0].add(line)
        elif key is not None and line.startswith("DW_CFA_expression: r6 "):
            out[key][1].add(line)
    return out


def _expected(cfa_text: str, rbp_col: str, rbp_texts: set[str]) -> tuple[int, int, int, int]:
    m = _DEREF_TEXT.match(cfa_text)
    if m is None or int(m[3] or 0) % 8 or int(m[3] or 0) > 120:
        return (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
    cfa = CFA_DEREF | (CFA_DEREF_RBP if m[1] == "6" else 0) | int(m[3] or 0) // 8
    if rbp_col == "exp":
        (text,) = rbp_texts
        r = _RBP_TEXT.match(text)
        rbp = (RBP_AT_RBP, int(r[1])) if r else (RBP_UNDEFINED, 0)
    elif re.fullmatch(r"c[+-]\d+", rbp_col):
        rbp = (RBP_OFFSET, int(rbp_col[1:]))
    else:
        rbp = (RBP_SAME, 0)
    return (cfa, int(m[2]), *rbp)


def check_deref_rows(path: Path) -> tuple[int, list[str], UnwindTable]:
    """Rows under a non-PLT CFA expression, ours against readelf's: (rows checked, mismatches, table).
    An FDE counts when it has one such expression (and at most one rbp expression): then readelf's "exp"
    rows are that expression's."""
    entries, raw, table = readelf_frames(path), _raw_expressions(path), build_table(str(path))
    checked, bad = 0, []
    for key, e in entries.items():
        cfas, rbps = raw.get(key, (set(), set()))
        cfas = {t for t in cfas if "DW_OP_breg16 (rip)" not in t}  # the PLT's: tests/test_unwind_tables.py
        if e.kind != "FDE" or e.plt is not None or len(cfas) != 1 or len(rbps) > 1:
            continue
        (cfa_text,) = cfas
        locs = [loc for loc, row in e.rows if e.begin <= loc < e.end]
        for loc, row in e.rows:
            if row.get("CFA") != "exp" or row.get("ra") != "c-8" or not e.begin <= loc < e.end:
                continue
            want = _expected(cfa_text, row.get("rbp", "u"), rbps)
            last = (locs[locs.index(loc) + 1] if locs.index(loc) + 1 < len(locs) else e.end) - 1
            for pc in (loc, last):
                checked += 1
                if table.lookup(pc) != want:
                    bad.append(f"{path.name} {pc:#x}: {table.lookup(pc)} vs {want} ({cfa_text})")
    return checked, bad, table


@pytest.fixture(scope="module")
def realigned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out, built = tmp_path_factory.mktemp("realign"), {}
    for name, flags in (("o2", ["-O2"]), ("stackrealign", ["-O2", "-mavx", "-mstackrealign"])):
        exe = out / f"wide_frames_{name}"
        subprocess.run(["gcc", *flags, "-o", str(exe), str(WORKLOADS / "wide_frames.c")], check=True)
        built[name] = exe
    return built


@pytest.mark.parametrize("which", ["o2", "stackrealign"])
def test_drap_rows_agree_with_readelf(realigned: dict[str, Path], which: str) -> None:
    checked, bad, table = check_deref_rows(realigned[which])
    # o2: with_drap alone realigns through DRAP; stackrealign: main and the run_* and with_* functions too
    assert checked >= (2 if which == "o2" else 8), checked
    assert not bad, bad[:5]
    kinds = {table.lookup(pc)[0] for pc in range(0x1000, 0x3000) if table.lookup(pc)}
    assert CFA_UNSUPPORTED not in kinds, kinds


def test_with_drap_body_reads_its_cfa_below_rbp(realigned: dict[str, Path]) -> None:
    """Where with_drap spins (its body, after the prologue): CFA = *(rbp - 8), the caller's rbp at rbp + 0."""
    syms = subprocess.run(["nm", str(realigned["o2"])], capture_output=True, text=True, check=True).stdout
    start = next(int(a, 16) for a, _, name in (line.split() for line in syms.splitlines() if len(line.split()) == 3)
                 if name == "with_drap")
    table = build_table(str(realigned["o2"]))
    rules = {table.lookup(pc) for pc in range(start, start + 0x80)}
    assert (CFA_DEREF | CFA_DEREF_RBP, -8, RBP_AT_RBP, 0) in rules, rules


def test_openssl_assembly_rows_agree_with_readelf() -> None:
    """libcrypto's hand-written SHA/AES/bignum code: the entry rsp saved in a stack slot (plus 8)."""
    assert LIBCRYPTO.exists(), "libcrypto.so.3 (libssl3, a dependency of python3) is missing"
    checked, bad, _ = check_deref_rows(LIBCRYPTO)
    assert checked >= 50, checked
    assert not bad, bad[:5]
