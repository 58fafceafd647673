"""elfutils' libdw through ctypes, for one job: the line table row at an address, decoded in C.

Why: a cold lookup of a few hundred addresses (a sampled profile) runs the line programs of the
CUs they fall in, and in pure Python that was half of `podflame symbolize`'s time on libpython
(~650k opcodes, ~0.1 s; see docs/benchmarks.md). libdw decodes a CU's whole program in C on the
first lookup and bisects its rows after, so only a handful of ctypes calls cross per address
(a few microseconds), never one per row.

Only the row (DWARF file number, line) comes from libdw; file names stay symbolizer.dwarfread's,
joined as binutils joins them (libdw joins a relative directory without DW_AT_comp_dir). Its row
choice is binutils': rows stably sorted by address, an end of sequence before a row at the same
address, the last row at or before the address wins and an end of sequence answers "no line".

libdw is optional: when libdw.so.1 is not there (or PODFLAME_LIBDW=0), `open_lines` returns None
and the Python line programs answer (tests/test_dwarf_corpus.py checks both against addr2line).
"""

from __future__ import annotations

import ctypes
import os
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
        for name, res, args in (
                ("dwarf_begin", vp, [ctypes.c_int, ctypes.c_int]),
                ("dwarf_end", ctypes.c_int, [vp]),
                ("dwarf_offdie", die_p, [vp, ctypes.c_uint64, die_p]),
                ("dwarf_getsrclines", ctypes.c_int, [die_p, ctypes.POINTER(vp), size_p]),
                ("dwarf_getsrc_die", vp, [die_p, ctypes.c_uint64]),
                ("dwarf_lineno", ctypes.c_int, [vp, ctypes.POINTER(ctypes.c_int)]),
                ("dwarf_line_file", ctypes.c_int, [vp, ctypes.POINTER(vp), size_p]),
                ("dwarf_filesrc", ctypes.c_char_p, [vp, ctypes.c_size_t, vp, vp])):
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
        return LibdwLines(self, die, first, files, n.value)


class LibdwLines:
    """`dwarfread.LineTable`'s lookup interface over a CU's table decoded by libdw. `addr` stays
    None: its rows live in libdw, never in Python arrays (so such a CU is not persisted)."""

    __slots__ = ("_die", "_extra", "_file", "_first", "_line", "_nheader", "_src", "_srcs", "addr", "files", "size")

    def __init__(self, owner: LibdwFile, die: _Die, first: int, files: list[str], size: int) -> None:
        self._file, self._die, self._first, self.files = owner, die, first, files
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
        if lib.dwarf_line_file(row, ctypes.byref(self._srcs), ctypes.byref(self._src)) != 0:
            return -1, self._line.value
        f = self._src.value - self._first
        if 0 <= f < self._nheader:
            return f, self._line.value
        k = self._extra.get(f)
        if k is None:
            name = lib.dwarf_filesrc(self._srcs, self._src.value, None, None)
            k = -1
            if name:
                k = self._extra[f] = len(self.files)
                self.files.append(name.decode("utf-8", "surrogateescape"))
        return k, self._line.value


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
