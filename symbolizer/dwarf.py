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
(`symbolizer.diskcache`), so a restarted agent loads them instead of decoding again. What is
persisted depends on the CU's size: a small CU is decoded completely and stored whole (one file,
cheap to decode); a CU of `lazy_cu_bytes` of .debug_info or more (libpython's: up to 920 KiB; from
~50 KiB a complete decode costs 1-9x one function's) is stored as its functions' address ranges
(`CuFunctions`) and each function as it is first asked for (`FnIndex`: its inline tree and the line
rows of its ranges), so neither a first meeting nor a restart decodes functions no sample reached.
Once the functions a process decoded so reach `WHOLE_SHARE` of a big CU's code (at least
`WHOLE_MIN_FNS` of them), or an address between its functions needs its whole code, the CU is decoded
whole (splicing in the functions already read) and stored as one entry in place of its functions':
a profile spread over many functions of one CU pays one decode and a restart reads one file.
Names follow binutils: DW_AT_linkage_name (mangled; demangled by the caller) when present,
found through DW_AT_abstract_origin / DW_AT_specification, else DW_AT_name.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import NamedTuple

from podflame.errors import BinaryFormatError
from symbolizer import dwarfread as dr
from symbolizer import libdw
from symbolizer.cache import LRU
from symbolizer.elffile import SHT_NOBITS, ElfFile

# DW_LANG values whose DW_AT_name is the linkage name (C and assembly: no mangling)
_C_LANGS = {0x1, 0x2, 0xC, 0x1D, 0x2C, 0x8001}  # C89, C, C99, C11, C17, Mips_Assembler

_LANG_GO = 0x16
_FORMAT = 3  # bump when the persisted layout changes (CuIndex, CuFunctions, FnIndex, Code)
_GAP = 1 << 63  # CuFunctions.fn_die of a gap between functions (| its start): no DIE offset is this big
LAZY_CU_BYTES = 48 << 10  # .debug_info of a CU from which functions are persisted one by one (docs/benchmarks.md)
# share of a big CU's function code bytes decoded one by one in a process past which the CU is decoded whole
# and stored as one entry instead, once at least WHOLE_MIN_FNS functions were (docs/benchmarks.md, stop 20 dw10)
WHOLE_SHARE = 0.4
WHOLE_MIN_FNS = 8

_DESCEND_CONTAINERS = {dr.TAG_namespace, dr.TAG_module}  # may hold function definitions
_DESCEND_IN_CODE = {dr.TAG_lexical_block, dr.TAG_try_block, dr.TAG_catch_block}
_SECTIONS = {".debug_info": "info", ".debug_abbrev": "abbrev", ".debug_line": "line", ".debug_str": "str",
             ".debug_line_str": "line_str", ".debug_str_offsets": "str_offsets", ".debug_addr": "addr",
             ".debug_ranges": "ranges", ".debug_rnglists": "rnglists", ".debug_aranges": "aranges"}
_WANT_SCOPE = frozenset({dr.AT_sibling, dr.AT_name, dr.AT_low_pc, dr.AT_high_pc, dr.AT_ranges, dr.AT_call_file,
                         dr.AT_call_line, dr.AT_linkage_name, dr.AT_MIPS_linkage_name, dr.AT_abstract_origin,
                         dr.AT_specification})
_WANT_SIBLING = frozenset({dr.AT_sibling})
_WANT_FN = frozenset({dr.AT_sibling, dr.AT_low_pc, dr.AT_high_pc, dr.AT_ranges})
_WANT_NAME = frozenset({dr.AT_name, dr.AT_linkage_name, dr.AT_MIPS_linkage_name, dr.AT_abstract_origin,
                        dr.AT_specification})
_DWARF_ERRORS = (dr.FormatError, IndexError, KeyError, ValueError, struct.error)


class DwarfError(BinaryFormatError):
    """The DWARF of a binary could not be decoded (corrupt, unsupported)."""


class RawFrame(NamedTuple):
    """One frame of an inline chain: the name as DWARF has it (mangled when it is a linkage name)."""

    name: str | None
    linkage: bool  # name is a linkage name (demangle it), or a C name
    file: str | None
    line: int | None
    low: int  # start of the first range of the function or inline instance


class Code:
    """Functions and inlined subroutines (of a whole CU, or of one function) flattened into disjoint
    address segments, each owned by the innermost scope covering it; scopes point at their callers."""

    __slots__ = ("scope_call_file", "scope_call_line", "scope_linkage", "scope_low", "scope_name", "scope_parent",
                 "seg_scope", "seg_start")

    def __init__(self) -> None:
        self.seg_start = array("Q")
        self.seg_scope = array("i")  # -1: no function there
        self.scope_parent = array("i")
        self.scope_name: list[str | None] = []
        self.scope_linkage = array("b")
        self.scope_call_file = array("i")  # index into the CU's files, -1 unknown
        self.scope_call_line = array("i")
        self.scope_low = array("Q")

    def weight(self) -> int:
        return len(self.seg_start) + len(self.scope_parent)

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for s, v in zip(self.__slots__, state, strict=True):
            setattr(self, s, v)

    def within(self, lo: int, hi: int) -> Code:
        """The segments of [lo, hi) and the scopes they reach (through their callers), renumbered:
        what `frames` answers there, alone."""
        out = Code()
        j = max(0, bisect_right(self.seg_start, lo) - 1)
        new: dict[int, int] = {-1: -1}

        def keep(s: int) -> int:
            chain = []
            while s not in new:
                chain.append(s)
                s = self.scope_parent[s]
            for t in reversed(chain):
                new[t] = len(out.scope_parent)
                out.scope_parent.append(new[self.scope_parent[t]])
                out.scope_name.append(self.scope_name[t])
                out.scope_linkage.append(self.scope_linkage[t])
                out.scope_call_file.append(self.scope_call_file[t])
                out.scope_call_line.append(self.scope_call_line[t])
                out.scope_low.append(self.scope_low[t])
            return new[chain[0]] if chain else new[s]

        while j < len(self.seg_start) and self.seg_start[j] < hi:
            out.seg_start.append(max(self.seg_start[j], lo))
            out.seg_scope.append(keep(self.seg_scope[j]))
            j += 1
        out.seg_start.append(hi)
        out.seg_scope.append(-1)
        return out

    def frames(self, address: int, file: str | None, line: int | None, files: list[str]) -> list[RawFrame]:
        """The inline chain at `address`, innermost first: the innermost frame gets the line table's
        file:line, each outer frame the call site of the inline below it."""
        j = bisect_right(self.seg_start, address) - 1
        s = self.seg_scope[j] if j >= 0 else -1
        out: list[RawFrame] = []
        while s >= 0:
            out.append(RawFrame(self.scope_name[s], bool(self.scope_linkage[s]), file, line, self.scope_low[s]))
            cf = self.scope_call_file[s]
            file = files[cf] if cf >= 0 else None
            line = self.scope_call_line[s] or None
            s = self.scope_parent[s]
        return out


