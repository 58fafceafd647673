"""ELF facts a symbolizer needs: type, PT_LOAD segments, build id, and function symbols.

Headers are read eagerly (cheap, needed to normalize addresses); the symbol table is read on
the first lookup, because most binaries mapped by a process never appear in a sample.
Headers and symbols are decoded straight from the bytes with `struct` (symbolizer.elffile): a
per-symbol parser is an order of magnitude slower on big binaries, and a short-lived
`podflame symbolize` should not pay for importing one.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import BinaryIO, NamedTuple

from podflame.errors import BinaryFormatError
from symbolizer.elffile import (
    EM_ARM,
    NT_GNU_BUILD_ID,
    PF_X,
    PT_LOAD,
    PT_NOTE,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_DYNSYM,
    SHT_NOTE,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB,
    ElfFile,
)
from symbolizer.fdespans import FdeSpans, fde_spans
from symbolizer.plt import PLT_SECTIONS, plt_symbols
from symbolizer.ranges import AddressRanges

ET_EXEC = "ET_EXEC"
ET_DYN = "ET_DYN"

_SHN_LORESERVE = 0xFF00
_STT_NOTYPE, _STT_FUNC, _STT_GNU_IFUNC = 0, 2, 10
_STB_LOCAL, _STB_GLOBAL, _STB_WEAK = 0, 1, 2
_U64_MAX = (1 << 64) - 1
# an IFUNC symbol's value is its resolver, whose own (local) FUNC name says what the code is
_TYPE_RANK = {_STT_FUNC: 0, _STT_GNU_IFUNC: 1, _STT_NOTYPE: 2}
_BIND_RANK = {_STB_GLOBAL: 0, _STB_WEAK: 0, _STB_LOCAL: 1}  # exported names (glibc exports via weak) first


class ElfReadError(BinaryFormatError):
    """The file is not a readable ELF (missing, truncated, not ELF, unsupported)."""


class LoadSegment(NamedTuple):  # not a dataclass: importing dataclasses costs `podflame symbolize` ~7 ms
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    executable: bool


def elf_build_id(elf: ElfFile) -> str | None:
    """The GNU build id from .note.gnu.build-id, else from any PT_NOTE (section headers may be gone)."""
    sec = elf.section(".note.gnu.build-id")
    blobs: list[Callable[[], bytes]] = []
    if sec is not None and sec.type == SHT_NOTE:
        blobs.append(partial(elf.data, sec))
    else:
        blobs.extend(partial(elf.segment_data, seg) for seg in elf.segments if seg.type == PT_NOTE)
    for read in blobs:
        try:
            for typ, name, desc in elf.notes(read()):
                if typ == NT_GNU_BUILD_ID and name == b"GNU":
                    return desc.hex()
        except (OSError, struct.error, ValueError):
            continue
    return None


def read_build_id(path: str) -> str | None:
    """Build id of the ELF at `path`, or None when it has none or cannot be read."""
    try:
        with open(path, "rb") as f:
            return elf_build_id(ElfFile(f))
    except (OSError, struct.error, ValueError):
        return None


def _section_layout(elf: ElfFile) -> tuple[set[int], dict[int, tuple[int, int]]]:
    """Indices of executable sections, and every section's [addr, end) to bound zero-size symbols."""
    executable: set[int] = set()
    bounds: dict[int, tuple[int, int]] = {}
    for i, h in enumerate(elf.sections):
        if h.flags & SHF_EXECINSTR:
            executable.add(i)
        bounds[i] = (h.addr, h.addr + h.size)
    return executable, bounds


_Rank = tuple[int, int, bool, int]
# A symbol as build_ranges sorts it: (start, rank, name length, name, end or -section end). The rank is the
# _Rank tuple packed into one int that orders the same (type, binding, unsized, leading underscores): a list
# of these sorts with C comparisons alone, where a key function cost a Python call and a tuple per symbol
# (libarrow: 74k symbols, the sort and its keys were over half of reading the table).
_Symbol = tuple[int, int, int, str, int]
_UNDERSCORES_MAX = (1 << 45) - 1
_SYNTHETIC_RANK = 3 << 48  # `name@plt` (symbolizer.plt): below every symbol a table holds at the same address
# The table's format, stored with it by a persistent cache (diskcache.symbols_loader): bump it when the
# same binary gives another table, so tables cached by an older reader are read again.
# 2: PLT entries are named `name@plt`.
SYMBOLS_FORMAT = 2


def _pack_rank(type_rank: int, bind_rank: int, unsized: bool, underscores: int) -> int:
    return (type_rank << 48) | (bind_rank << 46) | (int(unsized) << 45) | min(underscores, _UNDERSCORES_MAX)


