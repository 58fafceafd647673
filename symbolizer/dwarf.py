"""DWARF: ELF virtual address -> file:line and inlined frames, decoded lazily one compile unit at a time.

A big binary has hundreds of compile units (libpython3.11: 159 CUs, 9 MB of .debug_info, 620k line
rows) and a profile touches few of them, so nothing is decoded up front:

1. *Which CU holds the address*: .debug_aranges (one small table, read once). When it is absent,
   or does not cover a CU (partial aranges: some toolchains omit CUs), the CU headers are scanned
   once, lazily, on the first address aranges do not answer, reading each uncovered CU's top DIE
   only (DW_AT_low_pc/high_pc or DW_AT_ranges). Never every DIE of the binary.
2. *That CU, decoded once* into flat arrays (`CuIndex`): its line table rows, and its functions
   and inlined subroutines flattened into disjoint address segments, each pointing at the
   innermost scope that covers it (scopes point at their callers). Types and variables are
   skipped through DW_AT_sibling, so only the DIEs of code are parsed.
3. *Lookup* is two bisects plus a walk up the inline chain, innermost first, as `addr2line -i`
   prints: the innermost frame gets the line table's file:line, each outer frame the
   DW_AT_call_file:DW_AT_call_line of the inline below it.

Decoded CUs are kept in a bounded LRU (weighted by rows) and can be persisted per build id
(`symbolizer.diskcache`), so a restarted agent loads them instead of decoding again.
Names follow binutils: DW_AT_linkage_name (mangled; demangled by the caller) when present,
found through DW_AT_abstract_origin / DW_AT_specification, else DW_AT_name.
"""

from __future__ import annotations

import heapq
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from symbolizer import dwarfread as dr
from symbolizer.cache import LRU

# DW_LANG values whose DW_AT_name is the linkage name (C and assembly: no mangling)
_C_LANGS = {0x1, 0x2, 0xC, 0x1D, 0x2C, 0x8001}  # C89, C, C99, C11, C17, Mips_Assembler

_FORMAT = 1  # bump when CuIndex's persisted layout changes

_DESCEND_CONTAINERS = {dr.TAG_namespace, dr.TAG_module}  # may hold function definitions
_DESCEND_IN_CODE = {dr.TAG_lexical_block, dr.TAG_try_block, dr.TAG_catch_block}
_SECTIONS = {".debug_info": "info", ".debug_abbrev": "abbrev", ".debug_line": "line", ".debug_str": "str",
             ".debug_line_str": "line_str", ".debug_str_offsets": "str_offsets", ".debug_addr": "addr",
             ".debug_ranges": "ranges", ".debug_rnglists": "rnglists", ".debug_aranges": "aranges"}
_WANT_SCOPE = frozenset({dr.AT_sibling, dr.AT_name, dr.AT_low_pc, dr.AT_high_pc, dr.AT_ranges, dr.AT_call_file,
                         dr.AT_call_line, dr.AT_linkage_name, dr.AT_MIPS_linkage_name, dr.AT_abstract_origin,
                         dr.AT_specification})
_WANT_SIBLING = frozenset({dr.AT_sibling})
_WANT_NAME = frozenset({dr.AT_name, dr.AT_linkage_name, dr.AT_MIPS_linkage_name, dr.AT_abstract_origin,
                        dr.AT_specification})
_DWARF_ERRORS = (dr.FormatError, IndexError, KeyError, ValueError, struct.error)


