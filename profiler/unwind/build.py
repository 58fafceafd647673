"""One binary's CFI -> the compact, sorted rows of Interface 1 (`build_table`).

Each FDE's rule rows are reduced to what the in-kernel x86_64 unwinder can act on: how to find the
CFA (rsp/rbp + offset, the PLT expression, a signal frame, the outermost frame) and where the
caller's rbp is. Most FDEs of a binary share their program bytes (small leaf functions, the same
prologue), so programs are evaluated once per (CIE, bytes) and their compact rows reused; rows are
kept as flat C arrays of ints, never as per-row objects, and compacted at the end: in plain Python up to
PYTHON_COMPACT_ROWS rule rows, with numpy above (identical bytes, tested), so that the agent's own builds
and a build child that meets no very big binary never import numpy (profiler/unwind/builder.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
from array import array
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from profiler.unwind.cfi import (
    EXPRESSION,
    OFFSET,
    RBP,
    REGISTER,
    RSP,
    SAME,
    UNDEFINED,
    CfiFormatError,
    CfiSection,
    Cie,
    HdrTable,
    State,
    _sleb,
    _uleb,
    parse_eh_frame_hdr,
    run_program,
)
from profiler.unwind.table import (
    CFA_DEREF,
    CFA_DEREF_ADD_MAX,
    CFA_DEREF_RBP,
    CFA_END,
    CFA_GO_SWITCH,
    CFA_LEAF_REG,
    CFA_NONE,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    CFA_SIGNAL,
    CFA_UNSUPPORTED,
    MAX_PC,
    RA_REG_SHIFT,
    RBP_AT_RBP,
    RBP_OFFSET,
    RBP_SAME,
    RBP_UNDEFINED,
    ROW,
    ROW_FIELDS,
    ROW_SIZE,
    Rule,
    UnwindTable,
    file_identity,
)
from symbolizer.elf import elf_build_id
from symbolizer.elffile import PT_GNU_EH_FRAME, PT_LOAD, ElfFile, ElfFormatError, Section

if TYPE_CHECKING:
    import numpy as np

EM_X86_64 = 62
# DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11|lit10; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus
_PLT_HEAD, _PLT_TAIL = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A]), bytes([0x2A, 0x33, 0x24, 0x22])
_PLT_THRESHOLD = {0x3A: 10, 0x3B: 11}
# Up to this many FDE rule rows (before compaction) the rows are compacted in plain Python, above it with
# numpy. Whole builds in a fresh process (bench/unwind_compact.py, docs/benchmarks.md "Stop 17 first7"):
# plain Python is cheaper than numpy with its import (~55-60 ms, ~17 MB) up to ~100k rule rows (Debian's
# python3, 61k: 104 against 132 ms; libcrypto, 77k: 124 against 128 ms) and 2-6% dearer above (libjvm, 197k:
# 316 against 298 ms; OpenBLAS, 354k: 448 against 436 ms), where a child that has numpy already compacts
# 3-5x faster. At 20k every child build imported numpy, whatever it built.
PYTHON_COMPACT_ROWS = 120_000
_PC = struct.Struct("<I")
_NONE_RULE: Rule = (CFA_NONE, 0, RBP_SAME, 0)
_S16 = range(-0x8000, 0x8000)


class UnwindFormatError(CfiFormatError):
    """A binary whose ELF headers or CFI do not parse; no table is built for it."""


class _Above4GiB(Exception):
    """Some FDE covers code past the u32 pc range: the binary gets no table."""


def plt_threshold(expr: bytes) -> int | None:
    """10 or 11 when `expr` is the standard x86_64 PLT CFA expression, else None."""
    if len(expr) == 11 and expr[:6] == _PLT_HEAD and expr[7:] == _PLT_TAIL:
        return _PLT_THRESHOLD.get(expr[6])
    return None


_DW_OP_BREG6, _DW_OP_BREG7, _DW_OP_DEREF, _DW_OP_PLUS_UCONST = 0x76, 0x77, 0x06, 0x23


def deref_cfa(expr: bytes) -> tuple[int, int] | None:
    """(cfa_type, cfa_offset) of a CFA expression `DW_OP_breg6/7 off; DW_OP_deref [; DW_OP_plus_uconst 8k]`
    (table.CFA_DEREF), else None: the CFA is a value saved on the stack, at rbp or rsp + off."""
    if len(expr) < 3 or expr[0] not in (_DW_OP_BREG6, _DW_OP_BREG7):
        return None
    try:
        off, pos = _sleb(expr, 1, len(expr))
        if pos >= len(expr) or expr[pos] != _DW_OP_DEREF:
            return None
        pos, add = pos + 1, 0
        if pos < len(expr) and expr[pos] == _DW_OP_PLUS_UCONST:
            add, pos = _uleb(expr, pos + 1, len(expr))
    except CfiFormatError:
        return None
    if pos != len(expr) or off not in _S16 or add % 8 or add // 8 > CFA_DEREF_ADD_MAX:
        return None
    return CFA_DEREF | (CFA_DEREF_RBP if expr[0] == _DW_OP_BREG6 else 0) | add // 8, off


def rbp_at_rbp(expr: bytes) -> int | None:
    """off when an rbp rule's expression is `DW_OP_breg6 off` alone (the caller's rbp saved at rbp + off, as
    gcc's DRAP prologue says it), else None."""
    if len(expr) < 2 or expr[0] != _DW_OP_BREG6:
        return None
    try:
        off, pos = _sleb(expr, 1, len(expr))
    except CfiFormatError:
        return None
    return off if pos == len(expr) and off in _S16 else None


