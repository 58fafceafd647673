"""elfutils' libdw through ctypes, for two jobs: the line table row at an address, decoded in C, and
the address ranges of a CU's top-level functions (`LibdwFile.functions`).

Why: a cold lookup of a few hundred addresses (a sampled profile) runs the line programs of the
CUs they fall in, and in pure Python that was half of `podflame symbolize`'s time on libpython
(~650k opcodes, ~0.1 s; see docs/benchmarks.md). libdw decodes a CU's whole program in C on the
first lookup and bisects its rows after, so only a handful of ctypes calls cross per address
(a few microseconds), never one per row.

Only the row (DWARF file number, line) comes from libdw; file names stay symbolizer.dwarfread's,
joined as binutils joins them (libdw joins a relative directory without DW_AT_comp_dir). Its row
choice is binutils': rows stably sorted by address, an end of sequence before a row at the same
address, the last row at or before the address wins and an end of sequence answers "no line".

The functions' ranges: a big CU is decoded one function at a time, which first needs its top-level
functions' ranges (symbolizer.dwarf). Where DIEs carry DW_AT_sibling (GCC, clang) a scan in Python
jumps over each subtree; Go's compiler writes none, so that scan reads every DIE of the CU, 4-30x
the time of libdw walking the same siblings in C (docs/benchmarks.md, stop 20 dw10): Go's CUs are
scanned here.

libdw is optional: when libdw.so.1 is not there (or PODFLAME_LIBDW=0), `open_lines` returns None
and the Python line programs answer (tests/test_dwarf_corpus.py checks both against addr2line).
"""

from __future__ import annotations

import ctypes
import os
import struct
from array import array
from collections.abc import Iterator
from typing import Any

_DWARF_C_READ = 0
_lib: Any = None  # the loaded CDLL, False when it could not be loaded


class _Die(ctypes.Structure):
    """libdw.h's Dwarf_Die: a DIE handle filled in by libdw (its layout is public ABI)."""

    _fields_ = [("addr", ctypes.c_void_p), ("cu", ctypes.c_void_p), ("abbrev", ctypes.c_void_p),
                ("padding", ctypes.c_long)]


def enabled() -> bool:
    """Is libdw to be used? PODFLAME_LIBDW=0 forces the pure-Python line programs."""
    return os.environ.get("PODFLAME_LIBDW", "1") != "0"


