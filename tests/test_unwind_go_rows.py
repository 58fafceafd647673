"""The rows the builder finds in Go's code (build.go_switch_rows): runtime.asmcgocall from its call into C until it
takes the goroutine's stack back, against the binary's own symbols and instructions (objdump)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from profiler.unwind.build import build_table, go_switch_rows, overlay_rows
from profiler.unwind.table import CFA_DEREF, CFA_GO_SWITCH, CFA_NONE, CFA_RSP, RBP_SAME, ROW, ROW_SIZE
from symbolizer.elffile import ElfFile
from tests.realsys import WORKLOADS


@pytest.fixture(scope="module")
def fid_cgo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("cgo") / "fid_cgo"
    subprocess.run(["go", "build", "-o", str(exe), "."], check=True, cwd=WORKLOADS / "fid_cgo")
    return exe


def rule_at(rows: bytes, pc: int) -> tuple[int, int]:
    found = (CFA_NONE, 0)
    for i in range(len(rows) // ROW_SIZE):
        at, cfa_offset, _, cfa_type, _, _ = ROW.unpack_from(rows, i * ROW_SIZE)
        if at > pc:
            break
        found = (cfa_type, cfa_offset)
    return found


def test_asmcgocall_returns_from_c_by_the_goroutines_stack(fid_cgo: Path) -> None:
    nm = subprocess.run(["nm", "-n", str(fid_cgo)], capture_output=True, text=True, check=True).stdout
    found = re.search(r"^([0-9a-f]+) t runtime\.asmcgocall\.abi0\n([0-9a-f]+) ", nm, re.M)
    assert found is not None
    start, end = int(found[1], 16), int(found[2], 16)  # to the next symbol
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
                          f"--stop-address={end:#x}", str(fid_cgo)], capture_output=True, text=True,
                         check=True).stdout
    calls = [int(a, 16) for a in re.findall(r"^\s*([0-9a-f]+):\s+call\s+\*%rax", asm, re.M)]
    restores = [int(a, 16) for a in re.findall(r"^\s*([0-9a-f]+):\s+mov\s+%rsi,%rsp", asm, re.M)]
    depth = int(re.search(r"sub\s+0x([0-9a-f]+)\(%rsp\),%rsi", asm)[1], 16)  # type: ignore[index]
    assert len(calls) == 2 and len(restores) == 2, asm
    with open(fid_cgo, "rb") as f:
        spans = go_switch_rows(ElfFile(f))
    assert [(s, e) for s, e, r in spans if r[0] != CFA_RSP] == [(calls[0], restores[0] + 3),
                                                             (calls[1], restores[1] + 3)]
    rows = build_table(str(fid_cgo)).rows
    # the return address from C (the lookup is at the call instruction), switched and not switched
    assert rule_at(rows, calls[0] + 1) == (CFA_GO_SWITCH, depth)
    assert rule_at(rows, calls[1] + 1)[0] == CFA_DEREF | 1
    # before the call and once rsp is back: Go's own rule (frameless: CFA = rsp + 8)
    assert rule_at(rows, calls[0] - 1) == rule_at(rows, restores[0] + 3) == (CFA_RSP, 8)
    # the padding byte before runtime.systemstack_switch (the goroutine's saved pc is its first byte): its rule
    switch = int(re.search(r"^([0-9a-f]+) t runtime\.systemstack_switch\.abi0$", nm, re.M)[1], 16)  # type: ignore[index]
    assert (switch - 1, switch, (CFA_RSP, 8, RBP_SAME, 0)) in spans
    assert rule_at(rows, switch - 1) == (CFA_RSP, 8)


def test_not_go_no_rows_and_an_overlay_keeps_what_follows() -> None:
    with open("/usr/bin/true", "rb") as f:
        assert go_switch_rows(ElfFile(f)) == []
    rows = b"".join(ROW.pack(pc, off, 0, CFA_RSP, RBP_SAME, 0) for pc, off in ((0x100, 8), (0x110, 16), (0x120, 8)))
    got = overlay_rows(rows, [(0x108, 0x114, (CFA_GO_SWITCH, 40, RBP_SAME, 0))])
    assert [ROW.unpack_from(got, i)[:4] for i in range(0, len(got), ROW_SIZE)] == [
        (0x100, 8, 0, CFA_RSP), (0x108, 40, 0, CFA_GO_SWITCH), (0x114, 16, 0, CFA_RSP), (0x120, 8, 0, CFA_RSP)]