class CuIndex:
    """One compile unit: its line table, and its code either complete (`code`: what the disk cache
    stores) or decoded one function at a time (`fn_*` from a scan of the CU's top-level DIEs, and
    `fns` by DIE offset), which is what a cold lookup of a few addresses needs."""

    __slots__ = ("_decoder", "code", "files", "fn_die", "fn_end", "fn_start", "fns", "lines", "row_addr", "row_file",
                 "row_line")

    def __init__(self) -> None:
        self.files: list[str] = []
        self.row_addr = array("Q")
        self.row_file = array("q")
        self.row_line = array("q")  # -1: end of a sequence (no line there)
        # a line program run as far as lookups needed (until done), or libdw's decoded table
        self.lines: dr.LineTable | libdw.LibdwLines | None = None
        self.code: Code | None = None
        self.fn_start = array("Q")
        self.fn_end = array("Q")
        self.fn_die = array("Q")
        self.fns: dict[int, Code] = {}
        self._decoder: _CuDecoder | None = None

    def weight(self) -> int:
        code = self.code.weight() if self.code is not None else 2 * len(self.fn_start)
        rows = self.lines.size if self.lines is not None else len(self.row_addr)
        return rows + code + 1

    def __getstate__(self) -> tuple:
        if self.code is None or self.lines is not None:
            raise ValueError("only a completely decoded CU is persisted")
        return self.files, self.row_addr, self.row_file, self.row_line, self.code

    def __setstate__(self, state: tuple) -> None:
        self.__init__()  # type: ignore[misc]  # unpickling: empty fields, then the state
        self.files, self.row_addr, self.row_file, self.row_line, self.code = state

    def line_at(self, address: int) -> tuple[str | None, int | None]:
        lt = self.lines
        if lt is not None:
            got = lt.find(address)
            if lt.addr is not None:  # the program ran to its end: keep only its rows
                assert lt.file is not None and lt.line is not None  # set with lt.addr
                self.row_addr, self.row_file, self.row_line = lt.addr, lt.file, lt.line
                self.lines = None
            if got is None or got[1] < 0:
                return None, None
            return (self.files[got[0]] if got[0] >= 0 else None), got[1]
        i = bisect_right(self.row_addr, address) - 1
        if i < 0 or self.row_line[i] < 0:
            return None, None
        f = self.row_file[i]
        return (self.files[f] if f >= 0 else None), self.row_line[i]

    def lookup(self, address: int) -> list[RawFrame]:
        """Frames at `address`, innermost first; [] when no function covers it (the line may still be
        known: `line_at`)."""
        file, line = self.line_at(address)
        return self.code_at(address).frames(address, file, line, self.files)

    def code_at(self, address: int) -> Code:
        code = self.code
        if code is not None:
            return code
        i = bisect_right(self.fn_start, address) - 1
        if i >= 0 and address < self.fn_end[i]:
            die = self.fn_die[i]
            code = self.fns.get(die)
            if code is None:
                code = self.fns[die] = self._decoder.code(die)  # type: ignore[union-attr]  # None only once complete
            return code
        # no top-level function here: a nested function's code, or none; the whole CU says which
        self.code = code = self._decoder.code(None)  # type: ignore[union-attr]
        self.fns.clear()
        self._decoder = None
        return code


