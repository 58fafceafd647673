"""Groups of series that differ only in per-process labels (`pid`), for the SQLite store's group blocks.

A node busy with short-lived processes makes a series per process (~70k a day), and a query that needs no
split by process (a node's flame graph, the pod list, the CPU chart) read one block row per process and hour.
Compaction therefore also writes, per bucket, one block per group summing its member series' blocks
(web/store/sqlite.py `_compact_bucket`): a group is a label set without `pid`, plus sample type and unit, so
a selector that names no per-process label matches either every member of a group or none, and the group's
block is exactly the sum of the member blocks it would have read.

A group block is a `profiles` row like any block, whose `series` column holds the group's id negated: it can
never be taken for a series, and every statement that reads blocks by series id, level or time (retention,
recompaction) handles it with the rest.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

from web.store.base import Series
from web.store.selector import Selector

PER_PROCESS = frozenset({"pid"})  # labels that tell processes apart; a group is the series agreeing on the rest
GroupKey = tuple[str, str, str]  # (labels without per-process ones as sorted JSON pairs, sample type, unit)


def group_key(labels: Mapping[str, str], sample_type: str, unit: str) -> GroupKey:
    items = sorted((k, v) for k, v in labels.items() if k not in PER_PROCESS and v != "")
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False), sample_type, unit


def groups_answer(selector: Selector, keep: Collection[str] | None) -> bool:
    """Whether group blocks answer a query with this selector that needs only the `keep` labels of each ref
    (None: all of them): neither may name a per-process label."""
    return keep is not None and not PER_PROCESS.intersection(keep) and \
        not any(m.name in PER_PROCESS for m in selector.matchers)


class GroupTable:
    """The store's groups in memory (the caller serialises access). A group's `Series` has the negated group
    id as its id, and the group's labels; which groups a selector matches is kept until a group comes or goes
    (a page asks the same few selectors again and again)."""

    def __init__(self) -> None:
        self.by_id: dict[int, Series] = {}
        self.ids: dict[GroupKey, int] = {}
        self._matching: dict[tuple[Selector, str | None, str | None], list[int]] = {}

    def add(self, gid: int, labels_json: str, sample_type: str, unit: str) -> None:
        self.by_id[gid] = Series(-gid, dict(json.loads(labels_json)), sample_type, unit)
        self.ids[(labels_json, sample_type, unit)] = gid
        self._matching.clear()

    def drop(self, gid: int) -> None:
        s = self.by_id.pop(gid)
        del self.ids[group_key(s.labels, s.sample_type, s.unit)]
        self._matching.clear()

    def matching(self, selector: Selector, sample_type: str | None, unit: str | None) -> list[int]:
        """Ids of the groups whose labels the selector matches, of this type and unit (when given)."""
        key = (selector, sample_type, unit)
        found = self._matching.get(key)
        if found is None:
            found = self._matching[key] = sorted(
                gid for gid, s in self.by_id.items()
                if sample_type in (None, s.sample_type) and unit in (None, s.unit) and selector.matches(s.labels))
            if len(self._matching) > 256:
                del self._matching[next(iter(self._matching))]
        return found