def _raw_symbols(elf: ElfFile, section_name: str) -> list[_Symbol]:
    """Function symbols of one symbol table (see _Symbol)."""
    sec = elf.section(section_name)
    if sec is None or sec.type not in (SHT_SYMTAB, SHT_DYNSYM) or sec.link >= len(elf.sections):
        return []
    strtab = elf.data(elf.sections[sec.link])
    data = elf.data(sec)
    endian = elf.endian
    if elf.elfclass == 64:
        fmt, cols = endian + "IBBHQQ", (0, 4, 5, 1, 3)  # name, value, size, info, shndx
    else:
        fmt, cols = endian + "IIIBBH", (0, 1, 2, 3, 5)
    size = struct.calcsize(fmt)
    executable, bounds = _section_layout(elf)
    thumb = elf.e_machine == EM_ARM
    c_name, c_value, c_size, c_info, c_shndx = cols
    type_rank, bind_rank = _TYPE_RANK, _BIND_RANK
    find, n_strtab = strtab.find, len(strtab)
    out: list[_Symbol] = []
    append = out.append
    for rec in struct.iter_unpack(fmt, data[: len(data) - len(data) % size]):
        shndx = rec[c_shndx]
        if shndx == 0 or shndx >= _SHN_LORESERVE:
            continue  # undefined imports, absolute and common symbols
        info = rec[c_info]
        typ = info & 0xF
        tr = type_rank.get(typ)
        if tr is None or (typ == _STT_NOTYPE and shndx not in executable):
            continue  # data objects; NOTYPE labels count only in code (hand-written assembly)
        value = rec[c_value]
        if thumb and typ == _STT_FUNC:
            value &= ~1
        n = rec[c_name]
        end_n = find(b"\0", n)
        raw = strtab[n:end_n if end_n >= 0 else n_strtab]
        if not raw or raw[0] == 0x24:
            continue  # unnamed, or ARM/AArch64 mapping symbols ($x, $d)
        name = raw.decode("utf-8", "replace")
        if raw.find(b"@", 1) >= 0:
            name = name.split("@", 1)[0]  # versioned definitions: memcpy@@GLIBC_2.14 -> memcpy
        sym_size = rec[c_size]
        # a zero-size symbol's end is minus its section's end: "until the next symbol, at most there"
        end = value + sym_size if sym_size else -bounds.get(shndx, (0, 0))[1]
        underscores = len(name) - len(name.lstrip("_")) if name[:1] == "_" else 0
        rank = (tr << 48) | (bind_rank.get(info >> 4, 3) << 46) | ((not sym_size) << 45) | \
            min(underscores, _UNDERSCORES_MAX)
        append((value, rank, len(name), name, end))
    return out


def _plt(elf: ElfFile, syms: list[_Symbol]) -> list[_Symbol]:
    """`name@plt` symbols of the binary's PLT entries (from the binary itself: a debug file's PLT and
    relocations are NOBITS), IRELATIVE ones named after the IFUNC at their resolver."""
    ifuncs: dict[int, tuple[int, int, str]] | None = None

    def ifunc_name(address: int) -> str | None:
        nonlocal ifuncs
        if ifuncs is None:
            ifuncs = {}
            ifunc = _TYPE_RANK[_STT_GNU_IFUNC]
            for start, rank, n, name, _ in syms:
                if rank >> 48 == ifunc and (start not in ifuncs or (rank, n, name) < ifuncs[start]):
                    ifuncs[start] = (rank, n, name)
        best = ifuncs.get(address)
        return best[2] if best else None

    try:
        plt = plt_symbols(elf, ifunc_name)
    except (struct.error, ValueError, IndexError, OverflowError):
        return []  # a PLT we cannot decode: its entries stay unnamed, the rest of the table is read
    return [(start, _SYNTHETIC_RANK, len(name), name, end) for start, end, name in plt]


def _crc32(path: str) -> int | None:
    crc = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
    except OSError:
        return None
    return crc


def build_ranges(symbols: Iterable[tuple[int, int, _Rank, str]]) -> AddressRanges:
    """One name per address (best alias: function > ifunc > label, exported > local, sized > not,
    fewer leading underscores (`malloc` over `__libc_malloc`), shorter (`free` over `cfree`));
    a zero-size symbol reaches the next symbol or the end of its section, whichever comes first.
    `symbols`: (start, end or -section end, rank, name)."""
    return _ranges_of([(start, _pack_rank(*rank), len(name), name, end) for start, end, rank, name in symbols])


