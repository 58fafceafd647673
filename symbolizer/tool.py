"""`podflame symbolize`: ELF virtual addresses of one binary -> frames, printed like addr2line -f -i -C.

One block per address, innermost frame first, one `function<TAB>file:line` line per frame (`??`
and `??:0` where unknown, as addr2line prints them), blocks separated by an empty line. Without
`inlines` only the innermost frame is printed (addr2line without -i).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from podflame.model import Line
from symbolizer.demangle import demangle
from symbolizer.diskcache import DiskCache
from symbolizer.elf import ElfSymbols
from symbolizer.resolve import UNKNOWN, lines_at, open_dwarf


def parse_address(token: str) -> int:
    """Hex, with or without 0x (addr2line reads addresses as hex either way)."""
    return int(token[2:] if token.lower().startswith("0x") else token, 16)


def format_frame(line: Line) -> str:
    where = f"{line.file}:{line.line if line.line else 0}" if line.file else "??:0"
    return f"{line.function}\t{where}"


class BinaryTool:
    """Symbols and DWARF of one binary, opened once for many addresses."""

    def __init__(self, path: str, *, debug_dirs: Sequence[str] = ("/usr/lib/debug",),
                 cache_dir: str | None = None) -> None:
        self.elf = ElfSymbols(path, debug_dirs=debug_dirs)
        self.elf.ranges  # noqa: B018 -- read the symbol table now: errors belong to opening
        kwargs: dict = {}
        if cache_dir and self.elf.build_id:
            kwargs = DiskCache(cache_dir).hooks(self.elf.build_id)
        self.dwarf = open_dwarf(self.elf, **kwargs)

    def frames(self, vaddr: int) -> tuple[Line, ...]:
        lines = lines_at(self.elf, self.dwarf, vaddr, demangle, keep_unnamed=True)
        return lines or (Line(UNKNOWN),)

    def blocks(self, addresses: Iterable[int], *, inlines: bool) -> Iterator[str]:
        for a in addresses:
            frames = self.frames(a)
            yield "\n".join(format_frame(f) for f in (frames if inlines else frames[:1]))
