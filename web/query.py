"""Queries over a `Store`: select by selector and time range, merge, summarise per series.

Merging happens on integer columns (stack id, value) with numpy; frames are looked up once
per distinct stack of the result, so the cost grows with distinct stacks, not with profiles.
Only the `Store` interface is used, so another backend needs no change here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from podflame.model import Profile
from web.selector import Selector
from web.store import Store, StoredProfile

DEFAULT_TYPE = "samples"


@dataclass(frozen=True, slots=True)
class Query:
    """What every query endpoint takes: a selector, a half-open range [t0, t1) and a sample type."""

    selector: Selector
    t0: int
    t1: int
    sample_type: str | None = None


def resolve_type(store: Store, q: Query) -> tuple[str, str | None]:
    """The (type, unit) to show: the requested type, else `samples` when present, else the first type.

    The unit is None when nothing of that type is in range (any unit then matches, and none exists).
    """
    present = store.types(q.t0, q.t1, q.selector) or store.types(q.t0, q.t1)
    if q.sample_type:
        units = [u for t, u in present if t == q.sample_type]
        return q.sample_type, (units[0] if units else None)
    for t, u in present:
        if t == DEFAULT_TYPE:
            return t, u
    if present:
        return present[0]
    return DEFAULT_TYPE, None


def select(store: Store, q: Query) -> tuple[str, str, list[StoredProfile]]:
    sample_type, unit = resolve_type(store, q)
    refs = store.select(q.selector, q.t0, q.t1, sample_type, unit)
    return sample_type, unit or (refs[0].series.unit if refs else "count"), refs


def group_sum(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (sorted) and the exact int64 sum of values for each."""
    if keys.size == 0:
        return keys, values
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    return k[starts], np.add.reduceat(v, starts)


def _dominant_period(refs: Sequence[StoredProfile]) -> int:
    """The period that carries most of the value: one number must describe a merged profile."""
    weight: dict[int, int] = defaultdict(int)
    for r in refs:
        weight[r.period_ns] += abs(r.total) or 1
    return max(weight.items(), key=lambda kv: (kv[1], kv[0]))[0] if weight else 0


def _common_labels(refs: Sequence[StoredProfile]) -> dict[str, str]:
    if not refs:
        return {}
    labels = dict(refs[0].series.labels)
    for r in refs[1:]:
        if labels:
            labels = {k: v for k, v in labels.items() if r.series.labels.get(k) == v}
    return labels


def _window(refs: Sequence[StoredProfile], q: Query) -> tuple[int, int]:
    if not refs:
        return q.t0, q.t1 - q.t0
    start = min(r.start_ns for r in refs)
    return start, max(r.start_ns + r.duration_ns for r in refs) - start


def merged_profile(store: Store, q: Query) -> Profile:
    """Every matching profile in range summed into one; labels are those all inputs share."""
    sample_type, unit, refs = select(store, q)
    start, duration = _window(refs, q)
    out = Profile(labels=_common_labels(refs), start_ns=start, duration_ns=duration,
                  period_ns=_dominant_period(refs), sample_type=sample_type, unit=unit)
    if not refs:
        return out
    cols = store.read(refs)
    ids, values = group_sum(cols.stack, cols.value)
    stacks = store.stacks(ids.tolist())
    for sid, value in zip(ids.tolist(), values.tolist(), strict=True):
        out.add(stacks[sid], value)
    return out


def profiles_by_series(store: Store, q: Query) -> tuple[str, str, list[Profile]]:
    """One merged profile per matching series (labels kept), e.g. for a pprof download."""
    sample_type, unit, refs = select(store, q)
    if not refs:
        return sample_type, unit, []
    cols = store.read(refs)
    series_ids = np.array([r.series.id for r in refs], dtype=np.int64)[cols.profile]
    by_series: dict[int, list[StoredProfile]] = defaultdict(list)
    for r in refs:
        by_series[r.series.id].append(r)
    keys, values = group_sum((series_ids << 32) | cols.stack, cols.value)
    stack_of, series_of = (keys & 0xFFFFFFFF).tolist(), (keys >> 32).tolist()
    stacks = store.stacks(set(stack_of))
    out: dict[int, Profile] = {}
    for series_id, stack_id, value in zip(series_of, stack_of, values.tolist(), strict=True):
        p = out.get(series_id)
        if p is None:
            group = by_series[series_id]
            start, duration = _window(group, q)
            p = out[series_id] = Profile(labels=dict(group[0].series.labels), start_ns=start, duration_ns=duration,
                                         period_ns=_dominant_period(group), sample_type=sample_type, unit=unit)
        p.add(stacks[stack_id], value)
    return sample_type, unit, list(out.values())


def cpu_nanoseconds(sample_type: str, unit: str, refs: Sequence[StoredProfile]) -> int | None:
    """CPU time behind these profiles, when the type measures CPU; None otherwise."""
    if (sample_type, unit) == ("cpu", "nanoseconds"):
        return sum(r.total for r in refs)
    if (sample_type, unit) == ("samples", "count") and any(r.period_ns > 0 for r in refs):
        return sum(r.total * r.period_ns for r in refs)
    return None


def series_summary(store: Store, q: Query, by: Sequence[str] | None = None) -> dict:
    """Profiles grouped by the `by` labels (all labels when None), largest first, with CPU time and share.

    Only index metadata is read (each stored profile keeps its total), no sample data.
    """
    sample_type, unit, refs = select(store, q)
    groups: dict[tuple[tuple[str, str], ...], list[StoredProfile]] = defaultdict(list)
    for r in refs:
        labels = r.series.labels
        key = tuple(sorted(labels.items())) if by is None else tuple((k, labels[k]) for k in by if k in labels)
        groups[key].append(r)
    seconds = (q.t1 - q.t0) / 1e9
    rows = []
    for key, group in groups.items():
        cpu_ns = cpu_nanoseconds(sample_type, unit, group)
        cpu_s = None if cpu_ns is None else cpu_ns / 1e9
        rows.append({"labels": dict(key), "value": sum(r.total for r in group), "cpu_seconds": cpu_s,
                     "cpu_share": None if cpu_s is None or seconds <= 0 else cpu_s / seconds})
    rows.sort(key=lambda r: (-r["value"], sorted(r["labels"].items())))
    return {"from": q.t0 / 1e9, "to": q.t1 / 1e9, "type": sample_type, "unit": unit,
            "total": sum(r.total for r in refs), "series": rows}
