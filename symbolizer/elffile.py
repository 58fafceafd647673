"""A minimal ELF reader: header, section and program headers, section bytes, notes.

The symbolizer needs only these, and `podflame symbolize` is a short-lived process: importing
pyelftools (construct, its DWARF and enum tables) cost more than reading what we use with
`struct`. Compressed debug sections (SHF_COMPRESSED zlib/zstd, and GNU `.zdebug_*`) are inflated.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from podflame.errors import BinaryFormatError

SHT_SYMTAB, SHT_RELA, SHT_NOTE, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 2, 4, 7, 8, 9, 11
PT_LOAD, PT_NOTE = 1, 4
PT_GNU_EH_FRAME = 0x6474E550  # .eh_frame_hdr's segment
SHF_ALLOC, SHF_EXECINSTR, SHF_COMPRESSED = 0x2, 0x4, 0x800
PF_X = 0x1
NT_GNU_BUILD_ID = 3
EM_386, EM_ARM, EM_X86_64 = 3, 40, 62
_E_TYPES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}


class ElfFormatError(BinaryFormatError):
    """Not an ELF file this reader understands (bad magic, truncated headers)."""


class Section(NamedTuple):
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int  # bytes per entry of a table (symbols, relocations, PLT entries), 0 when not a table


class Segment(NamedTuple):
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


class ElfFile:
    """Headers of one ELF image read from `f`, which must stay open while `data` is used."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        f.seek(0)
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
            raise ElfFormatError("not an ELF file")
        self.elfclass = 64 if ident[4] == 2 else 32
        self.little_endian = ident[5] == 1
        e = "<" if self.little_endian else ">"
        self.endian = e
        if self.elfclass == 64:
            (t, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
             shstrndx) = struct.unpack_from(e + "HHIQQQIHHHHHH", ident, 16)
        else:
            (t, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
             shstrndx) = struct.unpack_from(e + "HHIIIIIHHHHHH", ident, 16)
        self.e_type = _E_TYPES.get(t, f"ET_{t:#x}")
        self.e_machine = machine
        self.segments = self._segments(phoff, phentsize, phnum)
        self.sections = self._sections(shoff, shentsize, shnum, shstrndx)
        self._by_name = {s.name: s for s in reversed(self.sections)}

    def _read(self, offset: int, size: int) -> bytes:
        self.f.seek(offset)
        data = self.f.read(size)
        if len(data) != size:
            raise ElfFormatError(f"truncated: {size} bytes at {offset:#x}")
        return data

    def _segments(self, phoff: int, entsize: int, num: int) -> list[Segment]:
        if not phoff or not num:
            return []
        fmt, cols = (self.endian + "IIQQQQQQ", (0, 1, 2, 3, 5, 6)) if self.elfclass == 64 else \
            (self.endian + "IIIIIIII", (0, 6, 1, 2, 4, 5))
        if entsize < struct.calcsize(fmt):
            raise ElfFormatError("bad program header size")
        raw = self._read(phoff, entsize * num)
        out = []
        for i in range(num):
            r = struct.unpack_from(fmt, raw, i * entsize)
            out.append(Segment(*(r[c] for c in cols)))
        return out

    def _sections(self, shoff: int, entsize: int, num: int, strndx: int) -> list[Section]:
        if not shoff:
            return []
        fmt = self.endian + ("IIQQQQIIQQ" if self.elfclass == 64 else "IIIIIIIIII")
        if entsize < struct.calcsize(fmt):
            raise ElfFormatError("bad section header size")
        if num == 0:  # more than 0xff00 sections: the count is in section 0's sh_size
            num = struct.unpack_from(fmt, self._read(shoff, entsize))[5]
        raw = self._read(shoff, entsize * num)
        heads = [struct.unpack_from(fmt, raw, i * entsize) for i in range(num)]
        if strndx == 0xFFFF and heads:
            strndx = heads[0][6]
        names = b""
        if 0 < strndx < num and heads[strndx][1] != SHT_NOBITS:
            names = self._read(heads[strndx][4], heads[strndx][5])
        out = []
        for name, typ, flags, addr, offset, size, link, _, _, entsize in heads:
            end = names.find(b"\0", name)
            out.append(Section(names[name:end if end >= 0 else len(names)].decode("utf-8", "replace"),
                               typ, flags, addr, offset, size, link, entsize))
        return out

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def data(self, sec: Section) -> bytes:
        """A section's bytes, decompressed when compressed; b"" for SHT_NOBITS."""
        if sec.type == SHT_NOBITS or not sec.size:
            return b""
        raw = self._read(sec.offset, sec.size)
        if sec.flags & SHF_COMPRESSED:
            e = self.endian
            if self.elfclass == 64:
                ch_type, _, size = struct.unpack_from(e + "IIQ", raw)
                body = raw[24:]
            else:
                ch_type, size = struct.unpack_from(e + "II", raw)
                body = raw[12:]
            return _inflate(ch_type, body, size)
        if sec.name.startswith(".zdebug") and raw[:4] == b"ZLIB":
            return _inflate(1, raw[12:], int.from_bytes(raw[4:12], "big"))
        return raw

    def notes(self, data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
        """(type, name, desc) of the notes in a SHT_NOTE section or PT_NOTE segment's bytes."""
        pos = 0
        e = self.endian
        while pos + 12 <= len(data):
            namesz, descsz, typ = struct.unpack_from(e + "III", data, pos)
            pos += 12
            name = data[pos:pos + namesz].rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = data[pos:pos + descsz]
            pos += (descsz + 3) & ~3
            yield typ, name, desc

    def segment_data(self, seg: Segment) -> bytes:
        return self._read(seg.offset, seg.filesz)


def _inflate(ch_type: int, body: bytes, size: int) -> bytes:
    if ch_type not in (1, 2):
        raise ElfFormatError(f"unknown section compression {ch_type}")
    try:
        if ch_type == 1:
            out = zlib.decompress(body)
        else:
            import zstandard  # a declared dependency (the server's store); only zstd-compressed DWARF needs it

            out = zstandard.ZstdDecompressor().decompress(body, max_output_size=size)
    except Exception as e:  # zlib.error, zstandard.ZstdError, ImportError: all mean "cannot read it"
        raise ElfFormatError(f"compressed section: {e}") from e
    if len(out) != size:
        raise ElfFormatError("compressed section: wrong size")
    return out