class FnIndex:
    """One function of a big CU, decoded alone: its scopes (`code`) and the line rows of its ranges,
    with the file names both use (only those: an entry stands alone in the disk cache)."""

    __slots__ = ("code", "files", "row_addr", "row_file", "row_line")

    def __init__(self, code: Code, files: list[str], row_addr: array, row_file: array, row_line: array) -> None:
        self.code, self.files = code, files
        self.row_addr, self.row_file, self.row_line = row_addr, row_file, row_line

    @classmethod
    def build(cls, code: Code, cu_files: list[str], rows: tuple[array, array, array]) -> FnIndex:
        """From a function's `Code` and rows whose file indexes are the CU's: both renumbered into
        the entry's own list of names."""
        local: dict[int, int] = {}
        files: list[str] = []

        def own(f: int) -> int:
            if f < 0 or f >= len(cu_files):
                return -1
            k = local.get(f)
            if k is None:
                k = local[f] = len(files)
                files.append(cu_files[f])
            return k

        row_addr, row_file, row_line = rows
        code.scope_call_file = array("i", [own(f) for f in code.scope_call_file])
        return cls(code, files, row_addr, array("q", [own(f) for f in row_file]), row_line)

    def weight(self) -> int:
        return self.code.weight() + len(self.row_addr) + 1

    def __getstate__(self) -> tuple:
        return self.code, self.files, self.row_addr, self.row_file, self.row_line

    def __setstate__(self, state: tuple) -> None:
        self.code, self.files, self.row_addr, self.row_file, self.row_line = state

    def lookup(self, address: int) -> tuple[list[RawFrame], tuple[str | None, int | None]]:
        i = bisect_right(self.row_addr, address) - 1
        file: str | None = None
        line: int | None = None
        if i >= 0 and self.row_line[i] >= 0:
            f = self.row_file[i]
            file, line = (self.files[f] if f >= 0 else None), self.row_line[i]
        return self.code.frames(address, file, line, self.files), (file, line)


class CuFunctions:
    """A big CU as the disk cache keeps it: the address ranges of its top-level functions (by DIE
    offset), each function persisted on its own (`FnIndex`) as lookups reach it. While sections are
    read, `decoder` and `lines` decode the functions not yet persisted."""

    __slots__ = ("_code_bytes", "decoded", "decoder", "files", "fn_die", "fn_end", "fn_start", "lines", "spent",
                 "whole")

    def __init__(self, fns: list[tuple[int, int, int]] | None = None) -> None:
        fns = fns or []
        self.fn_start = array("Q", [f[0] for f in fns])
        self.fn_end = array("Q", [f[1] for f in fns])
        self.fn_die = array("Q", [f[2] for f in fns])
        self.decoder: _CuDecoder | None = None
        self.lines: dr.LineTable | libdw.LibdwLines | None = None
        self.files: list[str] = []
        self.whole: Code | None = None  # every scope of the CU, once an address between functions needed it
        self.spent = 0  # code bytes of the functions this process decoded (not loaded): see DwarfInfo's whole_share
        self.decoded = 0  # and how many
        self._code_bytes = -1

    def weight(self) -> int:
        return 3 * len(self.fn_start) + 1

    def __getstate__(self) -> tuple:
        return self.fn_start, self.fn_end, self.fn_die

    def __setstate__(self, state: tuple) -> None:
        self.__init__()  # type: ignore[misc]  # unpickling: empty fields, then the state
        self.fn_start, self.fn_end, self.fn_die = state

    def function_at(self, address: int) -> int | None:
        """DIE offset of the top-level function whose ranges cover `address`, or None."""
        i = bisect_right(self.fn_start, address) - 1
        return self.fn_die[i] if i >= 0 and address < self.fn_end[i] else None

    def ranges_of(self, die: int) -> list[tuple[int, int]]:
        return [(self.fn_start[i], self.fn_end[i]) for i, d in enumerate(self.fn_die) if d == die]

    def code_bytes(self) -> int:
        """Bytes of machine code of the CU's functions (gaps between them left out)."""
        if self._code_bytes < 0:
            self._code_bytes = sum(e - s for s, e, d in zip(self.fn_start, self.fn_end, self.fn_die, strict=True)
                                   if d < _GAP)
        return self._code_bytes

    def forget_sections(self) -> None:
        self.decoder = self.lines = self.whole = None
        self.files = []


def read_sections(path: str) -> dr.Sections:
    """The DWARF sections of an ELF file (decompressed), or DwarfError when it has no .debug_info."""
    try:
        with open(path, "rb") as f:
            elf = ElfFile(f)
            s = dr.Sections(little=elf.little_endian)
            for sec in elf.sections:
                attr = _SECTIONS.get(sec.name) or _SECTIONS.get(sec.name.replace(".zdebug", ".debug", 1))
                if attr is not None and sec.type != SHT_NOBITS:
                    setattr(s, attr, elf.data(sec))
    except (OSError, struct.error, ValueError) as e:
        raise DwarfError(f"{path}: {e}") from e
    if not s.info or not s.abbrev:
        raise DwarfError(f"{path}: no DWARF")
    return s


def has_dwarf(path: str) -> bool:
    """Cheap: does the file have a (non-empty) .debug_info section?"""
    try:
        with open(path, "rb") as f:
            elf = ElfFile(f)
    except (OSError, struct.error, ValueError):
        return False
    sec = elf.section(".debug_info") or elf.section(".zdebug_info")
    return sec is not None and sec.type != SHT_NOBITS and sec.size > 0


def dwarf_digest(path: str) -> str | None:
    """A disk cache key for the DWARF of a file without a build id (Go's linker writes none): a hash
    of its ELF header fields, its section headers and the bytes, as stored, of every section the
    decoder reads. Never a path or an inode (both are reused by other files); unlike the symbol
    tables' digest (`ElfSymbols.table_digest`), which a rebuild that moved only line numbers keeps.
    None when the file cannot be read."""
    h = hashlib.sha256(b"podflame-dwarf-v1")
    try:
        with open(path, "rb") as f:
            elf = ElfFile(f)
            h.update(repr((elf.elfclass, elf.little_endian, elf.e_machine, elf.sections)).encode())
            for sec in elf.sections:
                if sec.type != SHT_NOBITS and (sec.name in _SECTIONS or sec.name.replace(".zdebug", ".debug", 1)
                                               in _SECTIONS):
                    f.seek(sec.offset)
                    h.update(f.read(sec.size))
    except (OSError, struct.error, ValueError):
        return None
    return "d0ef" + h.hexdigest()[:60]  # hex, as a build id (the cache's directory name)