def _load() -> Any:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libdw.so.1")
        except OSError:
            _lib = False
            return _lib
        vp, die_p, size_p = ctypes.c_void_p, ctypes.POINTER(_Die), ctypes.POINTER(ctypes.c_size_t)
        u64_p = ctypes.POINTER(ctypes.c_uint64)
        for name, res, args in (
                ("dwarf_begin", vp, [ctypes.c_int, ctypes.c_int]),
                ("dwarf_end", ctypes.c_int, [vp]),
                ("dwarf_offdie", die_p, [vp, ctypes.c_uint64, die_p]),
                ("dwarf_getsrclines", ctypes.c_int, [die_p, ctypes.POINTER(vp), size_p]),
                ("dwarf_getsrc_die", vp, [die_p, ctypes.c_uint64]),
                ("dwarf_lineno", ctypes.c_int, [vp, ctypes.POINTER(ctypes.c_int)]),
                ("dwarf_line_file", ctypes.c_int, [vp, ctypes.POINTER(vp), size_p]),
                ("dwarf_filesrc", ctypes.c_char_p, [vp, ctypes.c_size_t, vp, vp]),
                ("dwarf_onesrcline", vp, [vp, ctypes.c_size_t]),
                ("dwarf_lineaddr", ctypes.c_int, [vp, ctypes.POINTER(ctypes.c_uint64)]),
                ("dwarf_lineendsequence", ctypes.c_int, [vp, ctypes.POINTER(ctypes.c_bool)]),
                ("dwarf_child", ctypes.c_int, [die_p, die_p]),
                ("dwarf_siblingof", ctypes.c_int, [die_p, die_p]),
                ("dwarf_tag", ctypes.c_int, [die_p]),
                ("dwarf_haschildren", ctypes.c_int, [die_p]),
                ("dwarf_dieoffset", ctypes.c_uint64, [die_p]),
                ("dwarf_ranges", ctypes.c_ssize_t, [die_p, ctypes.c_ssize_t, u64_p, u64_p, u64_p])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _lib = lib
    return _lib


class LibdwFile:
    """One ELF file opened by libdw. libdw keeps every line table it decoded until `close`, so
    `rows` counts them: the owner (dwarf.DwarfInfo) closes and reopens past its row budget."""

    def __init__(self, lib: Any, path: str) -> None:
        self._lib = lib
        self._dbg, self._fd = None, -1  # for close() if the open below fails
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._dbg = lib.dwarf_begin(self._fd, _DWARF_C_READ)
        if not self._dbg:
            os.close(self._fd)
            self._fd = -1
            raise OSError(f"libdw cannot read the DWARF of {path}")
        self.rows = 0  # rows of the line tables decoded so far
        self._counted: set[int] = set()  # CUs in `rows` (a CU asked for again is libdw's cached table)

    def close(self) -> None:
        if self._dbg:
            self._lib.dwarf_end(self._dbg)
            self._dbg = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def functions(self, cu_die_offset: int) -> list[tuple[int, int, int]] | None:
        """(low, high, DIE offset) of each non-empty range of every function (DW_TAG_subprogram)
        defined at the top level of the CU whose DIE is at `cu_die_offset` or in a namespace or
        module there, unsorted: what `dwarf._CuDecoder.functions` finds, walked by libdw. None when
        libdw cannot read the CU."""
        if not self._dbg:
            return None
        lib = self._lib
        top = _Die()
        if not lib.dwarf_offdie(self._dbg, cu_die_offset, ctypes.byref(top)):
            return None
        out: list[tuple[int, int, int]] = []
        base, lo, hi = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64()
        pbase, plo, phi = ctypes.byref(base), ctypes.byref(lo), ctypes.byref(hi)
        todo = [top]  # DIEs whose children are to be read: the CU's, then namespaces'
        while todo:
            cur, nxt = _Die(), _Die()
            got = lib.dwarf_child(ctypes.byref(todo.pop()), ctypes.byref(cur))
            while got == 0:
                ref = ctypes.byref(cur)
                tag = lib.dwarf_tag(ref)
                if tag == _TAG_SUBPROGRAM:
                    off, die = 0, -1
                    while True:
                        off = lib.dwarf_ranges(ref, off, pbase, plo, phi)
                        if off <= 0:
                            break
                        if hi.value > lo.value:
                            if die < 0:
                                die = lib.dwarf_dieoffset(ref)
                            out.append((lo.value, hi.value, die))
                    if off < 0:
                        return None
                elif tag in _CONTAINERS and lib.dwarf_haschildren(ref) > 0:
                    todo.append(_Die.from_buffer_copy(cur))
                got = lib.dwarf_siblingof(ref, ctypes.byref(nxt))
                cur, nxt = nxt, cur
            if got < 0:
                return None
        return out

    def lines(self, cu_die_offset: int, first: int, files: list[str]) -> LibdwLines | None:
        """The line table of the CU whose DIE is at `cu_die_offset`, or None when libdw cannot read
        it (the Python line program answers then). `files`: the header's file names, as
        dwarfread.line_table joins them (index = DWARF file number - `first`)."""
        if not self._dbg:
            return None
        lib = self._lib
        die = _Die()
        if not lib.dwarf_offdie(self._dbg, cu_die_offset, ctypes.byref(die)):
            return None
        table, n = ctypes.c_void_p(), ctypes.c_size_t()
        if lib.dwarf_getsrclines(ctypes.byref(die), ctypes.byref(table), ctypes.byref(n)) != 0:
            return None  # decodes the whole program now: later lookups cannot fail
        if cu_die_offset not in self._counted:
            self._counted.add(cu_die_offset)
            self.rows += n.value
        return LibdwLines(self, die, first, files, n.value, table.value or 0)


class LibdwLines:
    """`dwarfread.LineTable`'s lookup interface over a CU's table decoded by libdw. `addr` stays
    None: its rows live in libdw, never in Python arrays (so such a CU is not persisted)."""

    __slots__ = ("_die", "_extra", "_file", "_first", "_layout", "_line", "_nheader", "_src", "_srcs", "_table", "addr",
                 "files", "size")

    def __init__(self, owner: LibdwFile, die: _Die, first: int, files: list[str], size: int, table: int) -> None:
        self._file, self._die, self._first, self.files = owner, die, first, files
        self._table = table  # the Dwarf_Lines of the CU (rows sorted as find() bisects them)
        self._layout: struct.Struct | bool | None = None  # how `rows` reads them: unchecked, a struct, or the API
        self._nheader = len(files)
        self.size = size  # rows (the LRU's weight)
        self.addr = None
        self._line, self._src = ctypes.c_int(), ctypes.c_size_t()
        self._srcs = ctypes.c_void_p()
        self._extra: dict[int, int] = {}  # DWARF file number past the header's -> index in files

    def find(self, address: int) -> tuple[int, int] | None:
        """(file index, line) of the row covering `address`, None when no row does. A file the
        header does not list (DW_LNE_define_file, before DWARF 5) is appended to `files` with the
        name libdw gives it."""
        owner = self._file
        if not owner._dbg:
            raise ValueError("libdw file closed")
        lib = owner._lib
        row = lib.dwarf_getsrc_die(ctypes.byref(self._die), address)
        if not row:
            return None
        lib.dwarf_lineno(row, ctypes.byref(self._line))
        return self._file_of(row), self._line.value

    def _file_of(self, row: int) -> int:
        lib = self._file._lib
        if lib.dwarf_line_file(row, ctypes.byref(self._srcs), ctypes.byref(self._src)) != 0:
            return -1
        f = self._src.value - self._first
        if 0 <= f < self._nheader:
            return f
        k = self._extra.get(f)
        if k is None:
            name = lib.dwarf_filesrc(self._srcs, self._src.value, None, None)
            k = -1
            if name:
                k = self._extra[f] = len(self.files)
                self.files.append(name.decode("utf-8", "surrogateescape"))
        return k

    def rows(self, ranges: list[tuple[int, int]]) -> tuple[array, array, array]:
        """The rows that `find` answers from for every address of `ranges` (one function's), in
        libdw's order: per range the row covering its start, then those inside it. Rows equal to the
        one before them are left out (a bisect answers the same). (addresses, file indexes, lines);
        an end of sequence has file and line -1.

        A big function has thousands of rows and the public API is a ctypes call per field of a
        row (~10 us a row: 1.5 s for 300 addresses of libpython), so rows are read straight from
        libdw's array (`_layout`) when its layout was checked against the API on this table."""
        owner = self._file
        if not owner._dbg:
            raise ValueError("libdw file closed")
        lib = owner._lib
        n = self.size
        if n == 0:
            return array("Q"), array("q"), array("q")
        if self._layout is None:
            self._layout = _check_layout(lib, self._table, n)
        fmt = self._layout if isinstance(self._layout, struct.Struct) else None
        if fmt is not None:
            size = fmt.size
            base = lib.dwarf_onesrcline(self._table, 0)
            mem = memoryview((ctypes.c_char * (n * size)).from_address(base)).cast("B")  # libdw's rows, no copy

            def address(k: int) -> int:
                return fmt.unpack_from(mem, k * size)[0]

            def between(i: int, j: int) -> Iterator[tuple[int, int, int, int]]:
                return fmt.iter_unpack(mem[i * size:j * size])
        else:
            def address(k: int) -> int:
                return _api_row(lib, lib.dwarf_onesrcline(self._table, k))[0]

            def between(i: int, j: int) -> Iterator[tuple[int, int, int, int]]:
                for k in range(i, j):
                    a, f, ln, end = _api_row(lib, lib.dwarf_onesrcline(self._table, k))
                    yield a, f, ln, _END_BIT if end else 0

        def first_above(a: int) -> int:  # index of the first row whose address is > a (bisect_right)
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi) // 2
                if a < address(mid):
                    hi = mid
                else:
                    lo = mid + 1
            return lo

        spans = sorted((max(0, first_above(lo) - 1), first_above(hi - 1)) for lo, hi in ranges if hi > lo)
        out_a, out_f, out_l = array("Q"), array("q"), array("q")
        first, nheader = self._first, self._nheader
        done = 0
        last_f = last_l = None
        for i, j in spans:
            i = max(i, done)
            for k, (a, raw, ln, flags) in enumerate(between(i, j), i):
                if flags & _END_BIT:
                    f = ln = -1
                else:
                    f = raw - first
                    if not 0 <= f < nheader:  # a file the header does not list: as find() names it
                        f = self._file_of(lib.dwarf_onesrcline(self._table, k))
                if f == last_f and ln == last_l:
                    continue
                out_a.append(a)
                out_f.append(f)
                out_l.append(ln)
                last_f, last_l = f, ln
            done = max(done, j)
        return out_a, out_f, out_l


