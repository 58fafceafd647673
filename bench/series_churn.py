"""Series churn: what short-lived processes (a new `pid` label value each) cost ingest, queries and label lists.

`pid` is a series label, so every process makes new series. A node busy with short-lived processes made 239
series in 5 minutes here: bounded by the sample rate, about 70k a day at 19 Hz on 2 CPUs. This runs the same
synthetic node twice in one process, through the real ingest handler and the HTTP API:

- `steady`: the pods of bench/synthetic.py, one long-lived process each;
- `churn`: the same, plus `--new-per-drain` short-lived processes in every drain (a pod's `sh -c`, probes,
  cron jobs), each with a fresh pid and a few samples of its pod's stacks (8 per 10 s drain is ~70k a day).

It prints, per run, ingest rate, series count, and the warm median of the queries the UI makes (label names,
pid values, the node's and a pod's flame graph, the pod list, the CPU chart), and the churn/steady ratio of each;
and, interleaved on each store, the pod list's sums made by the store (`Store.totals_by`) against the refs
grouped in Python (the default, what the pod list did before stop 17): `pod_sums_store_over_refs`; and the
same for the CPU chart's sums per step (`Store.step_totals`): `cpu_day_store_over_refs`, `cpu_1h_store_over_refs`.

    .venv/bin/python bench/series_churn.py --hours 6
    .venv/bin/python bench/series_churn.py --data DIR          # keep both stores (DIR/steady, DIR/churn); then
    .venv/bin/python bench/series_churn.py --data DIR --queries-only   # the queries again (e.g. with new code)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.store import NODE, H, log  # noqa: E402
from bench.synthetic import PERIOD_NS, Pod, S, drain, make_node  # noqa: E402
from podflame import pprof  # noqa: E402
from podflame.model import Profile  # noqa: E402


def short_lived(pods: list[Pod], start_ns: int, seconds: int, n: int, first_pid: int, rng: random.Random
                ) -> list[Profile]:
    """`n` processes that lived within one drain: each a new pid in a random pod, a few samples."""
    out = []
    for i in range(n):
        pod = rng.choice(pods)
        labels = {**pod.labels, "pid": str(first_pid + i), "comm": "sh"}
        prof = Profile(labels=labels, start_ns=start_ns, duration_ns=seconds * S, period_ns=PERIOD_NS)
        for stack in rng.choices(pod.stacks[:20], k=rng.randint(1, 6)):
            prof.add(stack, 1)
        out.append(prof)
    return out


def run(args: argparse.Namespace, new_per_drain: int) -> dict[str, Any]:
    from web.server.app import create_app
    from web.store.retention import Maintenance

    pods = make_node(pods=args.pods, stacks_per_pod=args.stacks)
    end = (time.time_ns() // H) * H
    n_drains = int(args.hours * 3600 // args.interval)
    kept = Path(args.data) / ("churn" if new_per_drain else "steady") if args.data else None
    if kept is not None and args.queries_only:
        end = json.loads((kept / "bench.json").read_text())["end_ns"]  # the range the stored day covers
    start = end - int(args.hours * H)
    distinct = [] if args.queries_only else [drain(pods, 0, args.interval, seed=i) for i in range(args.distinct)]
    rng = random.Random(7)
    with contextlib.ExitStack() as stack:
        if kept is not None:
            if not args.queries_only and (kept / "index.sqlite").exists():
                raise SystemExit(f"{kept} already holds a store: give --queries-only, or a new --data")
            kept.mkdir(parents=True, exist_ok=True)
            (kept / "bench.json").write_text(json.dumps({"end_ns": end}))
            data = str(kept)
        else:
            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="podflame-churn-", dir=args.tmp))
        # No flame-graph answer cache: the warm figures are then the queries' own work, not a cache hit.
        app = create_app({"DATA_DIR": data, "MAINTENANCE_SECONDS": 0, "TREE_CACHE_BYTES": 0})
        store = app.extensions["podflame.store"]
        client = app.test_client()
        maintenance = Maintenance(store, interval=0)
        ingest_s = compact_s = 0.0
        pid = 100_000
        wall = time.perf_counter()
        for i in range(0 if args.queries_only else n_drains):
            ts = start + i * args.interval * S
            profiles = [Profile(labels=p.labels, start_ns=ts, duration_ns=p.duration_ns, period_ns=p.period_ns,
                                samples=p.samples) for p in distinct[i % len(distinct)]]
            profiles += short_lived(pods, ts, args.interval, new_per_drain, pid, rng)
            pid += new_per_drain
            body = pprof.encode(profiles)
            t = time.perf_counter()
            r = client.post(f"/api/v1/ingest?node={NODE}&time={ts // S}", data=body)
            ingest_s += time.perf_counter() - t
            assert r.status_code == 200, r.json
            if (i + 1) % max(1, 600 // args.interval) == 0:
                t = time.perf_counter()
                maintenance.run_once(now_ns=ts + args.interval * S)
                compact_s += time.perf_counter() - t
            if (i + 1) % max(1, 3600 // args.interval) == 0:
                log(f"  [{new_per_drain}/drain] {(i + 1) * args.interval / 3600:.0f}/{args.hours:g} h, "
                    f"{time.perf_counter() - wall:.0f} s")
        t = time.perf_counter()
        if not args.queries_only:
            maintenance.run_once(now_ns=end + 30 * S)
        compact_s += time.perf_counter() - t
        pod = pods[len(pods) // 2].labels["pod"]
        day = {"from": str(start // S), "to": str(end // S)}
        last_h = {"from": str((end - H) // S), "to": str(end // S)}
        mid = start + (end - start) // 2 // H * H
        mid_h = {"from": str(mid // S), "to": str((mid + H) // S)}  # long-lived series straddle it
        node, of_pod = {"query": f'{{node="{NODE}"}}'}, {"query": f'{{pod="{pod}"}}'}
        cases = {
            "labels": ("/api/v1/labels", day),
            "labels_1h": ("/api/v1/labels", mid_h),
            "labels_node_1h": ("/api/v1/labels", {**mid_h, **node}),  # the UI passes its query along
            "pid_values": ("/api/v1/label/pid/values", day),
            # What the UI's value picker asks (web/server/static/app.js: the first 500, then by typed prefix).
            "pid_values_ui": ("/api/v1/label/pid/values", {**day, "limit": "500"}),
            "pid_values_ui_prefix": ("/api/v1/label/pid/values", {**day, "prefix": "11", "limit": "500"}),
            "pod_values": ("/api/v1/label/pod/values", day),
            "pod_values_node_1h": ("/api/v1/label/pod/values", {**mid_h, **node}),
            "comm_values_pod": ("/api/v1/label/comm/values", {**day, **of_pod}),
            "types": ("/api/v1/types", {**day, **node}),
            "node_flamegraph": ("/api/v1/flamegraph", {**day, **node}),
            "node_flamegraph_1h": ("/api/v1/flamegraph", {**last_h, **node}),
            "pod_flamegraph": ("/api/v1/flamegraph", {**day, **of_pod}),
            "pod_flamegraph_1h": ("/api/v1/flamegraph", {**last_h, **of_pod}),
            "series_by_pod": ("/api/v1/series", {**day, "by": "pod"}),
            "cpu": ("/api/v1/cpu", {**day, "step": "600"}),
            # The chart over the newest hour at 1-min steps: most of it raw rows (the newest 10 min are not
            # compacted yet), a pod's (series filter), and per process (a regex on pid: no group blocks).
            "cpu_1h": ("/api/v1/cpu", {**last_h, "step": "60"}),
            "cpu_pod_1h": ("/api/v1/cpu", {**last_h, **of_pod, "step": "60"}),
            "cpu_pid_regex": ("/api/v1/cpu", {**day, "query": '{pid=~"11.*|1015"}', "step": "600"}),
            # Per-process queries: answered per series (group blocks do not split by pid); 110000-110009 are
            # short-lived pids of the churn run's second hour or so, 1015 the steady run's pod's process.
            "pid_flamegraph": ("/api/v1/flamegraph", {**day, "query": '{pid=~"1015|110000"}'}),
            "pid_regex_flamegraph": ("/api/v1/flamegraph", {**day, "query": '{pid=~"11000.|1015"}'}),
            "series_by_pid_of_pod": ("/api/v1/series", {**day, "by": "pod,pid", **of_pod}),
        }
        out: dict[str, Any] = {}
        prof = None
        if args.profile and new_per_drain:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        for name, (path, params) in cases.items():
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                r = client.get(path, query_string=params)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, (name, r.data[:200])
            out[f"{name}_ms"] = round(statistics.median(times[1:] or times) * 1000, 1)
            if name == "pid_values":
                out["pid_values"] = len((r.json or {})["values"])
        out.update(_pod_list_ab(store, start, end, args.runs))
        out.update(_cpu_chart_ab(store, start, end, args.runs))
        if prof is not None:
            import pstats
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
        out["series"] = store.stats()["series"]
        if not args.queries_only:
            profiles_in = n_drains * (args.pods + new_per_drain)
            out.update({"pod_profiles": profiles_in, "ingest_pod_profiles_per_s": round(profiles_in / ingest_s),
                        "ingest_drains_per_s": round(n_drains / ingest_s, 1), "compact_s": round(compact_s, 1)})
        store.close()
    log(f"  [{new_per_drain}/drain] {json.dumps(out)}")
    return out


def _pod_list_ab(store: Any, start: int, end: int, runs: int) -> dict[str, float]:
    """The pod list's sums made by the store (`totals_by`: SQLite's GROUP BY) against the refs grouped in Python
    (`Store.totals_by`'s default, what the pod list did before), interleaved on the same store, same answer."""
    from web.store.base import Store
    from web.store.selector import MATCH_ALL

    def sorted_rows(rows: list) -> list:
        return sorted((sorted(g.labels.items()), g.value, g.value_period_ns) for g in rows)

    ways = {"store": lambda: store.totals_by(MATCH_ALL, start, end, ["pod"], "samples", "count"),
            "refs": lambda: Store.totals_by(store, MATCH_ALL, start, end, ["pod"], "samples", "count")}
    assert sorted_rows(ways["store"]()) == sorted_rows(ways["refs"]())
    return _interleaved("pod_sums", ways, runs)


def _interleaved(name: str, ways: dict[str, Any], runs: int) -> dict[str, float]:
    """Median ms of the `store` and `refs` ways, run alternately, and their ratio."""
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(max(3, runs)):
        for key, way in ways.items():
            t = time.perf_counter()
            way()
            times[key].append(time.perf_counter() - t)
    store_ms, refs_ms = (statistics.median(times[k]) * 1000 for k in ("store", "refs"))
    return {f"{name}_store_ms": round(store_ms, 2), f"{name}_refs_ms": round(refs_ms, 2),
            f"{name}_store_over_refs": round(store_ms / refs_ms, 2)}


def _cpu_chart_ab(store: Any, start: int, end: int, runs: int) -> dict[str, float]:
    """The CPU chart's sums per step made by the store (`step_totals`: SQLite's GROUP BY per period and step,
    where the code has it) against the refs summed in Python (`Store.step_totals`'s default), interleaved on the
    same store, same answer; over the day at 10-min steps and the newest hour at 1-min steps."""
    import numpy as np

    from web.store.base import Store
    from web.store.selector import MATCH_ALL

    cases = {"day": (start, end, 600 * S), "1h": (end - H, end, 60 * S)}
    out: dict[str, float] = {}
    for case, (t0, t1, step) in cases.items():
        def summed(st: Any, t0: int = t0, t1: int = t1, step: int = step) -> list[int]:
            return [int(v) for v in sum(st.by_period.values(), np.zeros(-(-(t1 - t0) // step), np.int64))]
        ways = {"store": lambda t0=t0, t1=t1, step=step: store.step_totals(MATCH_ALL, t0, t1, step, "samples"),
                "refs": lambda t0=t0, t1=t1, step=step: Store.step_totals(store, MATCH_ALL, t0, t1, step, "samples")}
        assert summed(ways["store"]()) == summed(ways["refs"]())
        out.update(_interleaved(f"cpu_{case}", ways, runs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--pods", type=int, default=30)
    ap.add_argument("--stacks", type=int, default=100)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--distinct", type=int, default=30)
    ap.add_argument("--new-per-drain", type=int, default=8, help="short-lived processes per drain (8 = ~70k/day)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tmp", help="where the two runs' stores go (removed after)")
    ap.add_argument("--data", help="keep the two stores here (DIR/steady, DIR/churn) instead")
    ap.add_argument("--queries-only", action="store_true", help="query the stores kept in --data, no ingest")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the churn run's queries to stderr")
    args = ap.parse_args()
    if args.queries_only and not args.data:
        ap.error("--queries-only needs --data")
    steady = run(args, 0)
    churn = run(args, args.new_per_drain)
    ratios = {f"{k}_churn_over_steady": round(churn[k] / steady[k], 2)
              for k in steady if k.endswith("_ms") or k.endswith("_per_s")}
    for k in ("pod_sums", "cpu_day", "cpu_1h"):
        ratios[f"{k}_store_over_refs_churn"] = churn[f"{k}_store_over_refs"]
    print(json.dumps({"hours": args.hours, "pods": args.pods, "new_per_drain": args.new_per_drain,
                      "steady": steady, "churn": churn, **ratios}))


if __name__ == "__main__":
    main()
