"""What Python frames cost the agent: the same drains assembled with them on and off, in one run.

Two samplers run side by side on the same host for the same time, one walking Python frames in the
kernel (bpf/python.bpf.h), one not, while `--processes` long-lived CPython processes (Debian's
python3.11, each its own code and C work, ~25% of a core each: bench/agent_overhead.py's LONG_PY) run.
Every `--interval` seconds each sampler is drained and its samples assembled into symbolized profiles
as the agent does (StackMemo, symbolizer, Python merge); the CPU time of each side's drains is measured
on its own (time.process_time around the calls; both sides live in this one process, so load and
machine are the same). Kernel time is reported from the programs' run_time_ns (kernel.bpf_stats_enabled
is switched on for the run and restored): the BPF program's own cost per sample, on and off.

    .venv/bin/python bench/python_frames.py --duration 60 --frequency 19 --processes 8

The last line is JSON: per side drain CPU (s, % of a core), samples, samples with Python frames; the
ratio on/off and the added share of a core.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent_overhead import LONG_PY, stop_all  # noqa: E402
from profiler.agent import StackMemo, build_profiles, create_context  # noqa: E402
from profiler.bpfprog import _ObjInfo, bpf  # noqa: E402
from profiler.sampler import Sampler  # noqa: E402
from symbolizer import Symbolizer  # noqa: E402

_OBJ_GET_INFO_BY_FD = 15
_RUN_TIME_AT = 192  # offsetof(struct bpf_prog_info, run_time_ns), run_cnt after it (uapi: append-only)
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program (zero unless kernel.bpf_stats_enabled)."""
    info = (ct.c_uint8 * 256)()
    bpf(_OBJ_GET_INFO_BY_FD, _ObjInfo(bpf_fd=prog_fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    raw = bytes(info)
    return int.from_bytes(raw[_RUN_TIME_AT:_RUN_TIME_AT + 8], "little"), \
        int.from_bytes(raw[_RUN_TIME_AT + 8:_RUN_TIME_AT + 16], "little")


class Side:
    """One sampler and the agent's assembly of its drains, with the CPU those drains cost."""

    def __init__(self, frequency: int, python_frames: bool) -> None:
        self.sampler = Sampler(frequency, python_frames=python_frames)
        self.ctx = create_context("bench")
        if not python_frames:
            self.ctx.python = None
        self.memo = StackMemo(self.ctx, Symbolizer(self.ctx.maps))
        self.cpu = 0.0
        self.samples = self.with_python = self.drains = 0

    def drain(self) -> None:
        t0 = time.process_time()
        drain = self.sampler.drain()
        self.memo.begin_drain()
        build_profiles(drain, self.ctx, self.sampler.period_ns, self.memo)
        self.cpu += time.process_time() - t0
        self.drains += 1
        self.samples += drain.total()
        self.with_python += sum(s.count for s in drain.samples if s.python_stack)

    def kernel(self) -> tuple[int, int]:
        prog = self.sampler._prog
        return run_stats(prog.prog_fd) if prog is not None else (0, 0)


def workload_args(doc: str | None, *, duration: float, frequency: int) -> argparse.ArgumentParser:
    """The options of a bench of long-lived Python processes drained every `--interval` seconds."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=duration)
    ap.add_argument("--frequency", type=int, default=frequency)
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--interval", type=float, default=10)
    return ap


def long_lived(n: int) -> list[subprocess.Popen]:
    """`n` Debian python3.11 processes, each its own code and C work (bench/agent_overhead.py's LONG_PY)."""
    return [subprocess.Popen(["/usr/bin/python3", "-c", LONG_PY.replace("{seed}", str(i)), str(i)]) for i in range(n)]


def main() -> None:
    args = workload_args(__doc__, duration=60, frequency=19).parse_args()
    procs = long_lived(args.processes)
    stats_before = STATS.read_text().strip() if STATS.exists() else None
    try:
        if stats_before is not None:
            STATS.write_text("1")
        on, off = Side(args.frequency, True), Side(args.frequency, False)
        for side in (on, off):  # the first drain reads every binary's symbols: not the steady cost
            time.sleep(1)
            side.drain()
            side.cpu = 0.0
            side.samples = side.with_python = side.drains = 0
        k0 = {"on": on.kernel(), "off": off.kernel()}
        end = time.monotonic() + args.duration
        order = [on, off]
        while time.monotonic() < end:
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
            for side in order:
                side.drain()
            order.reverse()  # alternate which side drains first: neither always gets the warmer caches
        k1 = {"on": on.kernel(), "off": off.kernel()}
    finally:
        if stats_before is not None:
            STATS.write_text(stats_before)
        stop_all(procs)
    result: dict[str, object] = {"duration_s": args.duration, "frequency_hz": args.frequency,
                                 "processes": args.processes, "interval_s": args.interval}
    for name, side in (("on", on), ("off", off)):
        ns, runs = (k1[name][0] - k0[name][0]), (k1[name][1] - k0[name][1])
        result[name] = {"drain_cpu_s": round(side.cpu, 4), "core_pct": round(100 * side.cpu / args.duration, 3),
                        "samples": side.samples, "with_python_frames": side.with_python,
                        "bpf_ns_per_run": round(ns / runs) if runs else None, "bpf_runs": runs}
        side.sampler.close()
    r_on, r_off = result["on"], result["off"]
    assert isinstance(r_on, dict) and isinstance(r_off, dict)
    result["cpu_ratio_on_off"] = round(r_on["drain_cpu_s"] / r_off["drain_cpu_s"], 3) if r_off["drain_cpu_s"] else None
    result["added_core_pct"] = round(r_on["core_pct"] - r_off["core_pct"], 3)
    print(f"python frames on : {r_on['core_pct']:.3f}% of a core in drains, {r_on['with_python_frames']}/"
          f"{r_on['samples']} samples with Python frames, BPF {r_on['bpf_ns_per_run']} ns/sample", file=sys.stderr)
    print(f"python frames off: {r_off['core_pct']:.3f}% of a core in drains, BPF {r_off['bpf_ns_per_run']} ns/sample",
          file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
