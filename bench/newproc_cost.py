"""CPU the agent spends on each new process, this tree against another (main) measured in the same run.

On a busy node the agent's new-process work (the watcher thread reading each process the kernel announces,
the agent's maps cache, Python detection, and the unwind loader placing its mappings and writing them into
the kernel) was about half of its CPU at 19 Hz (docs/benchmarks.md, stop 18). This runs exactly that work,
as the agent wires it (a real sampler with native unwinding and Python frames, `create_context`, `Agent`),
on processes that are really new: each round starts `--per-kind` fresh processes of each kind (a
`python3 -c` that imported json/re/zlib/hashlib, `sh -c`, `sort`, `sleep`, tests/workloads/deep_calls.c),
reads each as the watcher does (procmaps.read_new_process, then every callback in the sampler's order; the
unwind loader's part is its announce plus what its worker thread, pf-unwind, spent on the process, waking
included: the bench waits for it to go idle after each process), and drains once between rounds, as the agent does every
10 s (per-drain memos start afresh). The sampler samples an empty cgroup: no sample announces anything.

Each tree runs in a child process of its own (`--child TREE`: its modules imported from there), trees
alternating round by round, one warm-up round each first (tables built, files read). Thread CPU
(time.thread_time) per process and part; medians over the rounds.

    .venv/bin/python bench/newproc_cost.py --baseline /work/main [--rounds 6] [--per-kind 8]

Prints per tree the microseconds of CPU per new process by part and kind, the ratio baseline / this tree,
and one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("python", "sh", "sort", "sleep", "deep")
SHORT_PY = "import json, re, zlib, hashlib, time\ntime.sleep(60)"
PARTS = ("read", "maps cache", "python detection", "unwind loader")


def _spawn(kind: str, deep: Path) -> subprocess.Popen[bytes]:
    argv = {"python": ["/usr/bin/python3", "-c", SHORT_PY], "sh": ["sh", "-c", "sleep 60; true"],
            "sort": ["sort"], "sleep": ["sleep", "60"], "deep": [str(deep), "60", "7"]}[kind]
    return subprocess.Popen(argv, stdin=subprocess.PIPE if kind == "sort" else subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _part(callback: object) -> str:
    name = getattr(callback, "__qualname__", "")
    if "Unwinder" in name:
        return "unwind loader"
    if "python" in name.lower():
        return "python detection"
    return "maps cache"


def _wait_idle(loader: object, clock: int) -> None:
    """Until the unwind loader's worker has taken everything queued and stopped using CPU."""
    queue = getattr(loader, "_queue")  # noqa: B009
    last = -1.0
    while not queue.empty() or time.clock_gettime(clock) != last:
        last = time.clock_gettime(clock)
        time.sleep(0.002)


