"""The node-day of bench/store.py on two backends side by side, in one run: SQLite (the peer) and ClickHouse.

Both stores take the same drains (100 pods, one gzip pprof per 10 s, bench/synthetic.py) through the
server's ingest handler (Flask test client: decode, normalize, `Store.put`), then answer the same
queries through the HTTP API: pod 1 h, pod whole range, node whole range (flame graphs), node CPU per
10 min. ClickHouse runs in-process through chDB (the engine a ClickHouse server runs; the network adds
a round trip per statement, not work). Reported per backend: bytes per sample (SQLite: its files;
ClickHouse: compressed bytes of the database's active parts, after merges), ingest in pod profiles/s
of this one process, and each query twice, with the ratios ClickHouse / SQLite:
- `queries`: in this process, on a fresh store object and app per query (podflame's caches empty) with the
  storage warm: SQLite's files in the page cache, chDB's engine up with its caches (as a ClickHouse server that
  has run a while: the engine that took the ingest, kept up to the queries). The first request is `cold_s`, the
  median of the rest `warm_s` (a kept answer).
- `queries_deployed`: as deployed, a fresh podflame server process per query with the store's files dropped
  from the page cache; ClickHouse a separate long-running server process (chDB behind ClickHouse's HTTP
  interface, tests/clickhouse_standin.py, reached with clickhouse-connect) with every engine cache dropped
  before each query (`deployed_queries`). `open_s` is the server's start (ClickHouse: connect and schema check).

Then two figures of the ClickHouse store alone:
- **Ingest with two server processes against one** (`--parallel-drains` drains in all, POSTed through
  each process' ingest handler, both started together). A real ClickHouse server cannot run on these
  machines (Debian's clickhouse-server is 18.16, which clickhouse-connect refuses; no other build is
  installed), and chDB holds its data directory in one process, so each process has its OWN chDB
  directory. What that shows: whether the server-side work of ingest (pprof decode, normalize, content
  hashes, Arrow columns, the insert and its views) scales across processes on this machine. What it does
  not show: two clients contending on one server's parts, merges and insert queue, nor the network hop.
- **A cluster-day**: the node's data copied in SQL to `--cluster-nodes` nodes (series ids and the `node`
  label changed, the same stacks: real nodes share most stacks but not all, so dictionaries are smaller
  than a real cluster's), then the flame graph of all nodes over the whole range through the API
  (whole hours from the hourly rollup).

    .venv/bin/python bench/store.py --backend clickhouse --hours 2

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.store import NODE, H, drop_page_cache, log, query_cases  # noqa: E402  (the same node-day as bench/store.py)
from bench.synthetic import S, drain, make_node  # noqa: E402
from podflame import pprof  # noqa: E402


def run_case(backend: str, dsn: str | None, data: Path, path: str, params: dict[str, str], runs: int
             ) -> dict[str, Any]:
    """One query on a fresh store object and app (no store, name or tree caches: the first request is cold),
    then `runs - 1` more (warm: the median)."""
    from web.server.app import create_app
    from web.store.dsn import open_store

    store = open_store(dsn, data)
    c = create_app({"DATA_DIR": str(data), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
    try:
        return _time_requests(c, path, params, runs)
    finally:
        store.close()


_WRITE_SEQ = itertools.count()  # `replica_case`'s writes: each at its own time (a ClickHouse retry would be dropped)


def replica_case(dsn: str | None, data: Path, path: str, params: dict[str, str], runs: int,
                 writes: tuple[bytes, int] | None = None, open_to: int | None = None) -> dict[str, Any]:
    """One query on a server that has run a while: one store object (a replica's process) answers it once, then
    `runs` more times, each through a fresh app (no kept flame graph: the answer is made again, as after new
    data), so the store's own caches (ClickHouse: the series catalogue, stacks, frames and names, the parts of past
    hours no write touched; SQLite: its series index and pages) are what a running server has. The median CPU of
    those `runs` (this process' every thread, chDB's engine included). `writes` (a drain's pprof, the first time to
    file it at, ns): before each timed request that drain is ingested 10 s after the last one, through the same
    app, so the answer is made while ingest goes on in a later hour (not in the queried range: answers unchanged).
    `open_to` (ns): the range ends there instead, in the hour those drains are written into (the page's range ending
    now while ingest goes on in the hour being written: each answer has the drains filed so far)."""
    from web.server.app import create_app
    from web.store.dsn import open_store

    if open_to is not None:
        params = {**params, "to": str(open_to // S)}

    store = open_store(dsn, data)
    try:
        c = create_app({"DATA_DIR": str(data), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
        assert c.get(path, query_string=params).status_code == 200
        cpu = []
        for _ in range(runs):
            c = create_app({"DATA_DIR": str(data), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
            if writes is not None:
                at = (writes[1] + next(_WRITE_SEQ) * 10 * S) // S
                w = c.post(f"/api/v1/ingest?node={NODE}&time={at}", data=writes[0])
                assert w.status_code in (200, 202, 204), w.data[:300]
            t = time.process_time()
            r = c.get(path, query_string=params)
            cpu.append(time.process_time() - t)
            assert r.status_code == 200, r.data[:300]
        body = r.get_json(silent=True) or {}
        return {"cpu_ms": [round(x * 1000, 2) for x in cpu], "median_cpu_ms": round(statistics.median(cpu) * 1000, 2),
                **({"total": body["total"]} if "total" in body else {})}
    finally:
        store.close()


def _time_requests(c: Any, path: str, params: dict[str, str], runs: int, server_pid: int | None = None
                   ) -> dict[str, Any]:
    """`runs` requests: the first's wall and CPU time (this process' every thread, chDB's engine too when it is
    in it, plus the ClickHouse server process `server_pid`'s), the median of the rest, the answer's total."""
    times = []
    cpu = time.process_time() + _cpu_of(server_pid)
    for k in range(runs):
        t = time.perf_counter()
        r = c.get(path, query_string=params)
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, r.data[:300]
        if k == 0:
            cpu = time.process_time() + _cpu_of(server_pid) - cpu
    out: dict[str, Any] = {"cold_s": round(times[0], 4), "warm_s": round(statistics.median(times[1:] or times), 4),
                           "cold_cpu_s": round(cpu, 4)}
    body = r.get_json(silent=True) or {}
    if "total" in body:
        out["total"] = body["total"]
    return out


def _compare(name: str, row: dict[str, Any], what: str) -> dict[str, Any]:
    """Both backends' answers agree; the ratios ClickHouse / SQLite of cold, warm and cold CPU time."""
    sq, ch = row["sqlite"], row["clickhouse"]
    if "total" in sq:
        assert sq["total"] == ch["total"], (name, sq["total"], ch["total"])
    row["ratio_cold"] = round(ch["cold_s"] / max(sq["cold_s"], 1e-4), 2)
    row["ratio_warm"] = round(ch["warm_s"] / max(sq["warm_s"], 1e-4), 2)
    row["ratio_cold_cpu"] = round(ch["cold_cpu_s"] / max(sq["cold_cpu_s"], 1e-4), 2)
    log(f"{what}{name}: {row}")
    return row


