"""One binary's answer for one ELF virtual address: DWARF inline chain with file:line when the
binary (or its debug file) has DWARF, else the ELF symbol; names demangled.

Shared by the agent's Symbolizer and `podflame symbolize`, so both print what addr2line -f -i -C
would: the innermost frame's name is the DWARF function (its linkage name when it has one); a C++
function DWARF names without a linkage name takes the ELF symbol starting where it starts (as
binutils does, for every frame); outside any DWARF function the ELF symbol names the address.
The symbol table is consulted only in those cases: a C binary with DWARF never reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from symbolizer.dwarf import DwarfError, DwarfInfo
from symbolizer.elf import ElfSymbols

if TYPE_CHECKING:
    from podflame.model import Line

UNKNOWN = "??"

Frame = tuple[str, str | None, int | None]  # (function, file, line)


def frames_at(elf: ElfSymbols, dwarf: DwarfInfo | None, vaddr: int, demangle: Callable[[str], str],
              *, keep_unnamed: bool = False) -> list[Frame] | None:
    """Frames at `vaddr`, innermost first, or None when nothing names it. `keep_unnamed`: return
    `??` with the file:line when DWARF knows the line but no function (the CLI prints it)."""
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
                        elif name is None and i == 0 and (sym := elf.lookup_start(vaddr)) is not None:
                            name = sym[0]
                    out.append((demangle(name) if name else UNKNOWN, fr.file, fr.line))
                return out
            sym = elf.lookup_start(vaddr)
            if sym is not None:
                return [(demangle(sym[0]), file, line)]
            if keep_unnamed and file is not None:
                return [(UNKNOWN, file, line)]
            return None
    sym = elf.lookup_start(vaddr)
    if sym is not None:
        return [(demangle(sym[0]), None, None)]
    return None


def lines_at(elf: ElfSymbols, dwarf: DwarfInfo | None, vaddr: int, demangle: Callable[[str], str],
             *, keep_unnamed: bool = False) -> tuple[Line, ...] | None:
    """`frames_at` as the profile model's Lines."""
    frames = frames_at(elf, dwarf, vaddr, demangle, keep_unnamed=keep_unnamed)
    if frames is None:
        return None
    line = _line_class()
    return tuple(line(*f) for f in frames)


_LINE: list[type[Line]] = []


def _line_class() -> type[Line]:
    """podflame.model.Line, imported on first use (the CLI formats frames_at's tuples and never needs the model;
    an import statement in lines_at ran once per lookup)."""
    if not _LINE:
        from podflame.model import Line

        _LINE.append(Line)
    return _LINE[0]


def open_dwarf(elf: ElfSymbols, **kwargs: Any) -> DwarfInfo | None:
    """DwarfInfo for a binary's DWARF wherever it lives (itself, build-id debug file, debuglink)."""
    if not elf.path:
        return None  # the vDSO: symbols only
    path = elf.dwarf_file()
    if path is None:
        return None
    try:
        return DwarfInfo(path, **kwargs)
    except DwarfError:
        return None
