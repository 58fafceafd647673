"""Stateless replicas on one ClickHouse: what one server keeps (answers, stacks, names) never hides another's write.

Two store objects on one chDB database are two podflame servers on one ClickHouse (chDB holds its data
directory in one process, so both live here; each has its own caches and kept answers, as replicas do)."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
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


def views(client: FlaskClient, selector: str, t0: int, t1: int) -> list[Any]:
    """What a user sees of a selector: its flame graph's total, the CPU chart and the pod list."""
    rng = {"from": str(t0 // S), "to": str(t1 // S), "query": selector}
    out: list[Any] = [tree(client, rng)["total"]]
    for path, extra in (("/api/v1/cpu", {"step": "600"}), ("/api/v1/series", {"by": "pod"})):
        r = client.get(path, query_string={**rng, **extra})
        assert r.status_code == 200, r.data[:300]
        out.append(r.get_json())
    return out


def test_the_series_catalogue_sees_what_another_replica_ingests_after_it_was_read(
        tmp_path: Path, chdb_dir: Path) -> None:
    """A server reads the series catalogue at its start and resolves selectors from it (literal ids, no `series`
    subquery and no labels in the statement); series another replica writes later are read (the rows `added` since
    its last look) before it answers, so flame graph, chart and pod list equal a fresh server's, exactly."""
    dsn = f"chdb://{chdb_dir}?database=cat_{uuid.uuid4().hex[:12]}"
    b = open_store(dsn)
    put(b, profiles(T0, 30, "p0", 1))
    a = open_store(dsn)  # holds p0's series from its start
    assert isinstance(a, ClickHouseStore) and a._cat_on and len(a._series_local) == 1
    client = create_app({"DATA_DIR": str(tmp_path), "STORE": a, "MAINTENANCE_SECONDS": 0}).test_client()
    statements = counted(a)
    try:
        assert views(client, '{pod="p0"}', T0, T0 + H)[0] == total(profiles(T0, 30, "p0", 1))
        assert statements and not any(f"{a.layout.database}.series" in sql or "series_dict" in sql
                                      for sql in statements)
        p1 = profiles(T0 + 10 * 60 * S, 20, "p1", 2)
        put(b, p1)  # another replica's new pod, after a's catalogue was read
        for selector in ('{pod="p1"}', '{pod=~"p.*"}', "{}", '{pod!="p0"}'):
            statements.clear()
            got = views(client, selector, T0, T0 + H)
            fresh = open_store(dsn)
            try:
                want = views(create_app({"DATA_DIR": str(tmp_path), "STORE": fresh,
                                         "MAINTENANCE_SECONDS": 0}).test_client(), selector, T0, T0 + H)
            finally:
                fresh.close()
            assert got == want, selector
        assert views(client, '{pod="p1"}', T0, T0 + H)[0] == total(p1)
        assert {r["labels"]["pod"] for r in views(client, "{}", T0, T0 + H)[2]["series"]} == {"p0", "p1"}
    finally:
        a.close()
        b.close()


def test_over_http_statements_also_take_the_series_added_since_the_catalogues_last_look(
        tmp_path: Path, chdb_dir: Path) -> None:
    """On a ClickHouse server other processes write (no count of writes here), a statement that names the catalogue's
    series by id also takes, by the selector in SQL, the series added since its last look: another replica's new pod
    is in the answer at once, and the catalogue reads it at its next look."""
    from tests.clickhouse_standin import clickhouse_http

    db = f"cathttp_{uuid.uuid4().hex[:12]}"
    with clickhouse_http(str(chdb_dir)) as (port, _):
        b = open_store(f"clickhouse://127.0.0.1:{port}/{db}")
        put(b, profiles(T0, 30, "p0", 1))
        a = open_store(f"clickhouse://127.0.0.1:{port}/{db}")
        assert isinstance(a, ClickHouseStore) and a._cat_on and a.transport.table_writes("x") is None
        statements = counted(a)
        client = create_app({"DATA_DIR": str(tmp_path), "STORE": a, "MAINTENANCE_SECONDS": 0}).test_client()
        try:
            p1 = profiles(T0, 20, "p1", 2)
            put(b, p1)
            got = views(client, '{pod=~"p.*"}', T0, T0 + H)
            assert got[0] == total(profiles(T0, 30, "p0", 1)) + total(p1)
            assert {r["labels"]["pod"] for r in got[2]["series"]} == {"p0", "p1"}
            assert any("added >=" in sql for sql in statements)
            assert views(client, '{pod="p1"}', T0, T0 + H)[0] == total(p1)
            a._cat_at -= 3600  # its next look is due: it reads the rows added since, then holds p1
            statements.clear()
            assert views(client, '{pod="p1"}', T0, T0 + H)[0] == total(p1)
            assert any("GROUP BY id" in sql and "added >=" in sql for sql in statements)
            assert {s.labels["pod"] for s in a._series_local.values()} == {"p0", "p1"}
        finally:
            a.close()
            b.close()


def test_past_its_bounds_the_catalogue_gives_way_to_sql_and_answers_stay_exact(
        tmp_path: Path, chdb_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More series than the catalogue holds: selectors resolve in ClickHouse again (the `series` subquery); a
    selector matching more series than are named as literals: the same; the answers are a held catalogue's."""
    import web.store.clickhouse as ch

    dsn = f"chdb://{chdb_dir}?database=bound_{uuid.uuid4().hex[:12]}"
    w = open_store(dsn)
    for k in range(4):
        put(w, profiles(T0, 10, f"p{k}", k))
    w.close()
    held = open_store(dsn)
    assert isinstance(held, ClickHouseStore) and held._cat_on
    client = create_app({"DATA_DIR": str(tmp_path), "STORE": held, "MAINTENANCE_SECONDS": 0}).test_client()
    want = {sel: views(client, sel, T0, T0 + H) for sel in ('{pod=~"p[012]"}', '{pod="p3"}', "{}")}
    held.close()
    for limit, literal in ((3, 2000), (2000, 2)):
        monkeypatch.setattr(ch, "_CATALOGUE_LIMIT", limit)
        monkeypatch.setattr(ch, "_CATALOGUE_IDS", literal)
        store = open_store(dsn)
        assert isinstance(store, ClickHouseStore) and store._cat_on == (limit > 4)
        statements = counted(store)
        client = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
        try:
            for sel, answer in want.items():
                assert views(client, sel, T0, T0 + H) == answer, (limit, literal, sel)
            assert any(f"{store.layout.database}.series WHERE" in sql for sql in statements)  # SQL resolved some
        finally:
            store.close()


def test_a_held_series_whose_rows_are_gone_answers_empty(tmp_path: Path, chdb_dir: Path) -> None:
    """The catalogue only names series: their rows are read each time, so after retention deleted them a held series
    answers nothing (not what it had)."""
    dsn = f"chdb://{chdb_dir}?database=gone_{uuid.uuid4().hex[:12]}"
    store = open_store(dsn)
    try:
        put(store, profiles(T0, 30, "p0", 1))
        client = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
        assert views(client, '{pod="p0"}', T0, T0 + H)[0] > 0
        store.enforce_retention(0, None, now_ns=T0 + 10 * H)
        client = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
        flame, chart, pods = views(client, '{pod="p0"}', T0, T0 + H)
        assert flame == 0 and not any(chart["values"]) and pods["series"] == []
    finally:
        store.close()


def test_a_schema_3_database_gets_series_added_in_place_and_its_series_are_held(tmp_path: Path,
                                                                                chdb_dir: Path) -> None:
    """Schema 4 adds `series.added` (and its min-max index) to a table that has rows: they read as added at 0, the
    catalogue holds them from the start, and series written after the upgrade carry the writer's clock."""
    from web.store.clickhouse_schema import SCHEMA_VERSION

    dsn = f"chdb://{chdb_dir}?database=up4_{uuid.uuid4().hex[:12]}"
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    db, tr = store.layout.database, store.transport
    p0 = profiles(T0, 30, "p0", 1)
    put(store, p0)
    tr.command(f"ALTER TABLE {db}.series DROP INDEX added_minmax")
    tr.command(f"ALTER TABLE {db}.series DROP COLUMN added")  # as schema 3 made it
    tr.command(f"TRUNCATE TABLE {db}.schema_version")
    tr.command(f"INSERT INTO {db}.schema_version (version) VALUES (3)")
    store.close()
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    try:
        v = store.transport.query(f"SELECT max(version) AS v FROM {db}.schema_version").column("v").to_pylist()
        assert v == [SCHEMA_VERSION] == [4] and store._cat_on and len(store._series_local) == 1
        client = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
        assert views(client, '{pod="p0"}', T0, T0 + H)[0] == total(p0)
        before = time.time_ns()
        put(store, profiles(T0, 5, "p1", 2))
        rows = store.transport.query(f"SELECT labels['pod'] AS pod, max(added) AS a FROM {db}.series GROUP BY pod")
        added = {r["pod"]: r["a"] for r in rows.to_pylist()}
        assert added["p0"] == 0 and added["p1"] >= before
    finally:
        store.close()