class DwarfError(Exception):
    """The DWARF of a binary could not be decoded (corrupt, unsupported)."""


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame of an inline chain: the name as DWARF has it (mangled when it is a linkage name)."""

    name: str | None
    linkage: bool  # name is a linkage name (demangle it), or a C name
    file: str | None
    line: int | None
    low: int  # start of the first range of the function or inline instance


class CuIndex:
    """One compile unit, flattened for bisect lookups and for pickling to the disk cache."""

    __slots__ = ("files", "row_addr", "row_file", "row_line", "scope_call_file", "scope_call_line",
                 "scope_linkage", "scope_low", "scope_name", "scope_parent", "seg_scope", "seg_start")

    def __init__(self) -> None:
        self.files: list[str] = []
        self.row_addr = array("Q")
        self.row_file = array("i")
        self.row_line = array("i")  # -1: end of a sequence (no line there)
        self.seg_start = array("Q")
        self.seg_scope = array("i")  # -1: no function there
        self.scope_parent = array("i")
        self.scope_name: list[str | None] = []
        self.scope_linkage = array("b")
        self.scope_call_file = array("i")  # index into files, -1 unknown
        self.scope_call_line = array("i")
        self.scope_low = array("Q")

    def weight(self) -> int:
        return len(self.row_addr) + len(self.seg_start) + len(self.scope_parent) + 1

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for s, v in zip(self.__slots__, state, strict=True):
            setattr(self, s, v)

    def line_at(self, address: int) -> tuple[str | None, int | None]:
        i = bisect_right(self.row_addr, address) - 1
        if i < 0 or self.row_line[i] < 0:
            return None, None
        f = self.row_file[i]
        return (self.files[f] if f >= 0 else None), self.row_line[i]

    def lookup(self, address: int) -> list[RawFrame]:
        """Frames at `address`, innermost first; [] when no function covers it (the line may still be
        known: `line_at`)."""
        file, line = self.line_at(address)
        j = bisect_right(self.seg_start, address) - 1
        s = self.seg_scope[j] if j >= 0 else -1
        out: list[RawFrame] = []
        while s >= 0:
            out.append(RawFrame(self.scope_name[s], bool(self.scope_linkage[s]), file, line, self.scope_low[s]))
            cf = self.scope_call_file[s]
            file = self.files[cf] if cf >= 0 else None
            line = self.scope_call_line[s] or None
            s = self.scope_parent[s]
        return out


def read_sections(path: str) -> dr.Sections:
    """The DWARF sections of an ELF file (decompressed), or DwarfError when it has no .debug_info."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            s = dr.Sections(little=elf.little_endian)
            for sec in elf.iter_sections():
                attr = _SECTIONS.get(sec.name)
                if attr is not None and sec["sh_type"] != "SHT_NOBITS":
                    setattr(s, attr, bytes(sec.data()))
    except (OSError, ELFError, struct.error, ValueError) as e:
        raise DwarfError(f"{path}: {e}") from e
    if not s.info or not s.abbrev:
        raise DwarfError(f"{path}: no DWARF")
    return s


def has_dwarf(path: str) -> bool:
    """Cheap: does the file have a (non-empty) .debug_info section?"""
    try:
        with open(path, "rb") as f:
            sec = ELFFile(f).get_section_by_name(".debug_info")
            return sec is not None and sec["sh_type"] != "SHT_NOBITS" and sec["sh_size"] > 0
    except (OSError, ELFError, struct.error, ValueError):
        return False


class DwarfInfo:
    """The DWARF of one ELF file (the binary itself or its separate debug file).

    Section bytes are read on the first decode, not before: with a warm disk cache a restarted
    agent never reads them. `load_cu`/`store_cu` plug in that persistent cache by CU offset;
    `cu_table` is a persisted CU address table, so a restart need not read aranges either.
    """

    def __init__(self, path: str, *, max_cus: int = 256, max_weight: int = 4_000_000,
                 load_cu: Callable[[int], CuIndex | None] | None = None,
                 store_cu: Callable[[int, CuIndex], None] | None = None,
                 cu_table: tuple[list[tuple[int, int, int]], bool] | None = None,
                 store_table: Callable[[tuple[list[tuple[int, int, int]], bool]], None] | None = None) -> None:
        self.path = path
        self._store_table = store_table
        self._reader: dr.Reader | None = None
        self._cus: LRU[CuIndex] = LRU(max_cus, max_weight, weigh=CuIndex.weight)
        self._load_cu = load_cu
        self._store_cu = store_cu
        self._cu_starts = array("Q")
        self._cu_ends = array("Q")
        self._cu_offsets = array("Q")
        self._complete = False  # every CU's ranges are in the table
        self._covered: set[int] = set()
        self.stats = {"cus_decoded": 0, "cus_loaded": 0, "cu_scans": 0}
        if cu_table is not None:
            self._set_cu_table(*cu_table)
        else:
            self._read_aranges()
            if store_table is not None:
                store_table(self.cu_table())

    def reader(self) -> dr.Reader:
        if self._reader is None:
            self._reader = dr.Reader(read_sections(self.path))
        return self._reader

    def release(self) -> None:
        """Drop the section bytes (decoded CUs stay): they are read again on the next decode."""
        self._reader = None

    # -- CU address table ----------------------------------------------------------------------

    def cu_table(self) -> tuple[list[tuple[int, int, int]], bool]:
        return list(zip(self._cu_starts, self._cu_ends, self._cu_offsets, strict=True)), self._complete

    def _set_cu_table(self, ranges: list[tuple[int, int, int]], complete: bool) -> None:
        ranges = sorted(r for r in ranges if r[1] > r[0])
        self._cu_starts = array("Q", [r[0] for r in ranges])
        self._cu_ends = array("Q", [r[1] for r in ranges])
        self._cu_offsets = array("Q", [r[2] for r in ranges])
        self._covered = {r[2] for r in ranges}
        self._complete = complete

    def _read_aranges(self) -> None:
        try:
            ranges = self.reader().aranges()
        except _DWARF_ERRORS:
            ranges = None  # corrupt aranges: the CU scan answers
        if ranges:
            self._set_cu_table(ranges, False)

    def _scan_cus(self) -> None:
        """Fallback: read the top DIE of every CU aranges did not list (once)."""
        self.stats["cu_scans"] += 1
        ranges = list(zip(self._cu_starts, self._cu_ends, self._cu_offsets, strict=True))
        r = self.reader()
        try:
            for off in r.unit_offsets():
                if off in self._covered:
                    continue
                u = r.unit_at(off)
                code, _ = dr.uleb(r.s.info, u.die_offset)
                if not code or u.abbrevs[code].tag not in (dr.TAG_compile_unit, dr.TAG_partial_unit):
                    continue
                rs = r.die_ranges(u, u.top, dr.high_pc_is_length(u.abbrevs[code]))
                ranges.extend((lo, hi, off) for lo, hi in rs)
        except _DWARF_ERRORS:
            pass  # keep what was read; a corrupt tail only loses its CUs
        self._set_cu_table(ranges, True)
        if self._store_table is not None:
            self._store_table(self.cu_table())

    def _cu_for(self, address: int) -> int | None:
        for _ in range(2):
            i = bisect_right(self._cu_starts, address) - 1
            # CU ranges are disjoint in practice; look back a little in case some nest
            for k in range(i, max(-1, i - 8), -1):
                if self._cu_starts[k] <= address < self._cu_ends[k]:
                    return self._cu_offsets[k]
            if self._complete:
                return None
            self._scan_cus()
        return None

    # -- lookup ------------------------------------------------------------------------------

    def lookup(self, address: int) -> tuple[list[RawFrame], tuple[str | None, int | None]] | None:
        """(inline chain innermost first, file:line at the address), or None when no CU covers it."""
        off = self._cu_for(address)
        if off is None:
            return None
        idx = self.cu(off)
        return idx.lookup(address), idx.line_at(address)

    def cu(self, offset: int) -> CuIndex:
        idx = self._cus.get(offset)
        if idx is None:
            idx = self._load_cu(offset) if self._load_cu else None
            if idx is not None:
                self.stats["cus_loaded"] += 1
            else:
                try:
                    idx = _decode_cu(self.reader(), offset)
                except _DWARF_ERRORS as e:
                    raise DwarfError(f"{self.path}: CU at {offset:#x}: {e}") from e
                self.stats["cus_decoded"] += 1
                if self._store_cu:
                    self._store_cu(offset, idx)
            self._cus.put(offset, idx)
        return idx