_TAG_SUBPROGRAM = 0x2E
_CONTAINERS = (0x39, 0x1E)  # DW_TAG_namespace, DW_TAG_module: may hold function definitions

# libdw's struct Dwarf_Line_s (libdwP.h, elfutils 0.188; internal, so checked on each table before use):
# files pointer, addr, file, line, column, then bit-fields from is_stmt, end_sequence the third
_ROW_HEAD = "<8xQIi2xB"
_END_BIT = 0x04


def _api_row(lib: Any, line: int) -> tuple[int, int, int, bool]:
    """(address, DWARF file number, line, end of sequence) of one row, through the public API."""
    a, ln, end = ctypes.c_uint64(), ctypes.c_int(), ctypes.c_bool()
    files, idx = ctypes.c_void_p(), ctypes.c_size_t()
    lib.dwarf_lineaddr(line, ctypes.byref(a))
    lib.dwarf_lineno(line, ctypes.byref(ln))
    lib.dwarf_lineendsequence(line, ctypes.byref(end))
    f = idx.value if lib.dwarf_line_file(line, ctypes.byref(files), ctypes.byref(idx)) == 0 else -1
    return a.value, f, ln.value, end.value


def _check_layout(lib: Any, table: int, n: int) -> struct.Struct | bool:
    """A struct reading (address, file number, line, flags) from one of libdw's rows, when the
    rows of this table are laid out as `_ROW_HEAD` says: the stride between rows is measured, and
    every 1/64th row, every end of sequence among them and the last row (always one) read both
    ways must agree. False otherwise: the public API is used, a call per field."""
    if n < 2:
        return False
    base = lib.dwarf_onesrcline(table, 0)
    stride = lib.dwarf_onesrcline(table, 1) - base
    head = struct.calcsize(_ROW_HEAD)
    if stride < head or stride > 256:
        return False
    fmt = struct.Struct(f"{_ROW_HEAD}{stride - head}x")
    mem = memoryview((ctypes.c_char * (n * stride)).from_address(base)).cast("B")
    probes = sorted({*range(0, n, max(1, n // 64)), n - 1})
    ends = 0
    for k in probes:
        ptr = lib.dwarf_onesrcline(table, k)
        if ptr != base + k * stride:
            return False
        a, f, ln, flags = fmt.unpack_from(mem, k * stride)
        got = _api_row(lib, ptr)
        if (a, ln, bool(flags & _END_BIT)) != (got[0], got[2], got[3]) or (got[1] >= 0 and f != got[1]):
            return False
        ends += got[3]
    return fmt if ends >= 1 and ends < len(probes) else False


def open_lines(path: str) -> LibdwFile | None:
    """libdw on `path`, or None when libdw is disabled, missing, or cannot read the file."""
    if not enabled():
        return None
    lib = _load()
    if not lib:
        return None
    try:
        return LibdwFile(lib, path)
    except OSError:
        return None