class DwarfInfo:
    """The DWARF of one ELF file (the binary itself or its separate debug file).

    Section bytes are read on the first decode, not before: with a warm disk cache a restarted
    agent never reads them. `load_cu`/`store_cu` plug in that persistent cache by CU offset (a
    `CuIndex`, or a `CuFunctions` for a CU of `lazy_cu_bytes` or more), `load_fn`/`store_fn` by CU
    offset and function DIE offset (a `FnIndex`); `cu_table` is a persisted CU address table, so a
    restart need not read aranges either. Without `store_fn` every CU to persist is stored whole.

    Line tables: a CU decoded for a few lookups (no disk cache to fill) has its line table from
    libdw (symbolizer.libdw: decoded in C, ~0.1 s less for a sampled profile of libpython) unless
    `use_libdw` is False or libdw is unavailable; then, and for CUs decoded completely to be
    persisted, the Python line program runs (a complete CU needs its rows in Python arrays, which
    one ctypes call per row would make slower than decoding them in Python). libdw keeps the tables
    it decoded until closed, so past `max_weight // 4` rows it is closed and its CUs dropped
    (reopened on the next decode): libdw keeps every row (libpython: 620k, Python keeps the 214k that
    change the answer) at ~64 bytes (Python's: 24), so a quarter bounds it below the Python rows' worst.
    """

    def __init__(self, path: str, *, max_cus: int = 256, max_weight: int = 4_000_000,
                 load_cu: Callable[[int], CuIndex | CuFunctions | None] | None = None,
                 store_cu: Callable[[int, CuIndex | CuFunctions], None] | None = None,
                 cu_table: tuple[list[tuple[int, int, int]], bool] | None = None,
                 store_table: Callable[[tuple[list[tuple[int, int, int]], bool]], None] | None = None,
                 load_fn: Callable[[int, int], FnIndex | None] | None = None,
                 store_fn: Callable[[int, int, FnIndex], None] | None = None,
                 drop_fns: Callable[[int], None] | None = None,
                 lazy_cu_bytes: int = LAZY_CU_BYTES, whole_share: float | None = WHOLE_SHARE,
                 whole_min_fns: int = WHOLE_MIN_FNS, use_libdw: bool | None = None) -> None:
        self.path = path
        self._use_libdw = libdw.enabled() if use_libdw is None else use_libdw
        self._libdw: libdw.LibdwFile | None = None
        self._max_libdw_rows = max_weight // 4
        self._store_table = store_table
        self._reader: dr.Reader | None = None
        self._cus: LRU[CuIndex | CuFunctions] = LRU(max_cus, max_weight, weigh=lambda idx: idx.weight())
        self._load_cu = load_cu
        self._store_cu = store_cu
        self._load_fn = load_fn
        self._store_fn = store_fn
        self._drop_fns = drop_fns
        self._lazy_cu_bytes = lazy_cu_bytes
        self._whole_share = whole_share
        self._whole_min_fns = whole_min_fns
        self._fns: LRU[FnIndex] = LRU(max_cus * 64, max_weight, weigh=FnIndex.weight)  # (CU, DIE) -> function
        self._cu_starts = array("Q")
        self._cu_ends = array("Q")
        self._cu_offsets = array("Q")
        self._complete = False  # every CU's ranges are in the table
        self._covered: set[int] = set()
        self.stats = {"cus_decoded": 0, "cus_loaded": 0, "cu_scans": 0, "libdw_line_tables": 0, "libdw_resets": 0,
                      "fns_decoded": 0, "fns_loaded": 0, "cus_made_whole": 0, "libdw_scans": 0}
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
        """Drop the section bytes and libdw (complete CUs stay): they are read again on the next decode."""
        self._reader = None
        for off, (idx, _) in list(self._cus._data.items()):
            if isinstance(idx, CuFunctions):
                idx.forget_sections()  # its functions' ranges stay; a function not yet decoded reads them again
            elif idx.code is None or idx.lines is not None:
                self._cus.pop(off)  # decodes lazily: holds the sections
        self._close_libdw()

    def _close_libdw(self) -> None:
        for off, (idx, _) in list(self._cus._data.items()):
            if isinstance(idx.lines, libdw.LibdwLines):
                if isinstance(idx, CuFunctions):
                    idx.forget_sections()
                else:
                    self._cus.pop(off)
        if self._libdw is not None:
            self._libdw.close()
            self._libdw = None

    def _libdw_lines(self, cu_die_offset: int, first: int, files: list[str]) -> libdw.LibdwLines | None:
        """libdw's line table of one CU, or None (not wanted, unavailable, or unreadable there)."""
        if self._libdw is None:
            if not self._use_libdw:
                return None
            self._libdw = libdw.open_lines(self.path)
            if self._libdw is None:
                self._use_libdw = False  # no libdw, or it cannot read this file: Python from now on
                return None
        lines = self._libdw.lines(cu_die_offset, first, files)
        if lines is not None:
            self.stats["libdw_line_tables"] += 1
        return lines

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
        try:
            if isinstance(idx, CuFunctions):
                die = idx.function_at(address)
                if die is None and self._whole_share is None:  # a nested function's code, or none
                    die = self._gap(off, idx, address)
                fn = self._function(off, idx, die) if die is not None else None
                if fn is not None:
                    return fn.lookup(address)
                idx = self._make_whole(off, idx)
            file, line = idx.line_at(address)
            return idx.code_at(address).frames(address, file, line, idx.files), (file, line)
        except _DWARF_ERRORS as e:
            raise DwarfError(f"{self.path}: CU at {off:#x}: {e}") from e

    def cu(self, offset: int) -> CuIndex | CuFunctions:
        idx = self._cus.get(offset)
        if idx is None:
            idx = self._load_cu(offset) if self._load_cu else None
            if idx is not None:
                self.stats["cus_loaded"] += 1
                self._cus.put(offset, idx)
            else:
                # with a disk cache to fill, the whole CU, or a big one's functions one by one; else
                # only the functions asked for
                idx = self._decode(offset, complete=self._store_cu is not None)
        return idx

    def _libdw_budget(self) -> None:
        if self._libdw is not None and self._libdw.rows > self._max_libdw_rows:
            self.stats["libdw_resets"] += 1
            self._close_libdw()  # frees every table libdw holds; it reopens on the next line

    def _decode(self, offset: int, *, complete: bool) -> CuIndex | CuFunctions:
        """Decode a CU (into the LRU, and into the disk cache when there is one): complete, or only
        the functions asked for; with a disk cache to fill, a big CU's functions one by one."""
        if not complete:
            self._libdw_budget()
        idx: CuIndex | CuFunctions | None = None
        try:
            r = self.reader()
            if complete and self._store_fn is not None and \
                    r.unit_at(offset).end - offset >= self._lazy_cu_bytes:
                idx = self._functions_of(offset)  # None when its functions overlap: then whole
            if idx is None:
                idx = _decode_cu(r, offset, complete=complete, libdw_lines=None if complete else self._libdw_lines)
        except _DWARF_ERRORS as e:
            raise DwarfError(f"{self.path}: CU at {offset:#x}: {e}") from e
        self.stats["cus_decoded"] += 1
        if self._store_cu:
            self._store_cu(offset, idx)
        self._cus.put(offset, idx)
        return idx

    def _functions_of(self, offset: int) -> CuFunctions | None:
        """A big CU's top-level functions, and a decoder for them (None: they overlap)."""
        dec = CuFunctions()
        self._attach(offset, dec)
        assert dec.decoder is not None
        # Go's compiler writes no DW_AT_sibling, so the Python scan reads every DIE of the CU: libdw
        # walks them in C (its line table for the CU is open already), the same functions
        # (tests/test_dwarf_persist.py). Elsewhere the Python scan jumps subtrees and costs ~1-3 ms.
        u = dec.decoder.u
        got = self._libdw.functions(u.die_offset) if self._libdw is not None and \
            u.top.get(dr.AT_language) == _LANG_GO else None
        if got is not None:
            self.stats["libdw_scans"] += 1
            fns = _disjoint(got)
        else:
            fns = dec.decoder.functions()
        if fns is None:
            return None
        idx = CuFunctions(fns)
        idx.decoder, idx.lines, idx.files = dec.decoder, dec.lines, dec.files
        return idx

    def _attach(self, offset: int, idx: CuFunctions) -> None:
        """Give a CuFunctions what decoding one of its functions needs: the unit, its line table
        (libdw's, else the Python program) and its file names."""
        self._libdw_budget()
        r = self.reader()
        u = r.unit_at(offset)
        first, lines = _line_table_of(r, u, complete=False, libdw_lines=self._libdw_lines)
        idx.files = lines.files if lines is not None else []
        idx.lines = lines
        idx.decoder = _CuDecoder(r, u, first, len(idx.files))
        if self._whole_share is not None and self._store_cu is not None:
            idx.decoder.kept = {}  # the functions it decodes are not read again if the CU is made whole

    def _gap(self, offset: int, idx: CuFunctions, address: int) -> int:
        """The address lies between the CU's top-level functions (a nested function, a lambda whose
        host was only inlined, or code DWARF does not describe): that whole gap becomes one more
        entry of the CU's functions, named `_GAP | its start`, stored like a function. Its code is
        cut from the CU's whole code (decoded once while the CU stays in memory)."""
        lo = max((e for e in idx.fn_end if e <= address), default=0)
        hi = min((s for s in idx.fn_start if s > address), default=_GAP)
        key = _GAP | lo
        i = bisect_right(idx.fn_start, lo)
        idx.fn_start.insert(i, lo)
        idx.fn_end.insert(i, hi)
        idx.fn_die.insert(i, key)
        if self._store_cu is not None:
            self._store_cu(offset, idx)
        return key

    def _whole_due(self, idx: CuFunctions, die: int) -> bool:
        """Is the CU to be decoded whole rather than this function of it? Yes for code between its
        functions (only the whole CU's scopes say what is there), and once the functions this process
        decoded, with this one, reach `whole_share` of its functions' code bytes, once it decoded at
        least `whole_min_fns` of them: a profile that spreads over many functions of one big CU then
        pays one decode and one stored entry, not one per function (a restart reads one file).
        Functions loaded from the disk cache cost nothing to keep and are not counted. The count
        keeps a CU with a few big functions per function (libpython's ceval.c: `_PyEval_EvalFrameDefault`
        is 44% of its code, and a profile reaches a handful of the others)."""
        share = self._whole_share
        if share is None or self._store_cu is None:
            return False
        if die >= _GAP:
            return True
        if idx.decoded < max(1, self._whole_min_fns):
            return False
        return idx.spent + sum(hi - lo for lo, hi in idx.ranges_of(die)) >= share * idx.code_bytes()

    def _make_whole(self, offset: int, idx: CuFunctions) -> CuIndex:
        """Decode the CU whole and store it as one entry in place of its functions' ranges; its
        functions' entries are dropped (from memory and from the disk cache)."""
        try:
            whole = _decode_cu(self.reader(), offset, complete=True, decoder=idx.decoder)
        except _DWARF_ERRORS as e:
            raise DwarfError(f"{self.path}: CU at {offset:#x}: {e}") from e
        self.stats["cus_decoded"] += 1
        self.stats["cus_made_whole"] += 1
        idx.forget_sections()
        for key in [k for k in self._fns._data if k[0] == offset]:  # type: ignore[index]  # keys are (CU, DIE)
            self._fns.pop(key)
        if self._store_cu is not None:
            self._store_cu(offset, whole)
        if self._drop_fns is not None:
            self._drop_fns(offset)
        self._cus.put(offset, whole)
        return whole

    def _function(self, offset: int, idx: CuFunctions, die: int) -> FnIndex | None:
        """The function whose DIE is at `die` (or a gap's entry): from memory, the disk cache, or
        decoded and stored; None when, rather than decode it, the CU is to be decoded whole."""
        key = (offset, die)
        fn = self._fns.get(key)
        if fn is not None:
            return fn
        fn = self._load_fn(offset, die) if self._load_fn else None
        if fn is not None:
            self.stats["fns_loaded"] += 1
        elif self._whole_due(idx, die):
            return None
        else:
            if idx.decoder is None:  # loaded from the disk cache, or its sections were released
                self._attach(offset, idx)
            assert idx.decoder is not None
            ranges = idx.ranges_of(die)
            if die >= _GAP:
                if idx.whole is None:
                    idx.whole = idx.decoder.code(None)
                code = idx.whole.within(*ranges[0])
            else:
                code = idx.decoder.code(die)
            lines = idx.lines
            if lines is None:
                rows = (array("Q"), array("q"), array("q"))
            elif isinstance(lines, libdw.LibdwLines):
                rows = lines.rows(ranges)
            else:
                rows = _python_rows(lines, ranges)
            fn = FnIndex.build(code, idx.files, rows)
            self.stats["fns_decoded"] += 1
            if die < _GAP:
                idx.spent += sum(hi - lo for lo, hi in ranges)
                idx.decoded += 1
            if self._store_fn is not None:
                self._store_fn(offset, die, fn)
        self._fns.put(key, fn)
        return fn