# -- decoding one CU -------------------------------------------------------------------------

class _Names:
    """Function names through DW_AT_abstract_origin / DW_AT_specification, memoized per DIE offset.
    As binutils: a linkage name anywhere on the chain wins; else the first DW_AT_name, which counts
    as a linkage name in C (no mangling)."""

    def __init__(self, r: dr.Reader, c_lang: bool) -> None:
        self.r = r
        self.c_lang = c_lang
        self.memo: dict[int, tuple[str | None, bool]] = {}

    def of(self, offset: int, a: dict[int, object]) -> tuple[str | None, bool]:
        got = self.memo.get(offset)
        if got is not None:
            return got
        name: str | None = None
        linkage = False
        seen = {offset}
        for _ in range(8):
            ln = a.get(dr.AT_linkage_name) or a.get(dr.AT_MIPS_linkage_name)
            if isinstance(ln, str) and ln:
                name, linkage = ln, True
                break
            if name is None and isinstance(a.get(dr.AT_name), str):
                name = a[dr.AT_name]  # type: ignore[assignment]
            ref = a.get(dr.AT_abstract_origin) or a.get(dr.AT_specification)
            if not isinstance(ref, tuple) or ref[1] in seen:
                break
            seen.add(ref[1])
            try:
                _, a = self.r.die_attrs(ref[1], _WANT_NAME)
            except _DWARF_ERRORS:
                break
        if not linkage and self.c_lang:
            linkage = name is not None
        self.memo[offset] = (name, linkage)
        return name, linkage


