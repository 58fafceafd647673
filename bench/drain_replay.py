"""One drain's CPU in the agent, on drains recorded from a busy node and replayed: this tree against a peer.

The agent's drain thread (pf-agent) turns each drain's raw samples into symbolized, labelled profiles
and a pprof body: StackMemo, the Python-frame merge, pod labels, metrics, pprof encoding. On a whole-host
bench (bench/agent_overhead.py) that cost moves with whatever else runs; here the same drains go through
each build, so the CPU is comparable within minutes and the outputs must be identical.

1. Record: the busy workload of bench/agent_overhead.py (`--processes` long-lived python3 with deep,
   different stacks, `--churn` short-lived processes a second, two burners) runs in a cgroup of its own;
   the real sampler (tables on, Python frames on) samples only that cgroup at `--frequency` for `--drains`
   drains of `--interval` seconds. What the sampler's watcher read of each new process (its maps, read
   ~0.1 s after its first sample, as the agent's watcher gives them to its maps cache) is kept per drain.
   The churn then stops; the long-lived processes stay, stopped (SIGSTOP), so their maps, binaries and
   code objects can still be read and do not change (short-lived ones are gone, as in a late drain).
2. Replay: a child process per build and round takes the recorded drains one by one the way
   `Agent.drain_once` does after the sampler's read (StackMemo, `build_profiles`, pod labels, metrics,
   pprof encoding at the uploader's level), the new processes' reads handed to the maps cache before each
   drain (untimed: the watcher's thread in the agent), and reports its thread CPU per drain, a digest of
   every profile (labels, stacks with each frame's address, mapping, kind, names and reason, counts) and
   one of the pprof bodies (inflated: gzip's header holds a time).
   The first drain is the cold one (empty memos; the symbol disk cache warm from a first pass).

The peer: `--baseline DIR` (another checkout with its own .venv, e.g. /work/main), rounds interleaved
with this tree's. The ratio is the baseline's CPU over this tree's, summed over the warm drains (all but
the first), median of the rounds; digests must be equal (the same profiles from both builds).
On a machine shared with other sessions, rounds one build after the other meet different loads (ratios
spread +-25%) and a different /proc (recorded pids reused by others' processes change the digests):
`--paired` runs both builds' replays of a round at the same time, and `--ns` each in a new pid namespace
(every recorded process gone: the same output whatever the pids became); `ratio_per_round` and
`rounds_with_equal_digests` then compare round by round.
`--hold` keeps a recording and its stopped processes; `--drains-file` replays it again (more rounds, another
baseline) without recording.
`--cold-cache`: every replay starts from an empty symbol disk cache, as an agent's first start on a node does
(symbol tables parsed, DWARF compile units decoded and stored as new addresses reach them, in the warm drains
too); the default is a restart's cache, filled by a first pass.

    .venv/bin/python bench/drain_replay.py --baseline /work/main --drains 4 --rounds 5
    .venv/bin/python bench/drain_replay.py --drains-file /tmp/podflame-drain-replay-*/drains.pickle \
        --baseline /work/main --rounds 16 --paired [--ns]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gzip
import hashlib
import json
import os
import pickle
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def record(args: argparse.Namespace, out: Path) -> tuple[list, list[list], list[subprocess.Popen]]:
    """Busy workload in a pod-shaped cgroup, sampled there only; returns the drains and the processes left."""
    sys.path.insert(0, str(ROOT))
    from bench.agent_overhead import LONG_PY, Churn
    from profiler.sampler import Sampler
    from tests.realsys import CGROUP2_ROOT, build_c, kubelet_cgroup

    deep = build_c("deep_calls.c", out)
    burn = build_c("two_hot.c", out, "-O0")
    drains = []
    seen: list = []  # NewProcess reads since the last drain (the watcher's thread appends)
    announced: list[list] = []  # per drain: the new processes read before it, in the agent's maps cache by then
    long_lived: list[subprocess.Popen] = []
    with kubelet_cgroup() as cg:
        (cg.path / "cgroup.procs").write_text(str(os.getpid()))  # children start inside; back out below
        try:
            long_lived = [subprocess.Popen(["/usr/bin/python3", "-c", LONG_PY.replace("{seed}", str(i)), str(i)])
                          for i in range(args.processes)]
            seconds = args.drains * args.interval + 30
            burners = [subprocess.Popen([str(burn), str(seconds)]) for _ in range(2)]
            churn = Churn(args.churn, deep) if args.churn > 0 else None
            with Sampler(args.frequency, cgroup_ids=[cg.inode], unwind="auto", python_frames=True) as sampler:
                # what the agent's watcher reads of each new process (its maps, before it can exit), per drain
                sampler.watch_new_processes(lambda got: seen.extend(got))
                if churn is not None:
                    churn.start()
                time.sleep(args.interval)
                sampler.drain()  # start-up: tables and Python detection settle
                for _ in range(args.drains):
                    time.sleep(args.interval)
                    drains.append(sampler.drain())
                    announced.append(seen[:])
                    del seen[:len(announced[-1])]
                    print(f"recorded a drain of {drains[-1].total()} samples, {len(drains[-1].samples)} raw",
                          file=sys.stderr)
            if churn is not None:
                churn.stop()
            for p in long_lived:  # stopped, not gone: their maps and code objects stay readable and unchanged,
                p.send_signal(signal.SIGSTOP)  # and they burn no CPU while the rounds (and --hold) run
                # out of the pod's cgroup first: leaving kubelet_cgroup kills what is left in it (cgroup.kill),
                # and a replay of exited long-lived processes reads none of their maps or code objects
                (CGROUP2_ROOT / "cgroup.procs").write_text(str(p.pid))
            for b in burners:
                b.kill()
                b.wait()
        finally:
            (CGROUP2_ROOT / "cgroup.procs").write_text(str(os.getpid()))  # kubelet_cgroup moves the rest out
    return drains, announced, long_lived


def replay(root: Path, drains_file: Path) -> dict:
    """The agent's userspace side of each recorded drain in `root`'s code; thread CPU per drain and a digest."""
    sys.path.insert(0, str(root))
    from podflame import pprof
    from profiler import metrics
    from profiler.agent import KubeletLabels, PodLabels, StackMemo, build_profiles, create_context
    from profiler.heap import SurvivorFreezer, release_freed_memory
    from profiler.procmaps import MapsCache
    from symbolizer import Symbolizer

    recorded = pickle.loads(drains_file.read_bytes())
    drains, period_ns = recorded["drains"], recorded["period_ns"]
    announced = recorded.get("announced") or [[] for _ in drains]  # none in recordings before stop 19
    ctx = create_context("bench", 0.0)  # every process labelled by its pid: labels do not depend on when
    assert isinstance(ctx.maps, MapsCache)  # create_context's: the symbolizer reads binaries through it
    memo = StackMemo(ctx, Symbolizer(ctx.maps))
    pods = PodLabels(KubeletLabels())
    cpu: list[float] = []
    digest, pprof_digest, encoded = hashlib.sha256(), hashlib.sha256(), 0
    last_errors: dict[str, int] = {}
    freezer = SurvivorFreezer()  # the agent's loop keeps the GC off what earlier drains left
    profiler = cProfile.Profile(time.thread_time) if os.environ.get("PODFLAME_REPLAY_PROFILE") else None
    # thread CPU of the warm drains by step (see --phases); the finer parts only when asked (they wrap calls)
    phases: dict[str, float] = dict.fromkeys(("begin", "build_profiles", "pods", "record_drain", "release", "encode"),
                                             0.0)
    warm = [False]
    if os.environ.get("PODFLAME_REPLAY_PHASES"):
        _time_calls(memo, "_frames", "native stacks", phases, warm)  # a build without these parts skips them
        _time_calls(memo, "_with_python", "python merge", phases, warm)
        from symbolizer import dwarf
        _time_calls(dwarf.DwarfInfo, "lookup", "dwarf lookups", phases, warm)
    tt = time.thread_time
    for i, drain in enumerate(drains):
        ctx.maps.prefetch(announced[i])  # the agent's watcher thread, not its drain: untimed
        if profiler is not None and i:  # the warm drains
            profiler.enable()
        warm[0] = i > 0
        t0 = tt()
        # the agent's loop (Agent.run) around each drain: a build with SurvivorFreezer.drain keeps the GC off
        # while it runs; an older one lets it run and freezes after
        around = getattr(freezer, "drain", None)
        with around() if around is not None else contextlib.nullcontext():
            memo.begin_drain()
            t1 = tt()
            profiles = build_profiles(drain, ctx, period_ns, memo)
            t2 = tt()
            profiles = pods(profiles)
            t3 = tt()
            metrics.record_drain(drain, profiles, last_errors)
            last_errors = dict(drain.errors)
            t4 = tt()
            release_freed_memory()
            t5 = tt()
            body = pprof.encode(profiles, common_labels={"node": "bench"}, compresslevel=1)
            t6 = tt()
        if around is None:
            freezer.after_drain()
        cpu.append(tt() - t0)
        if i:
            for name, took in (("begin", t1 - t0), ("build_profiles", t2 - t1), ("pods", t3 - t2),
                               ("record_drain", t4 - t3), ("release", t5 - t4), ("encode", t6 - t5)):
                phases[name] += took
        encoded += len(body)
        pprof_digest.update(gzip.decompress(body))  # the gzip header holds a time: compare what it wraps
        if profiler is not None:
            profiler.disable()
        for p in sorted(profiles, key=lambda p: sorted(p.labels.items())):
            digest.update(repr(sorted(p.labels.items())).encode())
            for stack, n in sorted(((_frames(s), n) for s, n in p.samples.items()), key=repr):
                digest.update(repr((stack, n)).encode())
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.environ["PODFLAME_REPLAY_PROFILE"])
    return {"cpu_s": cpu, "digest": digest.hexdigest(), "pprof_digest": pprof_digest.hexdigest(),
            "samples": sum(d.total() for d in drains), "pprof_bytes": encoded, "phases_s": phases}


def _time_calls(owner: object, name: str, label: str, into: dict[str, float], warm: list[bool]) -> None:
    """Adds the thread CPU of `owner.name`'s calls in the warm drains to `into[label]` (outermost calls only)."""
    orig = getattr(owner, name, None)
    if orig is None:
        return
    into[label] = 0.0
    inside = [False]

    def timed(*args, **kwargs):
        if inside[0] or not warm[0]:
            return orig(*args, **kwargs)
        inside[0] = True
        t0 = time.thread_time()
        try:
            return orig(*args, **kwargs)
        finally:
            into[label] += time.thread_time() - t0
            inside[0] = False

    if isinstance(owner, type):  # a method of every instance: bound as the original was
        def method(self, *args, **kwargs):
            return timed(self, *args, **kwargs)
        setattr(owner, name, method)
    else:
        setattr(owner, name, timed)


