"""`podflame symbolize`: ELF virtual addresses of one binary -> frames, printed like addr2line -f -i -C.

One block per address, innermost frame first, one `function<TAB>file:line` line per frame (`??`
and `??:0` where unknown, as addr2line prints them), blocks separated by an empty line. Without
`inlines` only the innermost frame is printed (addr2line without -i).

This runs as a short process per batch, so it imports only what it uses (no profile model, no
disk cache unless asked for) and reads the symbol table only when DWARF does not name a frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from symbolizer.demangle import demangle
from symbolizer.elf import ElfSymbols
from symbolizer.resolve import UNKNOWN, Frame, frames_at, open_dwarf


def parse_address(token: str) -> int:
    """Hex, with or without 0x (addr2line reads addresses as hex either way)."""
    return int(token[2:] if token.lower().startswith("0x") else token, 16)


def format_frame(frame: Frame) -> str:
    function, file, line = frame
    return f"{function}\t{file}:{line if line else 0}" if file else f"{function}\t??:0"


class BinaryTool:
    """Symbols and DWARF of one binary, opened once for many addresses."""

    def __init__(self, path: str, *, debug_dirs: Sequence[str] = ("/usr/lib/debug",),
                 cache_dir: str | None = None) -> None:
        self.elf = ElfSymbols(path, debug_dirs=debug_dirs)
        kwargs: dict = {}
        if cache_dir:
            from symbolizer.diskcache import DiskCache

            cache = DiskCache(cache_dir)
            if self.elf.build_id:
                kwargs = cache.hooks(self.elf.build_id)
                self.elf.load_symbols = cache.symbols_loader(self.elf)
            else:  # keyed by what the tables and the DWARF hold (symbolizer.core does the same)
                from symbolizer.dwarf import dwarf_digest

                if (digest := self.elf.table_digest()) is not None:
                    self.elf.load_symbols = cache.symbols_loader(self.elf, digest)
                if (dw := self.elf.dwarf_file()) is not None and (key := dwarf_digest(dw)) is not None:
                    kwargs = cache.hooks(key)
        self.dwarf = open_dwarf(self.elf, **kwargs)

    def frames(self, vaddr: int) -> list[Frame]:
        return frames_at(self.elf, self.dwarf, vaddr, demangle, keep_unnamed=True) or [(UNKNOWN, None, None)]

    def blocks(self, addresses: Iterable[int], *, inlines: bool) -> Iterator[str]:
        """One block per address, in order (raises ElfReadError if the symbol table is unreadable)."""
        for a in addresses:
            frames = self.frames(a)
            yield "\n".join(map(format_frame, frames)) if inlines else format_frame(frames[0])


def symbolize_text(binary: str, tokens: Sequence[str], *, inlines: bool, cache_dir: str | None = None) -> str:
    """What `podflame symbolize` prints for these address tokens (ValueError for one that is not
    hex, ElfReadError for an unreadable binary)."""
    vaddrs = [parse_address(t) for t in tokens]
    if not vaddrs:
        return ""
    return "\n\n".join(BinaryTool(binary, cache_dir=cache_dir).blocks(vaddrs, inlines=inlines)) + "\n"
