"""Sorted, named address ranges with bisect lookup: the one search ELF, kallsyms and perf maps share."""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable

_U64_MAX = (1 << 64) - 1


class AddressRanges:
    """Named half-open ranges `[start, end)`, one per distinct start, looked up by address.

    Ranges may nest (a sized function containing a local label symbol); when the address is past
    the innermost candidate, the earlier range reaching furthest (a prefix maximum of the ends,
    precomputed) gets a chance, so nesting costs one extra comparison instead of a backward scan.
    Starts and ends live in compact arrays: big binaries have hundreds of thousands of symbols.
    """

    __slots__ = ("_cover", "ends", "names", "starts")

    def __init__(self, ranges: Iterable[tuple[int, int, str]]) -> None:
        """`ranges` must be sorted by start with distinct starts; empty ranges are dropped."""
        kept = [r for r in ranges if r[1] > r[0]]
        self._set(array("Q", [r[0] for r in kept]), array("Q", [min(r[1], _U64_MAX) for r in kept]),
                  [r[2] for r in kept])

    @classmethod
    def from_columns(cls, starts: list[int], ends: list[int], names: list[str]) -> AddressRanges:
        """From parallel columns already sorted by distinct start, every end past its start.

        Skips building a tuple per range: kallsyms has ~120k of them and reloads while sampling.
        """
        self = cls.__new__(cls)
        self._set(array("Q", starts), array("Q", ends), names)
        return self

    def _set(self, starts: array, ends: array, names: list[str]) -> None:
        self.starts, self.ends, self.names = starts, ends, names
        cover = [0] * len(names)
        best, best_end = 0, -1
        for i, end in enumerate(ends):
            if end > best_end:
                best, best_end = i, end
            cover[i] = best
        self._cover = array("l", cover)

    def __len__(self) -> int:
        return len(self.names)

    def lookup_start(self, address: int) -> tuple[str, int] | None:
        """(name, start) of the range holding `address`."""
        i = bisect_right(self.starts, address) - 1
        if i < 0:
            return None
        if address < self.ends[i]:
            return self.names[i], self.starts[i]
        j = self._cover[i]
        if address < self.ends[j]:
            return self.names[j], self.starts[j]
        return None

    def lookup(self, address: int) -> str | None:
        i = bisect_right(self.starts, address) - 1
        if i < 0:
            return None
        if address < self.ends[i]:
            return self.names[i]
        j = self._cover[i]
        if address < self.ends[j]:
            return self.names[j]
        return None
