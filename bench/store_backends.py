"""The node-day of bench/store.py on two backends side by side, in one run: SQLite (the peer) and ClickHouse.

Both stores take the same drains (100 pods, one gzip pprof per 10 s, bench/synthetic.py) through the
server's ingest handler (Flask test client: decode, normalize, `Store.put`), then answer the same
queries through the HTTP API: pod 1 h, pod whole range, node whole range (flame graphs), node CPU per
10 min. ClickHouse runs in-process through chDB (the engine a ClickHouse server runs; the network adds
a round trip per statement, not work). Reported per backend: bytes per sample (SQLite: its files;
ClickHouse: compressed bytes of the database's active parts, after merges), ingest in pod profiles/s
of this one process, and each query's first (cold store object) and median warm time; then the ratios
ClickHouse / SQLite.

    .venv/bin/python bench/store.py --backend clickhouse --hours 2

Progress goes to stderr; the last line of stdout is one JSON object.
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

from bench.store import NODE, H, log  # noqa: E402  (the same node-day as bench/store.py)
from bench.synthetic import S, drain, make_node  # noqa: E402
from podflame import pprof  # noqa: E402


def cases(start: int, end: int, pod: str) -> list[tuple[str, str, dict[str, str]]]:
    last_h = {"from": str((end - H) // S), "to": str(end // S)}
    whole = {"from": str(start // S), "to": str(end // S)}
    return [("pod_1h", "/api/v1/flamegraph", {**last_h, "query": f'{{pod="{pod}"}}'}),
            ("pod_all", "/api/v1/flamegraph", {**whole, "query": f'{{pod="{pod}"}}'}),
            ("node_all", "/api/v1/flamegraph", {**whole, "query": f'{{node="{NODE}"}}'}),
            ("node_cpu_10m", "/api/v1/cpu", {**whole, "step": "600"})]


def run(backend: str, dsn: str | None, data: Path, bodies: list[bytes], samples: int, args: argparse.Namespace,
        start: int) -> dict[str, Any]:
    from web.server.app import create_app
    from web.store.dsn import open_store

    store = open_store(dsn, data)
    app = create_app({"DATA_DIR": str(data), "STORE": store, "MAINTENANCE_SECONDS": 0})
    client = app.test_client()
    n = int(args.hours * 3600 // args.interval)
    t = time.perf_counter()
    for i in range(n):
        ts = start + i * args.interval * S
        r = client.post(f"/api/v1/ingest?node={NODE}&time={ts // S}", data=bodies[i % len(bodies)])
        assert r.status_code == 200, r.json
        if (i + 1) % 360 == 0:
            log(f"{backend}: {i + 1}/{n} drains ({time.perf_counter() - t:.0f} s)")
    ingest_s = time.perf_counter() - t
    if backend == "sqlite":
        from web.store.retention import Maintenance

        tc = time.perf_counter()
        Maintenance(store, interval=0).run_once(now_ns=start + n * args.interval * S + 30 * S)
        log(f"sqlite compaction {time.perf_counter() - tc:.1f} s (not in ingest)")
        size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    else:
        store.transport.command(f"OPTIMIZE TABLE {store.layout.database}.samples FINAL")  # type: ignore[attr-defined]
        size = store.bytes_used()  # type: ignore[attr-defined]
    store.close()
    end = start + n * args.interval * S
    out: dict[str, Any] = {"ingest_s": round(ingest_s, 2), "pod_profiles_per_s": round(n * args.pods / ingest_s),
                           "bytes": size, "bytes_per_sample": round(size / samples, 3), "queries": {}}
    pod = make_node(args.pods, stacks_per_pod=args.stacks)[args.pods // 2].labels["pod"]
    for name, path, params in cases(start, end, pod):
        store = open_store(dsn, data)  # a fresh store object: no caches (the first request is cold)
        app = create_app({"DATA_DIR": str(data), "STORE": store, "MAINTENANCE_SECONDS": 0})
        c = app.test_client()
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            r = c.get(path, query_string=params)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.data[:300]
        store.close()
        out["queries"][name] = {"cold_s": round(times[0], 3), "warm_s": round(statistics.median(times[1:]), 3)}
        log(f"{backend} {name}: {out['queries'][name]}")
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
    args = ap.parse_args(argv)
    pods = make_node(args.pods, stacks_per_pod=args.stacks)
    end = (time.time_ns() // H) * H
    start = end - int(args.hours * H)
    n = int(args.hours * 3600 // args.interval)
    bodies, per_body = [], []
    for i in range(min(args.distinct, n)):
        profiles = drain(pods, start + i * args.interval * S, args.interval, seed=i)
        per_body.append(sum(p.total() for p in profiles))
        bodies.append(pprof.encode(profiles))
    samples = sum(per_body[i % len(per_body)] for i in range(n))
    log(f"{n} drains of {args.pods} pods, {samples} samples")
    tmp = Path(tempfile.mkdtemp(prefix="podflame-bench-backends-"))
    try:
        result: dict[str, Any] = {"hours": args.hours, "pods": args.pods, "drains": n, "samples": samples}
        result["sqlite"] = run("sqlite", None, tmp / "sqlite", bodies, samples, args, start)
        result["clickhouse"] = run("clickhouse", f"chdb://{tmp / 'chdb'}?database=bench", tmp / "ch", bodies, samples,
                                   args, start)
        sq, ch = result["sqlite"], result["clickhouse"]
        result["ratio_clickhouse_vs_sqlite"] = {
            "bytes_per_sample": round(ch["bytes_per_sample"] / sq["bytes_per_sample"], 3),
            "ingest_rate": round(ch["pod_profiles_per_s"] / sq["pod_profiles_per_s"], 3),
            **{f"{q}_warm": round(ch["queries"][q]["warm_s"] / max(sq["queries"][q]["warm_s"], 1e-6), 3)
               for q in sq["queries"]}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
