"""One binary's answer for one ELF virtual address: DWARF inline chain with file:line when the
binary (or its debug file) has DWARF, else the ELF symbol; names demangled.

Shared by the agent's Symbolizer and `podflame symbolize`, so both print what addr2line -f -i -C
would: the innermost frame's name is the DWARF function (its linkage name when it has one); a C++
function DWARF names without a linkage name takes the ELF symbol starting where it starts (as
binutils does, for every frame); outside any DWARF function the ELF symbol names the address.
"""

from __future__ import annotations

from collections.abc import Callable

from podflame.model import Line
from symbolizer.dwarf import DwarfError, DwarfInfo
from symbolizer.elf import ElfSymbols

UNKNOWN = "??"


def lines_at(elf: ElfSymbols, dwarf: DwarfInfo | None, vaddr: int, demangle: Callable[[str], str],
             *, keep_unnamed: bool = False) -> tuple[Line, ...] | None:
    """Frames at `vaddr`, innermost first, or None when nothing names it. `keep_unnamed`: return
    `??` with the file:line when DWARF knows the line but no function (the CLI prints it)."""
    sym = elf.lookup_start(vaddr)
    if dwarf is not None:
        try:
            found = dwarf.lookup(vaddr)
        except DwarfError:
            found = None
        if found is not None:
            frames, (file, line) = found
            if frames:
                out = []
                for i, fr in enumerate(frames):
                    name = fr.name
                    if not fr.linkage:  # C++ without a linkage name: the ELF symbol starting where it starts
                        at = elf.lookup_start(fr.low)
                        if at is not None and at[1] == fr.low:
                            name = at[0]
                        elif name is None and i == 0 and sym is not None:
                            name = sym[0]
                    out.append(Line(demangle(name) if name else UNKNOWN, fr.file, fr.line))
                return tuple(out)
            if sym is not None:
                return (Line(demangle(sym[0]), file, line),)
            if keep_unnamed and file is not None:
                return (Line(UNKNOWN, file, line),)
            return None
    if sym is not None:
        return (Line(demangle(sym[0])),)
    return None


def open_dwarf(elf: ElfSymbols, **kwargs: object) -> DwarfInfo | None:
    """DwarfInfo for a binary's DWARF wherever it lives (itself, build-id debug file, debuglink)."""
    if not elf.path:
        return None  # the vDSO: symbols only
    path = elf.dwarf_file()
    if path is None:
        return None
    try:
        return DwarfInfo(path, **kwargs)  # type: ignore[arg-type]
    except DwarfError:
        return None
