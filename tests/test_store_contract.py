"""What every store backend must do alike (sqlite, and ClickHouse on the real engine through chDB), and what the
ClickHouse store adds: idempotent ingest across retries and replicas, rollups that stay exact, DDL for a
cluster that the engine's own parser accepts, and a clear 503 when ClickHouse cannot be reached."""

from __future__ import annotations

import json
import logging
import random
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import batches, ingest, put
from web.query.merge import Query, cpu_series, merged, resolve_type, type_pick
from web.query.treecache import refs_key
from web.server.app import create_app
from web.store.base import Store
from web.store.clickhouse_schema import SCHEMA_VERSION, Layout, ddl
from web.store.selector import MATCH_ALL, parse_selector

S = 10**9
H = 3600 * S
T0 = 1_700_000_000 * S // H * H  # an hour boundary
PERIOD = 10_000_000
EXE = Mapping(0x400000, 0x500000, 0, "/usr/bin/app", "feedface")
FRAMES = [Frame(0x401000 + 16 * i, EXE, FrameKind.NATIVE, (Line(f"fn{i}", "app.c", 10 + i),)) for i in range(12)]


def day(pods: int = 3, hours: float = 3.0, every: int = 60 * S, seed: int = 1) -> list[Profile]:
    """Profiles of a few pods over a few hours, random stacks: the truth every query is checked against."""
    rng = random.Random(seed)
    out = []
    for k in range(int(hours * H // every)):
        for pod in range(pods):
            p = Profile({"pod": f"p{pod}", "ns": "shop" if pod % 2 else "infra"}, T0 + k * every, every, PERIOD)
            for _ in range(rng.randint(1, 6)):
                depth = rng.randint(1, 5)
                p.add(tuple(FRAMES[rng.randrange(len(FRAMES))] for _ in range(depth)), rng.randint(1, 50))
            out.append(p)
    return out


def truth(profiles: list[Profile], t0: int, t1: int, pods: set[str] | None = None) -> Counter:
    out: Counter = Counter()
    for p in profiles:
        if t0 <= p.start_ns < t1 and (pods is None or p.labels["pod"] in pods):
            for stack, v in p.samples.items():
                out[stack] += v
    return out


def got(store: Store, selector: str, t0: int, t1: int) -> Counter:
    m = merged(store, Query(parse_selector(selector), t0, t1))
    stacks = store.stacks(m.stack_ids.tolist())
    out: Counter = Counter()
    for sid, v in zip(m.stack_ids.tolist(), m.values.tolist(), strict=True):
        out[stacks[sid]] += v
    return out


def test_range_merges_are_exact_on_ragged_ranges(tmp_path: Path, make_store: Callable[[Path], Store]) -> None:
    """Ranges that cut hours (ClickHouse: rollup for whole hours, raw rows at the edges) sum exactly what was put."""
    store = make_store(tmp_path)
    profiles = day()
    put(store, profiles)
    for t0, t1 in [(T0, T0 + 3 * H), (T0 + 17 * 60 * S, T0 + 2 * H + 41 * 60 * S), (T0 + H, T0 + 2 * H),
                   (T0 + 5 * 60 * S, T0 + 9 * 60 * S), (T0 - H, T0 + 10 * H)]:
        assert got(store, "{}", t0, t1) == truth(profiles, t0, t1), (t0 - T0, t1 - T0)
    assert got(store, '{ns="shop"}', T0 + 30 * 60 * S, T0 + 3 * H) == truth(profiles, T0 + 30 * 60 * S, T0 + 3 * H,
                                                                            {"p1"})
    assert got(store, '{pod=~"p[02]"}', T0, T0 + 2 * H) == truth(profiles, T0, T0 + 2 * H, {"p0", "p2"})


def test_labels_types_and_cpu_series(tmp_path: Path, make_store: Callable[[Path], Store]) -> None:
    store = make_store(tmp_path)
    profiles = day(hours=1)
    put(store, profiles)
    assert store.label_names(T0, T0 + H) == ["ns", "pod"]
    assert store.label_values("pod", T0, T0 + H, parse_selector('{ns="infra"}')) == ["p0", "p2"]
    assert store.label_values("pod", T0 + 2 * H, T0 + 3 * H) == []
    assert store.types(T0, T0 + H) == [("samples", "count")]
    series = cpu_series(store, Query(MATCH_ALL, T0, T0 + H), 10 * 60 * S)
    want = [sum(sum(p.samples.values()) for p in profiles if T0 + k * 600 * S <= p.start_ns < T0 + (k + 1) * 600 * S)
            for k in range(6)]
    assert series["values"] == want
    assert series["cores"] == [v * PERIOD / 1e9 / 600 for v in want]
    infra = cpu_series(store, Query(parse_selector('{ns="infra"}'), T0, T0 + H), 10 * 60 * S)
    assert infra["values"] == [sum(sum(p.samples.values()) for p in profiles if p.labels["ns"] == "infra"
                                   and T0 + k * 600 * S <= p.start_ns < T0 + (k + 1) * 600 * S) for k in range(6)]
    assert 0 < sum(infra["values"]) < sum(want)
    assert cpu_series(store, Query(parse_selector('{ns="none"}'), T0, T0 + H), 10 * 60 * S)["values"] == [0] * 6


def mixed(hours: float = 2.5) -> list[Profile]:
    """Pods at two sampling periods, a second sample type, a series without the `ns` label: what per-type,
    per-period and per-label sums must keep apart."""
    out = []
    for p in day(pods=4, hours=hours, every=60 * S, seed=7):
        labels = dict(p.labels) if p.labels["pod"] != "p3" else {"pod": "p3"}
        period = PERIOD if p.labels["pod"] != "p1" else PERIOD // 2
        out.append(Profile(labels, p.start_ns, p.duration_ns, period, dict(p.samples)))
        if p.labels["pod"] == "p2":  # the same pod's CPU nanoseconds: another type, another series
            out.append(Profile(labels, p.start_ns, p.duration_ns, period,
                               {k: v * period for k, v in p.samples.items()}, "cpu", "nanoseconds"))
    return out


def test_flame_graphs_are_exact_per_type_over_periods_labels_and_ragged_ranges(
        tmp_path: Path, make_store: Callable[[Path], Store]) -> None:
    """A flame graph's merge (ClickHouse: the refs and the sums from one read of each table, per stack alone when the
    selector's series are of one type, per series when of several) sums exactly the profiles of the type shown."""
    store = make_store(tmp_path)
    profiles = mixed()
    put(store, profiles)
    for selector, sel in (("{}", lambda p: True), ('{pod="p2"}', lambda p: p.labels["pod"] == "p2"),
                          ('{pod=~"p[12]"}', lambda p: p.labels["pod"] in ("p1", "p2")),
                          ('{ns=""}', lambda p: "ns" not in p.labels)):
        for t0, t1 in ((T0, T0 + 2 * H), (T0 + 7 * 60 * S, T0 + H + 23 * 60 * S), (T0 + 5 * 60 * S, T0 + 9 * 60 * S)):
            for sample_type in (None, "cpu"):
                m = merged(store, Query(parse_selector(selector), t0, t1, sample_type))
                want: Counter = Counter()
                for p in profiles:
                    if sel(p) and t0 <= p.start_ns < t1 and p.sample_type == m.sample_type:
                        want.update(p.samples)
                stacks = store.stacks(m.stack_ids.tolist())
                have: Counter = Counter()
                for sid, v in zip(m.stack_ids.tolist(), m.values.tolist(), strict=True):
                    have[stacks[sid]] += v
                assert have == want and (sample_type is None or m.sample_type == sample_type), (selector, t0, t1)
                assert sum(r.total for r in m.refs) == sum(want.values())


def test_step_totals_and_label_totals_are_exact_per_type_period_and_label(
        tmp_path: Path, make_store: Callable[[Path], Store]) -> None:
    """The CPU chart's and the pod list's sums, which each backend computes in its engine (`step_totals`,
    `totals_by`): per step and period, per type and unit, per label value (a series lacking the label sums apart),
    over ragged steps and ranges that cut hours, against the profiles themselves."""
    store = make_store(tmp_path)
    profiles = mixed()
    put(store, profiles)

    def want_steps(sel: Callable[[Profile], bool], kind: tuple[str, str], t0: int, t1: int, step: int
                   ) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for p in profiles:
            if sel(p) and (p.sample_type, p.unit) == kind and t0 <= p.start_ns < t1:
                out.setdefault(p.period_ns, [0] * -(-(t1 - t0) // step))[(p.start_ns - t0) // step] += p.total()
        return out

    everything = (MATCH_ALL, lambda p: True)
    shop = (parse_selector('{ns="shop"}'), lambda p: p.labels.get("ns") == "shop")
    no_ns = (parse_selector('{ns=""}'), lambda p: "ns" not in p.labels)
    for (selector, sel), kind in [(everything, ("samples", "count")), (everything, ("cpu", "nanoseconds")),
                                  (shop, ("samples", "count")), (no_ns, ("samples", "count"))]:
        for t0, t1, step in [(T0, T0 + 3 * H, 600 * S), (T0 + 17 * 60 * S, T0 + 2 * H + 5 * 60 * S, 7 * 60 * S),
                             (T0 + 50 * 60 * S, T0 + 70 * 60 * S, 60 * S)]:
            st = store.step_totals(selector, t0, t1, step, *kind)
            got_steps = {p: v.tolist() for p, v in st.by_period.items() if v.any()}
            assert got_steps == want_steps(sel, kind, t0, t1, step), (kind, str(selector), t0 - T0, step)
    assert not store.step_totals(parse_selector('{pod="none"}'), T0, T0 + H, 600 * S, "samples", "count").by_period

    def want_groups(by: list[str] | None, kind: tuple[str, str], t0: int, t1: int) -> dict:
        out: dict = {}
        for p in profiles:
            if (p.sample_type, p.unit) == kind and t0 <= p.start_ns < t1:
                key = tuple(sorted(p.labels.items())) if by is None else tuple((k, p.labels[k]) for k in by
                                                                                if k in p.labels)
                v = out.setdefault(key, [0, 0])
                v[0] += p.total()
                v[1] += p.total() * p.period_ns
        return out

    for by in (["pod"], ["ns"], ["ns", "pod"], None):
        for kind in (("samples", "count"), ("cpu", "nanoseconds")):
            for t0, t1 in [(T0, T0 + 3 * H), (T0 + 17 * 60 * S, T0 + 2 * H + 5 * 60 * S)]:
                groups = store.totals_by(MATCH_ALL, t0, t1, by, *kind)
                assert {tuple(sorted(g.labels.items())) if by is None else tuple(g.labels.items()):
                        [g.value, g.value_period_ns] for g in groups} == want_groups(by, kind, t0, t1), (by, kind)
                assert all(g.has_period for g in groups)
    shop_pods = store.totals_by(shop[0], T0, T0 + 3 * H, ["pod"], "samples", "count")
    assert {g.labels["pod"] for g in shop_pods} == {"p1"}
    # What the chart and the pod list ask: the type the query layer picks and its sums, in one call (ClickHouse: one
    # statement), equal to asking the type first; a selector matching nothing still names the whole range's type.
    cases = [(MATCH_ALL, None, ("samples", "count")), (MATCH_ALL, "cpu", ("cpu", "nanoseconds")),
             (shop[0], "cpu", ("cpu", None)), (parse_selector('{pod="p2"}'), None, ("samples", "count")),
             (parse_selector('{pod="none"}'), None, ("samples", "count"))]
    for selector, requested, want in cases:
        pick = type_pick(Query(selector, T0, T0 + 3 * H, requested))
        t, u, st = store.typed_step_totals(selector, T0, T0 + 3 * H, 600 * S, pick)
        assert (t, u) == want == resolve_type(store, Query(selector, T0, T0 + 3 * H, requested))
        assert {p: v.tolist() for p, v in st.by_period.items() if v.any()} == {
            p: v.tolist() for p, v in store.step_totals(selector, T0, T0 + 3 * H, 600 * S, t, u).by_period.items()
            if v.any()}
        t, u, groups = store.typed_totals_by(selector, T0, T0 + 3 * H, ["pod"], pick)
        assert (t, u) == want
        assert sorted((g.labels["pod"], g.value) for g in groups) == sorted(
            (g.labels["pod"], g.value) for g in store.totals_by(selector, T0, T0 + 3 * H, ["pod"], t, u))


def test_retention_drops_what_is_older(tmp_path: Path, make_store: Callable[[Path], Store]) -> None:
    store = make_store(tmp_path)
    profiles = day(hours=3)
    put(store, profiles)
    now = T0 + 3 * H
    store.enforce_retention(2 * H, None, now_ns=now)  # cutoff: T0 + 1 h
    assert got(store, "{}", 0, 2 * now) == truth(profiles, T0 + H, now)
    store.enforce_retention(H, None, now_ns=now)  # a later pass with a shorter limit: cutoff T0 + 2 h
    assert got(store, "{}", 0, 2 * now) == truth(profiles, T0 + 2 * H, now)


def test_generation_and_refs_move_with_every_write_and_deletion(tmp_path: Path,
                                                                 make_store: Callable[[Path], Store]) -> None:
    """What lets the query layer keep answers (web/query/treecache.py): a new write or a retention pass changes
    the generation and the refs of the range it touches; refs of untouched data stay equal."""
    store = make_store(tmp_path)
    profiles = day(hours=3)
    early = [p for p in profiles if p.start_ns < T0 + 2 * H]
    put(store, early)
    g0 = store.generation()
    first_hour = refs_key(store.select(MATCH_ALL, T0, T0 + H, "samples"))
    whole = refs_key(store.select(MATCH_ALL, T0, T0 + 3 * H, "samples"))
    put(store, [p for p in profiles if p.start_ns >= T0 + 2 * H])
    g1 = store.generation()
    assert store.immutable_refs and g0 is not None and g1 != g0
    assert refs_key(store.select(MATCH_ALL, T0, T0 + H, "samples")) == first_hour
    assert refs_key(store.select(MATCH_ALL, T0, T0 + 3 * H, "samples")) != whole
    store.enforce_retention(H, None, now_ns=T0 + 3 * H)  # cutoff T0 + 2 h
    assert store.generation() != g1
    assert refs_key(store.select(MATCH_ALL, T0, T0 + 3 * H, "samples")) != whole
    assert store.select(MATCH_ALL, T0, T0 + H, "samples") == []


def test_disk_budget_drops_the_oldest_data_and_what_is_left_stays_exact(
        tmp_path: Path, make_store: Callable[[Path], Store], store_backend: str) -> None:
    """`max_bytes` on either backend: over the budget the oldest data goes (ClickHouse: whole day partitions,
    never the newest day), what is left is a suffix in time whose merges are exact, and bytes go down."""
    store = make_store(tmp_path)
    profiles = [Profile(p.labels, p.start_ns + d * 24 * H, p.duration_ns, p.period_ns, p.samples)
                for d in range(4) for p in day(pods=3, hours=4, every=10 * 60 * S, seed=d)]
    put(store, profiles)
    before = store.enforce_retention(None, 1 << 50).bytes_used
    assert before > 0
    result = store.enforce_retention(None, before // 2)
    assert result.profiles > 0 and result.cutoff_ns > T0, result
    assert result.bytes_used < before
    end = T0 + 5 * 24 * H
    assert got(store, "{}", 0, end) == truth(profiles, result.cutoff_ns, end)
    if store_backend == "chdb":  # whole day partitions, never the newest (SQLite cuts blobs to the budget)
        last = T0 + 3 * 24 * H + 3 * H  # the last hour put: in the newest day partition
        assert result.cutoff_ns <= last
        assert got(store, "{}", last, end) == truth(profiles, last, end) != Counter()


def test_a_query_past_its_deadline_answers_503_on_both_backends(tmp_path: Path,
                                                                 make_store: Callable[[Path], Store]) -> None:
    """QUERY_TIMEOUT_SECONDS (web/store/deadline.py) stops a query on either store with the same 503; ingest
    goes on. ClickHouse is not sent a statement past the deadline, and stops one that runs past it itself."""
    store = make_store(tmp_path / "data")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "STORE": store, "MAINTENANCE_SECONDS": 0,
                      "QUERY_TIMEOUT_SECONDS": 1e-9})
    client = app.test_client()
    ingest(client, [Profile({"pod": f"p{i}"}, T0, 10 * S, PERIOD, {(FRAMES[0],): 1}) for i in range(300)])
    for path, q in (("/api/v1/series", {"query": '{pod=~"p.*9"}'}), ("/api/v1/flamegraph", {"query": "{}"})):
        r = client.get(path, query_string={**q, "from": str(T0 // S), "to": str((T0 + H) // S)})
        assert r.status_code == 503 and "QUERY_TIMEOUT_SECONDS" in r.json["error"], (path, r.json)
    r = client.post("/api/v1/ingest", data=pprof.encode([Profile({"pod": "x"}, T0, 10 * S, PERIOD,
                                                                 {(FRAMES[1],): 1})]))
    assert r.status_code == 200


def test_clickhouse_stops_a_statement_that_runs_past_the_deadline(chdb_dir: Path) -> None:
    """The deadline reaches the engine as max_execution_time: a statement that would run for minutes is
    stopped by ClickHouse (its Code 159) and surfaces as the store's QueryTimeout."""
    from web.store import deadline
    from web.store.clickhouse_transport import ChdbTransport

    t = ChdbTransport(str(chdb_dir))
    try:
        with deadline.within(0.3), pytest.raises(deadline.QueryTimeout, match="QUERY_TIMEOUT_SECONDS"):
            t.query("SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) % 7 = 3")
        assert t.query("SELECT 1 AS one").column("one").to_pylist() == [1]  # no deadline: no limit
    finally:
        t.close()


def test_a_version_1_clickhouse_database_is_upgraded_in_place_and_stays_exact(tmp_path: Path, chdb_dir: Path) -> None:
    """Schema 2 added the hourly projection of profile totals: parts written before it are read raw until the
    projection is built for them (MATERIALIZE, in the background), so answers are exact throughout."""
    from web.store.clickhouse import ClickHouseStore
    from web.store.dsn import open_store

    db = f"up_{tmp_path.name[-12:].replace('-', '_')}"
    store = open_store(f"chdb://{chdb_dir}?database={db}")
    assert isinstance(store, ClickHouseStore)
    tr = store.transport
    tr.command(f"ALTER TABLE {db}.profiles DROP PROJECTION by_hour")  # as schema 1 made it
    tr.command(f"TRUNCATE TABLE {db}.schema_version")
    tr.command(f"INSERT INTO {db}.schema_version (version) VALUES (1)")
    profiles = day(hours=3)
    put(store, profiles)
    assert got(store, "{}", T0, T0 + 3 * H) == truth(profiles, T0, T0 + 3 * H)  # no projection: rows
    store.close()
    store = open_store(f"chdb://{chdb_dir}?database={db}")
    try:
        assert isinstance(store, ClickHouseStore)
        version = store.transport.query(f"SELECT max(version) AS v FROM {db}.schema_version")
        assert version.column("v").to_pylist() == [SCHEMA_VERSION]
        for t0, t1 in [(T0, T0 + 3 * H), (T0 + 17 * 60 * S, T0 + 2 * H + 41 * 60 * S)]:
            assert got(store, "{}", t0, t1) == truth(profiles, t0, t1)
        store.transport.command(f"ALTER TABLE {db}.profiles MATERIALIZE PROJECTION by_hour "
                                "SETTINGS mutations_sync = 2")  # done now (the upgrade's own may still run)
        built = store.transport.query(f"SELECT count() AS n FROM system.projection_parts WHERE database = '{db}' "
                                      "AND table = 'profiles' AND name = 'by_hour' AND active")
        assert built.column("n").to_pylist()[0] > 0
        assert got(store, "{}", T0, T0 + 3 * H) == truth(profiles, T0, T0 + 3 * H)
    finally:
        store.close()


def test_ingest_is_idempotent_per_batch_across_retries_and_replicas(tmp_path: Path, chdb_dir: Path) -> None:
    """Two servers (stores) on one database: a batch retried on either is counted once, and each sees the other's."""
    from web.store.dsn import open_store

    dsn = f"chdb://{chdb_dir}?database=idem_{tmp_path.name[-12:].replace('-', '_')}"
    a, b = open_store(dsn), open_store(dsn)
    try:
        profiles = day(hours=0.5)
        first, second = profiles[: len(profiles) // 2], profiles[len(profiles) // 2:]
        a.put(batches(first))
        a.put(batches(first))  # the agent's retry after a lost answer
        b.put(batches(first))  # ... reaching another replica
        b.put(batches(second))
        for store in (a, b):
            assert got(store, "{}", T0, T0 + H) == truth(profiles, T0, T0 + H)
        # a different batch with the same samples at another time is new data
        moved = [Profile(p.labels, p.start_ns + H, p.duration_ns, p.period_ns, dict(p.samples)) for p in first]
        a.put(batches(moved))
        assert got(b, "{}", T0 + H, T0 + 2 * H) == truth(moved, T0 + H, T0 + 2 * H)
    finally:
        a.close()
        b.close()


def test_ingest_through_the_api_twice_counts_once(tmp_path: Path, chdb_dir: Path) -> None:
    from web.store.dsn import open_store

    store = open_store(f"chdb://{chdb_dir}?database=api_{tmp_path.name[-12:].replace('-', '_')}")
    app = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0})
    try:
        client = app.test_client()
        profiles = day(pods=2, hours=0.1)
        ingest(client, profiles)
        ingest(client, profiles)
        r = client.get("/api/v1/folded", query_string={"from": str(T0 // S), "to": str((T0 + H) // S)})
        assert r.status_code == 200
        total = sum(int(line.rsplit(" ", 1)[1]) for line in r.get_data(as_text=True).splitlines())
        assert total == sum(sum(p.samples.values()) for p in profiles)
    finally:
        store.close()


def test_unreachable_clickhouse_answers_503_with_a_clear_message(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The real network client (clickhouse-connect) against a port nothing listens on: the cause in a few words,
    and one log line while it stays down, not the client's and urllib3's two warnings per request."""
    pytest.importorskip("clickhouse_connect")
    from web.store.dsn import open_store

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    store = open_store(f"clickhouse://127.0.0.1:{port}/podflame")  # starts: DDL waits for ClickHouse
    app = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0})
    client = app.test_client()
    r = client.get("/api/v1/labels", query_string={"from": "0", "to": "100"})
    assert r.status_code == 503
    assert r.json["error"] == f"ClickHouse at http://127.0.0.1:{port} is unreachable: [Errno 111] Connection refused"
    assert client.get("/readyz").status_code == 503  # unready: the Service stops sending it work
    assert client.get("/healthz").status_code == 200  # but alive: a restart would not bring ClickHouse back
    profiles = day(pods=1, hours=0.02)
    r = client.post("/api/v1/ingest", data=pprof.encode(profiles))
    assert r.status_code == 503  # the agent keeps the batch and retries
    warned = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [("web.store.clickhouse_transport", f"ClickHouse at http://127.0.0.1:{port} is unreachable: "
                       "[Errno 111] Connection refused (answering 503 until it is back)")], warned
    store.close()


def test_an_id_list_travels_as_an_external_table_over_http() -> None:
    """What the network adapter adds for id lists (the stacks and frames a query reads): the SQL names the
    external table and the ids go as its TSV rows with their structure, as ClickHouse's HTTP interface takes
    them. No ClickHouse server runs here (docs/scaling.md), so the driver's call is what is checked; chDB runs
    the same SQL with the list through Python() in every ClickHouse test."""
    pytest.importorskip("clickhouse_connect")
    import pyarrow as pa

    from web.store.clickhouse_transport import IDS, HttpTransport

    calls: list[tuple[str, dict]] = []

    class Client:
        def query_arrow(self, sql: str, **kwargs: object) -> pa.Table:
            calls.append((sql, kwargs))
            return pa.table({"id": pa.array([2, 3], pa.uint64())})

    t = HttpTransport("127.0.0.1", 1)
    t._client = Client()
    got = t.query(f"SELECT id FROM stacks WHERE id IN (SELECT id FROM {IDS})", [3, 2, 18446744073709551615])
    assert got.column("id").to_pylist() == [2, 3]
    sql, kwargs = calls[0]
    assert sql == "SELECT id FROM stacks WHERE id IN (SELECT id FROM podflame_ids)"
    (f,) = kwargs["external_data"].files  # type: ignore[attr-defined]
    assert (f.name, f.fmt, f.structure, f.data) == ("podflame_ids", "TSV", "id UInt64",
                                                    b"3\n2\n18446744073709551615")
    t.query("SELECT 1")
    assert "external_data" not in calls[1][1]


def test_cluster_ddl_is_accepted_by_the_engines_parser(chdb_dir: Path) -> None:
    """ON CLUSTER / Replicated / Distributed statements cannot run without a cluster; ClickHouse's parser
    (EXPLAIN SYNTAX) checks every one, and the single-node DDL really runs in every chdb test."""
    from web.store.clickhouse_transport import ChdbTransport

    t = ChdbTransport(str(chdb_dir))
    try:
        stmts = ddl(Layout("pf", "main", 7 * 86400))
        assert any("ReplicatedMergeTree" in s for s in stmts) and any("Distributed('main'" in s for s in stmts)
        for stmt in stmts:
            t.query(f"EXPLAIN AST {stmt}")
    finally:
        t.close()


_CLUSTER_RUN = """
import json, sys
from pathlib import Path
from tests.builders import batches
from tests.test_store_contract import H, S, T0, day, got, truth
from web.store.dsn import open_store

d = Path(sys.argv[1])
store = open_store(f"chdb://{d / 'data'}?database=pf&cluster=pf&replicated=0&config={d / 'config.xml'}")
rows = store.transport.query("SELECT name, engine FROM system.tables WHERE database = 'pf'").to_pylist()
profiles = day(hours=3)
store.put(batches(profiles[:150]))
g1 = store.generation()
store.put(batches(profiles[150:]))
g2 = store.generation()
store.put(batches(profiles[150:]))  # a retry, through the Distributed table: counted once
local = store.transport.query("SELECT count() AS n FROM pf.samples_local").column("n")[0].as_py()
print(json.dumps({
    "engines": {r["name"]: r["engine"] for r in rows}, "local_rows": local,
    "exact": got(store, "{}", T0, T0 + 3 * H) == truth(profiles, T0, T0 + 3 * H),
    "ragged": got(store, '{ns="shop"}', T0 + 17 * 60 * S, T0 + 2 * H) == truth(profiles, T0 + 17 * 60 * S, T0 + 2 * H,
                                                                             {"p1"}),
    "labels": store.label_values("pod", T0, T0 + H),
    "generation_moves": g1 != g2}))
"""

_CLUSTER_CONFIG = """<clickhouse>
  <tcp_port>9000</tcp_port>  <!-- a replica at localhost:9000 is this process: the shard is local -->
  <remote_servers><pf><shard><replica><host>localhost</host><port>9000</port></replica></shard></pf></remote_servers>
  <macros><shard>01</shard><replica>r1</replica></macros>
</clickhouse>"""


def test_cluster_ddl_runs_on_the_engine_sharded_without_replicas(tmp_path: Path) -> None:
    """The cluster layout for real on chDB: `*_local` MergeTree tables, Distributed tables over them on a
    cluster named in a ClickHouse config (one local shard), the views writing the local tables, and the
    store's queries (GLOBAL IN subqueries) through the Distributed tables exact, a retried put counted once.
    chDB runs no ON CLUSTER
    (Code 392, "Replicated DDL queries are disabled") and its Replicated tables stay read-only without a
    Keeper (docs/scaling.md), so those two parts are the parser's test above. chDB holds one data path
    per process: this runs in its own."""
    (tmp_path / "config.xml").write_text(_CLUSTER_CONFIG)
    r = subprocess.run([sys.executable, "-c", _CLUSTER_RUN, str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    engines = out["engines"]
    for table in ("samples", "profiles", "samples_1h", "series", "stacks", "frames", "functions", "mappings"):
        assert engines[table] == "Distributed", (table, engines)
        assert engines[f"{table}_local"].endswith("MergeTree"), (table, engines)
    assert engines["profiles_mv"] == engines["samples_1h_mv"] == "MaterializedView"
    assert out["local_rows"] > 0  # the rows went through the Distributed table to the shard's local table
    assert out["exact"] and out["ragged"] and out["labels"] == ["p0", "p1", "p2"] and out["generation_moves"], out


def test_print_ddl_prints_and_connects_to_nothing() -> None:
    r = subprocess.run([str(Path(sys.executable).parent / "podflame"), "server", "--store",
                        "clickhouse://nowhere.invalid:8123/pf?cluster=main&retention_seconds=86400", "--print-ddl"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE IF NOT EXISTS pf.samples_local ON CLUSTER 'main'" in r.stdout
    assert "toIntervalSecond(86400)" in r.stdout


@pytest.mark.system
@pytest.mark.skipif(not shutil.which("go"), reason="go tool pprof (Debian golang-go) not installed")
def test_pprof_download_is_read_back_by_go_tool_pprof(tmp_path: Path, make_store: Callable[[Path], Store]) -> None:
    """The API's merged pprof, from either backend, as the oracle reads it: totals per pod, names, lines, mapping."""
    store = make_store(tmp_path / "data")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "STORE": store, "MAINTENANCE_SECONDS": 0})
    profiles = day(pods=2, hours=0.5)
    put(store, profiles)
    t0, t1 = T0 + 10 * 60 * S, T0 + 25 * 60 * S
    r = app.test_client().get("/api/v1/pprof", query_string={"from": str(t0 // S), "to": str(t1 // S)})
    assert r.status_code == 200
    f = tmp_path / "p.pb.gz"
    f.write_bytes(r.data)

    def run(*args: str) -> str:
        return subprocess.run(["go", "tool", "pprof", *args, str(f)], capture_output=True, text=True, check=True,
                              timeout=120).stdout

    want = truth(profiles, t0, t1)
    total = sum(want.values())
    assert f"of {total} total" in run("-top", "-sample_index=samples")
    p0 = sum(truth(profiles, t0, t1, {"p0"}).values())
    assert f"accounting for {p0}, " in run("-top", "-sample_index=samples", "-tagfocus=pod=p0")
    traces = run("-traces", "-lines")
    assert "app.c:1" in traces and "fn" in traces
    assert "/usr/bin/app" in run("-raw") and "feedface" in run("-raw")
