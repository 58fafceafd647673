"""Schema 3's dictionaries: a fresh server's pod flame graph is two statements (the selection with its series'
labels, then the sums with every stack, frame, name and mapping that names them), answers equal the table path's,
and what the dictionaries cannot answer (a key they do not have, a server without them) is read from the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.builders import put
from tests.test_clickhouse_replicas import FRAMES, T0, H, S, counted, profiles, total, tree
from web.server.app import create_app
from web.store import clickhouse
from web.store.clickhouse import ClickHouseStore
from web.store.clickhouse_schema import DICTIONARIES, SCHEMA_VERSION
from web.store.dsn import open_store

PARAMS = {"from": str(T0 // S), "to": str((T0 + H) // S), "query": '{pod="p0"}'}


@pytest.fixture
def dsn(chdb_dsn: str) -> str:
    return chdb_dsn


def answer(store: ClickHouseStore, tmp_path: Path, params: dict[str, str] = PARAMS) -> dict[str, Any]:
    return tree(create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client(),
                params)


def chart_and_list(store: ClickHouseStore, tmp_path: Path) -> list[Any]:
    """The CPU chart and the pod list of the range (each one statement with its series' types from the
    dictionary, or from the table when the dictionary cannot say)."""
    c = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
    out = []
    for path, extra in (("/api/v1/cpu", {"step": "300"}), ("/api/v1/series", {"by": "pod"}), ("/api/v1/series", {})):
        r = c.get(path, query_string={"from": PARAMS["from"], "to": PARAMS["to"], **extra})
        assert r.status_code == 200, r.json
        out.append(r.json)
    return out


def written(dsn: str) -> list:
    writer = open_store(dsn)
    ps = profiles(T0, 30, "p0", 1) + profiles(T0, 30, "p1", 2)
    put(writer, ps)
    writer.close()
    return ps


@pytest.fixture
def names_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that holds no stack's names at start (a store past `_HELD_STACKS` whose latest hour lacks them): its
    first pod names them through the dictionaries, the path these tests are about."""
    monkeypatch.setattr(clickhouse, "_HELD_STACKS", 0)


def test_a_fresh_servers_pod_flame_graph_is_one_statement_with_the_names_held_at_start(tmp_path: Path,
                                                                                       dsn: str) -> None:
    """A server reads its store's stacks' names at start (`_hold_stacks`): its first pod is the sums statement
    alone; one that holds none (a store past `_HELD_STACKS` whose latest hour lacks them) names them through the
    dictionaries in one more statement, or through the tables in three; every answer the same."""
    ps = written(dsn)
    store = open_store(dsn)  # a fresh server: nothing answered yet
    assert isinstance(store, ClickHouseStore)
    sent = counted(store)
    try:
        got = answer(store, tmp_path)
        assert got["total"] == total([p for p in ps if p.labels["pod"] == "p0"])
        assert len(sent) == 1 and "GROUPING SETS" in sent[0] and "dictGet" not in sent[0], sent
        assert {f"fn{i}" for i in range(len(FRAMES))} & set(got["names"])
    finally:
        store.close()
    from tests.clickhouse_standin import clickhouse_http

    with clickhouse_http(dsn.split("://", 1)[1].partition("?")[0]) as (port, _):  # the same over HTTP
        remote = open_store(f"clickhouse://127.0.0.1:{port}/{dsn.split('database=')[1]}")
        assert isinstance(remote, ClickHouseStore) and remote._stack_frames
        sent = counted(remote)
        try:
            assert answer(remote, tmp_path) == got
            assert len(sent) == 1 and "GROUPING SETS" in sent[0] and "dictGet" not in sent[0], sent
        finally:
            remote.close()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clickhouse, "_HELD_STACKS", 0)
        store = open_store(dsn)
        assert isinstance(store, ClickHouseStore)
        assert not store._stack_frames
        sent = counted(store)
        try:
            assert answer(store, tmp_path) == got
            # before schema 3: five (selection, sums, stacks, frames, names and mappings); since schema 4 the selection
            # and the sums are one read of each table (grouping sets) that names the pod's series by id from the
            # catalogue the server read at its start (no labels in the statement), then the names through the
            # dictionaries alone
            _one_read_then_the_dictionaries(store, sent)
        finally:
            store.close()
        tables = open_store(dsn)  # the same read through the tables only
        assert isinstance(tables, ClickHouseStore)
        tables._dicts = False
        sent = counted(tables)
        try:
            assert answer(tables, tmp_path) == got
            # the selection and the sums in one read (grouping sets), then stacks, frames, names and mappings
            assert len(sent) == 4 and not any("dictGet" in sql for sql in sent) and "GROUPING SETS" in sent[0]
        finally:
            tables.close()