# -- decoding one CU -------------------------------------------------------------------------

class _Names:
    """Function names through DW_AT_abstract_origin / DW_AT_specification, memoized per referenced
    DIE (every inline instance of a function refers to the same abstract one). As binutils: a
    linkage name anywhere on the chain wins; else the first DW_AT_name, which counts as a linkage
    name in C (no mangling)."""

    def __init__(self, r: dr.Reader, c_lang: bool) -> None:
        self.r = r
        self.c_lang = c_lang
        self.memo: dict[int, tuple[str | None, str | None]] = {}  # DIE -> (linkage name, plain name) of its chain

    def of(self, a: dict[int, object]) -> tuple[str | None, bool]:
        ln = a.get(dr.AT_linkage_name) or a.get(dr.AT_MIPS_linkage_name)
        if isinstance(ln, str) and ln:
            return ln, True
        name = a.get(dr.AT_name)
        name = name if isinstance(name, str) else None
        ref = a.get(dr.AT_abstract_origin) or a.get(dr.AT_specification)
        if isinstance(ref, tuple):
            ln, plain = self._chain(ref[1], {ref[1]}, 8)
            if ln:
                return ln, True
            name = name if name is not None else plain
        return name, self.c_lang and name is not None

    def _chain(self, offset: int, seen: set[int], budget: int) -> tuple[str | None, str | None]:
        got = self.memo.get(offset)
        if got is not None:
            return got
        try:
            _, a = self.r.die_attrs(offset, _WANT_NAME)
        except _DWARF_ERRORS:
            return None, None
        ln = a.get(dr.AT_linkage_name) or a.get(dr.AT_MIPS_linkage_name)
        name = a.get(dr.AT_name)
        name = name if isinstance(name, str) else None
        if isinstance(ln, str) and ln:
            got = (ln, name)
        else:
            ref = a.get(dr.AT_abstract_origin) or a.get(dr.AT_specification)
            if isinstance(ref, tuple) and ref[1] not in seen and budget > 1:
                seen.add(ref[1])
                ln2, plain = self._chain(ref[1], seen, budget - 1)
                got = (ln2, name if name is not None else plain)
            else:
                got = (None, name)
        self.memo[offset] = got
        return got


