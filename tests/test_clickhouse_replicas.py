"""Stateless replicas on one ClickHouse: what one server keeps (answers, stacks, names) never hides another's write.

Two store objects on one chDB database are two podflame servers on one ClickHouse (chDB holds its data
directory in one process, so both live here; each has its own caches and kept answers, as replicas do)."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import put
from web.server.app import create_app
from web.store.clickhouse import ClickHouseStore
from web.store.dsn import open_store

S = 10**9
H = 3600 * S
T0 = 1_700_000_000 * S // H * H
EXE = Mapping(0x400000, 0x500000, 0, "/usr/bin/app", "feedface")
FRAMES = [Frame(0x401000 + 16 * i, EXE, FrameKind.NATIVE, (Line(f"fn{i}", "app.c", 10 + i),)) for i in range(12)]


def profiles(t0: int, n: int, pod: str, seed: int) -> list[Profile]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        p = Profile({"pod": pod}, t0 + k * 60 * S, 60 * S, 10_000_000)
        for _ in range(rng.randint(1, 6)):
            p.add(tuple(FRAMES[rng.randrange(len(FRAMES))] for _ in range(rng.randint(1, 5))), rng.randint(1, 50))
        out.append(p)
    return out


def tree(client: FlaskClient, params: dict[str, str]) -> dict[str, Any]:
    r = client.get("/api/v1/flamegraph", query_string=params)
    assert r.status_code == 200, r.data[:300]
    body: dict[str, Any] = r.get_json()
    return body


def total(ps: list[Profile]) -> int:
    return sum(sum(p.samples.values()) for p in ps)


def counted(store: ClickHouseStore) -> list[str]:
    """Every statement the store sends from now on (its transport's queries, in order)."""
    sent: list[str] = []
    run = store.transport.query

    def query(sql: str, ids: object = None) -> object:
        sent.append(sql)
        return run(sql, ids)  # type: ignore[arg-type]

    store.transport.query = query  # type: ignore[method-assign]
    return sent


def test_a_kept_answer_is_not_served_after_another_replicas_write(tmp_path: Path, chdb_dir: Path) -> None:
    """Replica A answers an absolute range and keeps the tree; replica B writes into that range; A's next answer
    has B's samples (and new names). With nothing written between two asks, A answers without a statement."""
    dsn = f"chdb://{chdb_dir}?database=rep_{uuid.uuid4().hex[:12]}"
    a, b = open_store(dsn), open_store(dsn)
    assert isinstance(a, ClickHouseStore)
    statements = counted(a)
    try:
        first = profiles(T0, 30, "p0", 1)
        put(a, first)
        client = create_app({"DATA_DIR": str(tmp_path), "STORE": a, "MAINTENANCE_SECONDS": 0}).test_client()
        params = {"from": str(T0 // S), "to": str((T0 + H) // S)}
        assert tree(client, params)["total"] == total(first)
        statements.clear()
        assert tree(client, params)["total"] == total(first)
        assert statements == []  # kept, and nothing was asked of the engine
        late = profiles(T0 + 30 * 60 * S, 10, "p1", 2)
        late[0].add((FRAMES[0], Frame(0x401fff, EXE, FrameKind.NATIVE, (Line("only_b", "b.c", 1),))), 7)
        put(b, late)  # another replica, inside the kept range
        answer = tree(client, params)
        assert answer["total"] == total(first) + total(late)
        assert "only_b" in answer["names"]
        assert statements  # the write was seen, so the range was read again
        # a range B's write does not touch keeps its refs (the kept tree by refs still serves it)
        outside = {"from": str((T0 + 2 * H) // S), "to": str((T0 + 3 * H) // S)}
        assert tree(client, outside)["total"] == 0
    finally:
        a.close()
        b.close()


def test_with_retention_reads_start_where_no_ttl_merge_reaches_so_kept_answers_stay_exact(
        tmp_path: Path, chdb_dir: Path) -> None:
    """A TTL merge deletes rows at a moment no statement of ours marks, so with retention reads start at the first
    whole hour no merge can touch yet: older rows are never read (whether or not a merge removed them), and the
    generation (the count of writes and that hour) still needs no statement."""
    now = time.time_ns()
    dsn = f"chdb://{chdb_dir}?database=ret_{uuid.uuid4().hex[:12]}&retention_seconds=7200"
    store = open_store(dsn)
    try:
        old = profiles(now - 4 * H, 5, "gone", 3)
        recent = profiles(now - H // 2, 5, "kept", 4)
        put(store, old + recent)
        client = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
        params = {"from": str((now - 5 * H) // S), "to": str(now // S)}
        assert tree(client, params)["total"] == total(recent)
        assert store.label_values("pod", now - 5 * H, now) == ["kept"]
        g = store.generation()
        assert isinstance(g, tuple) and g[0] == "writes" and g[2] > now - 2 * H - H  # type: ignore[operator]
        put(store, profiles(now - H // 4, 2, "kept", 5))
        assert store.generation() != g
    finally:
        store.close()


def test_a_server_that_knows_its_series_selects_without_reading_their_labels_again(chdb_dir: Path) -> None:
    """A store's first selection reads the series' labels with the aggregates; later ones read the aggregates
    alone and only the series this process has not met (another replica's new pod), and answer as a fresh
    store does."""
    from web.store.selector import parse_selector

    dsn = f"chdb://{chdb_dir}?database=sel_{uuid.uuid4().hex[:12]}"
    a, b = open_store(dsn), open_store(dsn)
    assert isinstance(a, ClickHouseStore)

    def answer(store: Any, selector: str, t1: int) -> list[tuple[Any, ...]]:
        refs = store.select(parse_selector(selector), T0, t1)
        return sorted((tuple(sorted(p.series.labels.items())), p.series.sample_type, p.total) for p in refs)

    statements = counted(a)
    fresh = open_store(dsn)  # a store that has selected nothing yet (a new one for the second check)
    try:
        p0 = profiles(T0, 30, "p0", 1)
        put(b, p0)
        first = answer(a, '{pod="p0"}', T0 + H)
        assert any("labels" in sql for sql in statements)  # the series joined in: nothing known yet
        statements.clear()
        assert answer(a, '{pod="p0"}', T0 + H // 2) == answer(fresh, '{pod="p0"}', T0 + H // 2)
        assert len(statements) == 1 and "any(labels)" not in statements[0]  # the aggregate alone
        p1 = profiles(T0, 10, "p1", 2)
        put(b, p1)  # another replica's new pod
        statements.clear()
        both = answer(a, '{pod=~"p.*"}', T0 + H)
        # the catalogue reads the series added since it last looked (the series table was written), then the aggregate
        assert len(statements) == 2 and "added >=" in statements[0] and "any(labels)" not in statements[1]
        fresh.close()
        fresh = open_store(dsn)
        assert both == answer(fresh, '{pod=~"p.*"}', T0 + H)
        assert {dict(k)["pod"] for k, _, _ in both} == {"p0", "p1"}
        assert [t for k, _, t in both if dict(k)["pod"] == "p0"] == [t for _, _, t in first]
        assert sum(t for _, _, t in both) == total(p0) + total(p1)
    finally:
        fresh.close()
        a.close()
        b.close()
