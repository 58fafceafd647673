"""What naming and merging Python frames costs the agent per drain, on the same drains with it and without.

One sampler (Python frames walked in the kernel) samples only `--processes` long-lived CPython processes
(Debian's python3.11, each its own code and C work at ~25% of a core: bench/agent_overhead.py's
LONG_PY). Every `--interval` seconds it is drained once and the same drain is assembled twice, as the
agent does (StackMemo, symbolizer, build_profiles): once with Python frames merged (`on`) and once
without (`off`: the peer, the native stacks alone, its own caches). Both assemblies see identical
samples in the same process at the same moment, so `on - off` is what Python frames cost, and the
ratio holds on a shared machine. The order of the two alternates per drain. The first drain (every
binary's symbols read) is left out: the figures are the steady state.

    .venv/bin/python bench/python_merge.py --duration 40 --frequency 99 --processes 8 [--unwind fp] [--profile]

`--profile` runs the `on` assembly under cProfile and prints its top functions (by own time) to stderr.
The last line is JSON: per side CPU ms per drain, the added ms per drain and the share of a core it
is at this drain interval, the samples and samples with Python frames.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent_overhead import stop_all  # noqa: E402
from bench.python_frames import long_lived, workload_args  # noqa: E402
from profiler.agent import Context, StackMemo, build_profiles, create_context  # noqa: E402
from profiler.procmaps import MapsCache  # noqa: E402
from profiler.sampler import Drain, Sampler  # noqa: E402
from symbolizer import Symbolizer  # noqa: E402


class Assembly:
    """The agent's assembly of drains (its own maps cache, symbolizer and memo), with its CPU time."""

    def __init__(self, python_frames: bool) -> None:
        self.maps = MapsCache()
        self.ctx: Context = create_context("bench")
        self.ctx.maps = self.maps
        if not python_frames:
            self.ctx.python = None
        self.memo = StackMemo(self.ctx, Symbolizer(self.maps))
        self.cpu = 0.0

    def __call__(self, drain: Drain, period_ns: int, profiler: cProfile.Profile | None = None) -> float:
        t0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        self.memo.begin_drain()
        build_profiles(drain, self.ctx, period_ns, self.memo)
        if profiler is not None:
            profiler.disable()
        took = time.process_time() - t0
        self.cpu += took
        return took


def main() -> None:
    ap = workload_args(__doc__, duration=40, frequency=99)
    ap.add_argument("--unwind", choices=("auto", "fp"), default="auto",
                    help="native unwinding (auto: .eh_frame tables, as bench/agent_overhead.py measures by default)")
    ap.add_argument("--whole-host", action="store_true", help="sample every process, not only the workload's")
    ap.add_argument("--profile", nargs="?", const="-", default=None, metavar="FILE",
                    help="cProfile the `on` assembly: top functions to stderr, or the stats to FILE")
    args = ap.parse_args()
    procs = long_lived(args.processes)
    profiler = cProfile.Profile() if args.profile else None
    sampler = None
    try:
        # only the workload: a shared host's other processes (each new one symbolized) would swamp the figure
        sampler = Sampler(args.frequency, python_frames=True, unwind=args.unwind,
                          pids=None if args.whole_host else [p.pid for p in procs])
        on, off = Assembly(True), Assembly(False)
        time.sleep(2)
        first = sampler.drain()  # every binary's symbols: not the steady cost
        on(first, sampler.period_ns)
        off(first, sampler.period_ns)
        on.cpu = off.cpu = 0.0
        drains = samples = with_python = distinct = 0
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            drain = sampler.drain()
            sides = [(on, profiler), (off, None)] if drains % 2 == 0 else [(off, None), (on, profiler)]
            for side, prof in sides:
                side(drain, sampler.period_ns, prof)
            drains += 1
            samples += drain.total()
            with_python += sum(s.count for s in drain.samples if s.python_stack)
            distinct += sum(1 for s in drain.samples if s.python_stack)
    finally:
        if sampler is not None:
            sampler.close()
        stop_all(procs)
    if profiler is not None and args.profile != "-":
        profiler.dump_stats(args.profile)
    elif profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue(), file=sys.stderr)
    per = {name: 1000 * side.cpu / max(drains, 1) for name, side in (("on", on), ("off", off))}
    added = per["on"] - per["off"]
    result = {"frequency_hz": args.frequency, "processes": args.processes, "interval_s": args.interval,
              "unwind": args.unwind, "whole_host": args.whole_host,
              "drains": drains, "samples": samples, "with_python_frames": with_python,
              "distinct_python_samples_per_drain": round(distinct / max(drains, 1), 1),
              "on_ms_per_drain": round(per["on"], 2), "off_ms_per_drain": round(per["off"], 2),
              "python_added_ms_per_drain": round(added, 2),
              "python_added_core_pct": round(100 * added / 1000 / args.interval, 3),
              "ratio_on_off": round(per["on"] / per["off"], 3) if per["off"] else None,
              "profiled": bool(profiler)}
    print(f"per drain: on {per['on']:.1f} ms, off {per['off']:.1f} ms, Python frames add {added:.1f} ms "
          f"({result['python_added_core_pct']}% of a core at {args.interval:g} s drains)", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