def _decode_cu(r: dr.Reader, offset: int) -> CuIndex:
    idx = CuIndex()
    u = r.unit_at(offset)
    top = u.top
    comp_dir = top.get(dr.AT_comp_dir)
    comp_dir = comp_dir if isinstance(comp_dir, str) else None
    lang = top.get(dr.AT_language, 0)
    first = 1
    stmt = top.get(dr.AT_stmt_list)
    if isinstance(stmt, int) and stmt < len(r.s.line):
        lt = dr.line_table(r, u, stmt, comp_dir)
        idx.files, first = lt.files, lt.first
        rows = lt.rows
        rows.sort()  # at one address: an end of sequence before the next start; of rows, the last wins
        idx.row_addr = array("Q", [x[0] for x in rows])
        idx.row_file = array("i", [x[3] for x in rows])
        idx.row_line = array("i", [x[4] for x in rows])
    names = _Names(r, lang in _C_LANGS)
    ranges: list[tuple[int, int, int, int]] = []  # (low, high, depth, scope)
    data = r.s.info
    abbrevs = u.abbrevs
    nfiles = len(idx.files)
    length_forms: dict[int, bool] = {}

    def add_scope(off: int, a: dict[int, object], parent: int, depth: int, rs: list[tuple[int, int]]) -> int:
        s = len(idx.scope_parent)
        name, linkage = names.of(off, a)
        cf = a.get(dr.AT_call_file)
        cf = cf - first if isinstance(cf, int) else -1
        idx.scope_parent.append(parent)
        idx.scope_name.append(name)
        idx.scope_linkage.append(1 if linkage else 0)
        idx.scope_call_file.append(cf if 0 <= cf < nfiles else -1)
        cl = a.get(dr.AT_call_line)
        idx.scope_call_line.append(cl if isinstance(cl, int) and 0 <= cl < 1 << 31 else 0)
        idx.scope_low.append(rs[0][0])  # the first range, as binutils' arange.low (a .cold part may sort first)
        ranges.extend((lo, hi, depth, s) for lo, hi in rs)
        return s

    # iterative walk over the children of the unit DIE: (position of next sibling DIE, scope, depth)
    code, pos = dr.uleb(data, u.die_offset)
    if code and abbrevs[code].children:
        _, pos = r.attrs(u, pos, abbrevs[code], _WANT_SIBLING)
        stack = [(-1, 0)]  # (scope, depth) of the DIE whose children are being read
        end = u.end
        while stack and pos < end:
            die_off = pos
            code, pos = dr.uleb(data, pos)
            if code == 0:
                stack.pop()
                continue
            ab = abbrevs[code]
            tag = ab.tag
            scope, depth = stack[-1]
            if tag == dr.TAG_subprogram or tag == dr.TAG_inlined_subroutine:
                a, pos = r.attrs(u, pos, ab, _WANT_SCOPE)
                hl = length_forms.get(code)
                if hl is None:
                    hl = length_forms[code] = dr.high_pc_is_length(ab)
                rs = r.die_ranges(u, a, hl)
                if rs:
                    if tag == dr.TAG_subprogram:  # a nested function is its own root, drawn above its host
                        d = depth + 1 if scope >= 0 else 0
                        s = add_scope(die_off, a, -1, d, rs)
                    else:
                        d = depth + 1
                        s = add_scope(die_off, a, scope, d, rs)
                    if ab.children:
                        stack.append((s, d))
                    continue
            elif ab.children and (tag in _DESCEND_CONTAINERS or (scope >= 0 and tag in _DESCEND_IN_CODE)):
                _, pos = r.attrs(u, pos, ab, _WANT_SIBLING)
                stack.append((scope, depth))
                continue
            else:
                a, pos = r.attrs(u, pos, ab, _WANT_SIBLING)
            if ab.children:  # skip the subtree: by DW_AT_sibling when given, else by reading it
                sib = a.get(dr.AT_sibling)
                pos = sib[1] if isinstance(sib, tuple) and sib[1] > die_off else _skip_children(r, u, pos)
    _flatten(ranges, idx)
    return idx


def _skip_children(r: dr.Reader, u: dr.Unit, pos: int) -> int:
    data = r.s.info
    level = 1
    while level and pos < u.end:
        code, pos = dr.uleb(data, pos)
        if code == 0:
            level -= 1
            continue
        ab = u.abbrevs[code]
        _, pos = r.attrs(u, pos, ab, _WANT_SIBLING)
        if ab.children:
            level += 1
    return pos


def _flatten(ranges: list[tuple[int, int, int, int]], idx: CuIndex) -> None:
    """Disjoint segments, each owned by the deepest scope covering it (ties: the smallest range)."""
    if not ranges:
        return
    ranges.sort()
    bounds = sorted({r[0] for r in ranges} | {r[1] for r in ranges})
    active: list[tuple[int, int, int, int]] = []  # heap of (-depth, size, high, scope)
    i = 0
    n = len(ranges)
    starts, scopes = idx.seg_start, idx.seg_scope
    for b in bounds:
        while i < n and ranges[i][0] == b:
            lo, hi, depth, s = ranges[i]
            heapq.heappush(active, (-depth, hi - lo, hi, s))
            i += 1
        while active and active[0][2] <= b:
            heapq.heappop(active)
        s = active[0][3] if active else -1
        if s < 0 and active:
            s = -1
        if scopes and scopes[-1] == s:
            continue
        starts.append(b)
        scopes.append(s)