def compact_rule(state: State, signal: bool) -> Rule:
    """The unwinder's view of one rule row: (cfa_type, cfa_offset, rbp_type, rbp_offset)."""
    if signal:
        return (CFA_SIGNAL, 0, RBP_SAME, 0)
    cfa_reg, cfa_off, cfa_expr, rbp, ra = state
    if ra[0] == UNDEFINED:
        return (CFA_END, 0, RBP_SAME, 0)
    ra_reg = 0  # 1 + the register holding the return address (CFA_LEAF_REG), 0: at CFA-8
    if ra[0] == REGISTER and isinstance(ra[1], int) and 0 <= ra[1] < 16:
        ra_reg = ra[1] + 1
    elif ra != (OFFSET, -8):
        return (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
    if rbp[0] == SAME:
        rbp_type, rbp_off = RBP_SAME, 0
    elif rbp[0] == OFFSET and rbp[1] in _S16:
        rbp_type, rbp_off = RBP_OFFSET, int(rbp[1])
    elif rbp[0] == EXPRESSION and isinstance(rbp[1], bytes) and (at := rbp_at_rbp(rbp[1])) is not None:
        rbp_type, rbp_off = RBP_AT_RBP, at
    else:  # undefined, or kept in a register / by an expression we do not follow: unknown to the caller
        rbp_type, rbp_off = RBP_UNDEFINED, 0
    if cfa_expr is not None:
        threshold = plt_threshold(cfa_expr)
        deref = deref_cfa(cfa_expr) if threshold is None and not ra_reg else None
        if deref is not None:
            return (deref[0], deref[1], rbp_type, rbp_off)
        if threshold is None or ra_reg:
            return (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
        return (CFA_PLT, 8, RBP_SAME, threshold)
    if cfa_off not in _S16 or not 0 <= cfa_reg < 16:
        return (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
    if ra_reg or cfa_reg not in (RSP, RBP):  # needs the sampled frame's registers (table.CFA_LEAF_REG)
        return (CFA_LEAF_REG | cfa_reg, cfa_off, rbp_type | ra_reg << RA_REG_SHIFT, rbp_off)
    return (CFA_RSP if cfa_reg == RSP else CFA_RBP, cfa_off, rbp_type, rbp_off)


# -- finding the CFI -----------------------------------------------------------------------------

def _vaddr_reader(elf: ElfFile, used: list[int] | None = None) -> Callable[[int], int]:
    """Reads a pointer at an ELF virtual address (DW_EH_PE_indirect), through the PT_LOAD segments;
    appends each address read to `used`."""

    def deref(vaddr: int) -> int:
        if used is not None:
            used.append(vaddr)
        for seg in elf.segments:
            if seg.type == PT_LOAD and seg.vaddr <= vaddr and vaddr + 8 <= seg.vaddr + seg.filesz:
                elf.f.seek(seg.offset + vaddr - seg.vaddr)
                raw = elf.f.read(8)
                if len(raw) == 8:
                    return int(struct.unpack("<Q", raw)[0])
        raise UnwindFormatError(f"indirect pointer to {vaddr:#x}, outside the file's segments")

    return deref


def _data(elf: ElfFile, sec: Section) -> bytes:
    try:
        return elf.data(sec)
    except (ElfFormatError, OSError) as e:
        raise UnwindFormatError(f"{sec.name}: {e}") from e


def _read_at(elf: ElfFile, vaddr: int, limit: int | None) -> tuple[bytes, int]:
    """Bytes from `vaddr` to the end of its PT_LOAD segment's file image (or `limit` bytes)."""
    for seg in elf.segments:
        if seg.type == PT_LOAD and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
            size = seg.vaddr + seg.filesz - vaddr if limit is None else limit
            elf.f.seek(seg.offset + vaddr - seg.vaddr)
            return elf.f.read(size), vaddr
    raise UnwindFormatError(f"address {vaddr:#x} is in no loadable segment")


def find_cfi(elf: ElfFile, used: list[int] | None = None) -> list[tuple[CfiSection, str, HdrTable | None]]:
    """[(section, source name, the .eh_frame_hdr table or None)] of the CFI to use, .eh_frame first; [] for none.

    .eh_frame is what the loader keeps and what every unwinder trusts. .debug_frame adds the functions
    .eh_frame does not describe (a program built with -fno-asynchronous-unwind-tables -g still gets
    .eh_frame FDEs for the C runtime's _start, and its own functions only in .debug_frame).
    Without section headers, PT_GNU_EH_FRAME still finds .eh_frame_hdr and through it .eh_frame.
    `used` collects the addresses of pointers read outside the CFI (DW_EH_PE_indirect; no toolchain
    here writes them for what the rows depend on).
    """
    deref = _vaddr_reader(elf, used)
    out: list[tuple[CfiSection, str, HdrTable | None]] = []
    hdr_sec, eh_sec = elf.section(".eh_frame_hdr"), elf.section(".eh_frame")
    hdr: tuple[bytes, int] | None = None
    if hdr_sec is not None and hdr_sec.size:
        hdr = (_data(elf, hdr_sec), hdr_sec.addr)
    elif not elf.sections:
        seg = next((s for s in elf.segments if s.type == PT_GNU_EH_FRAME and s.filesz), None)
        if seg is not None:
            hdr = _read_at(elf, seg.vaddr, seg.filesz)
    table = None
    eh: CfiSection | None = None
    if hdr is not None:
        eh_addr, table = parse_eh_frame_hdr(hdr[0], hdr[1])
        if table is not None and not len(table[0]):
            table = None  # an empty search table: walk .eh_frame itself
        if eh_sec is None and not elf.sections:
            data, _ = _read_at(elf, eh_addr, None)
            eh = CfiSection(data, eh_addr, eh=True, deref=deref)
        elif eh_sec is not None and eh_addr != eh_sec.addr:
            raise UnwindFormatError(f".eh_frame_hdr points at {eh_addr:#x}, .eh_frame is at {eh_sec.addr:#x}")
    if eh is None and eh_sec is not None and eh_sec.size:
        eh = CfiSection(_data(elf, eh_sec), eh_sec.addr, eh=True, deref=deref)
    if eh is not None:
        out.append((eh, ".eh_frame_hdr" if table is not None else ".eh_frame", table))
    dbg = elf.section(".debug_frame")
    if dbg is not None and dbg.size:
        out.append((CfiSection(_data(elf, dbg), dbg.addr, eh=False, deref=deref), ".debug_frame", None))
    return out


def fde_offsets(cfi: CfiSection, table: HdrTable | None) -> Iterable[tuple[int, Cie, int, int, int, int]]:
    """The FDEs, in .eh_frame_hdr's order when there is one (checked against the FDEs it names)."""
    if table is None:
        yield from cfi.entries()
        return
    size = len(cfi.data)
    for loc, addr in zip(table[0].tolist(), table[1].tolist(), strict=True):
        off = addr - cfi.addr
        if not 0 <= off < size:
            raise UnwindFormatError(f".eh_frame_hdr names an FDE at {addr:#x}, outside .eh_frame")
        got = cfi.fde_at(off)
        if got is None or got[2] != loc:
            raise UnwindFormatError(f".eh_frame_hdr entry {loc:#x} -> {addr:#x} does not name that FDE")
        yield (off, *got[1:])


# -- building ------------------------------------------------------------------------------------

Program = tuple["array[int]", "array[int]"]  # (pc deltas, rule ids) of one evaluated FDE program; u32 each


class _Rows:
    """Every FDE's rows as flat C arrays (no per-row Python objects survive the build)."""

    def __init__(self) -> None:
        self.rules: list[Rule] = [_NONE_RULE]
        self.rule_ids: dict[Rule, int] = {_NONE_RULE: 0}
        self.state_ids: dict[tuple[State, bool], int] = {}
        self.programs: dict[tuple[int, int, bytes], Program] = {}
        self.begins = array("Q")
        self.ends = array("Q")
        self.prios = array("B")
        self.counts = array("I")
        self.deltas = array("I")  # a delta past 4 GiB is past its FDE: clipped to MAX_PC, then dropped
        self.rids = array("I")
        self.stats = {"fdes": 0, "programs": 0, "rule_rows": 0}

    def rule_id(self, state: State, signal: bool) -> int:
        sk = (state, signal)
        rid = self.state_ids.get(sk)
        if rid is None:
            rule = compact_rule(state, signal)
            rid = self.rule_ids.get(rule)
            if rid is None:
                rid = self.rule_ids[rule] = len(self.rules)
                self.rules.append(rule)
            self.state_ids[sk] = rid
        return rid

    def add(self, cfi: CfiSection, table: HdrTable | None, prio: int) -> None:
        """Evaluates one section's FDEs, each distinct (CIE, program bytes) once."""
        data = cfi.data
        pointers = cfi.pointers
        programs = self.programs
        stats = self.stats
        for _off, cie, begin, end, istart, iend in fde_offsets(cfi, table):
            if end <= begin:
                continue  # empty FDEs (discarded functions) describe nothing
            if cie.signal:
                # A signal trampoline (__restore_rt) ends with its rt_sigreturn syscall: a sample inside that
                # syscall reports the user state after it, one byte past the FDE, in the padding. Its rule
                # holds there too (the syscall moved nothing); compaction clips it if another FDE starts.
                end += 1
            if end > MAX_PC + 1:
                raise _Above4GiB()
            stats["fdes"] += 1
            code = data[istart:iend]
            key = (prio, cie.offset, code)
            prog = programs.get(key)
            if prog is None:
                rows, used_set_loc = run_program(code, cie, cie.initial_state, pointers=pointers, pc_begin=begin,
                                                 code_offset=istart)
                stats["programs"] += 1
                stats["rule_rows"] += len(rows)
                prog = (array("I", [min(d, MAX_PC) for d, _ in rows]),
                        array("I", [self.rule_id(st, cie.signal) for _, st in rows]))
                if not used_set_loc:
                    programs[key] = prog
            self.begins.append(begin)
            self.ends.append(end)
            self.prios.append(prio)
            self.counts.append(len(prog[0]))
            self.deltas.extend(prog[0])
            self.rids.extend(prog[1])

    def compact(self, python: bool | None = None) -> tuple[bytes, int, int]:
        """(packed rows, their count, how many are CFA_UNSUPPORTED): sorted, each FDE clipped where the
        next starts, CFA_NONE in gaps, equal runs merged. `python`: compact in plain Python (no numpy);
        None chooses by size (PYTHON_COMPACT_ROWS). Both give the same bytes."""
        if python is None:
            python = len(self.rids) <= PYTHON_COMPACT_ROWS
        if python:
            return self._compact_python()
        out = self._compact_numpy()
        return out.tobytes(), len(out), int((out["cfa_type"] == CFA_UNSUPPORTED).sum())

    def _compact_python(self) -> tuple[bytes, int, int]:
        """What _compact_numpy does, in one streaming pass that holds no per-row Python objects (libc's
        28k rows peak at ~1 MB): for small tables, where importing numpy costs more than the whole build."""
        begins, ends, counts, prios = self.begins, self.ends, self.counts, self.prios
        deltas, rids = self.deltas, self.rids
        n = len(begins)
        firsts = array("Q", bytes(8 * n))
        at = 0
        for i in range(n):
            firsts[i] = at
            at += counts[i]
        order = sorted(range(n), key=lambda i: (begins[i], prios[i]))  # stable: a later source wins a tie
        tails = [ROW.pack(0, cfa_off, rbp_off, cfa_type, rbp_type, 0)[4:]
                 for cfa_type, cfa_off, rbp_type, rbp_off in self.rules]
        unsupported_rule = [rule[0] == CFA_UNSUPPORTED for rule in self.rules]
        out = bytearray()
        pack = _PC.pack
        written = unsupported = 0
        last_rid = -1  # the rule of the last row kept (written, or the leading CFA_NONE row left out)
        pend_pc = pend_rid = -1  # a row is written once the next has another pc: at one pc the later row wins

        def keep(pc: int, rid: int) -> None:
            nonlocal last_rid, written, unsupported
            if rid == last_rid:
                return  # merge runs of one rule
            if last_rid >= 0 or rid != 0:  # nothing to say before the first FDE
                out.extend(pack(pc & MAX_PC))
                out.extend(tails[rid])
                written += 1
                unsupported += unsupported_rule[rid]
            last_rid = rid

        for k, i in enumerate(order):
            b, e = begins[i], ends[i]
            nxt = begins[order[k + 1]] if k + 1 < n else -1
            limit = e if nxt < 0 or e < nxt else nxt
            for j in range(firsts[i], firsts[i] + counts[i]):
                d = deltas[j]
                if d == 0 or b + d < limit:
                    if pend_pc >= 0 and b + d != pend_pc:
                        keep(pend_pc, pend_rid)
                    pend_pc, pend_rid = b + d, rids[j]
            if nxt < 0 or e < nxt:  # a CFA_NONE row where the FDE ends and no other starts
                if pend_pc >= 0 and e != pend_pc:
                    keep(pend_pc, pend_rid)
                pend_pc, pend_rid = e, 0
        if pend_pc >= 0:
            keep(pend_pc, pend_rid)
        return bytes(out), written, unsupported

    def _compact_numpy(self) -> np.ndarray:
        import numpy as np

        row_dtype = np.dtype(ROW_FIELDS)
        begins = np.frombuffer(self.begins, dtype=np.uint64).astype(np.int64)
        ends = np.frombuffer(self.ends, dtype=np.uint64).astype(np.int64)
        counts = np.frombuffer(self.counts, dtype=np.uint32).astype(np.int64)
        if not len(begins):
            return np.zeros(0, dtype=row_dtype)
        order = np.lexsort((np.frombuffer(self.prios, dtype=np.uint8), begins))  # a later source wins a tie
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        b, e, c, f = begins[order], ends[order], counts[order], first[order]
        nxt = np.concatenate((b[1:], [np.iinfo(np.int64).max]))
        limit = np.minimum(e, nxt)
        # row i of the sorted FDEs' rows: gather each FDE's slice of deltas/rids in the new order
        idx = np.repeat(f - np.concatenate(([0], np.cumsum(c)[:-1])), c) + np.arange(int(c.sum()))
        deltas = np.frombuffer(self.deltas, dtype=np.uint32).astype(np.int64)[idx]
        rids = np.frombuffer(self.rids, dtype=np.uint32)[idx]
        fde_of_row = np.repeat(np.arange(len(b)), c)
        pcs = b[fde_of_row] + deltas
        keep = (deltas == 0) | (pcs < limit[fde_of_row])
        del idx, deltas
        rids, pcs = rids[keep], pcs[keep]
        # a CFA_NONE row after every FDE the next one does not start right at (and after the last),
        # inserted after that FDE's rows: the rows stay in pc order
        gap = e < nxt
        after = np.cumsum(np.bincount(fde_of_row[keep], minlength=len(b)))[gap]
        del fde_of_row, keep
        pcs = np.insert(pcs, after, e[gap])
        rids = np.insert(rids, after, 0)
        last_of_pc = np.concatenate((pcs[1:] != pcs[:-1], [True]))  # at one pc the later row wins
        pcs, rids = pcs[last_of_pc], rids[last_of_pc]
        changed = np.concatenate(([True], rids[1:] != rids[:-1]))  # merge runs of one rule
        pcs, rids = pcs[changed], rids[changed]
        if len(pcs) and rids[0] == 0:  # nothing to say before the first FDE
            pcs, rids = pcs[1:], rids[1:]
        rules = np.array(self.rules, dtype=np.int64)
        out = np.zeros(len(pcs), dtype=row_dtype)
        out["pc"] = pcs
        for col, name in enumerate(("cfa_type", "cfa_offset", "rbp_type", "rbp_offset")):
            out[name] = rules[:, col][rids]
        return out


def rows_from_cfi(sources: list[tuple[CfiSection, str, HdrTable | None]], *, python: bool | None = None,
                  ) -> tuple[bytes, dict[str, int]]:
    """Packed rows (ROW_FIELDS) of every FDE, sorted, gaps filled with CFA_NONE, runs merged, and the
    build's counts. Where FDEs of two sources start at the same pc, the first source's wins.
    `python`: compact without numpy (None: when the table is small; see _Rows.compact).

    Raises _Above4GiB when some FDE covers code past the u32 pc range."""
    rows = _Rows()
    for prio, (cfi, _, table) in enumerate(reversed(sources)):
        rows.add(cfi, table, prio)
    rows.programs.clear()  # only needed while adding: free it before compaction's peak
    packed, count, unsupported = rows.compact(python)
    stats = dict(rows.stats)
    stats["rows"] = count
    stats["unsupported_rows"] = unsupported
    return packed, stats


def cfi_size(elf: ElfFile) -> int | None:
    """Bytes of .eh_frame, .eh_frame_hdr and .debug_frame by the section headers (what a build reads and
    evaluates), or None for a file without section headers (its CFI's size is known only once it is read)."""
    if not elf.sections:
        return None
    return sum(sec.size for name in (".eh_frame", ".eh_frame_hdr", ".debug_frame")
               if (sec := elf.section(name)) is not None)


CFI_SECTIONS = (".eh_frame_hdr", ".eh_frame", ".debug_frame")


def cfi_digest(elf: ElfFile) -> str | None:
    """A name for what a build of this file reads, for a binary without a build id (profiler/unwind/cache.py
    keys those by it): a hash of the ELF header fields, the section and program headers, and the bytes of
    .eh_frame_hdr, .eh_frame and .debug_frame. Equal digests give equal rows (a build reads nothing else,
    but for DW_EH_PE_indirect pointers: `find_cfi`'s `used`), so byte-identical copies of one library (a
    wheel's .so in every virtualenv or image layer that ships it) share one build, and a rebuilt binary
    whose CFI or layout moved gets another. None without section headers (the CFI is found through
    PT_GNU_EH_FRAME then: the file's identity keys it) or when the sections cannot be read."""
    if not elf.sections:
        return None
    h = hashlib.sha256(b"podflame-unwind-cfi-v1")
    h.update(repr((elf.elfclass, elf.endian, elf.e_type, elf.e_machine, elf.sections, elf.segments)).encode())
    for name in CFI_SECTIONS:
        sec = elf.section(name)
        if sec is None:
            continue
        try:
            data = elf.data(sec)
        except (ElfFormatError, OSError, struct.error, ValueError):
            return None
        h.update(struct.pack("<Q", len(data)) + data)
    try:
        h.update(repr(go_switch_rows(elf)).encode())  # rows a build reads from Go's code, not its CFI
    except (ElfFormatError, OSError, struct.error, ValueError):
        return None
    return "cfi-" + h.hexdigest()


# Go's runtime.asmcgocall (asm_amd64.s) after `CALL AX` into C on the system stack, until `MOVQ SI, SP` takes the
# goroutine's stack back: `MOVQ g(SP), DI; MOVQ (g_stack+stack_hi)(DI), SI; SUBQ depth(SP), SI; [MOVQ DI, g(TLS)]`
# (go1.19: g at 0x30, depth at 0x28; later releases 8 and 0). On the path that was on the system stack already:
# `CALL AX; MOVQ oldsp(SP), SI; MOVQ SI, SP`. Matched in the code of Go binaries (a .gopclntab) only.
_GO_SWITCH = re.compile(rb"\xff\xd0\x48\x8b\x7c\x24(.)\x48\x8b\x77\x08\x48\x2b(?:\x74\x24(.)|\x34\x24)"
                        rb"(?:.{0,12}?)\x48\x89\xf4", re.S)
_GO_ON_G0 = re.compile(rb"\xff\xd0\x48\x8b\x74\x24(.)\x48\x89\xf4", re.S)
# gosave_systemstack_switch: `LEAQ runtime·systemstack_switch(SB), R9; MOVQ R9, (g_sched+gobuf_pc)(R14); LEAQ 8(SP), R9;
# MOVQ R9, (g_sched+gobuf_sp)(R14)`: the goroutine's saved pc is systemstack_switch's first byte, which cgocallback
# pushes as its own return address on the goroutine's stack during a callback from C.
_GO_SAVE_SWITCH = re.compile(rb"\x4c\x8d\x0d(....)\x4d\x89\x4e.\x4c\x8d\x4c\x24\x08\x4d\x89\x4e.", re.S)


def go_switch_rows(elf: ElfFile) -> list[tuple[int, int, Rule]]:
    """[(start, end, rule)] over Go's asmcgocall from its call into C to where it moves rsp back to the goroutine's
    stack: Go's .debug_frame says CFA = rsp + 8 there, which on the system stack reads a saved slot as the return
    address (a bogus `[no mapping]` frame, runtime.cgocall lost). The rule reads the goroutine's rsp as
    asmcgocall restores it (CFA_GO_SWITCH), or the saved rsp (CFA_DEREF) where it was on the system stack
    already. [] for a binary that is not Go's."""
    text = elf.section(".text")
    if elf.section(".gopclntab") is None or text is None or not text.size:
        return []
    code = elf.data(text)
    out: list[tuple[int, int, Rule]] = []
    for m in _GO_SWITCH.finditer(code):
        g_slot, depth = m.group(1)[0], (m.group(2) or b"\0")[0]
        if g_slot == depth + 8:
            out.append((text.addr + m.start(), text.addr + m.end(), (CFA_GO_SWITCH, depth, RBP_SAME, 0)))
    for m in _GO_ON_G0.finditer(code):
        out.append((text.addr + m.start(), text.addr + m.end(), (CFA_DEREF | 1, m.group(1)[0], RBP_SAME, 0)))
    for m in _GO_SAVE_SWITCH.finditer(code):
        # a return address at a function's first byte is looked up at the byte before: Go's padding (int3) there
        # gets systemstack_switch's own rule (frameless, CFA = rsp + 8), so a walk goes on to the goroutine's
        # caller as Go's traceback does (cgocallback -> systemstack_switch -> cgocall), rather than ending
        at = m.start() + 7 + int.from_bytes(m.group(1), "little", signed=True)
        if 0 < at < len(code) and code[at - 1] == 0xCC:
            out.append((text.addr + at - 1, text.addr + at, (CFA_RSP, 8, RBP_SAME, 0)))
    return sorted(out)


def overlay_rows(packed: bytes, spans: list[tuple[int, int, Rule]]) -> bytes:
    """`packed` rows with each span's rule over [start, end), the rule in force at `end` from there on."""
    out = bytearray(packed)
    for start, end, rule in spans:
        n = len(out) // ROW_SIZE
        lo, hi = _first_rows_at(bytes(out), start, end)  # the first row at or after each
        at_end = out[(hi - 1) * ROW_SIZE + 4:hi * ROW_SIZE] if hi > 0 else ROW.pack(0, 0, 0, CFA_NONE, RBP_SAME, 0)[4:]
        cfa_type, cfa_offset, rbp_type, rbp_offset = rule
        new = ROW.pack(start, cfa_offset, rbp_offset, cfa_type, rbp_type, 0)
        if not (hi < n and ROW.unpack_from(out, hi * ROW_SIZE)[0] == end):
            new += ROW.pack(end, 0, 0, 0, 0, 0)[:4] + at_end
        out[lo * ROW_SIZE:hi * ROW_SIZE] = new
    return bytes(out)


def _first_rows_at(rows: bytes, *pcs: int) -> list[int]:
    """For each pc, the index of the first of the sorted `rows` at or after it (as `UnwindTable.lookup` searches)."""
    import numpy as np

    return np.searchsorted(np.frombuffer(rows, dtype=np.dtype(ROW_FIELDS))["pc"], pcs).tolist()


def build_table(path: str | bytes, *, python: bool | None = None) -> UnwindTable:
    """The unwind table of the ELF file at `path`, or of an ELF image given as bytes (the vDSO,
    read from a process's memory: it has no file; identity is None then).

    A table with no rows (and a `reason`) for a binary the unwinder should walk with frame pointers:
    not x86_64, no CFI, or code above 4 GiB. Raises UnwindFormatError for malformed ELF or CFI.
    `python`: compact without numpy (None: chosen by the table's size).
    """
    table = _build(path, None, python)
    assert table is not None
    return table


def build_small_table(path: str | bytes, max_cfi_bytes: int) -> UnwindTable | None:
    """build_table's table when the binary's CFI is at most `max_cfi_bytes` (by its section headers),
    built without numpy; None, having read only the ELF headers, when it is bigger or has no section
    headers. For the agent's own builds (profiler/unwind/builder.py)."""
    return _build(path, max_cfi_bytes, True)


def _build(path: str | bytes, max_cfi_bytes: int | None, python: bool | None) -> UnwindTable | None:
    name = "<ELF image>" if isinstance(path, bytes) else path
    with io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb") as f:
        identity = None if isinstance(path, bytes) else file_identity(os.fstat(f.fileno()))
        try:
            elf = ElfFile(f)
        except (ElfFormatError, struct.error) as e:
            raise UnwindFormatError(f"{name}: {e}") from e
        if max_cfi_bytes is not None:
            size = cfi_size(elf)
            if size is None or size > max_cfi_bytes:
                return None
        build_id = elf_build_id(elf)
        if elf.elfclass != 64 or elf.e_machine != EM_X86_64:
            return UnwindTable(b"", 0, "none", build_id, identity, reason="not an x86_64 ELF64 binary")
        used: list[int] = []
        try:
            found = find_cfi(elf, used)
            if not found:
                return UnwindTable(b"", 0, "none", build_id, identity, reason="no .eh_frame or .debug_frame")
            source = "+".join(name for _, name, _ in found)
            try:
                packed, stats = rows_from_cfi(found, python=python)
            except _Above4GiB:
                return UnwindTable(b"", 0, "none", build_id, identity, reason="code above 4 GiB")
            go_rows = go_switch_rows(elf)
            if go_rows:
                packed = overlay_rows(packed, go_rows)
                stats["rows"] = len(packed) // ROW_SIZE
                stats["go_switch"] = len(go_rows)
        except UnwindFormatError:
            raise
        except CfiFormatError as e:
            raise UnwindFormatError(f"{name}: {e}") from e
        except (struct.error, IndexError, ElfFormatError) as e:
            raise UnwindFormatError(f"{name}: malformed CFI ({e})") from e
    if used:
        stats["indirect"] = len(used)  # rows that rest on bytes outside the CFI: never keyed by cfi_digest
    return UnwindTable(packed, stats["rows"], source, build_id, identity, stats=stats)
