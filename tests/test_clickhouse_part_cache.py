"""Answers kept per part of a range while no write touched its hours (web/store/clickhouse.py `_union`): a running
server answers a pod's flame graph, the CPU chart and the pod list of past hours again with no statement while
ingest goes on into other hours, and any write into those hours, a deletion, or a write from another store on the
engine is in the next answer (equal to a fresh server's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.builders import put
from tests.test_clickhouse_replicas import T0, H, S, counted, profiles, total
from web.server.app import create_app
from web.store.clickhouse import ClickHouseStore
from web.store.dsn import open_store

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
