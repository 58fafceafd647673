"""How many samples of short-lived Python processes get their Python frames named, against a long-lived
process of the same code in the same run (the peer).

The kernel records a Python frame as a code object address; the agent reads the object (name, file, line
table) from the process's memory when it drains. A process that exited before that drain cannot be read:
its frames show `[python: process exited before read]` (pyframes.EXITED), or, when it was gone before it
was even recognized as CPython, no Python frames at all. This measures those shares with `--runs`
`python3 -c` programs run one after another (each ~`--work` s of CPU in a three-function chain) beside one
long-lived process looping over the same chain, all in one cgroup sampled by the real sampler at
`--frequency` Hz, drained every `--interval` s (1: `podflame record`'s cadence, 10: the agent's) and
assembled as the agent does (StackMemo, symbolizer, Python merge).

    .venv/bin/python bench/python_short_lived.py --interval 10
    .venv/bin/python bench/python_short_lived.py --interval 1
    .venv/bin/python bench/python_short_lived.py --interval 10 --early-reads 0.1,0.3

`--early-reads` turns on pyframes.EarlyReads (off in the agent): userspace walks of each new Python
process shortly after it was registered, so its running code objects are read while it lives; the JSON
then says how many walks ran and their CPU time (of this process: the walks run in its timer threads).

Outcomes per sample of a python3 process: `named` (Python frames, all named), `exited` (an exited
process's unread frame), `unreadable` (another read failure), `native_only` (no Python frames: the process
was not recognized as CPython yet, or the walk found no frame). The last line is JSON: the counts and
shares per side, and the named share of the short-lived processes over the long-lived one's.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from podflame.model import FrameKind, Profile  # noqa: E402
from profiler.agent import StackMemo, build_profiles, create_context  # noqa: E402
from profiler.pyframes import EXITED, UNREADABLE  # noqa: E402
from profiler.sampler import Sampler  # noqa: E402
from symbolizer import Symbolizer  # noqa: E402
from tests.realsys import kubelet_cgroup, spawn_in_cgroup  # noqa: E402

CHAIN = """
import sys, time
def leaf(n):
    t = 0
    for i in range(n):
        t += i * i
    return t
def middle(n):
    return leaf(n)
def outer(n):
    return middle(n)
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    outer(20000)
"""


def outcome(stack: tuple) -> str:
    python = [f for f in stack if f.kind is FrameKind.PYTHON]
    if not python:
        return "native_only"
    if any(f is EXITED or f.lines == EXITED.lines for f in python):
        return "exited"
    if any(f.lines == UNREADABLE.lines for f in python):
        return "unreadable"
    return "named"


def tally(profiles: list[Profile], control: int, into: dict[str, collections.Counter]) -> None:
    for p in profiles:
        if p.labels.get("comm") != "python3":
            continue
        side = "long_lived" if p.labels["pid"] == str(control) else "short_lived"
        for stack, n in p.samples.items():
            into[side][outcome(stack)] += n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="short-lived python3 -c processes, one after another")
    ap.add_argument("--work", type=float, default=0.2, help="CPU seconds each one runs the chain")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between drains")
    ap.add_argument("--frequency", type=int, default=99)
    ap.add_argument("--early-reads", default="", metavar="DELAYS",
                    help="pyframes.EarlyReads (off by default): walk each new process DELAYS s after it was "
                         "registered, e.g. 0.1,0.3")
    args = ap.parse_args()
    delays = tuple(float(d) for d in args.early_reads.split(",") if d)
    counts: dict[str, collections.Counter] = {"short_lived": collections.Counter(),
                                               "long_lived": collections.Counter()}
    with kubelet_cgroup() as cg:
        sampler = Sampler(args.frequency, cgroup_ids=[cg.inode], unwind="fp", python_frames=True,
                          python_early_reads=delays)
        ctx = create_context("bench")
        memo = StackMemo(ctx, Symbolizer(ctx.maps))
        total_work = args.runs * args.work
        control = spawn_in_cgroup(cg.path, ["/usr/bin/python3", "-c", CHAIN, str(total_work + 4 * args.interval)])
        loop = f'for i in $(seq {args.runs}); do /usr/bin/python3 -c "$0" {args.work}; done'
        driver = spawn_in_cgroup(cg.path, ["sh", "-c", loop, CHAIN])
        try:
            drains = 0
            while True:
                time.sleep(args.interval)
                done = driver.poll() is not None
                drain = sampler.drain()
                memo.begin_drain()
                tally(build_profiles(drain, ctx, sampler.period_ns, memo), control.pid, counts)
                drains += 1
                if done:
                    break
        finally:
            for p in (driver, control):
                p.kill()
                p.wait()
            early = sampler.python_early
            sampler.close()
    result: dict[str, object] = {"bench": "python_short_lived", "runs": args.runs, "work_s": args.work,
                                 "interval_s": args.interval, "frequency_hz": args.frequency, "drains": drains,
                                 "early_reads": list(delays), "early_walks": early.walks if early else 0,
                                 "early_walks_failed": early.failed if early else 0,
                                 "early_walks_cpu_s": round(early.cpu_s, 4) if early else 0.0}
    shares = {}
    for side, c in counts.items():
        total = sum(c.values())
        shares[side] = {k: round(v / total, 4) for k, v in c.items()} if total else {}
        result[side] = {"samples": total, **dict(c), "shares": shares[side]}
    long_named = shares["long_lived"].get("named", 0)
    result["ratio_named_short_over_long"] = round(shares["short_lived"].get("named", 0) / long_named, 4) \
        if long_named else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
