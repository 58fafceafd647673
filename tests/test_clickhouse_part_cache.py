"""Answers kept per part of a range while no write touched its hours (web/store/clickhouse.py `_union`): a running
server answers a pod's flame graph, the CPU chart and the pod list of past hours again with no statement while
ingest goes on into other hours, and any write into those hours, a deletion, or a write from another store on the
engine is in the next answer (equal to a fresh server's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from podflame.model import Profile
from tests.builders import put
from tests.test_clickhouse_replicas import T0, H, S, counted, profiles, total
from web.server.app import create_app
from web.store.clickhouse import ClickHouseStore
from web.store.dsn import open_store
from web.store.selector import parse_selector

# two whole hours and a ragged end: the rollup part, and the raw part of the hour being written
RANGE = {"from": str(T0 // S), "to": str((T0 + 2 * H + H // 2) // S)}


@pytest.fixture
def dsn(chdb_dsn: str) -> str:
    return chdb_dsn


def views(store: ClickHouseStore, tmp_path: Path, params: dict[str, str] = RANGE) -> list[Any]:
    """A pod's flame graph, the CPU chart and the pod list, each through a fresh app (no kept tree)."""
    c = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
    out = []
    for path, extra in (("/api/v1/flamegraph", {"query": '{pod="p0"}'}), ("/api/v1/cpu", {"step": "600"}),
                        ("/api/v1/series", {"by": "pod"})):
        r = c.get(path, query_string={**params, **extra})
        assert r.status_code == 200, r.data[:300]
        out.append(r.get_json())
    return out


def fresh(dsn: str, tmp_path: Path, params: dict[str, str] = RANGE) -> list[Any]:
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    try:
        return views(store, tmp_path, params)
    finally:
        store.close()


def test_past_hours_are_answered_again_without_a_statement_while_other_hours_are_written(
        tmp_path: Path, dsn: str) -> None:
    first = profiles(T0, 150, "p0", 1) + profiles(T0, 150, "p1", 2)  # 2.5 h of minutes
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    sent = counted(store)
    try:
        put(store, first)
        got = views(store, tmp_path)
        assert got[0]["total"] == total([p for p in first if p.labels["pod"] == "p0"])
        assert got == fresh(dsn, tmp_path)
        # (opening that store ran its DDL: a write as any other, so everything kept was left; read once more)
        assert views(store, tmp_path) == got
        sent.clear()
        assert views(store, tmp_path) == got
        assert sent == []  # every part kept: no statement at all
        # ingest goes on in a later hour: nothing this range reads moved
        put(store, profiles(T0 + 5 * H, 3, "p0", 3))
        sent.clear()
        assert views(store, tmp_path) == got
        assert sent == []
    finally:
        store.close()


def test_a_write_into_a_kept_hour_reads_that_part_again_and_keeps_the_others(tmp_path: Path, dsn: str) -> None:
    """A late profile in the first whole hour: the rollup part is read again (and only it), the answers are the new
    data's, equal to a fresh server's; then one in the hour being written: its raw part alone."""
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    sent = counted(store)
    try:
        put(store, profiles(T0, 150, "p0", 1) + profiles(T0, 150, "p1", 2))
        before = views(store, tmp_path)
        late = profiles(T0 + 10 * 60 * S, 1, "p0", 4)
        put(store, late)
        sent.clear()
        after = views(store, tmp_path)
        assert after[0]["total"] == before[0]["total"] + total(late)
        assert sent and all(f"{store.layout.database}.samples " not in sql and "start_ns >= " not in sql
                            for sql in sent if "GROUPING SETS" in sql)  # the ragged hour was kept
        assert after == fresh(dsn, tmp_path)
        assert views(store, tmp_path) == after  # (after that store's DDL: read once more)
        now = profiles(T0 + 2 * H + 5 * 60 * S, 1, "p0", 5)
        put(store, now)
        sent.clear()
        latest = views(store, tmp_path)
        assert latest[0]["total"] == after[0]["total"] + total(now)
        assert sent and not any("samples_1h" in sql or "intDiv(start_ns, " in sql for sql in sent)  # hours kept
        assert latest == fresh(dsn, tmp_path)
    finally:
        store.close()


