"""The SQLite store's series in memory as columns, so label lists and matchers cost array operations.

Every label value is a series dimension, and `pid` is one: a node busy with short-lived processes makes
~70k series a day. Visiting them one Python object at a time made each label list, type probe and
matcher cost 0.5-0.7 s at that count (docs/benchmarks.md "Series churn"). Here each series is a slot in
parallel arrays: its id, the start of its first and last stored row (any level), its (sample type, unit),
and one column of value ids per label name. A matcher is evaluated once per distinct value of its label
(regexes on RE2, bounded by web/store/selector.py) and then applied to every slot as one table lookup;
which series have rows in a range is two comparisons per slot, and a label list is the value ids present
among those slots.

Nothing here is stored: the store fills the index from its `series` table and the rows' spans when it
opens, and keeps it current on every put, compaction and retention pass. Slots and value ids of dropped
series are reused, so memory follows the live series, not every series ever seen.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import numpy as np

from web.store import deadline
from web.store.selector import Matcher, Op, Selector

_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min
HOUR_NS = 3600 * 1_000_000_000  # the time index's bucket: which slots have rows starting in each hour
_ABSENT = -1  # a column's value id where the series has no such label (labels equal to "" are not stored)


_MATCHES_KEPT = 32  # regex answers kept per label name (a page's few selectors, asked again and again)


class _Label:
    """One label name's distinct values (id -> text; None once no series has it) and each value's series count.

    A regex's answer per value id is kept (`_matches`) and extended to values added since, so a `pid=~...`
    over 40k pids costs RE2 calls for the new pids only; a released value id bumps `epoch`, which voids them
    (its id may come back with another value)."""

    __slots__ = ("_matches", "_order", "_order_values", "_reused", "_sorted_n", "column", "epoch", "free", "ids",
                 "refs", "values")

    def __init__(self, capacity: int) -> None:
        self.column = np.full(capacity, _ABSENT, dtype=np.int32)
        self.values: list[str | None] = []
        self.ids: dict[str, int] = {}
        self.refs: list[int] = []
        self.free: list[int] = []
        self.epoch = 0
        self._matches: dict[tuple[Op, str], tuple[int, np.ndarray]] = {}  # (op, pattern) -> (epoch, per value id)
        # Value ids in value order as of the last sort (`sorted_ids`), their values then, how many ids there
        # were, and the ids reused since (their place in the order is stale).
        self._order = np.empty(0, dtype=np.int64)
        self._order_values: list[str] = []
        self._sorted_n = 0
        self._reused: set[int] = set()

    def value_id(self, value: str) -> int:
        vid = self.ids.get(value)
        if vid is None:
            if self.free:
                vid = self.free.pop()
                self.values[vid] = value
                if vid < self._sorted_n:
                    self._reused.add(vid)
            else:
                vid = len(self.values)
                self.values.append(value)
                self.refs.append(0)
            self.ids[value] = vid
        self.refs[vid] += 1
        return vid

    def release(self, vid: int) -> None:
        self.refs[vid] -= 1
        if not self.refs[vid]:
            value = self.values[vid]
            assert value is not None
            del self.ids[value]
            self.values[vid] = None
            self.free.append(vid)
            self.epoch += 1

    def sorted_ids(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(value ids in value order as of the last sort, their values then, value ids added or reused since).

        A page of a label's values in order (`pid`'s first 500 of 40k) then costs array passes and a sort of
        the few new values, not a sort of all: new pids arrive with every put, so the whole order is redone
        only once they are an eighth of the values. Ids in the order may since have been released (no series
        has them: callers ask for present ids only) or reused (the third array; left out of the order)."""
        n = len(self.values)
        if n - self._sorted_n + len(self._reused) > max(64, n // 8):
            pairs = sorted((v, i) for i, v in enumerate(self.values) if v is not None)
            self._order = np.fromiter((i for _, i in pairs), dtype=np.int64, count=len(pairs))
            self._order_values = [v for v, _ in pairs]
            self._sorted_n = n
            self._reused.clear()
        fresh = np.array([*range(self._sorted_n, n), *self._reused], dtype=np.int64)
        return self._order, self._order_values, fresh

    def with_prefix(self, prefix: str) -> np.ndarray:
        """Per value id + 1 (0: absent), whether the value starts with `prefix`: a range of the sorted order
        found by bisection, and a test of each value added since."""
        order, values, fresh = self.sorted_ids()
        lo = bisect.bisect_left(values, prefix)
        hi = bisect.bisect_right(values, prefix, lo, key=lambda v: v[:len(prefix)])
        table = np.zeros(len(self.values) + 1, dtype=bool)
        table[order[lo:hi] + 1] = True
        for vid in fresh.tolist():
            value = self.values[vid]
            table[vid + 1] = value is not None and value.startswith(prefix)
        return table

    def matching(self, m: Matcher) -> np.ndarray:
        """Per value id + 1 (index 0: the label absent, i.e. ""), whether `m` accepts it."""
        table = np.zeros(len(self.values) + 1, dtype=bool)
        table[0] = m.matches("")
        if m.op in (Op.EQ, Op.NE):
            vid = self.ids.get(m.value)
            if vid is not None:
                table[vid + 1] = True
            if m.op is Op.NE:
                table[1:] = ~table[1:]
            return table
        table[1:] = self._regex_hits(m)
        return table

    def _regex_hits(self, m: Matcher) -> np.ndarray:
        """Per value id, whether the regex matcher accepts it: RE2 runs only on ids not answered before."""
        key = (m.op, m.value)
        kept = self._matches.pop(key, None)
        hits = kept[1] if kept is not None and kept[0] == self.epoch else np.zeros(0, dtype=bool)
        if hits.size < len(self.values):
            new = np.zeros(len(self.values), dtype=bool)
            new[:hits.size] = hits
            for vid in range(hits.size, len(self.values)):
                if not vid & 255:
                    deadline.check()  # a label with 100k values: the query stops, the store's lock is let go
                value = self.values[vid]
                if value is not None and m.matches(value):  # one RE2 match per distinct value
                    new[vid] = True
            hits = new
        self._matches[key] = (self.epoch, hits)  # most recently used last
        if len(self._matches) > _MATCHES_KEPT:
            del self._matches[next(iter(self._matches))]
        return hits


def _distinct(a: np.ndarray) -> np.ndarray:
    """Sorted, without repeats (by a sort: numpy's hashing `unique` took 1.6 ms for an hour's 12k slots)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if a.size else a


class SeriesIndex:
    """Series as slots of parallel arrays (see the module docstring); the caller serialises access."""

    def __init__(self) -> None:
        self._capacity = 0
        self.size = 0  # slots below this are in use or free; every array is read up to it
        self.sid = np.empty(0, dtype=np.int64)  # -1: a free slot
        self.first = np.empty(0, dtype=np.int64)  # start of the series' first row; I64_MAX when it has none
        self.last = np.empty(0, dtype=np.int64)  # start of its last row; I64_MIN when it has none
        self.kind = np.empty(0, dtype=np.int32)  # index into `kinds`
        self.kinds: list[tuple[str, str]] = []  # (sample type, unit)
        self._kind_ids: dict[tuple[str, str], int] = {}
        self.labels: dict[str, _Label] = {}
        self._slot: dict[int, int] = {}
        self._free: list[int] = []
        # Per hour, the slots with a row starting in it (arrays appended by puts, joined when read). A range's
        # lists and matchers look at these slots only, so a 1 h query costs the series of that hour, not every
        # series retention keeps (a week of a busy node: a million). A slot reused by a new series may stay
        # listed in an old hour: a superset, which the spans then decide exactly.
        self._hours: dict[int, list[np.ndarray]] = {}
        self._clean: set[int] = set()  # hours held as one sorted array without repeats

    # -- upkeep --------------------------------------------------------------------------------

    def _grow(self) -> None:
        cap = max(1024, self._capacity * 2)

        def grown(a: np.ndarray, fill: int) -> np.ndarray:
            out = np.full(cap, fill, dtype=a.dtype)
            out[:a.size] = a
            return out

        self.sid = grown(self.sid, -1)
        self.first = grown(self.first, _I64_MAX)
        self.last = grown(self.last, _I64_MIN)
        self.kind = grown(self.kind, 0)
        for label in self.labels.values():
            label.column = grown(label.column, _ABSENT)
        self._capacity = cap

    def add(self, sid: int, labels: Mapping[str, str], sample_type: str, unit: str) -> None:
        """A new series, with no rows yet (`extend` gives it its span)."""
        if self._free:
            slot = self._free.pop()
        else:
            if self.size == self._capacity:
                self._grow()
            slot = self.size
            self.size += 1
        self._slot[sid] = slot
        self.sid[slot] = sid
        self.first[slot], self.last[slot] = _I64_MAX, _I64_MIN
        kind = self._kind_ids.get((sample_type, unit))
        if kind is None:
            kind = self._kind_ids[(sample_type, unit)] = len(self.kinds)
            self.kinds.append((sample_type, unit))
        self.kind[slot] = kind
        for name, value in labels.items():
            label = self.labels.get(name)
            if label is None:
                label = self.labels[name] = _Label(self._capacity)
            label.column[slot] = label.value_id(value)

    def drop(self, sid: int) -> None:
        """Forget a series: its slot and, when no other series has them, its label values and names."""
        slot = self._slot.pop(sid)
        self.sid[slot] = -1
        self.first[slot], self.last[slot] = _I64_MAX, _I64_MIN
        for name in list(self.labels):
            label = self.labels[name]
            vid = int(label.column[slot])
            if vid != _ABSENT:
                label.column[slot] = _ABSENT
                label.release(vid)
                if not label.ids:  # a name no series has left is in no list
                    del self.labels[name]
        self._free.append(slot)

    def extend(self, sids: list[int], starts: list[int]) -> None:
        """Rows starting at `starts` were stored for these series: widen their spans."""
        slots = np.fromiter((self._slot[s] for s in sids), dtype=np.int64, count=len(sids))
        at = np.array(starts, dtype=np.int64)
        np.minimum.at(self.first, slots, at)
        np.maximum.at(self.last, slots, at)
        hours = at // HOUR_NS
        for h in np.unique(hours).tolist():
            held = self._hours.setdefault(h, [])
            held.append(slots[hours == h])
            if len(held) > 64:  # an hour nobody asks about still holds one array, not one per put
                held[:] = [_distinct(np.concatenate(held))]
                self._clean.add(h)
            else:
                self._clean.discard(h)

    def forget_before(self, cutoff: int) -> None:
        """Retention cut every row starting before `cutoff`: hours wholly before it list no slot."""
        for h in [h for h in self._hours if (h + 1) * HOUR_NS <= cutoff]:
            del self._hours[h]
            self._clean.discard(h)

    def near_slots(self, lo: int, hi: int) -> np.ndarray | None:
        """Slots that may have a row starting in [lo, hi) (sorted, a superset), or None when the range spans
        over half of the hours with rows (a pass over every slot is then as cheap)."""
        first, last = lo // HOUR_NS, (hi - 1) // HOUR_NS
        if last - first + 1 <= len(self._hours):
            hours = [h for h in range(first, last + 1) if h in self._hours]
        else:
            hours = [h for h in self._hours if first <= h <= last]
        if 2 * len(hours) > len(self._hours):
            return None
        parts = []
        for h in hours:
            held = self._hours[h]
            if len(held) > 1 or h not in self._clean:  # joined once, until the next put into that hour
                held[:] = [_distinct(np.concatenate(held))]
                self._clean.add(h)
            parts.append(held[0])
        if len(parts) == 1:
            return parts[0]
        return _distinct(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def set_first(self, sid: int, start: int) -> None:
        """Retention cut the series' first rows: its first row now starts at `start`."""
        self.first[self._slot[sid]] = start

    def span(self, sid: int) -> tuple[int, int] | None:
        slot = self._slot[sid]
        first, last = int(self.first[slot]), int(self.last[slot])
        return (first, last) if first <= last else None

    # -- reads ---------------------------------------------------------------------------------

    def live(self) -> np.ndarray:
        return self.sid[:self.size] >= 0

    def match(self, selector: Selector | None, sample_type: str | None = None, unit: str | None = None,
              near: tuple[int, int] | None = None) -> np.ndarray:
        """Per slot, whether its series matches the selector (and the type and unit, when given); with `near`
        (lo, hi), only slots that may have rows in [lo, hi) are looked at (others are False)."""
        at = self.near_slots(*near) if near is not None else None
        if at is None:
            return self._match(selector, sample_type, unit, slice(0, self.size))
        mask = np.zeros(self.size, dtype=bool)
        mask[at] = self._match(selector, sample_type, unit, at)
        return mask

    def _match(self, selector: Selector | None, sample_type: str | None, unit: str | None, at: slice | np.ndarray
              ) -> np.ndarray:
        """`match` at the slots `at`: one entry per slot there."""
        mask = self.sid[at] >= 0
        for m in selector.matchers if selector else ():
            label = self.labels.get(m.name)
            if label is None:  # no series has the label: it is "" everywhere
                if not m.matches(""):
                    return np.zeros(mask.size, dtype=bool)
                continue
            mask &= label.matching(m)[label.column[at] + 1]
        if sample_type is not None or unit is not None:
            ok = np.array([(sample_type is None or t == sample_type) and (unit is None or u == unit)
                           for t, u in self.kinds], dtype=bool)
            mask &= ok[self.kind[at]]
        return mask

    def around(self, mask: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots of `mask` with a row starting in [lo, hi), and slots that may have one: (active, straddling).

        A span's ends are starts of rows, so a series whose first or last row starts inside is active and one
        whose rows all lie outside is not; only one with rows on both sides (a long-lived process) is
        undecided, for the caller to look up in the rows."""
        first, last = self.first[:self.size], self.last[:self.size]
        near = mask & (last >= lo) & (first < hi)
        inside = near & ((first >= lo) | (last < hi))
        return np.flatnonzero(inside), np.flatnonzero(near & ~inside)

    def near_count(self, lo: int, hi: int) -> int:
        """How many series have rows on or around [lo, hi) (their span meets it): how much of a range a
        selector's series are."""
        return int(np.count_nonzero((self.last[:self.size] >= lo) & (self.first[:self.size] < hi)))

    def sids(self, slots: np.ndarray) -> list[int]:
        return self.sid[slots].tolist()

    def names_in(self, slots: np.ndarray) -> set[str]:
        """Label names that at least one of these slots' series has."""
        head = slots[:256]  # most names are on most series: a few slots answer, not a pass over 75k of them
        return {name for name, label in self.labels.items()
                if (label.column[head] != _ABSENT).any() or (label.column[slots[256:]] != _ABSENT).any()}

    def value_ids_in(self, name: str, slots: np.ndarray) -> np.ndarray:
        """Per value id of `name`, whether one of these slots' series has that value."""
        label = self.labels[name]
        present = np.zeros(len(label.values) + 1, dtype=bool)
        present[label.column[slots] + 1] = True
        return present[1:]

    def with_prefix(self, name: str, prefix: str) -> np.ndarray:
        """Per slot, whether its series's value of `name` starts with `prefix` (no test per distinct value)."""
        label = self.labels[name]
        return label.with_prefix(prefix)[label.column[:self.size] + 1]

    def values(self, name: str, present: np.ndarray, limit: int | None = None) -> tuple[list[str], int]:
        """The first `limit` (None: all) of the present value ids' values in order, and how many are present.

        From the label's kept order (`_Label.sorted_ids`): the present ids in it, then the few values added
        since, merged by one sort of two runs; with a limit only the order's first `limit` are taken."""
        label = self.labels[name]
        count = int(np.count_nonzero(present))
        if count <= 64:
            few = sorted(v for v in (label.values[i] for i in np.flatnonzero(present).tolist()) if v is not None)
            return few[:limit] if limit is not None else few, count
        order, _, fresh = label.sorted_ids()
        keep = present[order]  # `present` has an entry per value id; the order's ids are older
        if fresh.size:
            keep &= ~np.isin(order, fresh)  # a reused id's place in the order is stale
        at = np.flatnonzero(keep)
        first = order[at[:limit] if limit is not None else at].tolist()
        new = fresh[present[fresh]].tolist() if fresh.size else []
        values = label.values
        out = [values[i] for i in first]
        if new:
            out += sorted(values[i] for i in new)  # type: ignore[type-var]  # present ids have values
            out.sort()  # two sorted runs: one merge
        return out[:limit] if limit is not None else out, count  # type: ignore[return-value]  # present: not None

    def column(self, name: str) -> np.ndarray | None:
        label = self.labels.get(name)
        return None if label is None else label.column[:self.size]