def _ranges_of(symbols: list[_Symbol]) -> AddressRanges:
    """build_ranges of _raw_symbols' symbols (sorted here, in place)."""
    symbols.sort()  # by start, then best alias first (rank, shorter, by name)
    starts: list[int] = []
    ends: list[int] = []  # end, or -section end
    names: list[str] = []
    last = -1
    for start, _, _, name, end in symbols:
        if start == last:
            prev = ends[-1]
            if end > 0 and (prev <= 0 or end > prev):
                ends[-1] = end  # an alias knows the size the chosen name lacks
            continue
        starts.append(start)
        ends.append(end)
        names.append(name)
        last = start
    n = len(starts)
    keep = True
    for i in range(n):
        start, end = starts[i], ends[i]
        if end <= 0:
            candidates = [-end] if -end > start else []
            if i + 1 < n:
                candidates.append(starts[i + 1])
            ends[i] = end = min(candidates) if candidates else start + 1
        if end <= start or end > _U64_MAX:
            keep = False  # a corrupt size: drop or clamp as AddressRanges does
    if not keep:
        return AddressRanges(zip(starts, ends, names, strict=True))
    return AddressRanges.from_columns(starts, ends, names)


def _open_elf(f: BinaryIO) -> ElfFile:
    try:
        return ElfFile(f)
    except (OSError, struct.error, ValueError) as e:
        raise ElfReadError(str(e)) from e