class _Kept(NamedTuple):
    """A function's scopes and ranges as `_CuDecoder.code` read them, before flattening, and where its
    subtree ends."""

    parent: array
    name: list[str | None]
    linkage: array
    call_file: array
    call_line: array
    low: array
    ranges: list[tuple[int, int, int, int]]
    end: int


class _CuDecoder:
    """Decodes one CU's code DIEs: a scan of its top-level functions' address ranges, then the
    subtree of one function (or of the whole CU) into a `Code`."""

    def __init__(self, r: dr.Reader, u: dr.Unit, first: int, nfiles: int) -> None:
        self.r, self.u = r, u
        self.first, self.nfiles = first, nfiles
        self.names = _Names(r, u.top.get(dr.AT_language, 0) in _C_LANGS)
        self.length_forms: dict[int, bool] = {}
        # when not None: what `code(die)` read of each function, so `code(None)` splices it in, not reads it again
        self.kept: dict[int, _Kept] | None = None

    def _high_is_length(self, code: int) -> bool:
        hl = self.length_forms.get(code)
        if hl is None:
            hl = self.length_forms[code] = dr.high_pc_is_length(self.u.abbrevs[code])
        return hl

    def functions(self) -> list[tuple[int, int, int]] | None:
        """(low, high, DIE offset) of every function defined at the top level of the CU (or in a
        namespace), sorted; None when their ranges overlap (then only a complete decode is exact)."""
        r, u = self.r, self.u
        data = r.s.info
        abbrevs = u.abbrevs
        plans, sib_plans = r.plans(u, _WANT_FN), r.plans(u, _WANT_SIBLING)
        plan_of, read, skip = r.plan, r.read, r.skip
        out: list[tuple[int, int, int]] = []
        code, pos = dr.uleb(data, u.die_offset)
        if not code or not abbrevs[code].children:
            return out
        _, pos = r.attrs(u, pos, code, _WANT_SIBLING)
        level = 0
        end = u.end
        while pos < end:
            die = pos
            code, pos = dr.uleb(data, pos)  # an abbreviation code: one or two bytes in big CUs
            if code == 0:
                if level == 0:
                    break
                level -= 1
                continue
            ab = abbrevs[code]
            tag = ab.tag
            if tag == dr.TAG_subprogram and ab.pc:
                plan = plans.get(code)
                if plan is None:
                    plan = plans[code] = plan_of(u, ab, _WANT_FN)
                a, pos = read(u, pos, plan)
                out.extend((lo, hi, die) for lo, hi in r.die_ranges(u, a, self._high_is_length(code)))
                sib = a.get(dr.AT_sibling)
                sib = sib[1] if isinstance(sib, tuple) else 0
            else:
                plan = sib_plans.get(code)
                if plan is None:
                    plan = sib_plans[code] = plan_of(u, ab, _WANT_SIBLING)
                if not plan[0]:  # most top-level DIEs: types, declarations
                    pos += plan[1]
                    sib = 0
                else:
                    pos, sib = skip(u, pos, plan)
                if ab.children and tag in _DESCEND_CONTAINERS:
                    level += 1
                    continue
            if ab.children:
                pos = sib if sib > die else _skip_children(r, u, pos)
        return _disjoint(out)

    def code(self, die: int | None) -> Code:
        """The scopes of the function whose DIE is at `die`, or of the whole CU when None."""
        r, u = self.r, self.u
        data = r.s.info
        abbrevs = u.abbrevs
        idx = Code()
        ranges: list[tuple[int, int, int, int]] = []  # (low, high, depth, scope)
        first, nfiles = self.first, self.nfiles
        names = self.names
        scope_plans, sib_plans = r.plans(u, _WANT_SCOPE), r.plans(u, _WANT_SIBLING)
        plan_of, read, skip = r.plan, r.read, r.skip

        def add_scope(a: dict[int, object], parent: int, depth: int, rs: list[tuple[int, int]]) -> int:
            s = len(idx.scope_parent)
            name, linkage = names.of(a)
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

        # iterative walk over sibling DIEs: (scope, depth) of the DIE whose children are being read
        if die is None:
            code, pos = dr.uleb(data, u.die_offset)
            if not code or not abbrevs[code].children:
                return idx
            _, pos = r.attrs(u, pos, code, _WANT_SIBLING)
        else:
            pos = die
        stack = [(-1, 0)]
        end = u.end
        kept = self.kept if die is None else None
        while stack and pos < end:
            if die is not None and len(stack) == 1 and pos != die:
                break  # the function's subtree is done
            die_off = pos
            if kept and stack[-1][0] < 0 and die_off in kept:  # a function read before: the same scopes
                k = kept[die_off]
                base = len(idx.scope_parent)
                idx.scope_parent.extend([p + base if p >= 0 else -1 for p in k.parent])
                idx.scope_name.extend(k.name)
                idx.scope_linkage.extend(k.linkage)
                idx.scope_call_file.extend(k.call_file)
                idx.scope_call_line.extend(k.call_line)
                idx.scope_low.extend(k.low)
                ranges.extend([(lo, hi, d, s + base) for lo, hi, d, s in k.ranges])
                pos = k.end
                continue
            code, pos = dr.uleb(data, pos)  # an abbreviation code: one or two bytes in big CUs
            if code == 0:
                stack.pop()
                continue
            ab = abbrevs[code]
            tag = ab.tag
            scope, depth = stack[-1]
            if (tag == dr.TAG_subprogram or tag == dr.TAG_inlined_subroutine) and ab.pc:
                plan = scope_plans.get(code)
                if plan is None:
                    plan = scope_plans[code] = plan_of(u, ab, _WANT_SCOPE)
                a, pos = read(u, pos, plan)
                rs = r.die_ranges(u, a, self._high_is_length(code))
                if rs:
                    if tag == dr.TAG_subprogram:  # a nested function is its own root, drawn above its host
                        d = depth + 1 if scope >= 0 else 0
                        s = add_scope(a, -1, d, rs)
                    else:
                        d = depth + 1
                        s = add_scope(a, scope, d, rs)
                    if ab.children:
                        stack.append((s, d))
                    continue
            else:
                plan = sib_plans.get(code)
                if plan is None:
                    plan = sib_plans[code] = plan_of(u, ab, _WANT_SIBLING)
                if not plan[0]:
                    pos += plan[1]
                    sib = 0
                else:
                    pos, sib = skip(u, pos, plan)
                if not ab.children:
                    continue
                if tag in _DESCEND_CONTAINERS or (scope >= 0 and tag in _DESCEND_IN_CODE):
                    stack.append((scope, depth))
                    continue
                pos = sib if sib > die_off else _skip_children(r, u, pos)
                continue
            if ab.children:  # skip the subtree: by DW_AT_sibling when given, else by reading it
                ref = a.get(dr.AT_sibling)
                pos = ref[1] if isinstance(ref, tuple) and ref[1] > die_off else _skip_children(r, u, pos)
        if die is not None and self.kept is not None:
            self.kept[die] = _Kept(idx.scope_parent, idx.scope_name, idx.scope_linkage, idx.scope_call_file,
                                   idx.scope_call_line, idx.scope_low, list(ranges), pos)
        _flatten(ranges, idx)
        return idx


