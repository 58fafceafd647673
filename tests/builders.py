"""Shared test builders: profiles into a store through the one write path, payloads of a Profile.

Tests store profiles as the server does: encoded to pprof, decoded, normalized into a `Batch` and
`Store.put` (one pprof per profile, so profiles of different times can share one atomic put).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from podflame import pprof
from podflame.model import Frame, Line, Profile
from web.normalize import batch_of
from web.query.flamegraph import flamegraph_from_stacks
from web.query.stacks import NameStacks
from web.store.base import Batch, PutResult, Store


def batches(profiles: Sequence[Profile]) -> list[Batch]:
    """Each profile as the server would receive it: pprof bytes, decoded, normalized; only the profile's own
    sample type is kept (pprof.encode adds CPU nanoseconds to sample counts), so one profile is one series."""
    out = []
    for p in profiles:
        b = batch_of(pprof.decode_ids(pprof.encode([p]), numeric_labels=False))  # as the server decodes
        out.append(replace(b, series=[s for s in b.series if (s.sample_type, s.unit) == (p.sample_type, p.unit)]))
    return out


def put(store: Store, profiles: Sequence[Profile]) -> PutResult:
    """Store `profiles` in one atomic put, through the path ingest takes."""
    return store.put(batches(profiles))


def as_ingested(frame: Frame) -> Frame:
    """The frame a store gives back for `frame`: pprof names an unsymbolized frame by its fallback name."""
    if frame.reason is None:
        return frame
    return Frame(frame.address, frame.mapping, frame.kind, frame.lines or (Line(frame.fallback_name()),))


def flamegraph_of(profile: Profile, max_nodes: int | None = None) -> dict[str, Any]:
    """A Profile's flame-graph payload with the metadata the server adds (web/query/merge.py `_meta`)."""
    payload = flamegraph_from_stacks(name_stacks_of(profile), max_nodes)
    payload.update(unit=profile.unit, type=profile.sample_type, period_ns=profile.period_ns)
    return payload


def name_stacks_of(profile: Profile) -> NameStacks:
    """A Profile's function-name stacks (inline frames are names of their own), interned locally."""
    index: dict[str, int] = {}
    paths = []
    values = []
    for names, value in profile.name_stacks():
        paths.append([index.setdefault(n, len(index)) for n in names])
        values.append(value)
    return NameStacks.from_lists(list(index), paths, np.array(values, dtype=np.int64))