def test_another_store_on_the_engine_a_deletion_and_a_page_relative_range_are_seen(tmp_path: Path, dsn: str) -> None:
    """Every writer of a chDB engine is in this process: another store's put into a kept hour moves its marks, and
    so does any statement that is not an insert (retention's DELETE); a range with no whole hour (a page's last
    hour) is two raw parts, split where the hour being written begins."""
    a, b = open_store(dsn), open_store(dsn)
    assert isinstance(a, ClickHouseStore) and isinstance(b, ClickHouseStore)
    try:
        put(a, profiles(T0, 150, "p0", 1))
        relative = {"from": str((T0 + H + H // 3) // S), "to": str((T0 + 2 * H + H // 3) // S)}
        kept = views(a, tmp_path), views(a, tmp_path, relative)
        other = profiles(T0 + H + H // 2, 2, "p0", 6)
        put(b, other)
        got = views(a, tmp_path), views(a, tmp_path, relative)
        assert got[0][0]["total"] == kept[0][0]["total"] + total(other)
        assert got[1][0]["total"] == kept[1][0]["total"] + total(other)
        assert got == (fresh(dsn, tmp_path), fresh(dsn, tmp_path, relative))
        b.enforce_retention(None, None)  # no limit: nothing cut, no statement that writes
        assert views(a, tmp_path) == got[0]
        a.transport.command(f"ALTER TABLE {a.layout.database}.samples DELETE WHERE start_ns < {T0 + H} "
                            "SETTINGS mutations_sync = 2")
        a.transport.command(f"ALTER TABLE {a.layout.database}.samples_1h DELETE WHERE hour < {T0 + H} "
                            "SETTINGS mutations_sync = 2")
        a.transport.command(f"ALTER TABLE {a.layout.database}.profiles DELETE WHERE start_ns < {T0 + H} "
                            "SETTINGS mutations_sync = 2")
        cut = views(a, tmp_path)
        assert cut[0]["total"] < got[0][0]["total"]
        assert cut == fresh(dsn, tmp_path)
    finally:
        a.close()
        b.close()


def test_with_the_cache_off_or_writers_elsewhere_every_part_is_read(tmp_path: Path, dsn: str, chdb_dir: Path) -> None:
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    sent = counted(store)
    try:
        put(store, profiles(T0, 150, "p0", 1))
        store.part_cache_bytes = 0
        got = views(store, tmp_path)
        sent.clear()
        assert views(store, tmp_path) == got
        assert len([sql for sql in sent if "GROUPING SETS" in sql]) == 1
    finally:
        store.close()
    from tests.clickhouse_standin import clickhouse_http

    with clickhouse_http(str(chdb_dir)) as (port, _):
        remote = open_store(f"clickhouse://127.0.0.1:{port}/{dsn.split('database=')[1]}")
        assert isinstance(remote, ClickHouseStore)
        assert remote.transport.hour_writes(remote.layout.table("samples"), T0, T0 + H) is None
        sent = counted(remote)
        try:
            assert views(remote, tmp_path) == got
            sent.clear()
            assert views(remote, tmp_path) == got
            assert len([sql for sql in sent if "GROUPING SETS" in sql]) == 1
        finally:
            remote.close()


# -- write-through: the hour being written brought up to date from the inserts' rows (`_union`, `_fold`) ----------

OPEN = T0 + 2 * H + 20 * 60 * S + 30 * S  # inside RANGE's ragged last hour, between the minutes `profiles` writes


def test_inserts_into_the_hour_being_written_are_folded_in_without_a_statement(tmp_path: Path, dsn: str) -> None:
    """Each put into the open hour (stacks the server has named) is summed into the kept raw parts of the flame
    graph, the chart and the pod list: no statement, answers equal a fresh server's after each, also for a put from
    another store on the engine and a put that spans the open hour and a past one."""
    a, b = open_store(dsn), open_store(dsn)
    assert isinstance(a, ClickHouseStore) and isinstance(b, ClickHouseStore)
    sent = counted(a)
    try:
        put(a, profiles(T0, 150, "p0", 1) + profiles(T0, 150, "p1", 2))
        put(b, profiles(T0 + 30 * S, 1, "p0", 1))  # (b has written p0's series and these stacks: no new rows later)
        views(a, tmp_path)
        got = views(a, tmp_path)
        assert got == fresh(dsn, tmp_path)
        got = views(a, tmp_path)
        for k, (store, ps) in enumerate([(a, profiles(OPEN, 2, "p0", 1)), (a, profiles(OPEN + S, 3, "p1", 2)),
                                         (b, profiles(OPEN + 2 * S, 1, "p0", 1))]):
            put(store, ps)
            sent.clear()
            now = views(a, tmp_path)
            assert sent == [], (k, sent)
            assert now[0]["total"] == got[0]["total"] + total([p for p in ps if p.labels["pod"] == "p0"])
            assert now[2] != got[2]
            got = now
            assert now == fresh(dsn, tmp_path)
            assert views(a, tmp_path) == now  # (the fresh store's DDL: a write, so read once more)
        # a put whose rows start in a past hour too: that hour's part is read again, the open one folded
        both = profiles(T0 + H + 30 * S, 1, "p0", 1) + profiles(OPEN + 3 * S, 1, "p0", 1)
        put(a, both)
        sent.clear()
        now = views(a, tmp_path)
        assert now[0]["total"] == got[0]["total"] + total(both)
        assert sent and all(f"{a.layout.database}.samples " not in sql for sql in sent)  # the raw part folded
        assert now == fresh(dsn, tmp_path)
    finally:
        a.close()
        b.close()


def test_a_put_the_engine_drops_as_a_repeat_is_not_folded_in(tmp_path: Path, dsn: str) -> None:
    """An agent's retry (the same batch: the same token) is dropped by ClickHouse; the engine sees that its rows
    were not stored (the table's row count did not move by them), so the part is read, not summed twice."""
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    sent = counted(store)
    try:
        put(store, profiles(T0, 150, "p0", 1))
        retry = profiles(OPEN, 2, "p0", 1)
        put(store, retry)
        views(store, tmp_path)
        before = views(store, tmp_path)
        put(store, retry)  # the same content: the same token, dropped by the engine
        sent.clear()
        after = views(store, tmp_path)
        assert after == before
        assert any(f"{store.layout.database}.samples " in sql for sql in sent)  # read, not folded
        assert after == fresh(dsn, tmp_path)
    finally:
        store.close()


def test_past_the_held_rows_or_after_a_deletion_the_part_is_read(tmp_path: Path, dsn: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import web.store.clickhouse_transport as transport

    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    sent = counted(store)
    try:
        put(store, profiles(T0, 150, "p0", 1))
        views(store, tmp_path)
        kept = views(store, tmp_path)
        monkeypatch.setattr(transport, "LOG_BYTES", 0)  # no insert's rows held
        put(store, profiles(OPEN, 2, "p0", 1))
        sent.clear()
        got = views(store, tmp_path)
        assert got[0]["total"] > kept[0]["total"]
        assert any(f"{store.layout.database}.samples " in sql for sql in sent)
        assert got == fresh(dsn, tmp_path)
        monkeypatch.undo()
        views(store, tmp_path)
        store.transport.command(f"ALTER TABLE {store.layout.database}.samples DELETE WHERE start_ns >= {OPEN} "
                                "SETTINGS mutations_sync = 2")
        store.transport.command(f"ALTER TABLE {store.layout.database}.profiles DELETE WHERE start_ns >= {OPEN} "
                                "SETTINGS mutations_sync = 2")
        put(store, profiles(OPEN + 5 * S, 1, "p0", 1))  # after the deletion: not a fold over it
        sent.clear()
        cut = views(store, tmp_path)
        assert any(f"{store.layout.database}.samples " in sql for sql in sent)
        assert cut == fresh(dsn, tmp_path)
    finally:
        store.close()


def test_city_hash64_is_the_engines(dsn: str) -> None:
    """The fingerprints of folded rows are ClickHouse's `cityHash64` of (start, stack, value), computed in numpy."""
    import random

    import numpy as np

    from web.store.clickhouse_parts import city_hash64

    rng = random.Random(7)
    rows = [(rng.randrange(-2**63, 2**63), rng.randrange(2**64), rng.randrange(-2**63, 2**63)) for _ in range(200)]
    rows += [(0, 0, 0), (-1, 2**64 - 1, 2**63 - 1), (T0, 1, -5)]
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    try:
        values = ",".join(f"(toInt64({a}), toUInt64({b}), toInt64({c}))" for a, b, c in rows)
        want = store.transport.query(f"SELECT cityHash64(c1, c2, c3) AS h FROM values({values})").column("h")
        got = city_hash64(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.uint64),
                          np.array([r[2] for r in rows], np.int64))
        assert got.tolist() == want.to_pylist()
    finally:
        store.close()


def test_puts_from_another_thread_during_the_reads_are_never_summed_twice(tmp_path: Path, dsn: str) -> None:
    """Another store's puts into the hour being written, from a thread, while this one answers again and again:
    a part read while an insert ran is no base for a fold (its rows may be in it), so after the last put the
    answers equal a fresh server's."""
    import threading

    a, b = open_store(dsn), open_store(dsn)
    assert isinstance(a, ClickHouseStore) and isinstance(b, ClickHouseStore)
    try:
        put(a, profiles(T0, 150, "p0", 1))
        views(a, tmp_path)

        def writer() -> None:
            for k in range(12):
                put(b, profiles(OPEN + k * S, 1, "p0", 1))

        t = threading.Thread(target=writer)
        t.start()
        while t.is_alive():
            views(a, tmp_path)
        t.join()
        got = views(a, tmp_path)
        assert got == fresh(dsn, tmp_path)
    finally:
        a.close()
        b.close()


# -- the recent hours' rows held from a server's start (`_hold_hours`, web/store/clickhouse_parts.py `HeldHours`) ---


def recent() -> int:
    """Three hours before the current one: within the hours a server holds at its start."""
    import time

    return time.time_ns() // H * H - 3 * H


def opened(dsn: str, monkeypatch: pytest.MonkeyPatch, held: int | None = None) -> ClickHouseStore:
    import web.store.clickhouse as ch

    if held is not None:
        monkeypatch.setattr(ch, "_HELD_BYTES", held)
    store = open_store(dsn)
    monkeypatch.undo()
    assert isinstance(store, ClickHouseStore)
    return store


def test_a_fresh_server_answers_the_recent_hours_from_rows_held_at_its_start(
        tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh server's first pod flame graph, CPU chart and pod list over the recent whole hours send no statement
    (the rows of the rollup and of `profiles` read at its start answer them) and equal a server's that holds none;
    a ragged end reads only its raw part."""
    t1 = recent()
    put_store = opened(dsn, monkeypatch)
    try:
        put(put_store, profiles(t1, 150, "p0", 1) + profiles(t1, 150, "p1", 2))
    finally:
        put_store.close()
    whole = {"from": str(t1 // S), "to": str((t1 + 2 * H) // S)}
    ragged = {"from": str(t1 // S), "to": str((t1 + 2 * H + H // 2) // S)}
    plain = opened(dsn, monkeypatch, held=0)
    try:
        assert plain._holding is None
        want = views(plain, tmp_path, whole), views(plain, tmp_path, ragged)
    finally:
        plain.close()
    store = opened(dsn, monkeypatch)
    sent = counted(store)
    try:
        assert store._holding is not None and store._holding.lo <= t1
        assert views(store, tmp_path, whole) == want[0]
        assert sent == []
        assert want[0][0]["total"] > 0 and want[0][2]
        assert views(store, tmp_path, ragged) == want[1]
        assert len(sent) == 1 and "GROUPING SETS" in sent[0] and f"{store.layout.database}.samples " in sent[0]
    finally:
        store.close()


def test_held_hours_take_inserts_another_store_writes_and_go_after_a_deletion(
        tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another store's put into a held hour: the chart and the pod list take it from the insert's rows (no
    statement), the flame graph's rollup part is read; a put into the hour being written (held, empty at the start)
    is folded in too; a deletion drops what the server holds. Every answer equals a fresh server's holding none."""
    t1 = recent()
    a = opened(dsn, monkeypatch)
    try:
        put(a, profiles(t1, 120, "p0", 1) + profiles(t1, 120, "p1", 2))
    finally:
        a.close()
    whole = {"from": str(t1 // S), "to": str((t1 + 2 * H) // S)}
    store, b = opened(dsn, monkeypatch), opened(dsn, monkeypatch)
    sent = counted(store)

    def plain(params: dict[str, str]) -> list[Any]:
        s = opened(dsn, monkeypatch, held=0)
        try:
            return views(s, tmp_path, params)
        finally:
            s.close()

    try:
        assert store._holding is not None
        store._holding.marks = store.transport.hour_writes(  # (b's start wrote its DDL: a write, as any other)
            store.layout.table("samples"), store._holding.lo, store._holding.hi)
        store._holding.tail = (store.transport.table_writes(store.layout.table("profiles")),
                               store.transport.table_writes(store.layout.table("samples_1h")))
        late = profiles(t1 + H + 30 * S, 2, "p0", 3)
        put(b, late)
        sent.clear()
        got = views(store, tmp_path, whole)
        read = [sql for sql in sent if "GROUPING SETS" in sql]  # (besides: the new series and stacks b wrote)
        assert len(read) == 1 and "samples_1h" in read[0]
        assert not any(f"{store.layout.database}.profiles " in sql for sql in sent)  # chart, pod list: folded
        assert got[0]["total"] == total([p for p in profiles(t1, 120, "p0", 1) + late if p.labels["pod"] == "p0"])
        now = recent() + 3 * H + 5 * S  # the hour being written
        put(b, profiles(now, 2, "p1", 4))
        open_range = {"from": str(t1 // S), "to": str((recent() + 4 * H) // S)}
        c = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
        sent.clear()
        chart = c.get("/api/v1/cpu", query_string={**open_range, "step": "600"}).get_json()
        pods = c.get("/api/v1/series", query_string={**open_range, "by": "pod"}).get_json()
        assert [sql for sql in sent if f"{store.layout.database}.series " not in sql] == []  # (the catalogue's)
        # (a store's start writes its DDL: a write as any other, after which this one holds nothing: compared last)
        assert got == plain(whole)
        fresh_store = opened(dsn, monkeypatch, held=0)
        try:
            fc = create_app({"DATA_DIR": str(tmp_path), "STORE": fresh_store, "MAINTENANCE_SECONDS": 0}).test_client()
            assert chart == fc.get("/api/v1/cpu", query_string={**open_range, "step": "600"}).get_json()
            assert pods == fc.get("/api/v1/series", query_string={**open_range, "by": "pod"}).get_json()
        finally:
            fresh_store.close()
        assert store._holding is not None
        views(store, tmp_path, whole)
        assert store._holding is None  # (that store's DDL)
        store.close()
        store = opened(dsn, monkeypatch)
        assert store._holding is not None
        sent = counted(store)
        store.transport.command(f"ALTER TABLE {store.layout.database}.profiles DELETE WHERE start_ns < {t1 + H} "
                                "SETTINGS mutations_sync = 2")
        sent.clear()
        cut = views(store, tmp_path, whole)
        assert store._holding is None and sent
        assert cut == plain(whole)
    finally:
        store.close()
        b.close()


def test_held_hours_are_bounded_and_not_held_over_http(tmp_path: Path, dsn: str, chdb_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the budget the older hours are not held (read as before); a store on a ClickHouse server holds none
    (other servers write: only a statement could say its rows are current)."""
    t1 = recent()
    a = opened(dsn, monkeypatch)
    try:
        put(a, profiles(t1, 150, "p0", 1))
        full = a._holding.nbytes if a._holding is not None else 0
    finally:
        a.close()
    a = opened(dsn, monkeypatch)
    try:
        assert a._holding is not None and a._holding.lo == t1
        full = a._holding.nbytes
    finally:
        a.close()
    whole = {"from": str(t1 // S), "to": str((t1 + 2 * H) // S)}
    small = opened(dsn, monkeypatch, held=full // 2)
    sent = counted(small)
    try:
        assert small._holding is not None and small._holding.lo > t1
        got = views(small, tmp_path, whole)
        assert sent  # the first hour is not held
        assert small._holding.nbytes <= full // 2
    finally:
        small.close()
    none = opened(dsn, monkeypatch, held=1)
    try:
        assert none._holding is None
        assert views(none, tmp_path, whole) == got
    finally:
        none.close()
    from tests.clickhouse_standin import clickhouse_http

    with clickhouse_http(str(chdb_dir)) as (port, _):
        remote = open_store(f"clickhouse://127.0.0.1:{port}/{dsn.split('database=')[1]}")
        assert isinstance(remote, ClickHouseStore)
        try:
            assert remote._holding is None
            assert views(remote, tmp_path, whole) == got
        finally:
            remote.close()


# -- a node: more series than a pod's one read (`_ONE_READ_SERIES`), answered the same way where parts are kept -------

def node_profiles(t0: int, minutes: int, seed: int, pods: int = 70) -> list[Profile]:
    """`pods` pods of node "n1" (past `_ONE_READ_SERIES` series), every third also with a CPU-time series: a flame
    graph of the node picks one of two types, so its sums are per series (as a real node's)."""
    out = []
    for i in range(pods):
        for p in profiles(t0, minutes, f"n1-{i}", seed + i):
            p.labels["node"] = "n1"
            out.append(p)
            if i % 3 == 0:
                out.append(Profile(dict(p.labels), p.start_ns, p.duration_ns, p.period_ns,
                                   {s: v * p.period_ns for s, v in p.samples.items()}, "cpu", "nanoseconds"))
    return out


def node_tree(store: ClickHouseStore, tmp_path: Path, sample_type: str | None = None) -> Any:
    c = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
    r = c.get("/api/v1/flamegraph", query_string={**RANGE, "query": '{node="n1"}',
                                                  **({"type": sample_type} if sample_type else {})})
    assert r.status_code == 200, r.data[:300]
    return r.get_json()


def test_a_node_past_a_pods_series_is_one_read_kept_and_folded_equal_to_the_selection_and_read(
        tmp_path: Path, dsn: str) -> None:
    """A node's flame graph (70 pods, 94 series, two types) on a store that keeps parts is the one read of each table
    (no selection over `profiles`); asked again with puts into the hour being written it sends no statement; every
    answer equals the selection-then-read path's (a store that keeps no part: what a server over HTTP runs)."""
    store, other = open_store(dsn), open_store(dsn)
    assert isinstance(store, ClickHouseStore) and isinstance(other, ClickHouseStore)
    other.part_cache_bytes = 0
    sent = counted(store)
    try:
        put(store, node_profiles(T0, 150, 1))
        assert store._ids(parse_selector('{node="n1"}'), None, None)[1] == 94  # (past _ONE_READ_SERIES)
        sent.clear()
        got = node_tree(store, tmp_path)
        assert sent and all(f"{store.layout.database}.profiles" not in sql for sql in sent), sent
        assert got == node_tree(other, tmp_path)
        assert node_tree(store, tmp_path, "cpu") == node_tree(other, tmp_path, "cpu")
        node_tree(store, tmp_path)  # (the other store's reads wrote nothing: kept as they were)
        for k in range(3):
            ps = node_profiles(OPEN + k * S, 1, 1, pods=40 - k)  # (stacks the server has named: no naming read)
            put(store, ps)
            sent.clear()
            now = node_tree(store, tmp_path)
            assert sent == [], (k, sent)
            assert now["total"] == got["total"] + total([p for p in ps if p.sample_type == "samples"])
            assert now == node_tree(other, tmp_path)
            got = now
    finally:
        store.close()
        other.close()


def test_a_node_over_http_is_one_statement_of_selection_and_sums_equal_to_two(tmp_path: Path, dsn: str,
                                                                             chdb_dir: Path) -> None:
    """Over HTTP (no part kept) a node's flame graph, past the grouping sets' series, sends the selection and the
    picked type's sums as ONE statement (the type guessed from the catalogue, checked by the selection), equal to
    the selection-then-sums path's answer for each type; a guess the range does not have (only CPU-time profiles
    in it) reads the type present after the selection, still exact."""
    from tests.clickhouse_standin import clickhouse_http

    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    store.part_cache_bytes = 0
    late = T0 + 5 * H  # CPU time alone: the catalogue's preferred type ("samples") has nothing there
    cpu_only = [Profile(dict(p.labels), p.start_ns, p.duration_ns, p.period_ns,
                        {s: v * p.period_ns for s, v in p.samples.items()}, "cpu", "nanoseconds")
                for p in node_profiles(late, 20, 7) if p.sample_type == "samples"]
    put(store, node_profiles(T0, 150, 1) + cpu_only)
    try:
        want = {t: node_tree(store, tmp_path, t) for t in (None, "cpu")}
        wide = store._typed_selection_summed
        store._typed_selection_summed = lambda s, t0, t1, pick, keep: super(  # type: ignore[method-assign]
            ClickHouseStore, store).typed_select_summed(s, t0, t1, pick, keep)
        assert want == {t: node_tree(store, tmp_path, t) for t in (None, "cpu")}  # the two statements' answers
        store._typed_selection_summed = wide  # type: ignore[method-assign]
    finally:
        store.close()
    late_range = {"from": str(late // S), "to": str((late + H) // S)}
    with clickhouse_http(str(chdb_dir)) as (port, _):
        remote = open_store(f"clickhouse://127.0.0.1:{port}/{dsn.split('database=')[1]}")
        assert isinstance(remote, ClickHouseStore)
        sent = counted(remote)
        db = remote.layout.database
        try:
            for t, tree_ in want.items():
                for _ in range(2):  # a fresh app each time: the flame graph is made again, not kept
                    sent.clear()
                    assert node_tree(remote, tmp_path, t) == tree_
                    reads = [sql for sql in sent if f"{db}.profiles" in sql or f"{db}.samples" in sql]
                    assert len(reads) == 1, reads
                    assert f"{db}.profiles" in reads[0] and f"{db}.samples" in reads[0]
            c = create_app({"DATA_DIR": str(tmp_path), "STORE": remote, "MAINTENANCE_SECONDS": 0}).test_client()
            r = c.get("/api/v1/flamegraph", query_string={**late_range, "query": '{node="n1"}'})
            assert r.status_code == 200 and r.get_json()["total"] == total(cpu_only)
        finally:
            remote.close()


@pytest.mark.parametrize(("query", "parts"), [('{node="n1"}', False), ('{pod="n1-1"}', True)])
def test_sums_read_with_the_refs_serve_only_those_refs(dsn: str, query: str, parts: bool) -> None:
    """The sums `typed_select_summed` reads with its refs serve the `read_merged` that follows only for exactly those
    refs: refs of the same series and window selected again after a put into the range (another count and
    fingerprint) are read, and sum the put too. A node over the one statement (no part kept) and a pod over the
    grouping sets (one type: summed per stack)."""
    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    if not parts:
        store.part_cache_bytes = 0
    sel = parse_selector(query)
    t0, t1 = T0, T0 + 2 * H
    try:
        put(store, node_profiles(T0, 90, 1))
        sample_type, unit, refs = store.typed_select_summed(sel, t0, t1, lambda present: ("samples", "count"))
        assert refs and all(p.handle.t0 == refs[0].handle.t0 for p in refs)  # type: ignore[attr-defined]
        late = [p for p in node_profiles(T0 + 100 * 60 * S, 1, 9) if p.sample_type == "samples"]
        put(store, late)  # (a flame graph found kept by its refs reads no sums: the next request selects again)
        again = store.select_summed(sel, t0, t1, sample_type, unit, keep=())
        assert {(p.series.id, p.period_ns) for p in again} == {(p.series.id, p.period_ns) for p in refs}
        _, values = store.read_merged(again)
        want = [p for p in node_profiles(T0, 90, 1) + late if p.sample_type == "samples" and sel.matches(p.labels)]
        assert int(values.sum()) == total(want)
    finally:
        store.close()
