"""Store benchmark: a synthetic day of one node through the real ingest path, then the queries users run.

100 pods, one profile per pod every 10 s (one agent drain = one gzip pprof of all pods, as the agent
ships it), a few hundred distinct stacks per pod drawn from a Zipf-like distribution, per-pod CPU
levels from idle to busy (bench/synthetic.py). `--distinct` drains are generated and then cycled
through the day (each with its own time), so generation does not dominate the run.

Ingest: every drain of the day is POSTed to /api/v1/ingest through Flask's test client (the server's
handler: `pprof.decode_ids`, `web.normalize.batch_of`, `SqliteStore.put` with its fsyncs; all but the socket).
The time spent inside `put` is measured on the same calls, so the store's share is known.
Compaction runs every 10 simulated minutes (`Maintenance.run_once`, as the server's background
thread does), timed apart, so 24 h queries read the 1 h and 10 min blocks the store keeps; queries
run as if 30 s after the day's end, so its last 10 minutes are still raw profiles, as when live.

Size: bytes on disk (every file in the data directory, after a WAL checkpoint) per sample, against
the same samples as gzip pprof (podflame/pprof.py + gzip, summed sizes), two ways: the agent's drains
(one file per drain of 100 pods, the wire format) and one file per pod profile (how pprof files are
usually kept). Both are exact sums over the day: the day cycles the distinct drains, whose file sizes
are measured once each (files differ across cycles only in their time field, of equal varint size).

Queries go through the HTTP API (web/server/api.py -> web/query/merge.py) in a fresh process per query, after the
data directory's pages are dropped from the page cache (posix_fadvise DONTNEED on our files only):
the first answer is cold (no store or name cache, data read from disk), the median of the rest warm.

    .venv/bin/python bench/store.py                 # the full day (about half an hour on 2 cores)
    .venv/bin/python bench/store.py --hours 1       # a quick look

Progress goes to stderr; the last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic import PERIOD_NS, S, drain, make_node  # noqa: E402
from podflame import pprof  # noqa: E402

H = 3600 * S
NODE = "node-1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def drop_page_cache(data: Path) -> None:
    """Evict the store's files (only ours) from the page cache, so the next read goes to disk."""
    for root, _, files in os.walk(data):  # (a ClickHouse merge may remove a part meanwhile: walk on)
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)  # dirty pages are not dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def query_cases(start: int, end: int, pod: str, hours: float) -> list[tuple[str, str, dict[str, str]]]:
    last_h = {"from": str((end - H) // S), "to": str(end // S)}
    day = {"from": str(start // S), "to": str(end // S)}
    cases = [
        ("pod_1h", "/api/v1/flamegraph", {**last_h, "query": f'{{pod="{pod}"}}'}),
        ("pod_24h", "/api/v1/flamegraph", {**day, "query": f'{{pod="{pod}"}}'}),
        ("node_24h", "/api/v1/flamegraph", {**day, "query": f'{{node="{NODE}"}}'}),
        ("node_24h_budget_2000", "/api/v1/flamegraph", {**day, "query": f'{{node="{NODE}"}}', "max_nodes": "2000"}),
        ("node_1h", "/api/v1/flamegraph", {**last_h, "query": f'{{node="{NODE}"}}'}),
        ("node_15m", "/api/v1/flamegraph", {"from": str((end - H // 4) // S), "to": str(end // S),
                                            "query": f'{{node="{NODE}"}}'}),  # the page's default range
        ("node_diff_1h_vs_23h", "/api/v1/diff", {**last_h, "base_from": day["from"], "base_to": last_h["from"]}),
        ("node_cpu_24h_10m", "/api/v1/cpu", {**day, "step": "600"}),
        ("node_cpu_24h_5m", "/api/v1/cpu", {**day, "step": "300"}),
        ("series_by_pod_24h", "/api/v1/series", {**day, "by": "pod"}),
    ]
    return [c for c in cases if hours > 1 or "diff" not in c[0]]


def run_query_case(data: str, path: str, params: dict[str, str], runs: int) -> dict[str, Any]:
    """In this (fresh) process: open the server on `data`, time one cold request, then warm ones."""
    from web.server.app import create_app

    drop_page_cache(Path(data))
    t = time.perf_counter()
    app = create_app({"DATA_DIR": data, "MAINTENANCE_SECONDS": 0})
    open_s = time.perf_counter() - t
    client = app.test_client()
    times = []
    body: Any = None
    for _ in range(runs):
        t = time.perf_counter()
        r = client.get(path, query_string=params)
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, r.data[:300]
        body = r.json
    out: dict[str, Any] = {"open_s": open_s, "cold_s": times[0], "warm_s": statistics.median(times[1:] or times),
                           "bytes": len(r.data)}
    if "levels" in body:
        out["nodes"] = sum(len(level) // 4 for level in body["levels"])
        out["total"] = body["total"]
    app.extensions["podflame.store"].close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--stacks", type=int, default=300, help="distinct stacks per pod")
    ap.add_argument("--interval", type=int, default=10, help="seconds between drains")
    ap.add_argument("--distinct", type=int, default=90, help="distinct drains generated, then cycled")
    ap.add_argument("--runs", type=int, default=4, help="requests per query (first = cold, median of rest = warm)")
    ap.add_argument("--data", help="data directory (default: a temporary one, removed after)")
    ap.add_argument("--queries-only", action="store_true",
                    help="skip generation and ingest: query the day already in --data (from a run with --data)")
    ap.add_argument("--socket-drains", type=int, default=120,
                    help="drains POSTed afterwards to a real `podflame server` process over a socket (0: skip)")
    ap.add_argument("--skip-raw-check", action="store_true",
                    help="skip re-reading the whole day from raw profiles (the exactness check)")
    ap.add_argument("--query-case", help=argparse.SUPPRESS)  # internal: one query in a fresh process
    ap.add_argument("--backend", choices=("sqlite", "clickhouse"), default="sqlite",
                    help="clickhouse: the node-day on SQLite and ClickHouse side by side (bench/store_backends.py)")
    args, rest = ap.parse_known_args()  # --backend clickhouse: bench/store_backends.py takes the rest
    if args.backend == "clickhouse":
        from bench import store_backends

        store_backends.main([f"--hours={args.hours}", f"--pods={args.pods}", f"--stacks={args.stacks}",
                             f"--interval={args.interval}", f"--runs={args.runs}",
                             *([f"--data={args.data}"] if args.data else []),
                             *(["--queries-only"] if args.queries_only else []), *rest])
        return
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")

    if args.query_case:
        path, params = json.loads(args.query_case)
        print(json.dumps(run_query_case(args.data, path, params, args.runs)))
        return

    from web.store.selector import MATCH_ALL
    from web.store.sqlite import SqliteStore

    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="podflame-bench-"))
    meta_file = data / "bench-store.json"
    pods = make_node(pods=args.pods, stacks_per_pod=args.stacks)
    if args.queries_only:
        result = json.loads(meta_file.read_text())
        start, end = result.pop("_start"), result.pop("_end")
    else:
        result, start, end = ingest_day(args, data, pods)
        meta_file.write_text(json.dumps({**result, "_start": start, "_end": end}))
    pod = pods[len(pods) // 2].labels["pod"]

    # -- queries, each in a fresh process with our files evicted from the page cache --------------
    q: dict[str, Any] = {}
    for name, path, params in query_cases(start, end, pod, args.hours):
        out = subprocess.run([sys.executable, __file__, "--data", str(data), "--runs", str(args.runs),
                              "--query-case", json.dumps([path, params])],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        q[name] = r
        log(f"  query {name}: cold {r['cold_s'] * 1000:.0f} ms, warm {r['warm_s'] * 1000:.0f} ms "
            f"(store open {r['open_s'] * 1000:.0f} ms, answer {r['bytes'] / 1024:.0f} KiB)")

    store = SqliteStore(data)
    try:
        blocks = store.select(MATCH_ALL, start, end, "samples")
        raw_refs = store.select(MATCH_ALL, start, end, "samples", max_level=0)
        levels = {0: 0, 1: 0, 2: 0}
        for r in blocks:
            levels[r.handle.level] += 1  # type: ignore[attr-defined]
        result.update({"node_24h_blocks_read": len(blocks), "node_24h_blocks_by_width": {
            "raw": levels[0], "10m": levels[1], "1h": levels[2]}, "node_24h_raw_profiles": len(raw_refs)})
        if not args.skip_raw_check:
            # The same answer from raw profiles only: what pre-aggregation saves, and that it is exact.
            log(f"reading the day's {len(raw_refs)} raw profiles (exactness check)...")
            t = time.perf_counter()
            raw_total = int(store.read(raw_refs).value.sum())
            result["node_24h_raw_read_seconds"] = round(time.perf_counter() - t, 2)
            assert raw_total == q["node_24h"]["total"] == result["samples"], (raw_total, q["node_24h"]["total"])
    finally:
        store.close()

    if args.socket_drains:  # after the day (two hours after it on a --queries-only rerun)
        result.update(socket_ingest(args, data, pods, end + (2 * H if args.queries_only else 0)))

    result.update({
        "query_pod": pod, "node_24h_flamegraph_nodes": q["node_24h"]["nodes"],
        **{f"query_{k}_cold_ms": round(v["cold_s"] * 1000, 1) for k, v in q.items()},
        **{f"query_{k}_warm_ms": round(v["warm_s"] * 1000, 1) for k, v in q.items()},
        "store_open_ms": round(max(v["open_s"] for v in q.values()) * 1000, 1),
    })
    if not args.data:
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(result))


def socket_ingest(args: argparse.Namespace, data: Path, pods: list, after: int) -> dict[str, Any]:
    """The next drains, POSTed over one keep-alive connection to `podflame server` on the day's store.

    A separate server process as deployed (its maintenance thread running), so this includes HTTP
    parsing and the socket; the client's encoding is done before the clock starts, and the first
    `warmup` drains (a new process looks up every string, frame and stack in SQLite once) are not timed.
    """
    import http.client

    warmup = 10
    bodies = [pprof.encode(drain(pods, after + i * args.interval * S, args.interval, seed=10_000 + i))
              for i in range(warmup + args.socket_drains)]
    with socket.socket() as sock:  # a free port (the CLI wants a number)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("podflame")
    srv = subprocess.Popen([str(exe), "server", "--listen", f"127.0.0.1:{port}", "--data", str(data)],
                           stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline() if srv.stdout else ""
        assert "listening" in line, line
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t = time.perf_counter()
        for i, body in enumerate(bodies):
            if i == warmup:
                first = time.perf_counter() - t
                t = time.perf_counter()
            ts = (after + i * args.interval * S) // S
            conn.request("POST", f"/api/v1/ingest?node={NODE}&time={ts}", body=body,
                         headers={"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
        took = time.perf_counter() - t
        conn.close()
    finally:
        srv.terminate()
        srv.wait(30)
    rate = args.socket_drains * args.pods / took
    first_rate = warmup * args.pods / first
    log(f"socket ingest into `podflame server`: {args.socket_drains} drains, {rate:.0f} pod profiles/s "
        f"(first {warmup} drains of the new process: {first_rate:.0f}/s)")
    return {"ingest_socket_drains": args.socket_drains, "ingest_socket_pod_profiles_per_s": round(rate),
            "ingest_socket_first_drains_pod_profiles_per_s": round(first_rate)}


def ingest_day(args: argparse.Namespace, data: Path, pods: list) -> tuple[dict[str, Any], int, int]:
    from web.server.app import create_app
    from web.store.retention import Maintenance

    end = (time.time_ns() // H) * H  # the day ends at the last full hour: queries ask for "the last 24 h"
    start = end - int(args.hours * H)
    n_drains = int(args.hours * 3600 // args.interval)
    n_distinct = min(args.distinct, n_drains)

    # -- generate: distinct drains, their wire bodies, and the same profiles one file per pod -------
    t = time.perf_counter()
    bodies: list[bytes] = []
    samples_per_body: list[int] = []
    per_pod_gzip: list[int] = []  # summed size of this drain's pod profiles as one gzip pprof file each
    for i in range(n_distinct):
        profiles = drain(pods, start + i * args.interval * S, args.interval, seed=i)
        samples_per_body.append(sum(p.total() for p in profiles))
        bodies.append(pprof.encode(profiles))
        per_pod_gzip.append(sum(len(pprof.encode([p])) for p in profiles))
        if (i + 1) % 10 == 0 or i + 1 == n_distinct:
            log(f"generated {i + 1}/{n_distinct} distinct drains ({time.perf_counter() - t:.0f} s)")
    log(f"drains: {statistics.mean(len(b) for b in bodies) / 1024:.0f} KiB each as gzip pprof; "
        f"{statistics.mean(samples_per_body):.0f} samples each")

    # -- ingest the day through the HTTP handler; time the store's put() inside it ----------
    if (data / "index.sqlite").exists():
        shutil.rmtree(data)  # a previous run's store
    elif data.exists() and any(data.iterdir()):
        sys.exit(f"{data} is not empty and holds no store: choose another --data")
    app = create_app({"DATA_DIR": str(data), "MAINTENANCE_SECONDS": 0})
    store = app.extensions["podflame.store"]
    real_put = store.put
    put_s = 0.0

    def timed_put(batches: Any) -> Any:
        nonlocal put_s
        t0 = time.perf_counter()
        try:
            return real_put(batches)
        finally:
            put_s += time.perf_counter() - t0

    store.put = timed_put  # type: ignore[method-assign]
    maintenance = Maintenance(store, interval=0)
    client = app.test_client()
    ingest_s = compact_s = 0.0
    gzip_drain_bytes = gzip_pod_bytes = samples = stored_profiles = compacted = 0
    compact_every = max(1, 600 // args.interval)
    report_every = max(1, 3600 // args.interval)
    wall = time.perf_counter()
    for i in range(n_drains):
        k = i % n_distinct
        ts = start + i * args.interval * S
        t = time.perf_counter()
        r = client.post(f"/api/v1/ingest?node={NODE}&time={ts // S}", data=bodies[k])
        ingest_s += time.perf_counter() - t
        assert r.status_code == 200, r.json
        stored_profiles += r.json["profiles"]
        gzip_drain_bytes += len(bodies[k])
        gzip_pod_bytes += per_pod_gzip[k]
        samples += samples_per_body[k]
        if (i + 1) % compact_every == 0:  # the server's maintenance pass, in simulated time
            t = time.perf_counter()
            compacted += maintenance.run_once(now_ns=ts + args.interval * S)[1]
            compact_s += time.perf_counter() - t
        if (i + 1) % report_every == 0 or i + 1 == n_drains:
            elapsed = time.perf_counter() - wall
            log(f"  {(i + 1) * args.interval / 3600:.0f}/{args.hours:g} h ingested: "
                f"{(i + 1) * args.pods / ingest_s:.0f} pod profiles/s over HTTP, "
                f"{(i + 1) * args.pods / put_s:.0f}/s in put; compaction {compact_s:.0f} s; "
                f"eta {elapsed / (i + 1) * (n_drains - i - 1) / 60:.1f} min")
    # The queries run "now" = 30 s after the day: what has aged by then is compacted, the last
    # 10 minutes (and so the last hour) are still raw profiles, as on a live server.
    t = time.perf_counter()
    compacted += maintenance.run_once(now_ns=end + 30 * S)[1]
    compact_s += time.perf_counter() - t
    log(f"compacted {compacted} buckets in {compact_s:.0f} s")
    stats = store.stats()
    used = store.bytes_used()
    store.close()
    # Checkpoint the WAL into the index, as a server does as it runs, then count every file.
    import sqlite3
    db = sqlite3.connect(data / "index.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    on_disk = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    raw_bytes = sum(f.stat().st_size for f in data.rglob("*.pfz"))

    pod_profiles = n_drains * args.pods
    result = {
        "hours": args.hours, "pods": args.pods, "drains": n_drains, "distinct_drains": n_distinct,
        "pod_profiles": pod_profiles, "stored_profiles": stored_profiles, "samples": samples,
        "period_ns": PERIOD_NS,
        "ingest_http_seconds": round(ingest_s, 1), "ingest_put_seconds": round(put_s, 1),
        "compact_seconds": round(compact_s, 1), "compacted_buckets": compacted,
        "ingest_pod_profiles_per_s": round(pod_profiles / ingest_s),
        "ingest_pod_profiles_per_s_put_only": round(pod_profiles / put_s),
        "ingest_pod_profiles_per_s_incl_compaction": round(pod_profiles / (ingest_s + compact_s)),
        "disk_bytes": on_disk, "store_bytes_used": used, "blob_bytes": raw_bytes,
        "index_bytes": on_disk - raw_bytes, "bytes_per_sample": round(on_disk / samples, 3),
        "gzip_pprof_drain_bytes": gzip_drain_bytes, "gzip_pprof_pod_file_bytes": gzip_pod_bytes,
        "gzip_pprof_drains_over_store": round(gzip_drain_bytes / on_disk, 2),
        "gzip_pprof_pod_files_over_store": round(gzip_pod_bytes / on_disk, 2),
        "stacks": stats["stacks"], "series": stats["series"], "rows": stats["profiles"],
    }
    log(f"disk {on_disk / 2**20:.1f} MiB ({on_disk / samples:.2f} B/sample): gzip pprof drains "
        f"{gzip_drain_bytes / 2**20:.1f} MiB ({result['gzip_pprof_drains_over_store']}x), "
        f"per-pod files {gzip_pod_bytes / 2**20:.1f} MiB ({result['gzip_pprof_pod_files_over_store']}x)")
    return result, start, end


if __name__ == "__main__":
    main()
