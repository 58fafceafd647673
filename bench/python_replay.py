"""Python frames' naming and merging on the same recorded drains, in two checkouts: what a change to
profiler/pyframes.py (or profiler/python/) buys, free of a shared machine's drift between runs.

It samples `--processes` long-lived CPython processes (bench/python_frames.py's workload, only them, with
.eh_frame tables) for `--drains` drains of `--interval` s, keeps each drain and its native stacks as
StackMemo symbolized them, then, while the processes still run (code objects are read from them), replays
`PythonFrames.begin_drain` + `merge` per sample in a child process per checkout (`--peer`: the checkout to
compare with, e.g. `git worktree add /tmp/base c2c1a17`; this one is the other), alternately, `--rounds`
times, each replay the best of 5 with a fresh PythonFrames. A first drain reads every code object; the
later ones are the steady state.

    .venv/bin/python bench/python_replay.py --peer /tmp/base --drains 4

The last line is JSON: per checkout the first drain's ms and the warm drains' us per Python sample (best
and worst round), and this checkout's speed-up over the peer's.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def record(args: argparse.Namespace, into: Path) -> None:
    from bench.agent_overhead import stop_all
    from bench.python_frames import long_lived
    from profiler.agent import StackMemo, create_context
    from profiler.sampler import Sampler
    from symbolizer import Symbolizer

    procs = long_lived(args.processes)
    try:
        sampler = Sampler(args.frequency, python_frames=True, unwind="auto", pids=[p.pid for p in procs])
        try:
            ctx = create_context("bench")
            ctx.python = None  # native stacks only: the replay merges
            memo = StackMemo(ctx, Symbolizer(ctx.maps))
            time.sleep(2)
            sampler.drain()
            drains = []
            for _ in range(args.drains):
                time.sleep(args.interval)
                d = sampler.drain()
                ctx.maps.refresh({s.tgid for s in d.samples})
                memo.begin_drain()
                drains.append((d, [memo(s) for s in d.samples]))
        finally:
            sampler.close()
        into.write_bytes(pickle.dumps(drains))
        results: dict[str, list[dict[str, float]]] = {"this": [], "peer": []}
        for _ in range(args.rounds):
            for side, tree in (("peer", args.peer), ("this", str(ROOT))):
                out = subprocess.run([sys.executable, __file__, "--replay", str(into), "--tree", tree],
                                     capture_output=True, text=True, check=True).stdout
                results[side].append(json.loads(out.splitlines()[-1]))
    finally:
        stop_all(procs)
    summary: dict[str, object] = {"bench": "python_replay", "drains": args.drains, "interval_s": args.interval,
                                  "frequency_hz": args.frequency, "processes": args.processes, "peer": args.peer}
    for side, runs in results.items():
        summary[side] = {k: [min(r[k] for r in runs), max(r[k] for r in runs)] for k in runs[0]}
    this, peer = results["this"], results["peer"]
    summary["speedup_warm"] = round(min(r["warm_us_per_sample"] for r in peer) /
                                    min(r["warm_us_per_sample"] for r in this), 2)
    summary["speedup_first_drain"] = round(min(r["first_drain_ms"] for r in peer) /
                                           min(r["first_drain_ms"] for r in this), 2)
    print(f"warm: {summary['speedup_warm']}x, first drain: {summary['speedup_first_drain']}x faster than the peer",
          file=sys.stderr)
    print(json.dumps(summary))


def replay(path: Path, tree: str) -> None:
    """In a child: the checkout `tree`'s PythonFrames over the recorded drains (its own modules)."""
    sys.path.insert(0, tree)
    for name in [m for m in sys.modules if m == "profiler" or m.startswith(("profiler.", "podflame."))]:
        del sys.modules[name]
    from profiler.pyframes import PythonFrames

    drains = pickle.loads(path.read_bytes())
    rounds = []
    for _ in range(5):
        py = PythonFrames()
        took = []
        for d, natives in drains:
            t0 = time.process_time()
            py.begin_drain(d)
            for s, native in zip(d.samples, natives, strict=True):
                if s.python_stack:
                    py.merge(s.tgid, s.python_stack, native)
            took.append(time.process_time() - t0)
        rounds.append(took)
    warm_samples = sum(1 for d, _ in drains[1:] for s in d.samples if s.python_stack)
    print(json.dumps({"first_drain_ms": round(1000 * min(r[0] for r in rounds), 2),
                      "warm_us_per_sample": round(1e6 * min(sum(r[1:]) for r in rounds) / max(warm_samples, 1), 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", help="the checkout to compare with")
    ap.add_argument("--drains", type=int, default=4)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--frequency", type=int, default=99)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay:
        replay(args.replay, args.tree)
        return
    if not args.peer or args.drains < 2:
        ap.error("--peer CHECKOUT and --drains >= 2 are needed")
    with tempfile.TemporaryDirectory() as tmp:
        record(args, Path(tmp) / "drains.pickle")


if __name__ == "__main__":
    main()
