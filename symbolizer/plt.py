"""Synthetic `name@plt` symbols for the PLT stubs of x86-64 and i386 binaries.

A call into a shared library goes through a stub in the caller's PLT (`.plt`, the IBT/MPX second PLT
`.plt.sec`/`.plt.bnd`, `.plt.got` for functions whose address is also taken). The symbol tables name no
stub, so a sample there read `exe+0x1070`; binutils (`objdump -d`: `<clock_gettime@plt>`), gdb and perf
name each stub after the symbol of the GOT slot it jumps through. So do we: each entry's indirect jump
is decoded to its GOT slot, and the dynamic relocation of that slot names it (`.rela.plt` JUMP_SLOT,
GLOB_DAT in `.rela.dyn` for `.plt.got`). Decoding the jump, rather than counting entries in relocation
order, gives the layouts the linkers write the same treatment: lazy `.plt` after PLT0, `-z now`,
IBT (`endbr64` first, `.plt.sec`), BND-prefixed jumps, PIE or not, and an entry whose jump decodes to
no such relocation (PLT0, IBT's lazy push stubs) stays unnamed, as objdump leaves it.

One difference from objdump: an IRELATIVE slot (a call to an IFUNC of the binary itself, e.g. libc
calling its own strnlen) has no symbol, only the resolver's address as addend; objdump says
`*ABS*+0x9f550@plt`, we name it after the IFUNC symbol whose value is that address (`strnlen@plt`),
and fall back to objdump's spelling when there is none.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from symbolizer.elffile import (
    EM_386,
    EM_X86_64,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_DYNSYM,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    ElfFile,
    Section,
)

_GLOB_DAT, _JUMP_SLOT = 6, 7  # the same numbers on x86-64 and i386
_IRELATIVE = {EM_X86_64: 37, EM_386: 42}
# PLT sections and their entry size when sh_entsize does not say (x86: 16, the small .plt.got / BND forms 8)
PLT_SECTIONS = {".plt": 16, ".plt.sec": 16, ".plt.bnd": 8, ".plt.got": 8}
_ENDBR64, _ENDBR32, _BND = b"\xf3\x0f\x1e\xfa", b"\xf3\x0f\x1e\xfb", 0xF2

PltSymbol = tuple[int, int, str]  # (start, end, name)


def _jump_slot(machine: int, entry: bytes, addr: int, got: int | None) -> int | None:
    """The GOT slot address an entry's first indirect jump reads: `jmp *disp32(%rip)` (x86-64),
    `jmp *abs32` / `jmp *disp32(%ebx)` (i386, %ebx = the GOT), after an optional endbr and BND prefix."""
    pos = 4 if entry[:4] in (_ENDBR64, _ENDBR32) else 0
    if len(entry) > pos and entry[pos] == _BND:
        pos += 1
    if len(entry) < pos + 6 or entry[pos] != 0xFF:
        return None
    modrm = entry[pos + 1]
    if machine == EM_X86_64:
        if modrm != 0x25:
            return None
        return (addr + pos + 6 + int.from_bytes(entry[pos + 2:pos + 6], "little", signed=True)) & ((1 << 64) - 1)
    if modrm == 0x25:
        return int.from_bytes(entry[pos + 2:pos + 6], "little")
    if modrm == 0xA3 and got is not None:
        return (got + int.from_bytes(entry[pos + 2:pos + 6], "little", signed=True)) & 0xFFFFFFFF
    return None


def _entry_size(sec: Section, default: int) -> int:
    size = sec.entsize if sec.entsize in (8, 16, 32) else default
    return size if sec.size % size == 0 else default


def _relocations(elf: ElfFile, slots: set[int]) -> dict[int, tuple[int, int, int, Section]]:
    """GOT slot -> (type, symbol index, addend, relocation section) for the slots asked for, from the
    dynamic relocation sections (.rela.plt, .rela.dyn; .rel.* on i386)."""
    found: dict[int, tuple[int, int, int, Section]] = {}
    is64 = elf.elfclass == 64
    word = 8 if is64 else 4
    little = elf.endian == "<"
    # .rela.plt first: it holds every slot of .plt/.plt.sec, so the long .rela.dyn (RELATIVE relocations
    # by the ten thousand in a big PIE) is searched only for the few slots of .plt.got
    tables = sorted((s for s in elf.sections if s.type in (SHT_RELA, SHT_REL) and s.flags & SHF_ALLOC and s.size),
                    key=lambda s: not s.name.endswith(".plt"))
    for sec in tables:
        rela = sec.type == SHT_RELA
        width = (3 if rela else 2) * word
        if sec.entsize not in (0, width):
            continue
        data = elf.data(sec)
        data = data[: len(data) - len(data) % width]
        fmt = elf.endian + ("QQq" if is64 else "IIi")[: 3 if rela else 2]
        wanted = slots - found.keys()
        at: dict[int, int] = {}  # slot -> byte offset of its relocation
        if len(wanted) * 16 > len(data) // width:  # many of the section's slots: one pass over it
            for i, rec in enumerate(struct.iter_unpack(fmt, data)):
                if rec[0] in wanted:
                    at[rec[0]] = i * width
        else:  # a few (.plt.got's) in a long section: memchr-speed searches for the slot's bytes
            for slot in wanted:
                key = slot.to_bytes(word, "little") if little else slot.to_bytes(word, "big")
                pos = data.find(key)
                while pos >= 0 and pos % width:
                    pos = data.find(key, pos + 1)
                if pos >= 0:
                    at[slot] = pos
        for slot, pos in at.items():
            rec = struct.unpack_from(fmt, data, pos)
            info = rec[1]
            typ, sym = (info & 0xFFFFFFFF, info >> 32) if is64 else (info & 0xFF, info >> 8)
            found[slot] = (typ, sym, rec[2] if rela else 0, sec)
        if len(found) == len(slots):
            break
    return found


def _names(elf: ElfFile, rel_sec: Section) -> Callable[[int], str | None] | None:
    """Symbol index -> name in the dynamic symbol table a relocation section links to."""
    if rel_sec.link >= len(elf.sections):
        return None
    symtab = elf.sections[rel_sec.link]
    if symtab.type != SHT_DYNSYM or symtab.link >= len(elf.sections):
        return None
    data, strtab = elf.data(symtab), elf.data(elf.sections[symtab.link])
    size = 24 if elf.elfclass == 64 else 16
    count = len(data) // size
    name_at = struct.Struct(elf.endian + "I").unpack_from
    find = strtab.find

    def name(index: int) -> str | None:
        if not 0 < index < count:
            return None
        (at,) = name_at(data, index * size)
        end = find(b"\0", at)
        return strtab[at:end if end >= 0 else len(strtab)].decode("utf-8", "replace") or None

    return name


def _imported(elf: ElfFile, rel_sec: Section, index: int,
              tables: dict[int, Callable[[int], str | None] | None]) -> str | None:
    if rel_sec.link not in tables:
        tables[rel_sec.link] = _names(elf, rel_sec)
    names = tables[rel_sec.link]
    return names(index) if names is not None else None


def plt_symbols(elf: ElfFile, ifunc_name: Callable[[int], str | None] = lambda _: None) -> list[PltSymbol]:
    """(start, end, `name@plt`) of every PLT entry of `elf` that jumps through a GOT slot with a
    JUMP_SLOT, GLOB_DAT or IRELATIVE relocation; `ifunc_name(address)` names an IFUNC resolver (see the
    module's docstring). Empty for other machines and for files without PLT sections."""
    machine = elf.e_machine
    if machine not in _IRELATIVE:
        return []
    got_sec = elf.section(".got.plt") or elf.section(".got")
    got = got_sec.addr if got_sec is not None else None
    entries: list[tuple[int, int, int]] = []  # (start, size, slot)
    for name, default in PLT_SECTIONS.items():
        sec = elf.section(name)
        if sec is None or sec.type == SHT_NOBITS or not sec.flags & SHF_EXECINSTR or not sec.size:
            continue
        size = _entry_size(sec, default)
        data = elf.data(sec)
        for off in range(0, len(data) - size + 1, size):
            slot = _jump_slot(machine, data[off:off + size], sec.addr + off, got)
            if slot is not None:
                entries.append((sec.addr + off, size, slot))
    if not entries:
        return []
    relocs = _relocations(elf, {slot for _, _, slot in entries})
    irelative = _IRELATIVE[machine]
    tables: dict[int, Callable[[int], str | None] | None] = {}
    out: list[PltSymbol] = []
    for start, size, slot in entries:
        r = relocs.get(slot)
        if r is None:
            continue
        typ, sym, addend, rel_sec = r
        if typ == irelative:
            name = ifunc_name(addend) or f"*ABS*+{addend:#x}"
        elif typ in (_JUMP_SLOT, _GLOB_DAT) and (imported := _imported(elf, rel_sec, sym, tables)):
            name = imported + (f"+{addend:#x}" if addend > 0 else f"-{-addend:#x}" if addend else "")
        else:
            continue
        out.append((start, start + size, name + "@plt"))
    return out