def child(tree: str, per_kind: int, rounds: int, cgroup_id: int, deep: Path) -> dict[str, dict[str, float]]:
    """Rounds of fresh processes through `tree`'s watcher work; µs of thread CPU per process, by kind and part."""
    sys.path.insert(0, tree)
    from profiler.agent import Agent, create_context
    from profiler.procmaps import MapsCache, read_new_process
    from profiler.sampler import Sampler
    from symbolizer.core import Symbolizer

    sampler = Sampler(19, unwind="auto", python_frames=True, cgroup_ids=[cgroup_id])
    spent = {k: dict.fromkeys(PARTS, 0.0) for k in KINDS}
    seen = dict.fromkeys(KINDS, 0)
    try:
        ctx = create_context("bench", 0.0)
        assert isinstance(ctx.maps, MapsCache)  # create_context's: the symbolizer reads binaries through it
        agent = Agent(sampler, ctx, Symbolizer(ctx.maps), lambda profiles: None, interval=10.0)
        loader = sampler.unwinder
        assert loader is not None and loader._worker is not None and loader._worker.ident is not None
        worker = time.pthread_getcpuclockid(loader._worker.ident)  # pf-unwind's CPU clock
        steps = [(_part(cb), cb) for cb in list(sampler._new_process_callbacks)]
        for r in range(rounds + 1):  # round 0 warms
            procs = [(k, _spawn(k, deep)) for _ in range(per_kind) for k in KINDS]
            try:
                time.sleep(0.6)  # past exec, the dynamic loader and python3's imports
                for kind, p in procs:
                    worker_at = time.clock_gettime(worker)
                    t = time.thread_time()
                    new = read_new_process(p.pid)
                    parts = {"read": time.thread_time() - t}
                    assert new is not None, f"{kind} {p.pid} exited"
                    for part, step in steps:
                        t = time.thread_time()
                        step([new])
                        parts[part] = parts.get(part, 0.0) + time.thread_time() - t
                    _wait_idle(loader, worker)  # the worker's share (waking it included) counts as the loader's
                    parts["unwind loader"] += time.clock_gettime(worker) - worker_at
                    if r:
                        seen[kind] += 1
                        for part, v in parts.items():
                            spent[kind][part] += v
            finally:
                for _, p in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            agent.drain_once()  # as the agent between processes: exits noticed, per-drain memos emptied
    finally:
        sampler.close()
    return {k: {part: v / seen[k] * 1e6 for part, v in parts.items()} for k, parts in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="/work/main", help="the other tree (read only)")
    ap.add_argument("--rounds", type=int, default=6, help="child runs per tree, alternating")
    ap.add_argument("--per-kind", type=int, default=8, help="fresh processes of each kind per drain")
    ap.add_argument("--drains", type=int, default=2, help="measured drains per child run (after a warm one)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cgroup-id", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--deep", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the sampler loads eBPF programs")
    if args.child:
        print(json.dumps(child(args.child, args.per_kind, args.drains, args.cgroup_id, Path(args.deep))))
        return
    sys.path.insert(0, str(ROOT))
    from tests.realsys import build_c

    work = Path(tempfile.mkdtemp(prefix="podflame-bench-newproc-"))
    cgroup = Path("/sys/fs/cgroup/unified") / f"podflame-bench-empty-{os.getpid()}"
    cgroup.mkdir()
    env = {**os.environ, "PODFLAME_SYMBOL_CACHE": str(work / "cache")}  # shared: both trees' tables warm
    trees = {"this": str(ROOT), "baseline": str(Path(args.baseline).resolve())}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
    try:
        deep = build_c("deep_calls.c", work)
        for r in range(args.rounds):
            for name in (("this", "baseline") if r % 2 else ("baseline", "this")):
                argv = [sys.executable, __file__, "--child", trees[name], "--per-kind", str(args.per_kind),
                        "--drains", str(args.drains), "--cgroup-id", str(os.stat(cgroup).st_ino), "--deep", str(deep)]
                out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
                if out.returncode:
                    raise SystemExit(f"{name} child failed:\n{out.stderr[-3000:]}")
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r} {name}: {sum(sum(p.values()) for p in runs[name][-1].values()) / len(KINDS):.0f} us "
                      f"a process (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    finally:
        with contextlib.suppress(OSError):
            cgroup.rmdir()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    result: dict[str, object] = {"bench": "newproc_cost", "rounds": args.rounds, "per_kind": args.per_kind,
                                 "drains": args.drains, "baseline": trees["baseline"]}
    for name, rs in runs.items():
        by_kind = {k: {part: round(statistics.median(r[k].get(part, 0.0) for r in rs), 1) for part in PARTS}
                   for k in KINDS}
        by_part = {part: round(statistics.median(sum(r[k].get(part, 0.0) for k in KINDS) / len(KINDS) for r in rs), 1)
                   for part in PARTS}
        total = round(statistics.median(sum(sum(r[k].values()) for k in KINDS) / len(KINDS) for r in rs), 1)
        result[name] = {"us_per_process": total, "by_part": by_part, "by_kind": by_kind}
        print(f"{name:8s}: {total} us of CPU a new process (median of {len(rs)} runs); by part "
              + ", ".join(f"{p} {v}" for p, v in by_part.items()), file=sys.stderr)
        for k, parts in by_kind.items():
            print(f"    {k:7s} " + ", ".join(f"{p} {v}" for p, v in parts.items()), file=sys.stderr)
    this, base = result["this"], result["baseline"]
    assert isinstance(this, dict) and isinstance(base, dict)
    result["baseline_over_this"] = round(base["us_per_process"] / this["us_per_process"], 2)
    result["by_part_ratio"] = {p: round(base["by_part"][p] / this["by_part"][p], 2) if this["by_part"][p] else None
                               for p in PARTS}
    print(f"baseline / this: {result['baseline_over_this']}x per new process", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
