"""The agent's CPU per thread on the busy cell's workload alone: a measure that other processes on a shared host
do not move.

bench/agent_overhead.py runs `podflame agent`, which samples, symbolizes and builds tables for every process on
the host: on a machine shared with other sessions their test suites and compilers land in its steady window
(stop 25: 4-13% of a core where a quiet machine reads 2.2-2.7%). Here the busy cell's workload (the same
`--processes` long-lived Python processes, `--churn` short-lived processes a second, 2 burners: from
agent_overhead.py) runs in a kubelet-shaped cgroup, and the real agent (the sampler with native unwinding and
Python frames, `create_context`, `Agent` with its 10 s drains, pprof encoding; no Kubernetes API, no upload)
samples that cgroup alone. After the first drains (`--settle`), the workload's window runs for `--seconds`, and
the agent's thread CPU over it is read from /proc/self/task/*/schedstat (ns): pf-agent (drains), pf-new-processe
(the new-process watcher), pf-unwind (the table loader), and the build child's.

Trees alternate round by round (`--trees A,B`: each run imports that checkout's packages, in a child of its
own, with its own warm caches from a warm-up run first, as after a restart), and per thread the medians and the
ratio of the first tree to each other are printed, with one JSON object on the last line.

    sudo .venv/bin/python bench/busy_node.py --trees /work/main,. --frequency 99 --rounds 3

Load still moves it (a loaded machine starts fewer churn processes: `churn_started` says how many), so read the
per-thread CPU with the processes the watcher read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def workload(rate: float, processes: int, burners: int, seconds: float) -> None:
    """The busy node, run inside the cgroup (its children inherit it): long-lived processes at once, "ready";
    on a line from stdin burners and churn for `seconds`, "done N" (N churn processes started); on another line
    the long-lived ones are stopped."""
    sys.path.insert(0, str(ROOT))
    from bench.agent_overhead import LONG_PY, Churn, stop_all
    from tests.realsys import build_c

    tmp = Path(tempfile.mkdtemp(prefix="podflame-busy-"))
    try:
        burn, deep_calls = build_c("two_hot.c", tmp, "-O0"), build_c("deep_calls.c", tmp)
        long_lived = [subprocess.Popen(["/usr/bin/python3", "-c", LONG_PY.replace("{seed}", str(i)), str(i)])
                      for i in range(processes)]
        print("ready", flush=True)
        sys.stdin.readline()
        hot = [subprocess.Popen([str(burn), str(seconds)]) for _ in range(burners)]
        churn = Churn(rate, deep_calls) if rate > 0 else None
        if churn is not None:
            churn.start()
        for p in hot:
            p.wait()
        if not hot:
            time.sleep(seconds)
        if churn is not None:
            churn.stop()
        print(f"done {churn.started if churn is not None else 0}", flush=True)
        sys.stdin.readline()
        stop_all(long_lived)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def thread_seconds() -> dict[str, float]:
    """CPU seconds per thread name of this process (schedstat: ns, not clock ticks)."""
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue
        out[comm] = out.get(comm, 0.0) + ns / 1e9
    return out


def one_run(args: argparse.Namespace) -> dict:
    """The agent of --tree (already first on sys.path) on the workload in a cgroup of its own."""
    os.environ.update({"PODFLAME_SYMBOL_CACHE": str(Path(args.cache) / "symbols"),
                       "PODFLAME_BPF_CACHE": str(Path(args.cache) / "bpf")})
    import resource

    import profiler
    from podflame import pprof
    from podflame.threads import daemon_thread
    from profiler.agent import Agent, KubeletLabels, create_context
    from profiler.sampler import Sampler
    from symbolizer import Symbolizer
    from tests.realsys import kubelet_cgroup

    assert Path(profiler.__file__).resolve().is_relative_to(Path(args.tree).resolve()), profiler.__file__
    with kubelet_cgroup() as cg:
        work = subprocess.Popen(["sh", "-c", f'echo $$ > "{cg.path}/cgroup.procs" && exec "$@"', "sh",
                                 sys.executable, str(Path(__file__).resolve()), "--workload", str(args.churn),
                                 str(args.processes), str(args.burners), str(args.seconds)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert work.stdin is not None and work.stdout is not None
        try:
            if work.stdout.readline().strip() != "ready":
                raise SystemExit("the workload did not start")
            ctx = create_context("bench", 60.0)
            sampler = Sampler(args.frequency, cgroup_ids=[cg.inode], unwind="auto", python_frames=True)

            def sink(profiles: list) -> None:  # what the uploader does before its POST
                pprof.encode(profiles, common_labels={"node": "bench"}, compresslevel=1)

            agent = Agent(sampler, ctx, Symbolizer(ctx.maps), sink, pod_labels=KubeletLabels(None), interval=10)
            thread = daemon_thread(agent.run, "podflame-agent")
            thread.start()
            time.sleep(args.settle)
            before, children, t0 = thread_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
            work.stdin.write("go\n")
            work.stdin.flush()
            done = work.stdout.readline().split()
            after, children_after, wall = thread_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), \
                time.monotonic() - t0
            agent.stop()
            thread.join(30)
            sampler.close()
        finally:
            if work.poll() is None:
                work.stdin.write("stop\n")
                work.stdin.flush()
                work.wait(30)
    threads = {k: round(v - before.get(k, 0.0), 4) for k, v in after.items() if k.startswith("pf-")}
    # the table builder's CPU, when it exited inside the window (else it is not in any figure here)
    reaped = (children_after.ru_utime + children_after.ru_stime) - (children.ru_utime + children.ru_stime)
    return {"tree": args.tree, "frequency": args.frequency, "window_s": round(wall, 2),
            "churn_started": int(done[1]) if len(done) > 1 else 0, "threads": threads,
            "reaped_children_s": round(reaped, 3), "agent_s": round(sum(threads.values()), 4),
            "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", default=".", help="comma-separated checkouts; the first is the baseline")
    ap.add_argument("--frequency", type=int, default=99)
    ap.add_argument("--seconds", type=float, default=25.0, help="the measured window")
    ap.add_argument("--settle", type=float, default=12.0, help="seconds sampled before the window (first drain)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--churn", type=float, default=10.0)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--burners", type=int, default=2)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--workload", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workload:
        rate, processes, burners, seconds = args.workload
        workload(float(rate), int(processes), int(burners), float(seconds))
        return
    if args.tree:  # one run, in a child: the tree's packages first, this checkout's tests/ and bench/ after
        sys.path[:0] = [args.tree, str(ROOT)]
        print(json.dumps(one_run(args)))
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: the agent loads eBPF programs")
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    caches = Path(tempfile.mkdtemp(prefix="podflame-busy-caches-"))
    runs: dict[str, list[dict]] = {t: [] for t in trees}

    def run(tree: str, i: int, seconds: float) -> dict:
        argv = [sys.executable, str(Path(__file__).resolve()), "--tree", tree, "--cache", str(caches / str(i)),
                "--frequency", str(args.frequency), "--seconds", str(seconds), "--settle", str(args.settle),
                "--churn", str(args.churn), "--processes", str(args.processes), "--burners", str(args.burners)]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=tree, check=False)
        if out.returncode:
            raise SystemExit(f"run of {tree} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    try:
        for i, tree in enumerate(trees):  # caches filled once per tree: every measured run is a restart
            run(tree, i, 10.0)
        for r in range(args.rounds):
            order = list(enumerate(trees)) if r % 2 == 0 else list(reversed(list(enumerate(trees))))
            for i, tree in order:
                got = run(tree, i, args.seconds)
                runs[tree].append(got)
                print(f"round {r + 1} {tree}: agent {got['agent_s']:.3f} s " +
                      ", ".join(f"{k} {v:.3f}" for k, v in sorted(got["threads"].items())) +
                      f" (churn started {got['churn_started']}, load {got['load']})", file=sys.stderr)
    finally:
        shutil.rmtree(caches, ignore_errors=True)
    summary: dict[str, dict[str, float]] = {}
    for tree, got in runs.items():
        names = sorted({k for g in got for k in g["threads"]} | {"agent_s"})
        summary[tree] = {k: round(statistics.median(g["agent_s"] if k == "agent_s" else g["threads"].get(k, 0.0)
                                                     for g in got), 4) for k in names}
    base = summary[trees[0]]
    for tree in trees:
        print(f"{tree}: medians " + ", ".join(f"{k} {v:.3f}" for k, v in summary[tree].items()) +
              ("" if tree == trees[0] else "; baseline / this " +
               ", ".join(f"{k} {base[k] / v:.2f}" for k, v in summary[tree].items() if v and k in base)),
              file=sys.stderr)
    print(json.dumps({"runs": runs, "medians": summary}))


if __name__ == "__main__":
    main()