class ElfSymbols:
    """One binary: type and PT_LOAD segments now, function symbols on the first lookup.

    Symbols come from .symtab; without it from .dynsym merged with the MiniDebugInfo
    (.gnu_debugdata, xz-compressed symbol table: Fedora/RHEL) when present, or from a separate
    debug file found by build id under `debug_dirs` (Debian's *-dbg / dbgsym packages).
    """

    def __init__(self, source: str | bytes, *, debug_dirs: Sequence[str] = (), name: str | None = None) -> None:
        self.path = source if isinstance(source, str) else None
        self._data = source if isinstance(source, bytes) else None
        self.name = name or self.path or "<memory>"
        self.debug_dirs = tuple(debug_dirs)
        self._ranges: AddressRanges | None = None
        self._spans: FdeSpans | bool | None = False  # False: not read yet (fdespans.py)
        self.symbol_source: str | None = None  # symtab | dynsym | minidebuginfo | debug file path | cache
        # a persistent cache of the table: called with the reader, returns the table (diskcache)
        self.load_symbols: Callable[[Callable[[], AddressRanges]], AddressRanges] | None = None
        try:
            with self._open() as f:
                elf = _open_elf(f)
                self.elf_type: str = elf.e_type
                self.segments: tuple[LoadSegment, ...] = tuple(
                    LoadSegment(s.offset, s.vaddr, s.filesz, s.memsz, bool(s.flags & PF_X))
                    for s in elf.segments if s.type == PT_LOAD)
                self.build_id = elf_build_id(elf)
                self.little_endian = elf.little_endian
        except (OSError, struct.error, ValueError) as e:
            raise ElfReadError(f"{self.name}: {e}") from e

    def _open(self) -> BinaryIO:
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self.path is not None  # a path or bytes, from __init__
        return open(self.path, "rb")

    def debug_file(self) -> str | None:
        """The separate debug file named by the build id in `debug_dirs`, if there is one."""
        if not self.build_id or len(self.build_id) < 3:
            return None
        for root in self.debug_dirs:
            candidate = os.path.join(root, ".build-id", self.build_id[:2], self.build_id[2:] + ".debug")
            if os.path.isfile(candidate):
                return candidate
        return None

    def debuglink(self) -> tuple[str, int] | None:
        """(file name, CRC32) from .gnu_debuglink, None when the binary has none."""
        try:
            with self._open() as f:
                elf = _open_elf(f)
                sec = elf.section(".gnu_debuglink")
                if sec is None:
                    return None
                data = elf.data(sec)
        except (OSError, ElfReadError, struct.error, ValueError):
            return None
        end = data.find(b"\0")
        if end <= 0:
            return None
        crc_at = (end + 4) & ~3
        if crc_at + 4 > len(data):
            return None
        crc = int.from_bytes(data[crc_at:crc_at + 4], "little" if self.little_endian else "big")
        return data[:end].decode("utf-8", "surrogateescape"), crc

    def debuglink_file(self) -> str | None:
        """The separate debug file .gnu_debuglink names, searched as gdb does: beside the binary, in
        its .debug/ folder, and under each debug dir + the binary's folder; accepted when its CRC32
        matches (a stale debug file from another build would give wrong lines)."""
        link = self.debuglink()
        if link is None:
            return None
        name, crc = link
        folder = os.path.dirname(self.name) if self.name.startswith("/") else ""
        candidates = []
        for root in self._roots():
            if folder:
                candidates += [f"{root}{folder}/{name}", f"{root}{folder}/.debug/{name}"]
        for d in self.debug_dirs:
            if folder:
                candidates.append(f"{d}{folder}/{name}")
            candidates.append(f"{d}/{name}")
        own = os.path.realpath(self.path) if self.path else None
        for c in candidates:
            if os.path.isfile(c) and os.path.realpath(c) != own and _crc32(c) == crc:
                return c
        return None

    def _roots(self) -> list[str]:
        """Filesystem roots the binary's own path is relative to: the process's (/proc/PID/root,
        known from a debug dir under it) and the host's."""
        roots = []
        for d in self.debug_dirs:
            if "/root/" in d and d.startswith("/proc/"):
                roots.append(d[: d.index("/root/") + len("/root")])
        return [*roots, ""]

    def dwarf_file(self) -> str | None:
        """The file holding this binary's DWARF: itself, its build-id debug file, or its debuglink."""
        from symbolizer.dwarf import has_dwarf

        if self.path and has_dwarf(self.path):
            return self.path
        debug = self.debug_file()
        if debug and has_dwarf(debug):
            return debug
        link = self.debuglink_file()
        if link and has_dwarf(link):
            return link
        return None

    def table_digest(self) -> str | None:
        """A key naming exactly what the symbol table is read from, for a binary without a build id (a
        disk cache must not key those by path or inode: both are reused by other files): a hash of the
        ELF header fields and section headers the reader uses and of the bytes of every table it would
        read (.symtab, .dynsym, .gnu_debugdata and their string tables; the PLT sections and dynamic
        relocations its `name@plt` entries come from). Equal digests, equal tables; a rebuilt binary
        whose symbols moved has another. None when the file cannot be read."""
        h = hashlib.sha256(b"podflame-symbols-v2")
        try:
            with self._open() as f:
                elf = _open_elf(f)
                h.update(repr((elf.elfclass, elf.endian, elf.e_machine, elf.sections)).encode())
                for name in (".symtab", ".dynsym", ".gnu_debugdata"):
                    sec = elf.section(name)
                    if sec is None:
                        continue
                    h.update(name.encode() + elf.data(sec))
                    if name != ".gnu_debugdata" and sec.link < len(elf.sections):
                        h.update(elf.data(elf.sections[sec.link]))
                for sec in elf.sections:
                    if sec.name in PLT_SECTIONS or (sec.type in (SHT_RELA, SHT_REL) and sec.flags & SHF_ALLOC):
                        h.update(sec.name.encode() + elf.data(sec))
        except (OSError, ElfReadError, struct.error, ValueError):
            return None
        return "c0de" + h.hexdigest()[:60]  # hex, as a build id, and longer than GNU's (20 bytes)

    def _load(self) -> AddressRanges:
        try:
            with self._open() as f:
                elf = _open_elf(f)
                syms = _raw_symbols(elf, ".symtab")
                self.symbol_source = "symtab"
                if not syms and (debug := self.debug_file()):
                    with open(debug, "rb") as df:
                        syms = _raw_symbols(_open_elf(df), ".symtab")
                    self.symbol_source = debug
                if not syms:
                    syms = _raw_symbols(elf, ".dynsym")
                    self.symbol_source = "dynsym"
                    mini = elf.section(".gnu_debugdata")
                    if mini is not None:
                        inner = _open_elf(io.BytesIO(lzma.decompress(elf.data(mini))))
                        syms += _raw_symbols(inner, ".symtab")
                        self.symbol_source = "minidebuginfo"
                syms += _plt(elf, syms)
        except (OSError, struct.error, ValueError, lzma.LZMAError) as e:
            raise ElfReadError(f"{self.name}: {e}") from e
        return _ranges_of(syms)

    @property
    def ranges(self) -> AddressRanges:
        """The symbol table, read on first use (raises ElfReadError if the file went away)."""
        if self._ranges is None:
            self._ranges = self.load_symbols(self._load) if self.load_symbols else self._load()
            self.symbol_source = self.symbol_source or "cache"
            self._data = None  # the bytes were only needed to read the table
        return self._ranges

    def lookup(self, vaddr: int) -> str | None:
        """Function name at an ELF virtual address (see normalize.elf_address), None between symbols."""
        return self.ranges.lookup(vaddr)

    def lookup_start(self, vaddr: int) -> tuple[str, int] | None:
        """(name, start address) of the symbol holding `vaddr`."""
        return self.ranges.lookup_start(vaddr)

    def function_start(self, vaddr: int) -> int | None:
        """Where the function holding `vaddr` begins by its FDE, for code no symbol covers (fdespans.py)."""
        if self._spans is False:
            self._spans = None
            if self.path is not None or self._data is not None:
                try:
                    with self._open() as f:
                        self._spans = fde_spans(_open_elf(f))
                except (OSError, ElfReadError, struct.error, ValueError):
                    pass  # the file went away (map_files of an exited process): named by address, as before
        return self._spans.start_of(vaddr) if isinstance(self._spans, FdeSpans) else None

    def __len__(self) -> int:
        return len(self.ranges)
