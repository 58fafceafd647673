"""Store benchmark: a synthetic day of one node through the real ingest path, then the queries users run.

100 pods, one profile per pod every 10 s (one agent drain = one gzip pprof of all pods, as the agent
ships it), a few hundred distinct stacks per pod drawn from a Zipf-like distribution, per-pod CPU
levels from idle to busy (bench/synthetic.py). Drains are POSTed to /api/v1/ingest through Flask's
test client (decode, numeric-label scan, store, fsync: everything but the socket), and compaction
runs every 10 simulated minutes as the server's background thread would.

Prints ingest rate, bytes on disk per sample and against the same drains as gzip pprof files, and
flame-graph query times for one pod over 1 h and 24 h and the whole node over 24 h (plus a diff, a
CPU time series and a budgeted flame graph). The last line is one JSON object.

    .venv/bin/python bench/store.py                 # the full day (about half an hour on 2 cores)
    .venv/bin/python bench/store.py --hours 1       # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic import PERIOD_NS, S, drain, make_node  # noqa: E402
from podflame import pprof  # noqa: E402
from web.app import create_app  # noqa: E402
from web.selector import MATCH_ALL  # noqa: E402
from web.store import SqliteStore  # noqa: E402

H = 3600 * S


def timed_get(client: Any, path: str, params: dict[str, str], runs: int) -> tuple[float, float, Any]:
    """(first run seconds, median of the rest, last JSON answer)."""
    times = []
    body = None
    for _ in range(runs):
        t = time.perf_counter()
        r = client.get(path, query_string=params)
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, r.data[:300]
        body = r.json if r.is_json else r.data
    return times[0], statistics.median(times[1:] or times), body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--stacks", type=int, default=300, help="distinct stacks per pod")
    ap.add_argument("--interval", type=int, default=10, help="seconds between drains")
    ap.add_argument("--distinct", type=int, default=90, help="distinct drains generated, then cycled")
    ap.add_argument("--runs", type=int, default=3, help="runs per query (first = cold)")
    ap.add_argument("--data", help="data directory (default: a temporary one, removed after)")
    args = ap.parse_args()

    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="podflame-bench-"))
    end = (time.time_ns() // H) * H  # the day ends at the last full hour: queries ask for "the last 24 h"
    start = end - int(args.hours * H)
    n_drains = int(args.hours * 3600 // args.interval)

    t = time.perf_counter()
    pods = make_node(pods=args.pods, stacks_per_pod=args.stacks)
    bodies = []
    samples_per_body = []
    for i in range(min(args.distinct, n_drains)):
        profiles = drain(pods, 0, args.interval, seed=i)
        samples_per_body.append(sum(p.total() for p in profiles))
        bodies.append(pprof.encode(profiles))
    print(f"generated {len(bodies)} distinct drains of {args.pods} pods in {time.perf_counter() - t:.1f}s, "
          f"{statistics.mean(len(b) for b in bodies) / 1024:.0f} KiB each", file=sys.stderr)

    app = create_app({"DATA_DIR": str(data), "MAINTENANCE_SECONDS": 0})
    store = app.extensions["podflame.store"]
    assert isinstance(store, SqliteStore)
    client = app.test_client()
    ingest_s = compact_s = 0.0
    gzip_bytes = samples = stored_profiles = 0
    compact_every = max(1, 600 // args.interval)
    for i in range(n_drains):
        k = i % len(bodies)
        ts = start + i * args.interval * S
        t = time.perf_counter()
        r = client.post(f"/api/v1/ingest?node=node-1&time={ts / S:.0f}", data=bodies[k])
        ingest_s += time.perf_counter() - t
        assert r.status_code == 200, r.json
        stored_profiles += r.json["profiles"]
        gzip_bytes += len(bodies[k])
        samples += samples_per_body[k]
        if (i + 1) % compact_every == 0:
            t = time.perf_counter()
            store.compact(now_ns=ts + args.interval * S, max_buckets=10_000)
            compact_s += time.perf_counter() - t
        if (i + 1) % 360 == 0:
            print(f"  {(i + 1) * args.interval / 3600:.0f} h ingested: {(i + 1) * args.pods / ingest_s:.0f} "
                  f"pod profiles/s", file=sys.stderr)
    t = time.perf_counter()
    store.compact(now_ns=end + 10 * 60 * S, max_buckets=100_000)
    compact_s += time.perf_counter() - t
    stats = store.stats()
    disk = store.bytes_used()
    on_disk = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())

    pod = pods[len(pods) // 2].labels["pod"]
    fmt = {"from": str((end - H) // S), "to": str(end // S)}
    day = {"from": str(start // S), "to": str(end // S)}
    q: dict[str, tuple[float, float]] = {}
    answers: dict[str, Any] = {}
    cases = [
        ("pod_1h", "/api/v1/flamegraph", {**fmt, "query": f'{{pod="{pod}"}}'}),
        ("pod_24h", "/api/v1/flamegraph", {**day, "query": f'{{pod="{pod}"}}'}),
        ("node_24h", "/api/v1/flamegraph", {**day, "query": '{node="node-1"}'}),
        ("node_24h_budget_2000", "/api/v1/flamegraph", {**day, "query": '{node="node-1"}', "max_nodes": "2000"}),
        ("node_1h", "/api/v1/flamegraph", {**fmt, "query": '{node="node-1"}'}),
        ("node_diff_1h_vs_23h", "/api/v1/diff", {**fmt, "base_from": day["from"], "base_to": fmt["from"]}),
        ("node_cpu_24h_5m", "/api/v1/cpu", {**day, "step": "300"}),
        ("series_by_pod_24h", "/api/v1/series", {**day, "by": "pod"}),
    ]
    for name, path, params in cases if args.hours > 1 else [c for c in cases if "diff" not in c[0]]:
        first, median, body = timed_get(client, path, params, args.runs)
        q[name] = (first, median)
        answers[name] = body
        print(f"  {name}: first {first * 1000:.0f} ms, median {median * 1000:.0f} ms", file=sys.stderr)
    nodes = sum(len(level) // 4 for level in answers["node_24h"]["levels"])
    # The same answer from raw profiles only, to show what pre-aggregation saves (and that it is exact).
    sel = store.select
    t = time.perf_counter()
    raw_refs = sel(MATCH_ALL, start, end, "samples", max_level=0)
    raw_cols = store.read(raw_refs)
    raw_s = time.perf_counter() - t
    assert int(raw_cols.value.sum()) == answers["node_24h"]["total"] == samples
    blocks = len(sel(MATCH_ALL, start, end, "samples"))

    pod_profiles = n_drains * args.pods
    result = {
        "hours": args.hours, "pods": args.pods, "drains": n_drains, "pod_profiles": pod_profiles,
        "stored_profiles": stored_profiles, "samples": samples, "period_ns": PERIOD_NS,
        "ingest_seconds": round(ingest_s, 1), "compact_seconds": round(compact_s, 1),
        "ingest_pod_profiles_per_s": round(pod_profiles / ingest_s),
        "ingest_stored_profiles_per_s": round(stored_profiles / ingest_s),
        "ingest_pod_profiles_per_s_incl_compaction": round(pod_profiles / (ingest_s + compact_s)),
        "disk_bytes": disk, "disk_bytes_all_files": on_disk, "blob_bytes": stats["blob_bytes"],
        "index_bytes": stats["index_bytes"], "bytes_per_sample": round(disk / samples, 3),
        "gzip_pprof_bytes": gzip_bytes, "gzip_pprof_over_store": round(gzip_bytes / disk, 2),
        "stacks": stats["stacks"], "series": stats["series"],
        "node_24h_blocks_read": blocks, "node_24h_raw_profiles": len(raw_refs),
        "node_24h_raw_read_seconds": round(raw_s, 3), "node_24h_flamegraph_nodes": nodes,
        **{f"query_{k}_ms": round(v[1] * 1000, 1) for k, v in q.items()},
        **{f"query_{k}_first_ms": round(v[0] * 1000, 1) for k, v in q.items()},
    }
    store.close()
    if not args.data:
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