def _one_read_then_the_dictionaries(store: ClickHouseStore, sent: list[str]) -> None:
    assert len(sent) == 2 and "GROUPING SETS" in sent[0], sent
    assert "series_dict" not in sent[0] and f"{store.layout.database}.series " not in sent[0]
    assert "stacks_dict" in sent[1] and "functions_dict" in sent[1]
    assert not any(f"{store.layout.database}.stacks " in sql or "FROM " + store.layout.database + ".frames "
                   in sql for sql in sent)


def test_a_version_2_database_gets_its_dictionaries_at_start_and_old_data_reads_the_same(tmp_path: Path,
                                                                                         dsn: str) -> None:
    ps = written(dsn)
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    db, tr = store.layout.database, store.transport
    for d in DICTIONARIES:  # as schema 2 made it
        tr.command(f"DROP DICTIONARY {db}.{d}")
    tr.command(f"TRUNCATE TABLE {db}.schema_version")
    tr.command(f"INSERT INTO {db}.schema_version (version) VALUES (2)")
    store.close()
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    try:
        version = store.transport.query(f"SELECT max(version) AS v FROM {db}.schema_version")
        assert version.column("v").to_pylist() == [SCHEMA_VERSION] == [4]
        made = store.transport.query(f"SELECT name FROM system.dictionaries WHERE database = '{db}'")
        assert sorted(made.column("name").to_pylist()) == sorted(DICTIONARIES)
        sent = counted(store)
        got = answer(store, tmp_path)
        assert got["total"] == total([p for p in ps if p.labels["pod"] == "p0"]) and len(sent) == 1
    finally:
        store.close()


@pytest.mark.usefixtures("names_not_held")
def test_keys_a_dictionary_does_not_have_are_read_from_the_tables(tmp_path: Path, dsn: str) -> None:
    """A dictionary that misses keys (a replica behind the one that wrote them; here, dictionaries over empty
    tables) answers dictHas false: the read's names and the selection's labels come from the tables, exactly."""
    ps = written(dsn)
    reference = open_store(dsn)
    assert isinstance(reference, ClickHouseStore)
    reference._dicts = False
    want = answer(reference, tmp_path)
    want_sums = chart_and_list(reference, tmp_path)
    reference.close()
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    db, tr = store.layout.database, store.transport
    for d, (table, attributes) in DICTIONARIES.items():
        tr.command(f"CREATE TABLE {db}.empty_{table} AS {db}.{table}")
        tr.command(f"CREATE OR REPLACE DICTIONARY {db}.{d} (id UInt64, {attributes}) PRIMARY KEY id "
                   f"SOURCE(CLICKHOUSE(DB '{db}' TABLE 'empty_{table}')) LAYOUT(CACHE(SIZE_IN_CELLS 1024)) "
                   "LIFETIME(MIN 600 MAX 1200)")
    sent = counted(store)
    try:
        assert answer(store, tmp_path) == want
        assert want["total"] == total([p for p in ps if p.labels["pod"] == "p0"])
        assert any("stacks_dict" in sql for sql in sent)  # tried, then the tables
        assert any(f"FROM {db}.stacks " in sql for sql in sent) and any(f"FROM {db}.frames " in sql for sql in sent)
        assert store._dicts  # a miss is not a refusal: the next read tries the dictionaries again
        sent.clear()
        assert chart_and_list(store, tmp_path) == want_sums  # the catalogue names the series: no dictionary
        assert not any("series_dict" in sql for sql in sent)
        store._cat_on = False  # a server without the catalogue (more series than it holds)
        sent.clear()
        assert chart_and_list(store, tmp_path) == want_sums
        assert sum(want_sums[0]["values"]) == want_sums[1]["total"] == total(ps)
        assert {r["labels"]["pod"] for r in want_sums[1]["series"]} == {"p0", "p1"}
        # tried the dictionary, then joined the table: a series the dictionary lacks is never summed as typeless
        assert any("series_dict" in sql for sql in sent) and any("INNER JOIN" in sql for sql in sent)
        assert store._dicts
    finally:
        store.close()


