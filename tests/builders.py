"""Shared test builders: profiles into a store or a server through the paths ingest takes, payloads of a Profile.

Tests store profiles as the server does: encoded to pprof, decoded, normalized into a `Batch` and
`Store.put` (one pprof per profile, so profiles of different times can share one atomic put), or POSTed
as pprof to a test client (`ingest`) or a live server (`ingest_url`).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flask.testing import FlaskClient

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


def ingest(client: FlaskClient, profiles: list[Profile], query: str = "", **params: str) -> Any:
    """POST profiles as one pprof to a Flask test client's /api/v1/ingest; the JSON answer (must be 200)."""
    r = client.post(f"/api/v1/ingest{query}", query_string=params or None, data=pprof.encode(profiles))
    assert r.status_code == 200, r.json
    return r.json


@contextmanager
def served(data_dir: Path, profiles: list[Profile], **params: str) -> Iterator[FlaskClient]:
    """A test client of a server on data_dir that holds `profiles`; its store closed after use."""
    from web.server.app import create_app

    app = create_app({"DATA_DIR": str(data_dir)})
    try:
        client = app.test_client()
        ingest(client, profiles, **params)
        yield client
    finally:
        app.extensions["podflame.store"].close()


def ingest_url(url: str, profiles: list[Profile]) -> dict[str, Any]:
    """POST profiles as one pprof to a live server at `url`; its JSON answer."""
    req = urllib.request.Request(f"{url}/api/v1/ingest", data=pprof.encode(profiles), method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as r:
        answer: dict[str, Any] = json.loads(r.read())
        return answer