def _frames(stack) -> tuple:
    return tuple((f.address, f.mapping and (f.mapping.start, f.mapping.path, f.mapping.build_id), str(f.kind),
                  tuple((ln.function, ln.file, ln.line) for ln in f.lines), str(f.reason)) for f in stack)


def start_replay(root: Path, drains_file: Path, env: dict[str, str], ns: bool = False) -> subprocess.Popen:
    python = root / ".venv" / "bin" / "python"
    # ns: in a new pid namespace every recorded pid reads as gone, so nothing another session's processes do
    # with those pids meanwhile reaches the output (the long-lived processes' code objects are not read either)
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"] if ns else []
    return subprocess.Popen([*prefix, str(python), str(Path(__file__).resolve()), "--replay", str(drains_file),
                             "--replay-root", str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish_replay(root: Path, proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"replay in {root} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_replay(root: Path, drains_file: Path, env: dict[str, str], ns: bool = False) -> dict:
    return finish_replay(root, start_replay(root, drains_file, env, ns))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another checkout (with .venv) to replay the same drains")
    ap.add_argument("--frequency", type=int, default=99)
    ap.add_argument("--drains", type=int, default=4)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--churn", type=float, default=10.0)
    ap.add_argument("--spy", type=Path, help="also record one replay of this tree with py-spy (raw folded stacks)")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="keep the recording (and its long-lived processes) this many seconds after the rounds")
    ap.add_argument("--drains-file", type=Path,
                    help="replay the drains.pickle a run held (--hold) instead of recording: more rounds in the "
                         "minutes its processes are still alive (its symbols/ beside it is the disk cache)")
    ap.add_argument("--paired", action="store_true",
                    help="run both builds' replays of a round at the same time (on a shared machine: the same load "
                         "and the same /proc for both, so per-round ratios and digests compare); see ratio_per_round")
    ap.add_argument("--ns", action="store_true",
                    help="each replay in a new pid namespace: every recorded process reads as gone, the output is "
                         "deterministic whatever reuses the recorded pids (needs unshare)")
    ap.add_argument("--cold-cache", action="store_true",
                    help="each replay with an empty symbol disk cache of its own (an agent's first start), not the "
                         "one a first pass filled (a restart's)")
    ap.add_argument("--phases", action="store_true",
                    help="also time the parts inside build_profiles (StackMemo's native stacks, the Python merge) "
                         "and the DWARF lookups (CU decoding on a cold cache): wraps those calls, so the totals grow "
                         "a little; the steps around them (begin, build_profiles, pods, record_drain, release, "
                         "encode) are always reported")
    ap.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--replay-root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay is not None:
        print(json.dumps(replay(args.replay_root, args.replay)))
        return
    if args.drains_file is None and os.geteuid() != 0:
        raise SystemExit("run as root: recording loads the BPF sampler")
    kept = args.drains_file is not None
    tmp = args.drains_file.resolve().parent if kept else Path(tempfile.mkdtemp(prefix="podflame-drain-replay-"))
    env = {**os.environ, "PODFLAME_SYMBOL_CACHE": str(tmp / "symbols"),
           **({"PODFLAME_REPLAY_PHASES": "1"} if args.phases else {})}
    long_lived: list[subprocess.Popen] = []
    try:
        drains_file = args.drains_file.resolve() if kept else tmp / "drains.pickle"
        if kept:
            recorded = pickle.loads(drains_file.read_bytes())
            drains, args.frequency = recorded["drains"], 1_000_000_000 // recorded["period_ns"]
            args.drains = len(drains)
        else:
            drains, announced, long_lived = record(args, tmp)
            drains_file.write_bytes(pickle.dumps({"drains": drains, "announced": announced,
                                                  "period_ns": 1_000_000_000 // args.frequency}))
        builds = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
        if not args.cold_cache:
            run_replay(ROOT, drains_file, env)  # fills the symbol disk cache for every round that follows

        def replay_env() -> dict[str, str]:
            if not args.cold_cache:
                return env
            return {**env, "PODFLAME_SYMBOL_CACHE": tempfile.mkdtemp(prefix="cold-", dir=tmp)}

        def done(used: dict[str, str]) -> None:
            if used is not env:  # an empty cache of this replay's own
                shutil.rmtree(used["PODFLAME_SYMBOL_CACHE"], ignore_errors=True)

        results: dict[str, list[dict]] = {name: [] for name in builds}
        for i in range(args.rounds):
            order = list(builds.items())
            order = order[::-1] if i % 2 else order  # which build goes first alternates
            if args.paired:  # both at once: the same load and the same /proc for both, round by round
                started = []
                for name, root in order:
                    used = replay_env()
                    started.append((name, root, used, start_replay(root, drains_file, used, args.ns)))
                for name, root, used, proc in started:
                    results[name].append(finish_replay(root, proc))
                    done(used)
            else:
                for name, root in order:
                    used = replay_env()
                    results[name].append(run_replay(root, drains_file, used, args.ns))
                    done(used)
        if args.spy is not None:
            subprocess.run([str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--rate", "1000", "--format", "raw",
                            "-o", str(args.spy), "--", str(ROOT / ".venv" / "bin" / "python"),
                            str(Path(__file__).resolve()), "--replay", str(drains_file), "--replay-root", str(ROOT)],
                           env=env, check=True, capture_output=True)
        out: dict = {"frequency_hz": args.frequency, "drains": args.drains, "interval_s": args.interval,
                     "samples": results["this"][0]["samples"], "raw_samples": sum(len(d.samples) for d in drains),
                     "rounds": args.rounds}
        for name, runs in results.items():
            warm = [sum(r["cpu_s"][1:]) for r in runs]
            out[name] = {"warm_cpu_ms": round(1e3 * statistics.median(warm), 1),
                         "warm_cpu_ms_rounds": [round(1e3 * w, 1) for w in warm],
                         "cold_drain_ms": round(1e3 * statistics.median(r["cpu_s"][0] for r in runs), 1),
                         "per_sample_us": round(1e6 * statistics.median(warm) /
                                                max(1, sum(d.total() for d in drains[1:])), 1),
                         "phases_ms": {k: round(1e3 * statistics.median(r["phases_s"][k] for r in runs), 1)
                                       for k in runs[0]["phases_s"]},
                         "digests": sorted({r["digest"] for r in runs}),
                         "pprof_digests": sorted({r["pprof_digest"] for r in runs})}
            print(f"{name:9} warm drains {out[name]['warm_cpu_ms']:8.1f} ms (median of {len(runs)}; "
                  f"{out[name]['per_sample_us']} us a sample), cold drain {out[name]['cold_drain_ms']} ms",
                  file=sys.stderr)
            print(f"{'':9} warm drains by step, ms (median): " +
                  ", ".join(f"{k} {v}" for k, v in out[name]["phases_ms"].items()), file=sys.stderr)
        if "baseline" in out:
            out["identical_profiles"] = out["this"]["digests"] == out["baseline"]["digests"] and \
                len(out["this"]["digests"]) == 1
            out["identical_pprof"] = out["this"]["pprof_digests"] == out["baseline"]["pprof_digests"] and \
                len(out["this"]["pprof_digests"]) == 1
            out["ratio_baseline_over_this"] = round(out["baseline"]["warm_cpu_ms"] / out["this"]["warm_cpu_ms"], 3)
            per_round = [b / t for b, t in zip(out["baseline"]["warm_cpu_ms_rounds"], out["this"]["warm_cpu_ms_rounds"],
                                               strict=True)]
            out["ratio_per_round"] = {"median": round(statistics.median(per_round), 3),
                                      "min": round(min(per_round), 3), "max": round(max(per_round), 3)}
            if len(per_round) >= 2:
                out["ratio_per_round"]["quartiles"] = [round(q, 3) for q in statistics.quantiles(per_round, n=4)]
            out["rounds_with_equal_digests"] = sum(
                t["digest"] == b["digest"] and t["pprof_digest"] == b["pprof_digest"]
                for t, b in zip(results["this"], results["baseline"], strict=True))
            print(f"baseline / this per round: {out['ratio_per_round']}, rounds whose two digests are equal: "
                  f"{out['rounds_with_equal_digests']} of {args.rounds}", file=sys.stderr)
            print(f"baseline / this: {out['ratio_baseline_over_this']}, identical profiles: "
                  f"{out['identical_profiles']}, identical pprof: {out['identical_pprof']}", file=sys.stderr)
        print(json.dumps(out))
        if args.hold:
            print(f"holding {drains_file} for {args.hold:g}s", file=sys.stderr, flush=True)
            time.sleep(args.hold)
    finally:
        for p in long_lived:
            with contextlib.suppress(OSError):
                p.kill()
                p.wait()
        if not kept:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