def queries(dsns: dict[str, tuple[str | None, Path]], start: int, end: int, pod: str, hours: float, runs: int,
            replica_runs: int = 0, replica_writes: tuple[bytes, int] | None = None,
            open_to: int | None = None) -> dict[str, dict[str, Any]]:
    """bench/store.py's queries, each on both backends back to back (so load drifts hit both alike), with
    the ratios ClickHouse / SQLite of the cold and the warm time; with `replica_runs`, also as a server that has
    run a while answers them (`replica_case`), the ratio of the median CPU."""
    from web.store.dsn import open_store

    out: dict[str, dict[str, Any]] = {}
    # The ClickHouse engine stays up across queries, as a ClickHouse server does across podflame server restarts:
    # each query's store object is fresh (podflame's caches empty), the engine's own caches are not. chDB closes
    # its engine with the last store on a path, so one store is held open for the run.
    server = open_store(dsns["clickhouse"][0], dsns["clickhouse"][1])
    # ... and as a server that has run a while, it has read each table's primary index once (what the first
    # statement on a table pays after a start: at stop 14 it fell on the first case, pod 1 h, 126 against 50 ms).
    db = server.layout.database  # type: ignore[attr-defined]
    # ... and whose merges of the ingest just done are over: chDB's merge threads run in this process, so a query
    # timed while they run had their CPU counted (stop 16's in-process pod 1 h: 7.7x SQLite's CPU, 2.5x after).
    waited = _merges_done(server.transport, db)  # type: ignore[attr-defined]
    log(f"clickhouse merges of the ingest done after {waited:.1f} s")
    for table, key in (("functions", "id"), ("mappings", "id"), ("frames", "id"), ("stacks", "id"),
                       ("series", "id"), ("samples", "series"), ("profiles", "series"), ("samples_1h", "series")):
        server.transport.query(f"SELECT count() AS n FROM {db}.{table} WHERE {key} = 0")  # type: ignore[attr-defined]
    for name, path, params in query_cases(start, end, pod, hours):
        out[name] = _compare(name, {b: run_case(b, dsn, data, path, params, runs) for b, (dsn, data) in dsns.items()},
                             "")
        if replica_runs:
            rep = {b: replica_case(dsn, data, path, params, replica_runs, replica_writes, open_to)
                   for b, (dsn, data) in dsns.items()}
            if "total" in rep["sqlite"]:
                assert rep["sqlite"]["total"] == rep["clickhouse"]["total"], (name, rep)
            rep["ratio_cpu"] = round(rep["clickhouse"]["median_cpu_ms"] / max(rep["sqlite"]["median_cpu_ms"], 1e-3), 2)
            out[name]["replica"] = rep
            log(f"replica {name}: {rep}")
    server.close()
    return out


