"""Kernel addresses -> names through /proc/kallsyms, parsed once into sorted arrays.

kallsyms has no sizes: a symbol reaches the next one, capped so an address far past the last
function of a region (module area, BPF programs) is not blamed on it. Modules and BPF programs
come and go, so a miss reloads the table, at most once per `min_reload_interval` (a reload
costs ~0.3 s of CPU, so an address that never resolves must not trigger one every drain).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from itertools import pairwise

from symbolizer.ranges import AddressRanges

# "ffffffff81000000 T name" or "ffffffffc0201000 t name\t[module]"; text (t, T) and weak (w, W) only
_LINE = re.compile(r"^([0-9a-fA-F]+) [tTwW] (\S+)(?:\s+(\[\S+\]))?[ \t]*$", re.M)
MAX_SYMBOL_SIZE = 256 * 1024  # larger than any kernel function; bounds the last symbol of a region


def parse_kallsyms(text: str) -> AddressRanges:
    """Text symbols of a kallsyms dump; module symbols are named `name [module]`."""
    syms: dict[int, str] = {}
    add = syms.setdefault  # aliases at one address: keep the first listed, as perf does
    for addr, name, module in _LINE.findall(text):
        add(int(addr, 16), f"{name} {module}" if module else name)
    syms.pop(0, None)  # zero: hidden by kptr_restrict
    starts = sorted(syms)
    cap = MAX_SYMBOL_SIZE
    ends = [min(e, s + cap) for s, e in pairwise(starts)]
    if starts:
        ends.append(min(starts[-1] + cap, (1 << 64) - 1))  # the last symbol is bounded by the cap alone
    return AddressRanges.from_columns(starts, ends, [syms[s] for s in starts])


class Kallsyms:
    """Lazily loaded kernel symbol table; `available` is False when addresses are hidden."""

    def __init__(self, path: str = "/proc/kallsyms", *, min_reload_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.min_reload_interval = min_reload_interval
        self._clock = clock
        self._ranges: AddressRanges | None = None
        self._loaded_at = 0.0
        self.reloads = 0

    def reload(self) -> None:
        try:
            with open(self.path) as f:
                text = f.read()
        except OSError:
            text = ""
        self._ranges = parse_kallsyms(text)
        self._loaded_at = self._clock()
        self.reloads += 1

    @property
    def available(self) -> bool:
        if self._ranges is None:
            self.reload()
        return bool(self._ranges)

    def __len__(self) -> int:
        if self._ranges is None:
            self.reload()
        return len(self._ranges)  # type: ignore[arg-type]

    def lookup(self, address: int) -> str | None:
        if self._ranges is None:
            self.reload()
        name = self._ranges.lookup(address)  # type: ignore[union-attr]
        if name is None and self._clock() - self._loaded_at >= self.min_reload_interval:
            self.reload()  # a module or BPF program loaded since the last read
            name = self._ranges.lookup(address)  # type: ignore[union-attr]
        return name
