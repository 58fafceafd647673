"""A small weighted LRU: the symbolizer keeps big symbol tables and many frame results, both bounded."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """Least-recently-used map bounded by entry count and by total weight (e.g. symbols held).

    `weigh` is called once per insert, so a binary's symbol count can bound memory without
    re-measuring on every hit.
    """

    def __init__(self, max_entries: int, max_weight: int | None = None,
                 weigh: Callable[[V], int] | None = None) -> None:
        self.max_entries = max_entries
        self.max_weight = max_weight
        self._weigh = weigh
        self._data: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.weight = 0

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        item = self._data.get(key)  # entries are (value, weight) tuples, never None
        if item is None:
            return default
        self._data.move_to_end(key)
        return item[0]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: Hashable, value: V) -> None:
        w = self._weigh(value) if self._weigh else 0
        old = self._data.pop(key, None)
        if old is not None:
            self.weight -= old[1]
        self._data[key] = (value, w)
        self.weight += w
        # evict the oldest, but never the entry just inserted
        while len(self._data) > 1 and (len(self._data) > self.max_entries or
                                       (self.max_weight is not None and self.weight > self.max_weight)):
            _, (_, ow) = self._data.popitem(last=False)
            self.weight -= ow
        if len(self._data) > self.max_entries:  # max_entries == 0
            self.clear()

    def pop(self, key: Hashable) -> V | None:
        item = self._data.pop(key, None)
        if item is None:
            return None
        self.weight -= item[1]
        return item[0]

    def clear(self) -> None:
        self._data.clear()
        self.weight = 0