def _merges_done(transport: Any, db: str, limit_s: float = 120.0) -> float:
    """Wait until the database has no merge or mutation running (at most `limit_s`); the seconds waited."""
    t = time.perf_counter()
    while time.perf_counter() - t < limit_s:
        busy = transport.query(f"SELECT (SELECT count() FROM system.merges WHERE database = '{db}') + "
                               f"(SELECT count() FROM system.mutations WHERE database = '{db}' AND NOT is_done) AS n")
        if not busy.column("n")[0].as_py():
            break
        time.sleep(0.5)
    return time.perf_counter() - t


def _cpu_of(pid: int | None) -> float:
    """CPU seconds of process `pid` so far, every thread's (schedstat: nanoseconds, where stat counts 10 ms
    ticks); 0 for none. A thread that ended since is not counted: the stand-in's request threads are, while they
    run, which covers the request measured."""
    if not pid:
        return 0.0
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def fresh_process_case(dsn: str | None, data: str, path: str, params: dict[str, str], runs: int,
                       server_pid: int | None = None) -> dict[str, Any]:
    """In this (fresh) process: open the store and the app (`open_s`: a server's start, with the ClickHouse
    store's connection and schema check), time the first request (`cold_s`), then the median of the rest.
    `cold_cpu_s`: the CPU the first request cost this process and the ClickHouse server's (`server_pid`), which
    other load on the machine inflates far less than the wall time."""
    from web.server.app import create_app
    from web.store.dsn import open_store

    t = time.perf_counter()
    store = open_store(dsn, data)
    c = create_app({"DATA_DIR": data, "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
    open_s = time.perf_counter() - t
    try:
        return {"open_s": round(open_s, 4), **_time_requests(c, path, params, runs, server_pid)}
    finally:
        store.close()


# What a long-running ClickHouse server has cached that a first query after a restart would not find:
# marks, uncompressed blocks, query results and conditions, index marks, mmapped files, compiled expressions.
_CH_CACHES = ("MARK CACHE", "UNCOMPRESSED CACHE", "QUERY CACHE", "MMAP CACHE", "COMPILED EXPRESSION CACHE",
              "PRIMARY INDEX CACHE", "QUERY CONDITION CACHE", "INDEX MARK CACHE", "INDEX UNCOMPRESSED CACHE",
              "PAGE CACHE")


def deployed_queries(dsns: dict[str, tuple[str | None, Path]], start: int, end: int, pod: str, hours: float,
                     runs: int, keep_dictionaries: bool = False) -> dict[str, dict[str, Any]]:
    """The queries as deployed: each in a FRESH podflame server process (as bench/store.py measures SQLite), its
    store's files dropped from the page cache first. SQLite reads its files in that process; ClickHouse is a
    separate long-running server (tests/clickhouse_standin.py: chDB, the same engine, behind ClickHouse's HTTP
    interface, started once for all queries, as a deployed server outlives podflame restarts), reached with
    clickhouse-connect, with every cache the engine keeps dropped (SYSTEM DROP ... CACHE) and its data files
    dropped from the page cache before each query. So both pay disk reads and an empty podflame; neither pays
    an engine start, which no deployed query pays. What the stand-in adds that a real server would not: its
    HTTP front is Python (ThreadingHTTPServer, ~1 ms a statement) where ClickHouse's is C++."""
    chdb_dir = Path((dsns["clickhouse"][0] or "").split("://", 1)[1].partition("?")[0])
    database = (dsns["clickhouse"][0] or "").rpartition("database=")[2] or "podflame"
    standin = subprocess.Popen([sys.executable, "-m", "tests.clickhouse_standin", str(chdb_dir)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    out: dict[str, dict[str, Any]] = {}
    try:
        port = int((standin.stdout.readline() if standin.stdout else "") or 0)
        if not port:
            raise RuntimeError("the ClickHouse stand-in did not start")
        http = f"clickhouse://127.0.0.1:{port}/{database}"

        def drop_caches() -> None:
            # ... and the dictionaries' kept keys (schema 3): each query's names are read from the tables again,
            # unless `keep_dictionaries` (a ClickHouse server that has served these stacks before, to any replica)
            reload = [] if keep_dictionaries else ["SYSTEM RELOAD DICTIONARIES"]
            for stmt in [f"SYSTEM DROP {cache}" for cache in _CH_CACHES] + reload:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", data=stmt.encode()),
                                       timeout=60).read()
            drop_page_cache(chdb_dir)

        for name, path, params in query_cases(start, end, pod, hours):
            row: dict[str, Any] = {}
            for b, dsn, data in (("sqlite", None, dsns["sqlite"][1]), ("clickhouse", http, dsns["clickhouse"][1])):
                if b == "clickhouse":
                    drop_caches()
                else:
                    drop_page_cache(data)
                got = subprocess.run([sys.executable, __file__, "--query-case",
                                      json.dumps([dsn, str(data), path, params, runs,
                                                  standin.pid if b == "clickhouse" else None])],
                                     check=True, capture_output=True, text=True, cwd=ROOT)
                row[b] = json.loads(got.stdout.strip().splitlines()[-1])
            out[name] = _compare(name, row, "deployed ")
    finally:
        standin.terminate()
        standin.wait(60)
    return out


def ingest(dsns: dict[str, tuple[str | None, Path]], bodies: list[bytes], samples: int, args: argparse.Namespace,
           start: int) -> dict[str, dict[str, Any]]:
    """Every drain of the range through each backend's ingest handler, the backends interleaved drain by drain
    (which goes first alternates), each POST timed alone: a load swing on this shared machine hits both alike,
    where one backend's whole hour after the other's did not. Then SQLite compacts (as its server would have)
    and ClickHouse merges its parts, so both are measured as a server that has run for a while holds them."""
    from web.server.app import create_app
    from web.store.dsn import open_store

    stores = {b: open_store(dsn, data) for b, (dsn, data) in dsns.items()}
    clients = {b: create_app({"DATA_DIR": str(dsns[b][1]), "STORE": s, "MAINTENANCE_SECONDS": 0}).test_client()
               for b, s in stores.items()}
    spent = dict.fromkeys(stores, 0.0)
    order = list(stores)
    n = int(args.hours * 3600 // args.interval)
    for i in range(n):
        ts = start + i * args.interval * S
        for b in order if i % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            r = clients[b].post(f"/api/v1/ingest?node={NODE}&time={ts // S}", data=bodies[i % len(bodies)])
            spent[b] += time.perf_counter() - t
            assert r.status_code == 200, r.json
        if (i + 1) % 360 == 0:
            log(f"ingest: {i + 1}/{n} drains ({', '.join(f'{b} {x:.0f} s' for b, x in spent.items())})")
    out = {}
    for b, store in stores.items():
        if b == "sqlite":
            from web.store.retention import Maintenance

            tc = time.perf_counter()
            Maintenance(store, interval=0).run_once(now_ns=start + n * args.interval * S + 30 * S)
            log(f"sqlite compaction {time.perf_counter() - tc:.1f} s (not in ingest)")
            size = sum(f.stat().st_size for f in dsns[b][1].rglob("*") if f.is_file())
        else:
            store.transport.command(f"OPTIMIZE TABLE {store.layout.database}.samples FINAL")  # type: ignore[attr-defined]
            size = store.bytes_used()  # type: ignore[attr-defined]
        store.close()
        out[b] = {"ingest_s": round(spent[b], 2), "pod_profiles_per_s": round(n * args.pods / spent[b]),
                  "bytes": size, "bytes_per_sample": round(size / samples, 3)}
    return out


def _ingest_worker(dsn: str, bodies: list[bytes], first: int, count: int, start: int, interval: int,
                   ready: Any, go: Any, out: Any) -> None:
    """One server process: its own store, POSTing drains first..first+count (own node label) when `go` is set."""
    from web.server.app import create_app
    from web.store.dsn import open_store

    store = open_store(dsn)
    client = create_app({"DATA_DIR": "/nonexistent", "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
    ready.set()
    go.wait()
    t, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    for i in range(first, first + count):
        r = client.post(f"/api/v1/ingest?node=node-p{first}&time={(start + i * interval * S) // S}",
                        data=bodies[i % len(bodies)])
        assert r.status_code == 200, r.json
    # CPU: every thread (chDB's insert and merge threads too), and this one's (the handler, and chDB's work it runs)
    out.put((time.perf_counter() - t, time.process_time() - cpu, time.thread_time() - main))
    store.close()


def parallel_ingest(tmp: Path, bodies: list[bytes], drains: int, pods: int, start: int, interval: int,
                    tag: str = "", two_first: bool = False) -> dict[str, Any]:
    """`drains` POSTed by one process, then split over two processes started together (each its own chDB, new
    under `tmp` for each `tag`); `two_first`: the two processes first (repeats alternate the order, so a load
    swing on the shared machine does not always fall on the same side of the ratio). `cpu_s`: each process' CPU
    time, every thread (chDB's merges and insert threads too): a process using more than one core alone leaves
    less for a second one on this 2-core machine."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: chDB is not fork-safe
    out: dict[str, Any] = {"drains": drains, "order": "2 then 1" if two_first else "1 then 2"}
    for procs in ((2, 1) if two_first else (1, 2)):
        share = drains // procs
        q, go = ctx.Queue(), ctx.Event()
        workers, ready = [], []
        for k in range(procs):
            ev = ctx.Event()
            dsn = f"chdb://{tmp / f'par{tag}{procs}-{k}'}?database=bench"
            w = ctx.Process(target=_ingest_worker, args=(dsn, bodies, k * share, share, start, interval, ev, go, q))
            w.start()
            workers.append(w)
            ready.append(ev)
        for ev in ready:
            ev.wait(300)
        t = time.perf_counter()
        go.set()
        per = [q.get(timeout=3600) for _ in workers]
        wall = time.perf_counter() - t
        for w in workers:
            w.join(60)
        out[f"{procs}_process"] = {"wall_s": round(wall, 2), "per_process_s": [round(x, 2) for x, _, _ in per],
                                    "cpu_s": [round(c, 2) for _, c, _ in per],
                                    "main_thread_cpu_s": [round(m, 2) for _, _, m in per],
                                    "pod_profiles_per_s": round(share * procs * pods / wall)}
        log(f"clickhouse ingest, {procs} process(es): {out[f'{procs}_process']}")
    out["ratio_two_vs_one"] = round(out["2_process"]["pod_profiles_per_s"] / out["1_process"]["pod_profiles_per_s"], 3)
    # What 2 idle cores allow at most: one process takes at least its main thread's CPU in wall time (its other
    # threads run beside it on the second core); two take at least one process' whole CPU (the same work each, on
    # a core each). Under other load the wall ratio says less than this.
    one = out["1_process"]
    out["ceiling_on_2_cores"] = round(2 * one["main_thread_cpu_s"][0] / max(one["cpu_s"][0], 1e-9), 3)
    return out


def _spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of the one-vs-two-process ingest: each ratio, their median and spread (min, max, and the middle
    half's range when there are four or more), and the same of the 2-core ceiling (what the CPU split allows)."""
    out: dict[str, Any] = {"runs": runs}
    for key in ("ratio_two_vs_one", "ceiling_on_2_cores"):
        xs = sorted(r[key] for r in runs)
        name = key.removeprefix("ratio_").replace("_on_2_cores", "")
        out[f"{name}s"] = [r[key] for r in runs]
        out[f"{name}_median"] = round(statistics.median(xs), 3)
        out[f"{name}_min_max"] = [xs[0], xs[-1]]
        if len(xs) >= 4:
            q = statistics.quantiles(xs, n=4)
            out[f"{name}_iqr"] = [round(q[0], 3), round(q[2], 3)]
    out["ratios"], out["ratio_median"] = out["two_vs_ones"], out["two_vs_one_median"]  # (the names stop 16 read)
    return out


def cluster_day(dsn: str, nodes: int, start: int, end: int, runs: int, hours: float = 24) -> dict[str, Any]:
    """A cluster-day written in SQL from the node's ingested range, then the flame graph of every node over it.

    Rows are what ingest writes (samples only; totals, rollups and the projection come from ClickHouse's views
    and parts, as with ingest): node-1's range copied back in time until it fills `hours` ending at `end`, then
    node-1's day copied to nodes 2..N (series ids and the `node` label changed, the same stacks: real nodes
    share most stacks but not all, so dictionaries are smaller than a real cluster's). Each copy is one
    INSERT ... SELECT, deduplicated by ClickHouse when a rerun repeats it. Then the rollups are merged
    (OPTIMIZE FINAL, timed apart: background merges do it on a server that has run a day), and the flame
    graph of all nodes over the day is asked on a fresh store object (cold), then again (warm), with the
    node's own day beside it."""
    from web.server.app import create_app
    from web.store.clickhouse import ClickHouseStore
    from web.store.dsn import open_store

    store = open_store(dsn)
    assert isinstance(store, ClickHouseStore)
    db, tr = store.layout.database, store.transport
    day0 = end - int(hours * H)
    span = end - start
    node1 = f"SELECT id FROM {db}.series WHERE labels['node'] = {NODE!r}"
    t = time.perf_counter()
    for k in range(1, -(-(start - day0) // span) + 1):  # the range shifted back k times, until the day is full
        shift = k * span
        tr.command(f"INSERT INTO {db}.samples SELECT series, start_ns - {shift}, duration_ns, period_ns, stack, "
                   f"value FROM {db}.samples WHERE series IN ({node1}) AND start_ns >= {start} AND start_ns < {end} "
                   f"AND start_ns - {shift} >= {day0}")
    node_s = time.perf_counter() - t
    log(f"cluster-day: node-1's {span / H:g} h copied to {hours:g} h in {node_s:.0f} s")
    for k in range(2, nodes + 1):
        tc = time.perf_counter()
        # no aliases named like columns: ClickHouse would read the WHERE's `series` as the new hash
        # (columns named: the table gained `added` at schema 4, which a copy keeps)
        tr.command(f"INSERT INTO {db}.series (id, sample_type, unit, labels, added) SELECT sipHash64(id, {k}), "
                   "sample_type, unit, "
                   f"mapUpdate(labels, CAST(map('node', 'node-{k}'), 'Map(LowCardinality(String), String)')), added "
                   f"FROM {db}.series FINAL WHERE labels['node'] = {NODE!r}")
        tr.command(f"INSERT INTO {db}.samples SELECT sipHash64(series, {k}), start_ns, duration_ns, "
                   f"period_ns, stack, value FROM {db}.samples WHERE series IN ({node1}) AND start_ns >= {day0} "
                   f"AND start_ns < {end}")
        log(f"cluster-day: node-{k} copied in {time.perf_counter() - tc:.0f} s")
    copy_s = time.perf_counter() - t
    t = time.perf_counter()
    for table in ("samples_1h", "profiles"):
        tr.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
    merge_s = time.perf_counter() - t

    def count(table: str) -> int:
        return int(tr.query(f"SELECT count() AS n FROM {db}.{table} WHERE start_ns >= {day0} AND start_ns < {end}"
                            if table != "samples_1h" else
                            f"SELECT count() AS n FROM {db}.{table} WHERE hour >= {day0} AND hour < {end}"
                            ).column("n")[0].as_py())

    out: dict[str, Any] = {"nodes": nodes, "hours": hours, "sample_rows": count("samples"),
                           "profile_rows": count("profiles"), "rollup_rows": count("samples_1h"),
                           "bytes": store.bytes_used(), "copy_s": round(copy_s, 1), "optimize_s": round(merge_s, 1)}
    log(f"cluster-day: {out}")
    for name, query in (("cluster", "{}"), ("node", f'{{node="{NODE}"}}')):
        params = {"from": str(day0 // S), "to": str(end // S), "query": query}
        fresh = open_store(dsn)  # a fresh store object (podflame's caches empty); `store` keeps the engine up
        client = create_app({"DATA_DIR": "/nonexistent", "STORE": fresh, "MAINTENANCE_SECONDS": 0}).test_client()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            r = client.get("/api/v1/flamegraph", query_string=params)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.data[:300]
        fresh.close()
        out[f"{name}_flamegraph"] = {"cold_s": round(times[0], 3), "total": (r.get_json() or {})["total"],
                                     "warm_s": round(statistics.median(times[1:] or times), 3)}
        log(f"cluster-day {name} flame graph: {out[f'{name}_flamegraph']}")
    store.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="clickhouse")
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--stacks", type=int, default=300)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--distinct", type=int, default=60)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--parallel-drains", type=int, default=360,
                    help="drains for the one-vs-two-process ingest (0: skip)")
    ap.add_argument("--parallel-repeat", type=int, default=1, help="one-vs-two-process runs (each on new stores)")
    ap.add_argument("--parallel-only", action="store_true",
                    help="only the one-vs-two-process ingest (drains generated, no node-day)")
    ap.add_argument("--cluster-nodes", type=int, default=20, help="nodes of the cluster-day (0: skip)")
    ap.add_argument("--cluster-hours", type=float, default=24, help="hours of the cluster-day")
    ap.add_argument("--data", help="keep both stores here (default: a temporary directory, removed after)")
    ap.add_argument("--queries-only", action="store_true", help="query the stores a run with --data left")
    ap.add_argument("--query-repeat", type=int, default=1,
                    help="rounds of the in-process queries (each on fresh store objects): per query the median and "
                         "min-max of the CPU ratio")
    ap.add_argument("--replica-runs", type=int, default=0,
                    help="in-process queries: also as a server that has run a while (one store object per case, a "
                         "fresh app per request so no kept answer): this many requests, their median CPU")
    ap.add_argument("--replica-writes", action="store_true",
                    help="with --replica-runs: before each of those requests, ingest one drain of the node into a "
                         "later hour (2 h past the data, 10 s apart; both backends), as a server answers while ingest "
                         "goes on. The stores keep those drains")
    ap.add_argument("--open-hour", action="store_true",
                    help="with --replica-writes: those drains go into the hour after the data (from its start, 10 s "
                         "apart, their content new each run) and the running server's ranges end with that hour: "
                         "each answer reads the hour being written, with the drains filed so far")
    ap.add_argument("--keep-dictionaries", action="store_true",
                    help="deployed queries: keep ClickHouse's dictionaries between queries (a server that has served "
                         "these stacks before); by default they are reloaded (empty) with the other caches")
    ap.add_argument("--no-deployed", action="store_true",
                    help="skip the queries in fresh processes against a separate ClickHouse server process")
    ap.add_argument("--query-case", help=argparse.SUPPRESS)  # internal: one query in a fresh process
    args = ap.parse_args(argv)
    if args.query_case:
        print(json.dumps(fresh_process_case(*json.loads(args.query_case))))
        return
    from web.store.dsn import open_store

    tmp = Path(args.data or tempfile.mkdtemp(prefix="podflame-bench-backends-"))
    meta = tmp / "bench-backends.json"
    n = int(args.hours * 3600 // args.interval)
    dsns: dict[str, tuple[str | None, Path]] = {"sqlite": (None, tmp / "sqlite"),
                                                "clickhouse": (f"chdb://{tmp / 'chdb'}?database=bench", tmp / "ch")}
    bodies: list[bytes] = []
    engine = None  # the ClickHouse engine held up from ingest through the queries (below)
    try:
        if args.queries_only:
            result = json.loads(meta.read_text())
            start = result["start_ns"]
        else:
            tmp.mkdir(parents=True, exist_ok=True)
            pods = make_node(args.pods, stacks_per_pod=args.stacks)
            start = (time.time_ns() // H) * H - int(args.hours * H)
            per_body = []
            for i in range(min(args.distinct, n)):
                profiles = drain(pods, start + i * args.interval * S, args.interval, seed=i)
                per_body.append(sum(p.total() for p in profiles))
                bodies.append(pprof.encode(profiles))
            samples = sum(per_body[i % len(per_body)] for i in range(n))
            log(f"{n} drains of {args.pods} pods, {samples} samples")
            result = {"hours": args.hours, "pods": args.pods, "drains": n, "samples": samples, "start_ns": start}
            if not args.parallel_only:
                # A ClickHouse server outlives the podflame servers that write and read it: the engine stays up from
                # the ingest to the queries, as the same server would, with what it holds (its caches, and the names
                # the puts left in its dictionaries). A --queries-only run starts it anew: a ClickHouse restart.
                engine = open_store(dsns["clickhouse"][0], dsns["clickhouse"][1])
                result.update(ingest(dsns, bodies, samples, args, start))
                meta.write_text(json.dumps(result))
        end = start + n * args.interval * S
        result["engine_kept_from_ingest"] = engine is not None
        if args.parallel_only:
            args.cluster_nodes = 0
        else:
            _queries(result, dsns, args, start, end, engine)
            engine = None  # (closed by _queries: the stand-in takes the directory)
        if args.parallel_drains and bodies:
            runs = [parallel_ingest(tmp, bodies, args.parallel_drains, args.pods, start, args.interval,
                                    f"r{k}-" if args.parallel_repeat > 1 else "", two_first=k % 2 == 1)
                    for k in range(args.parallel_repeat)]
            result["parallel_ingest"] = runs[0] if len(runs) == 1 else _spread(runs)
    finally:
        if engine is not None:
            engine.close()
        if not args.data:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


def _ratio_spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One query's rounds: each round's CPU ratio ClickHouse / SQLite of the cold request, their median and
    min-max, and each backend's median cold CPU in ms; the same of the running server's ratio (`replica_case`)."""
    ratios = [r["ratio_cold_cpu"] for r in rows]
    out = {"ratio_cold_cpu": ratios, "median": round(statistics.median(ratios), 2),
           "min_max": [min(ratios), max(ratios)],
           **{f"{b}_cold_cpu_ms": round(statistics.median(r[b]["cold_cpu_s"] for r in rows) * 1000, 1)
              for b in ("sqlite", "clickhouse")}}
    if all("replica" in r for r in rows):
        rr = [r["replica"]["ratio_cpu"] for r in rows]
        out["replica"] = {"ratio_cpu": rr, "median": round(statistics.median(rr), 2), "min_max": [min(rr), max(rr)],
                          **{f"{b}_cpu_ms": round(statistics.median(r["replica"][b]["median_cpu_ms"] for r in rows), 1)
                             for b in ("sqlite", "clickhouse")}}
    return out


def _queries(result: dict[str, Any], dsns: dict[str, tuple[str | None, Path]], args: argparse.Namespace,
             start: int, end: int, engine: Any = None) -> None:
    """The side-by-side figures of a node-day both stores hold, then the cluster-day (into `result`). `engine`: the
    store holding chDB up since the ingest, closed after the in-process queries (chDB locks its directory to one
    process, and the deployed queries' ClickHouse is a stand-in process on it)."""
    sq, ch = result["sqlite"], result["clickhouse"]
    result["ratio_clickhouse_vs_sqlite"] = {
        "bytes_per_sample": round(ch["bytes_per_sample"] / sq["bytes_per_sample"], 3),
        "ingest_rate": round(ch["pod_profiles_per_s"] / sq["pod_profiles_per_s"], 3)}
    pod = make_node(args.pods, stacks_per_pod=args.stacks)[args.pods // 2].labels["pod"]
    writes, open_to = None, None
    if args.replica_writes and args.open_hour:  # content new each run: a ClickHouse retry (same token) is dropped
        seed = time.time_ns() // S % 1_000_000
        writes = (pprof.encode(drain(make_node(args.pods, stacks_per_pod=args.stacks), end + 60 * S, args.interval,
                                     seed=seed)), end + 60 * S)
        open_to = end + H - S
    elif args.replica_writes:  # filed past the data and past what an earlier run filed (a ClickHouse retry is dropped)
        later = max(end + 2 * H, time.time_ns() // S * S)
        writes = (pprof.encode(drain(make_node(args.pods, stacks_per_pod=args.stacks), later, args.interval)), later)
    result["queries"] = queries(dsns, start, end, pod, args.hours, args.runs, args.replica_runs, writes, open_to)
    if args.query_repeat > 1:  # the same round again (fresh store objects, the same engine): median and spread
        rounds = [result["queries"]] + [queries(dsns, start, end, pod, args.hours, args.runs, args.replica_runs,
                                                writes, open_to) for _ in range(args.query_repeat - 1)]
        result["queries_repeats"] = {name: _ratio_spread([r[name] for r in rounds]) for name in rounds[0]}
        for name, row in result["queries_repeats"].items():
            log(f"repeats {name}: {row}")
    if engine is not None:
        engine.close()
    if not args.no_deployed:
        result["queries_deployed"] = deployed_queries(dsns, start, end, pod, args.hours, args.runs,
                                                      args.keep_dictionaries)
    if args.cluster_nodes > 1:
        result["cluster_day"] = cluster_day(dsns["clickhouse"][0] or "", args.cluster_nodes, start, end,
                                            args.runs, args.cluster_hours)


if __name__ == "__main__":
    main()