@pytest.mark.usefixtures("names_not_held")
def test_a_server_whose_dictionaries_cannot_be_read_answers_from_the_tables(tmp_path: Path, dsn: str) -> None:
    ps = written(dsn)
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    for d in DICTIONARIES:
        store.transport.command(f"DROP DICTIONARY {store.layout.database}.{d}")
    try:
        got = answer(store, tmp_path)
        assert got["total"] == total([p for p in ps if p.labels["pod"] == "p0"])
        assert not store._dicts
        chart, by_pod, _ = chart_and_list(store, tmp_path)
        assert sum(chart["values"]) == by_pod["total"] == total(ps)
        assert {f"fn{i}" for i in range(len(FRAMES))} & set(got["names"])
    finally:
        store.close()



def test_a_put_leaves_its_new_names_in_the_dictionaries_so_a_fresh_servers_first_read_needs_no_table(
        tmp_path: Path, dsn: str) -> None:
    """The keys a put writes are looked up once as it ends (`_hold_names`, one statement): the dictionaries hold
    every stack, frame, function, mapping and series written before any query. Shown by emptying the name tables
    afterwards: a fresh server's pod flame graph is still the table path's answer, its names from the ClickHouse
    server's memory (without the put's lookups every key is a miss there, read from the emptied tables)."""
    writer = open_store(dsn)  # held open to the end: the engine (a ClickHouse server) outlives podflame servers
    assert isinstance(writer, ClickHouseStore)
    db, tr = writer.layout.database, writer.transport
    try:
        ps = profiles(T0, 30, "p0", 1) + profiles(T0, 30, "p1", 2)
        sent = counted(writer)
        put(writer, ps)
        held = [sql for sql in sent if "dictHas" in sql]
        assert len(held) == 1 and all(d in held[0] for d in DICTIONARIES), sent
        counts = {r["d"]: r["n"] for r in tr.query(
            f"SELECT name AS d, element_count AS n FROM system.dictionaries WHERE database = '{db}'").to_pylist()}
        for d, (table, _) in DICTIONARIES.items():
            n = tr.query(f"SELECT uniqExact(id) AS n FROM {db}.{table}").column("n")[0].as_py()
            assert counts[d] >= n > 0, (d, counts[d], n)  # (and the start's one lookup of a key no table has)
        reference = open_store(dsn)
        assert isinstance(reference, ClickHouseStore)
        reference._dicts = False
        want = answer(reference, tmp_path)
        reference.close()
        assert want["total"] == total([p for p in ps if p.labels["pod"] == "p0"])
        for table in ("stacks", "frames", "functions", "mappings"):
            tr.command(f"TRUNCATE TABLE {db}.{table}")
        store = open_store(dsn)
        assert isinstance(store, ClickHouseStore)
        try:
            sent = counted(store)
            assert answer(store, tmp_path) == want
            assert len(sent) == 2, sent
        finally:
            store.close()
    finally:
        writer.close()


def test_dictionaries_made_before_they_read_expired_keys_are_made_again_at_start(tmp_path: Path, dsn: str) -> None:
    """Stop 17's dictionaries waited for a key past its 1-2 h lifetime to be read again (a held name lost its worth
    after that); a start makes them again with ALLOW_READ_EXPIRED_KEYS, and answers stay the same."""
    ps = written(dsn)
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    db, tr = store.layout.database, store.transport
    for d, (table, attributes) in DICTIONARIES.items():
        tr.command(f"CREATE OR REPLACE DICTIONARY {db}.{d} (id UInt64, {attributes}) PRIMARY KEY id "
                   f"SOURCE(CLICKHOUSE(DB '{db}' TABLE '{table}')) LAYOUT(CACHE(SIZE_IN_CELLS 1048576)) "
                   "LIFETIME(MIN 3600 MAX 7200)")
    store.close()

    def layouts(s: ClickHouseStore) -> list[str]:
        return s.transport.query(f"SELECT create_table_query AS q FROM system.tables WHERE database = '{db}' "
                                 "AND name LIKE '%_dict'").column("q").to_pylist()

    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    try:
        got = layouts(store)
        assert len(got) == len(DICTIONARIES) and all("ALLOW_READ_EXPIRED_KEYS 1" in q for q in got), got
        assert answer(store, tmp_path)["total"] == total([p for p in ps if p.labels["pod"] == "p0"])
    finally:
        store.close()
