"""Load benchmark: how many nodes one `podflame server` holds.

Simulated agents ship what a real one does: one gzip pprof per node every 10 s holding ~100 pods'
samples (bench/synthetic.py, as bench/store.py makes them; a few distinct drains are generated up
front and cycled, each request stamped with its own time and `node=` label), over a new connection
per request with the ingest token, as profiler/upload.py does. Nodes start spread over the interval.
Query clients meanwhile ask what the UI asks (pod list with CPU share, a pod's flame graph, the CPU
chart, label values) with the read token, one request after another with a short pause.

The server is `podflame server` itself (waitress, its default thread pool, token files, a fresh data
directory per step), on 127.0.0.1 only. Steps go up in node count (10 .. 500) for `--step-seconds`
each (after `--warmup` s of the same load, not measured: a new store interns every frame and stack
once). They stop once ingest fails or falls behind, after two steps in a row that miss the query target,
or when `--max-seconds` is used up: the run always ends by itself. A step holds when no request failed,
every drain due in the step was acknowledged, ingest kept up (p99 ingest latency under the 10 s
interval: an agent's backlog does not grow) and query p99 is under 1 s.

Peer, measured in the same run: Werkzeug's threaded development server (what `podflame server` ran
before; one thread per connection, unbounded, no ingest limit) on the same app at the largest node count
where podflame's ingest kept up; ratios peer/podflame (> 1: the peer is worse) say what the production
server changed.

    .venv/bin/python bench/load.py                       # about 6-8 minutes
    .venv/bin/python bench/load.py --nodes 10,50 --step-seconds 20   # a quick look

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import heapq
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic import drain, make_node  # noqa: E402
from podflame import pprof  # noqa: E402

INGEST_TOKEN = "bench-ingest-token-0123456789abcdef"
READ_TOKEN = "bench-read-token-0123456789abcdef0"
HOST = "127.0.0.1"  # loopback only, by design
PEER_SERVER = """
import logging, sys, threading
from werkzeug.serving import make_server
logging.getLogger("werkzeug").setLevel(logging.WARNING)
from web.server.app import create_app
app = create_app({"DATA_DIR": sys.argv[1], "INGEST_TOKEN_FILE": sys.argv[3], "READ_TOKEN_FILE": sys.argv[4],
                  "INGEST_CONCURRENCY": 10000})  # as before: no ingest limit
