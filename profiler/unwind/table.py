"""The unwind table row, byte-identical to the BPF side's `struct unwind_row` (COORD Interface 1).

    struct unwind_row { u32 pc; s16 cfa_offset; s16 rbp_offset; u8 cfa_type; u8 rbp_type; u16 reserved; }

12 bytes, little endian. `pc` is the ELF virtual address where the row starts; a row holds until
the next row's pc. Rows are sorted by pc with consecutive identical rules merged, so the kernel
finds a pc's rule with one bounded binary search. The return address is always at CFA-8 (x86_64);
the builder turns any other return-address rule into CFA_UNSUPPORTED, except a register's at the leaf
(CFA_LEAF_REG).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

CFA_NONE = 0  # no CFI covers this pc: the unwinder falls back to frame pointers
CFA_RSP = 1  # CFA = rsp + cfa_offset
CFA_RBP = 2  # CFA = rbp + cfa_offset
CFA_PLT = 3  # CFA = rsp + 8 + ((rip & 15) >= rbp_offset ? 8 : 0); rbp_offset holds the threshold (10 or 11)
CFA_END = 4  # return address undefined: the outermost frame (_start, a thread's first frame)
CFA_SIGNAL = 5  # signal trampoline (__restore_rt): rsp points at the ucontext, registers come from uc_mcontext
CFA_UNSUPPORTED = 6  # CFI exists but needs an expression (or rule) the unwinder does not evaluate
# Go's runtime.asmcgocall from the return of its call into C (on the system stack) until it moves rsp back:
# CFA = g.stack.hi - *(rsp + cfa_offset) + 8 where g = *(rsp + cfa_offset + 8), as asmcgocall restores the
# goroutine's rsp (Go's own .debug_frame says rsp + 8 there, which reads the system stack). Not from CFI: the
# builder finds the instructions (build.go_switch_rows).
CFA_GO_SWITCH = 7
# 0x10 | r: CFA = register r (DWARF number, 0-15) + cfa_offset, and the return address in a register when
# rbp_type >> RA_REG_SHIFT is not 0 (1 + its number; else at CFA-8). The kernel has the registers of the
# sampled frame: such a row unwinds the leaf (libgcc_s's context install: CFA in rcx; longjmp: CFA in rdi, return
# address in rdx) and, above it, a CFA in a caller-saved register, which no CFI restores (OpenSSL's
# aesni_gcm_encrypt: rax across its calls), not past a signal frame; anything else ends the walk (unsupported).
CFA_LEAF_REG = 0x10
RA_REG_SHIFT = 3
# 0x80 | [0x20: rbp, else rsp] | k: CFA = *(that register + cfa_offset) + 8k (k 0-15), the DW_CFA_def_cfa_expression
# `DW_OP_breg6/7 off; DW_OP_deref [; DW_OP_plus_uconst 8k]`: gcc's stack realignment through a DRAP register
# (-mstackrealign, AVX/aligned locals with alloca: CFA = *(rbp - 8); node, any -march=... build) and
# OpenSSL's assembly (the entry rsp saved in a stack slot: CFA = *(rsp + off) + 8).
CFA_DEREF = 0x80
CFA_DEREF_RBP = 0x20
CFA_DEREF_ADD_MAX = 15
RBP_TYPE_MASK = (1 << RA_REG_SHIFT) - 1

RBP_SAME = 0  # the caller's rbp is this frame's rbp
RBP_OFFSET = 1  # the caller's rbp is saved at CFA + rbp_offset
RBP_UNDEFINED = 2  # the caller's rbp cannot be recovered here
RBP_AT_RBP = 3  # the caller's rbp is saved at this frame's rbp + rbp_offset (DW_CFA_expression r6: DW_OP_breg6 off)

CFA_NAMES = {CFA_NONE: "none", CFA_RSP: "rsp", CFA_RBP: "rbp", CFA_PLT: "plt", CFA_END: "end",
             CFA_SIGNAL: "signal", CFA_UNSUPPORTED: "unsupported", CFA_GO_SWITCH: "go-switch"}

ROW = struct.Struct("<IhhBBH")
ROW_SIZE = ROW.size  # 12
# numpy's view of a row (build.ROW_DTYPE): the agent only moves rows as bytes and never imports numpy
# (17 MB resident); builds and tests do.
ROW_FIELDS = [("pc", "<u4"), ("cfa_offset", "<i2"), ("rbp_offset", "<i2"), ("cfa_type", "u1"),
              ("rbp_type", "u1"), ("reserved", "<u2")]

MAX_PC = 0xFFFF_FFFF  # pc is a u32: code above 4 GiB gets no table (the unwinder uses frame pointers there)

Rule = tuple[int, int, int, int]  # (cfa_type, cfa_offset, rbp_type, rbp_offset)


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class UnwindTable:
    """Packed rows of one binary, and where they came from.

    `rows` is `count` packed `unwind_row`s (b"" when the binary has no usable CFI: `reason` says why,
    and the unwinder uses frame pointers for the whole binary). `source` names the section read:
    ".eh_frame_hdr" (FDEs found through its sorted table), ".eh_frame", ".debug_frame" or "none".
    """

    rows: bytes
    count: int
    source: str
    build_id: str | None = None
    identity: tuple[int, int, int, int] | None = None  # (st_dev, st_ino, st_size, st_mtime_ns)
    reason: str = ""
    stats: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def nbytes(self) -> int:
        return len(self.rows)

    def array(self) -> np.ndarray:
        """The rows as a numpy structured array (a view of `rows`, read-only)."""
        import numpy as np

        return np.frombuffer(self.rows, dtype=np.dtype(ROW_FIELDS))

    def lookup(self, pc: int) -> Rule | None:
        """The rule holding at ELF address `pc`, or None before the first row (what the kernel's search does)."""
        import numpy as np

        arr = self.array()
        i = int(np.searchsorted(arr["pc"], pc, side="right")) - 1
        if i < 0:
            return None
        r = arr[i]
        return int(r["cfa_type"]), int(r["cfa_offset"]), int(r["rbp_type"]), int(r["rbp_offset"])
