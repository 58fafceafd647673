"""bench/store.py --backend clickhouse's cluster-day (bench/store_backends.py `cluster_day`): the node's range copied
back in time and to other nodes in SQL, then the all-nodes flame graph. It wrote the series table by position and broke
when that table gained `added` (schema 4); this runs it on a small node on the real engine."""

from __future__ import annotations

from bench.store import NODE
from bench.store_backends import cluster_day
from tests.builders import put
from tests.test_clickhouse_replicas import T0, H, profiles, total
from web.store.clickhouse import ClickHouseStore
from web.store.dsn import open_store


def test_the_cluster_day_copies_the_node_and_reads_every_node_exact(chdb_dsn: str) -> None:
    hour = []
    for i in range(3):
        for p in profiles(T0 + H, 60, f"pod-{i}", i):  # one whole hour, the bench's node label
            p.labels["node"] = NODE
            hour.append(p)
    store = open_store(chdb_dsn)
    assert isinstance(store, ClickHouseStore)
    try:
        put(store, hour)
    finally:
        store.close()
    out = cluster_day(chdb_dsn, 3, T0 + H, T0 + 2 * H, runs=1, hours=2)  # 2 h: the hour copied back once; 3 nodes
    assert out["node_flamegraph"]["total"] == 2 * total(hour)
    assert out["cluster_flamegraph"]["total"] == 3 * 2 * total(hour)