def _decode_cu(r: dr.Reader, offset: int, *, complete: bool = True,
               libdw_lines: Callable[[int, int, list[str]], libdw.LibdwLines | None] | None = None,
               decoder: _CuDecoder | None = None) -> CuIndex:
    """A CU's line table, and its code: complete, or (`complete=False`) one function at a time
    as lookups need them, with the line table from `libdw_lines` when it gives one. `decoder`: one
    that already read some of the CU's functions (kept: not read again), used when it reads the
    same sections with the same file numbering."""
    idx = CuIndex()
    u = r.unit_at(offset)
    first, lines = _line_table_of(r, u, complete=complete, libdw_lines=libdw_lines)
    if lines is not None:
        idx.files = lines.files
        if isinstance(lines, dr.LineTable) and lines.addr is not None:  # complete()d
            assert lines.file is not None and lines.line is not None  # set with addr
            idx.row_addr, idx.row_file, idx.row_line = lines.addr, lines.file, lines.line
        else:
            idx.lines = lines
    if decoder is None or decoder.r is not r or decoder.first != first or decoder.nfiles != len(idx.files):
        decoder = _CuDecoder(r, u, first, len(idx.files))
    fns = None if complete else decoder.functions()
    if fns is None:
        idx.code = decoder.code(None)
    else:
        idx.fn_start = array("Q", [f[0] for f in fns])
        idx.fn_end = array("Q", [f[1] for f in fns])
        idx.fn_die = array("Q", [f[2] for f in fns])
        idx._decoder = decoder
    return idx


