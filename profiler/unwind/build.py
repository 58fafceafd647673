"""One binary's CFI -> the compact, sorted rows of Interface 1 (`build_table`).

Each FDE's rule rows are reduced to what the in-kernel x86_64 unwinder can act on: how to find the
CFA (rsp/rbp + offset, the PLT expression, a signal frame, the outermost frame) and where the
caller's rbp is. Most FDEs of a binary share their program bytes (small leaf functions, the same
prologue), so programs are evaluated once per (CIE, bytes) and their compact rows reused; rows are
kept as two flat lists of ints and packed with numpy at the end, never as per-row objects.
"""

from __future__ import annotations

import io
import os
import struct
from array import array
from collections.abc import Callable, Iterable

import numpy as np

from profiler.unwind.cfi import (
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
    parse_eh_frame_hdr,
    run_program,
)
from profiler.unwind.table import (
    CFA_END,
    CFA_LEAF_REG,
    CFA_NONE,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    CFA_SIGNAL,
    CFA_UNSUPPORTED,
    MAX_PC,
    RA_REG_SHIFT,
    RBP_OFFSET,
    RBP_SAME,
    RBP_UNDEFINED,
    ROW_FIELDS,
    ROW_SIZE,
    Rule,
    UnwindTable,
    file_identity,
)
from symbolizer.elf import _build_id
from symbolizer.elffile import PT_LOAD, ElfFile, ElfFormatError, Section

EM_X86_64 = 62
PT_GNU_EH_FRAME = 0x6474E550
# DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11|lit10; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus
_PLT_HEAD, _PLT_TAIL = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A]), bytes([0x2A, 0x33, 0x24, 0x22])
_PLT_THRESHOLD = {0x3A: 10, 0x3B: 11}
ROW_DTYPE = np.dtype(ROW_FIELDS)
assert ROW_DTYPE.itemsize == ROW_SIZE
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
    else:  # undefined, or kept in a register / by an expression we do not follow: unknown to the caller
        rbp_type, rbp_off = RBP_UNDEFINED, 0
    if cfa_expr is not None:
        threshold = plt_threshold(cfa_expr)
        if threshold is None or ra_reg:
            return (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
        return (CFA_PLT, 8, RBP_SAME, threshold)
    if cfa_off not in _S16 or not 0 <= cfa_reg < 16:
        return (CFA_UNSUPPORTED, 0, RBP_SAME, 0)
    if ra_reg or cfa_reg not in (RSP, RBP):  # needs the sampled frame's registers (table.CFA_LEAF_REG)
        return (CFA_LEAF_REG | cfa_reg, cfa_off, rbp_type | ra_reg << RA_REG_SHIFT, rbp_off)
    return (CFA_RSP if cfa_reg == RSP else CFA_RBP, cfa_off, rbp_type, rbp_off)


# -- finding the CFI -----------------------------------------------------------------------------

def _vaddr_reader(elf: ElfFile) -> Callable[[int], int]:
    """Reads a pointer at an ELF virtual address (DW_EH_PE_indirect), through the PT_LOAD segments."""

    def deref(vaddr: int) -> int:
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


def find_cfi(elf: ElfFile) -> list[tuple[CfiSection, str, HdrTable | None]]:
    """[(section, source name, the .eh_frame_hdr table or None)] of the CFI to use, .eh_frame first; [] for none.

    .eh_frame is what the loader keeps and what every unwinder trusts. .debug_frame adds the functions
    .eh_frame does not describe (a program built with -fno-asynchronous-unwind-tables -g still gets
    .eh_frame FDEs for the C runtime's _start, and its own functions only in .debug_frame).
    Without section headers, PT_GNU_EH_FRAME still finds .eh_frame_hdr and through it .eh_frame.
    """
    deref = _vaddr_reader(elf)
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

    def compact(self) -> np.ndarray:
        """Sorted rows, each FDE clipped where the next starts, CFA_NONE in gaps, equal runs merged."""
        begins = np.frombuffer(self.begins, dtype=np.uint64).astype(np.int64)
        ends = np.frombuffer(self.ends, dtype=np.uint64).astype(np.int64)
        counts = np.frombuffer(self.counts, dtype=np.uint32).astype(np.int64)
        if not len(begins):
            return np.zeros(0, dtype=ROW_DTYPE)
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
        out = np.zeros(len(pcs), dtype=ROW_DTYPE)
        out["pc"] = pcs
        for col, name in enumerate(("cfa_type", "cfa_offset", "rbp_type", "rbp_offset")):
            out[name] = rules[:, col][rids]
        return out


def rows_from_cfi(sources: list[tuple[CfiSection, str, HdrTable | None]],
                  ) -> tuple[np.ndarray, dict[str, int]]:
    """Compact rows (a ROW_DTYPE array) of every FDE, sorted, gaps filled with CFA_NONE, runs merged.
    Where FDEs of two sources start at the same pc, the first source's wins.

    Raises _Above4GiB when some FDE covers code past the u32 pc range."""
    rows = _Rows()
    for prio, (cfi, _, table) in enumerate(reversed(sources)):
        rows.add(cfi, table, prio)
    rows.programs.clear()  # only needed while adding: free it before compaction's peak
    out = rows.compact()
    stats = dict(rows.stats)
    stats["rows"] = len(out)
    stats["unsupported_rows"] = int(np.count_nonzero(out["cfa_type"] == CFA_UNSUPPORTED))
    return out, stats


def build_table(path: str | bytes) -> UnwindTable:
    """The unwind table of the ELF file at `path`, or of an ELF image given as bytes (the vDSO,
    read from a process's memory: it has no file; identity is None then).

    A table with no rows (and a `reason`) for a binary the unwinder should walk with frame pointers:
    not x86_64, no CFI, or code above 4 GiB. Raises UnwindFormatError for malformed ELF or CFI.
    """
    name = "<ELF image>" if isinstance(path, bytes) else path
    with io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb") as f:
        identity = None if isinstance(path, bytes) else file_identity(os.fstat(f.fileno()))
        try:
            elf = ElfFile(f)
        except (ElfFormatError, struct.error) as e:
            raise UnwindFormatError(f"{name}: {e}") from e
        build_id = _build_id(elf)
        if elf.elfclass != 64 or elf.e_machine != EM_X86_64:
            return UnwindTable(b"", 0, "none", build_id, identity, reason="not an x86_64 ELF64 binary")
        try:
            found = find_cfi(elf)
            if not found:
                return UnwindTable(b"", 0, "none", build_id, identity, reason="no .eh_frame or .debug_frame")
            source = "+".join(name for _, name, _ in found)
            try:
                arr, stats = rows_from_cfi(found)
            except _Above4GiB:
                return UnwindTable(b"", 0, "none", build_id, identity, reason="code above 4 GiB")
        except UnwindFormatError:
            raise
        except CfiFormatError as e:
            raise UnwindFormatError(f"{name}: {e}") from e
        except (struct.error, IndexError, ElfFormatError) as e:
            raise UnwindFormatError(f"{name}: malformed CFI ({e})") from e
    return UnwindTable(arr.tobytes(), len(arr), source, build_id, identity, stats=stats)
