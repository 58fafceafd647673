"""What a put on chDB leaves behind for the request after it (web/store/clickhouse.py `put`): the engine's merges of
the parts its inserts made are done when it returns (`ChdbTransport.settle`: the engine runs in this process, so a
merge still running would be counted in the next request's CPU); dictionary rows a server has read from their tables
are not written again; the series a put writes join the catalogue without a read, unless another writer wrote the
series table since the catalogue last looked."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

from podflame.model import Frame, FrameKind, Line, Profile
from tests.builders import put
from tests.test_clickhouse_replicas import EXE, FRAMES, T0, H, S, counted, profiles, total
from web.server.app import create_app
from web.store.clickhouse import ClickHouseStore
from web.store.dsn import open_store


def busy(t0: int, pods: int, seed: int) -> list[Profile]:
    """One drain of `pods` pods with a few hundred distinct stacks each: parts whose merges take the engine a while."""
    rng = random.Random(seed)
    out = []
    for k in range(pods):
        p = Profile({"pod": f"q{k}"}, t0, 10 * S, 10_000_000)
        for _ in range(300):
            p.add(tuple(FRAMES[rng.randrange(len(FRAMES))] for _ in range(rng.randint(3, 8))), rng.randint(1, 50))
        out.append(p)
    return out


def test_a_put_returns_with_the_merges_of_its_parts_done(chdb_dsn: str) -> None:
    store = open_store(chdb_dsn)
    assert isinstance(store, ClickHouseStore)
    db = store.layout.database
    running = f"SELECT count() AS n FROM system.merges WHERE database = '{db}'"
    try:
        puts = 14
        for i in range(puts):
            put(store, busy(T0 + i * 10 * S, 40, i))
            assert store.transport.query(running).column("n")[0].as_py() == 0, i
        parts = store.transport.query(f"SELECT count() AS n FROM system.parts WHERE database = '{db}' AND "
                                      "table = 'samples' AND active").column("n")[0].as_py()
        assert parts < puts  # the engine did merge them (what was waited for)
    finally:
        store.close()


def inserted(store: ClickHouseStore) -> list[str]:
    """The tables the store inserts into from now on, in order."""
    tables: list[str] = []
    run = store.transport.insert

    def insert(table: str, data: Any, settings: Any) -> None:
        tables.append(table.rpartition(".")[2])
        run(table, data, settings)

    store.transport.insert = insert  # type: ignore[method-assign]
    return tables


def flame(store: ClickHouseStore, tmp_path: Path, pod: str) -> dict[str, Any]:
    c = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
    r = c.get("/api/v1/flamegraph", query_string={"from": str(T0 // S), "to": str((T0 + 2 * H) // S),
                                                  "query": f'{{pod="{pod}"}}'})
    assert r.status_code == 200, r.data[:300]
    body: dict[str, Any] = r.get_json()
    return body


def test_a_fresh_server_does_not_write_again_the_dictionary_rows_it_has_read(tmp_path: Path, chdb_dsn: str) -> None:
    first = open_store(chdb_dsn)
    put(first, profiles(T0, 30, "p0", 1))
    first.close()
    store = open_store(chdb_dsn)  # a server's start: it reads the series catalogue and the stacks' names
    assert isinstance(store, ClickHouseStore)
    fresh = None
    try:
        tables = inserted(store)
        again = profiles(T0 + H, 20, "p0", 1)  # the same series and stacks, later
        put(store, again)
        assert tables == ["samples"]
        new = Frame(0x402000, EXE, FrameKind.NATIVE, (Line("brand_new", "app.c", 99),))
        p = Profile({"pod": "p0"}, T0 + H + 30 * 60 * S, 60 * S, 10_000_000)
        p.add((FRAMES[0], new), 7)
        tables.clear()
        put(store, [p])  # a frame, function and stack never stored: written
        assert set(tables) == {"functions", "frames", "stacks", "samples"}
        got = flame(store, tmp_path, "p0")
        fresh = open_store(chdb_dsn)
        assert isinstance(fresh, ClickHouseStore)
        assert got == flame(fresh, tmp_path, "p0")
        assert got["total"] == total(profiles(T0, 30, "p0", 1)) + total(again) + 7
        assert "brand_new" in got["names"]
    finally:
        store.close()
        if fresh is not None:
            fresh.close()


def pods(store: ClickHouseStore, tmp_path: Path) -> set[str]:
    c = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
    r = c.get("/api/v1/series", query_string={"from": str(T0 // S), "to": str((T0 + 2 * H) // S), "by": "pod"})
    assert r.status_code == 200, r.data[:300]
    return {s["labels"]["pod"] for s in r.get_json()["series"]}


def test_a_puts_new_series_join_the_catalogue_without_a_read_and_another_writers_are_read(
        tmp_path: Path, chdb_dir: Path) -> None:
    dsn = f"chdb://{chdb_dir}?database=cat_{uuid.uuid4().hex[:12]}"
    a, b = open_store(dsn), open_store(dsn)
    assert isinstance(a, ClickHouseStore)
    try:
        put(a, profiles(T0, 10, "p0", 1))
        assert pods(a, tmp_path) == {"p0"}
        put(a, profiles(T0 + H, 10, "p1", 2))  # a's own new series
        sent = counted(a)
        assert pods(a, tmp_path) == {"p0", "p1"}
        assert not any(f"FROM {a.layout.database}.series" in sql for sql in sent)  # held without reading them
        put(b, profiles(T0 + H, 10, "p2", 3))  # another writer's series
        put(a, profiles(T0 + H, 10, "p3", 4))
        sent.clear()
        assert pods(a, tmp_path) == {"p0", "p1", "p2", "p3"}
        assert any(f"FROM {a.layout.database}.series" in sql for sql in sent)  # read: b wrote the table
    finally:
        a.close()
        b.close()