def _line_table_of(r: dr.Reader, u: dr.Unit, *, complete: bool,
                   libdw_lines: Callable[[int, int, list[str]], libdw.LibdwLines | None] | None
                   ) -> tuple[int, dr.LineTable | libdw.LibdwLines | None]:
    """(first DWARF file number, the CU's line table or None): run to its end when `complete`, else
    libdw's when `libdw_lines` gives one, else the Python program, run as lookups need."""
    top = u.top
    comp_dir = top.get(dr.AT_comp_dir)
    comp_dir = comp_dir if isinstance(comp_dir, str) else None
    stmt = top.get(dr.AT_stmt_list)
    if not isinstance(stmt, int) or stmt >= len(r.s.line):
        return 1, None
    lt = dr.line_table(r, u, stmt, comp_dir)
    if complete:
        return lt.first, lt.complete()
    return lt.first, (libdw_lines and libdw_lines(u.die_offset, lt.first, lt.files)) or lt


def _disjoint(fns: list[tuple[int, int, int]]) -> list[tuple[int, int, int]] | None:
    """Functions' (low, high, DIE) sorted, or None when their ranges overlap (then only a complete
    decode is exact)."""
    fns.sort()
    for k in range(1, len(fns)):
        if fns[k][0] < fns[k - 1][1]:
            return None
    return fns


def _python_rows(lt: dr.LineTable, ranges: list[tuple[int, int]]) -> tuple[array, array, array]:
    """The Python line program's rows that answer for `ranges` (run to its end: without libdw)."""
    lt.complete()
    addr, file, line = lt.addr, lt.file, lt.line
    assert addr is not None and file is not None and line is not None  # complete()d
    spans = sorted((max(0, bisect_right(addr, lo) - 1), bisect_right(addr, hi - 1)) for lo, hi in ranges if hi > lo)
    out_a, out_f, out_l = array("Q"), array("q"), array("q")
    done = 0
    for i, j in spans:
        i = max(i, done)
        out_a += addr[i:j]
        out_f += file[i:j]
        out_l += line[i:j]
        done = max(done, j)
    return out_a, out_f, out_l


def _skip_children(r: dr.Reader, u: dr.Unit, pos: int) -> int:
    data = r.s.info
    plans = r.plans(u, _WANT_SIBLING)
    level = 1
    while level and pos < u.end:
        code, pos = dr.uleb(data, pos)
        if code == 0:
            level -= 1
            continue
        plan = plans.get(code)
        if plan is None:
            plan = plans[code] = r.plan(u, u.abbrevs[code], _WANT_SIBLING)
        pos = r.skip(u, pos, plan)[0]
        if u.abbrevs[code].children:
            level += 1
    return pos


def _flatten(ranges: list[tuple[int, int, int, int]], idx: Code) -> None:
    """Disjoint segments, each owned by the deepest scope covering it (ties: the smallest range, then the
    last scope read: assembly aliases are one DIE each over the same code, `__clone3`, `__GI___clone3`, `clone3`,
    and addr2line names the last)."""
    if not ranges:
        return
    ranges.sort()
    bounds = sorted({r[0] for r in ranges} | {r[1] for r in ranges})
    active: list[tuple[int, int, int, int]] = []  # heap of (-depth, size, high, -scope)
    i = 0
    n = len(ranges)
    starts, scopes = idx.seg_start, idx.seg_scope
    for b in bounds:
        while i < n and ranges[i][0] == b:
            lo, hi, depth, s = ranges[i]
            heapq.heappush(active, (-depth, hi - lo, hi, -s))
            i += 1
        while active and active[0][2] <= b:
            heapq.heappop(active)
        s = -active[0][3] if active else -1
        if scopes and scopes[-1] == s:
            continue
        starts.append(b)
        scopes.append(s)