srv = make_server("127.0.0.1", int(sys.argv[2]), app, threaded=True)
print("listening", flush=True)
srv.serve_forever()
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Stats:
    ingest_ok: int = 0
    ingest_errors: int = 0
    ingest_latency: list[float] = field(default_factory=list)
    send_lag: list[float] = field(default_factory=list)
    query_latency: list[float] = field(default_factory=list)
    query_errors: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, what: str) -> None:
        with self.lock:
            if len(self.errors) < 10:
                self.errors.append(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None, token: str,
            timeout: float = 30) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def start_server(kind: str, data: Path, tokens: tuple[Path, Path]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    if kind == "podflame":
        argv = [str(Path(sys.executable).with_name("podflame")), "server", f"--listen={HOST}:{port}",
                f"--data={data}", f"--ingest-token-file={tokens[0]}", f"--read-token-file={tokens[1]}"]
    else:
        argv = [sys.executable, "-c", PEER_SERVER, str(data), str(port), str(tokens[0]), str(tokens[1])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODFLAME_")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"{kind} server did not start: {line!r}")
    return proc, port


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process, MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_step(kind: str, nodes: int, seconds: float, bodies: list[bytes], pods: list[Any], args: argparse.Namespace,
             tokens: tuple[Path, Path], workdir: Path) -> dict[str, Any]:
    data = workdir / f"{kind}-{nodes}"
    proc, port = start_server(kind, data, tokens)
    stats = Stats()
    interval = args.interval
    t0 = time.monotonic() + 0.5
    measured_from = t0 + args.warmup  # a new store interns every frame and stack once: not what it sustains
    end = measured_from + seconds
    # (due time, node): nodes spread over the interval, as agents started at different moments are
    due = [(t0 + interval * i / nodes, i) for i in range(nodes)]
    heapq.heapify(due)
    due_lock = threading.Condition()
    stop = threading.Event()
    sent_rounds = [0]

    def agent_worker() -> None:
        while not stop.is_set():
            with due_lock:
                if not due or due[0][0] >= end:
                    return
                when, node = heapq.heappop(due)
                heapq.heappush(due, (when + interval, node))
            wait = when - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            start = time.monotonic()
            lag = start - when
            body = bodies[(node + sent_rounds[0]) % len(bodies)]
            path = f"/api/v1/ingest?node=node-{node:03d}&time={time.time_ns() // 1_000_000_000}"
            try:
                status, answer = request(port, "POST", path, body, INGEST_TOKEN, timeout=60)
            except OSError as e:
                status, answer = 0, str(e).encode()
            took = time.monotonic() - start
            if when < measured_from:
                if status != 200:
                    stats.error(f"warm-up ingest {status}: {answer[:120]!r}")
                continue
            with stats.lock:
                stats.send_lag.append(lag)
                stats.ingest_latency.append(took)
                if status == 200:
                    stats.ingest_ok += 1
                else:
                    stats.ingest_errors += 1
            if status != 200:
                stats.error(f"ingest {status}: {answer[:120]!r}")

    queries = [
        ("series", lambda rng: f"/api/v1/series?from=now-5m&by=pod_uid,container_id,namespace,pod,container"
                               f"&query=%7Bnode%3D%22node-{rng.randrange(nodes):03d}%22%7D"),
        ("cpu", lambda rng: f"/api/v1/cpu?from=now-5m&query=%7Bnode%3D%22node-{rng.randrange(nodes):03d}%22%7D"),
        ("flamegraph", lambda rng: "/api/v1/flamegraph?from=now-5m&max_nodes=2000&query=" +
         f"%7Bnode%3D%22node-{rng.randrange(nodes):03d}%22%2Cpod%3D%22{rng.choice(pods).labels['pod']}%22%7D"),
        ("labels", lambda rng: "/api/v1/label/namespace/values?from=now-5m"),
    ]

    def query_client(seed: int) -> None:
        rng = random.Random(seed)
        time.sleep(max(0.0, measured_from - time.monotonic()))  # a user comes to a running server
        while time.monotonic() < end and not stop.is_set():
            _, make = rng.choice(queries)
            start = time.monotonic()
            try:
                status, answer = request(port, "GET", make(rng), None, READ_TOKEN, timeout=30)
            except OSError as e:
                status, answer = 0, str(e).encode()
            with stats.lock:
                stats.query_latency.append(time.monotonic() - start)
                if status != 200:
                    stats.query_errors += 1
            if status != 200:
                stats.error(f"query {status}: {answer[:120]!r}")
            time.sleep(args.think)

    workers = [threading.Thread(target=agent_worker, daemon=True) for _ in range(min(nodes, args.agent_threads))]
    workers += [threading.Thread(target=query_client, args=(i,), daemon=True) for i in range(args.query_clients)]
    peak = 0.0
    cpu_at: list[float] = []
    for w in workers:
        w.start()
    try:
        while any(w.is_alive() for w in workers):
            peak = max(peak, rss_mb(proc.pid)[0])
            if not cpu_at and time.monotonic() >= measured_from:
                cpu_at.append(cpu_seconds(proc.pid))
            if len(cpu_at) == 1 and time.monotonic() >= end:
                cpu_at.append(cpu_seconds(proc.pid))
            if time.monotonic() > end + interval + 60:  # acknowledged late or not at all: give up on stragglers
                stats.error("requests still running 60 s after the step's end")
                stop.set()
                break
            time.sleep(0.5)
        rss_now, rss_peak = rss_mb(proc.pid)
        if len(cpu_at) == 1:
            cpu_at.append(cpu_seconds(proc.pid))
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    expected = sum(1 for i in range(nodes) for k in range(int((end - t0) / interval) + 1)
                   if measured_from <= t0 + interval * i / nodes + k * interval < end)
    q50, q99 = pct(stats.query_latency, 0.5), pct(stats.query_latency, 0.99)
    i50, i99 = pct(stats.ingest_latency, 0.5), pct(stats.ingest_latency, 0.99)
    errors = stats.ingest_errors + stats.query_errors
    errors += sum(1 for e in stats.errors if e.startswith("warm-up"))
    cores = (cpu_at[1] - cpu_at[0]) / seconds if len(cpu_at) == 2 else None
    held = (errors == 0 and stats.ingest_ok == expected and i99 is not None and i99 < interval
            and q99 is not None and q99 < 1.0)
    result = {
        "server": kind, "nodes": nodes, "seconds": seconds, "held": held,
        "drains_expected": expected, "drains_ok": stats.ingest_ok, "ingest_errors": stats.ingest_errors,
        "pod_profiles_per_s": round(stats.ingest_ok * args.pods / seconds, 1),
        "ingest_p50_s": round(i50, 3) if i50 is not None else None,
        "ingest_p99_s": round(i99, 3) if i99 is not None else None,
        "send_lag_p99_s": round(pct(stats.send_lag, 0.99) or 0, 3),
        "queries": len(stats.query_latency), "query_errors": stats.query_errors,
        "query_p50_s": round(q50, 3) if q50 is not None else None,
        "query_p99_s": round(q99, 3) if q99 is not None else None,
        # cores the server used over the measured window (ingest and queries), and what that implies on an idle
        # machine: nodes per core at this mix (the shared test machine's load makes latency pessimistic)
        "server_cores_used": round((cpu_at[1] - cpu_at[0]) / seconds, 3) if len(cpu_at) == 2 else None,
        "server_rss_mb": round(peak or rss_now, 1), "server_peak_rss_mb": round(rss_peak, 1),
        "first_errors": stats.errors[:3], "host_load_avg_1m": round(os.getloadavg()[0], 2),
    }
    log(f"{kind:8} {nodes:4} nodes: {'HELD' if held else 'not held'}; ingest {stats.ingest_ok}/{expected} "
        f"({result['pod_profiles_per_s']} pod profiles/s, p50 {result['ingest_p50_s']} s, "
        f"p99 {result['ingest_p99_s']} s,"
        f" lag p99 {result['send_lag_p99_s']} s), queries {len(stats.query_latency)} (p50 {result['query_p50_s']} s,"
        f" p99 {result['query_p99_s']} s), errors {errors}, RSS peak {result['server_peak_rss_mb']} MB,"
        f" host load {result['host_load_avg_1m']}, server cores {cores if cores is None else round(cores, 2)}"
        + (f"; {stats.errors[0]}" if stats.errors else ""))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="10,25,50,75,100,150,200,300,500", help="node counts to try, ascending")
    ap.add_argument("--step-seconds", type=float, default=40, help="seconds of load per step")
    ap.add_argument("--interval", type=float, default=10, help="seconds between a node's drains")
    ap.add_argument("--pods", type=int, default=100, help="pods per node")
    ap.add_argument("--warmup", type=float, default=10, help="seconds of load before measuring (a new store)")
    ap.add_argument("--distinct", type=int, default=6, help="distinct drains generated, then cycled")
    ap.add_argument("--query-clients", type=int, default=2)
    ap.add_argument("--think", type=float, default=0.5, help="pause between a query client's requests (s)")
    ap.add_argument("--agent-threads", type=int, default=64, help="client threads sending the nodes' drains")
    ap.add_argument("--max-seconds", type=float, default=900, help="stop starting steps after this long")
    ap.add_argument("--no-peer", action="store_true", help="skip the Werkzeug development server peer")
    args = ap.parse_args()
    started = time.monotonic()
    counts = [int(n) for n in args.nodes.split(",")]

    log(f"generating {args.distinct} distinct drains of {args.pods} pods...")
    pods = make_node(pods=args.pods)
    now = time.time_ns()
    bodies = [pprof.encode(drain(pods, now, int(args.interval), seed=i), compresslevel=1) for i in range(args.distinct)]
    log(f"drain size: {statistics.mean(len(b) for b in bodies) / 1024:.0f} KiB gzip pprof")

    results = []
    with tempfile.TemporaryDirectory(prefix="podflame-load-") as tmp:
        workdir = Path(tmp)
        tokens = (workdir / "ingest", workdir / "read")
        tokens[0].write_text(INGEST_TOKEN + "\n")
        tokens[1].write_text(READ_TOKEN + "\n")
        for nodes in counts:
            if time.monotonic() - started + args.step_seconds > args.max_seconds:
                log(f"--max-seconds reached: not trying {nodes} nodes")
                break
            r = run_step("podflame", nodes, args.step_seconds, bodies, pods, args, tokens, workdir)
            results.append(r)
            if r["held"]:
                continue
            broke = r["ingest_errors"] or r["query_errors"] or r["drains_ok"] < r["drains_expected"] or (
                r["ingest_p99_s"] or 0) >= args.interval
            if broke or (len(results) > 1 and not results[-2]["held"]):
                break  # ingest could not keep up, or two steps in a row missed the query target
        peer = None
        # the peer runs at the largest count where podflame's ingest kept up (held or not on queries): the load
        # at which the two servers' handling of contention differs
        kept_up = [r for r in results if not r["ingest_errors"] and r["drains_ok"] == r["drains_expected"]
                   and (r["ingest_p99_s"] or 0) < args.interval]
        peer_nodes = max((r["nodes"] for r in kept_up), default=None)
        if peer_nodes and not args.no_peer and time.monotonic() - started + args.step_seconds < args.max_seconds:
            peer = run_step("werkzeug", peer_nodes, args.step_seconds, bodies, pods, args, tokens, workdir)
    summary: dict[str, Any] = {
        "bench": "load", "cpus": os.cpu_count(), "interval_s": args.interval, "pods_per_node": args.pods,
        "step_seconds": args.step_seconds,
        "query_clients": args.query_clients, "drain_kib": round(statistics.mean(len(b) for b in bodies) / 1024, 1),
        "max_nodes_held": max((r["nodes"] for r in results if r["held"]), default=0),
        "first_not_held": next((r["nodes"] for r in results if not r["held"]), None),
        "steps": results, "peer_werkzeug": peer,
    }
    ours = next((r for r in results if peer is not None and r["nodes"] == peer["nodes"]), None)
    if ours is not None and peer is not None:  # > 1: the peer is worse by that factor
        summary["peer_nodes"] = peer["nodes"]
        summary["peer_ratio_query_p99"] = (round(peer["query_p99_s"] / ours["query_p99_s"], 2)
                                           if peer["query_p99_s"] and ours["query_p99_s"] else None)
        summary["peer_ratio_ingest_p99"] = (round(peer["ingest_p99_s"] / ours["ingest_p99_s"], 2)
                                            if peer["ingest_p99_s"] and ours["ingest_p99_s"] else None)
        summary["peer_ratio_peak_rss"] = round(peer["server_peak_rss_mb"] / ours["server_peak_rss_mb"], 2)
    used = [r for r in results if r["server_cores_used"]]
    if used:  # CPU per node per interval at the largest step measured: a capacity figure host load does not skew
        last = max(used, key=lambda r: r["nodes"])
        summary["server_cpu_s_per_drain"] = round(last["server_cores_used"] * args.interval / last["nodes"], 4)
        summary["nodes_per_core_estimate"] = round(last["nodes"] / last["server_cores_used"])
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
