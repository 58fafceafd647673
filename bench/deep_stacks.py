"""What a deep native stack costs the BPF program, against a shallow one of the same program in the same run.

A C program recursing to `--deep` frames (and the same at `--shallow`) is sampled alone by a Sampler at
`--frequency` Hz, built `-O2` (tables: `--unwind auto`) and `-O2 -fno-omit-frame-pointer` (frame pointers:
`--unwind fp`, where a stack past kernel.perf_event_max_stack is walked again by the walker). The programs'
own kernel time comes from run_time_ns (kernel.bpf_stats_enabled is switched on for the run and restored):
on_sample and the tail-called walker together, per sample, and the stored user stack's length.

`--checkout DIR` runs the same measurement with another checkout's sampler (e.g. /work/main, whose
stacks stop at 127 frames) in a child process, so two branches are compared in the same minutes.

    .venv/bin/python bench/deep_stacks.py --deep 250 --shallow 40 --checkout /work/main

The last line is JSON: per (build, depth) ns per sample and frames kept, the deep/shallow ratios, and
the other checkout's figures beside them when asked.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# the checkout whose sampler is measured: this one, or --checkout's in the child
ROOT = Path(os.environ.get("PODFLAME_CHECKOUT") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
_RUN_TIME_AT = 192  # offsetof(struct bpf_prog_info, run_time_ns), run_cnt after it (uapi: append-only)
BUILDS = {"fp": (["-O2", "-fno-omit-frame-pointer"], "fp"), "nofp": (["-O2"], "auto")}


def run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program."""
    from profiler.bpfprog import _ObjInfo, bpf

    info = (ct.c_uint8 * 256)()
    bpf(15, _ObjInfo(bpf_fd=prog_fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    raw = bytes(info)
    return int.from_bytes(raw[_RUN_TIME_AT:_RUN_TIME_AT + 8], "little"), \
        int.from_bytes(raw[_RUN_TIME_AT + 8:_RUN_TIME_AT + 16], "little")


def measure(exe: Path, depth: int, unwind: str, frequency: int, seconds: float) -> dict[str, float]:
    """One process alone: BPF ns per sample (entry program and walker) and the commonest user stack length."""
    from profiler.sampler import Sampler

    proc = subprocess.Popen([str(exe), str(depth)])
    try:
        time.sleep(0.3)
        with Sampler(frequency, pids=[proc.pid], unwind=unwind) as sampler:
            time.sleep(1.0)  # tables loaded, first samples past
            sampler.drain()
            prog = sampler._prog
            assert prog is not None
            fds = [prog.prog_fd, *prog.tail_fds.values()]
            before = [run_stats(fd) for fd in fds]
            time.sleep(seconds)
            after = [run_stats(fd) for fd in fds]
            drain = sampler.drain()
    finally:
        proc.kill()
        proc.wait()
    ns = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    runs = after[0][1] - before[0][1]
    lengths: Counter[int] = Counter()
    for s in drain.samples:
        if s.tgid == proc.pid:
            lengths[len(s.user_stack)] += s.count
    return {"ns_per_sample": round(ns / runs) if runs else 0.0, "samples": runs,
            "frames": lengths.most_common(1)[0][0] if lengths else 0}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def build_programs(out: Path) -> dict[str, Path]:
    """The test's recursion (tests/test_deep_stacks_bpf.py), built both ways into `out`."""
    from tests.test_deep_stacks_bpf import SOURCE

    src = out / "deep.c"
    src.write_text(SOURCE)
    for name, (flags, _) in BUILDS.items():
        subprocess.run(["gcc", *flags, "-o", str(out / name), str(src)], check=True)
    return {name: out / name for name in BUILDS}


def side(builds: Path, deep: int, shallow: int, frequency: int, seconds: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, (_, unwind) in BUILDS.items():
        for depth in (shallow, deep):
            out[f"{name} {depth}"] = measure(builds / name, depth, unwind, frequency, seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deep", type=int, default=250)
    ap.add_argument("--shallow", type=int, default=40)
    ap.add_argument("--frequency", type=int, default=499)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--checkout", type=Path, help="another checkout to measure the same way, in a child")
    ap.add_argument("--builds", type=Path, help=argparse.SUPPRESS)  # the child's mode: these binaries, JSON only
    args = ap.parse_args()
    if args.builds is not None:
        print(json.dumps(side(args.builds, args.deep, args.shallow, args.frequency, args.seconds)))
        return
    before = STATS.read_text().strip()
    STATS.write_text("1")
    tmp = tempfile.TemporaryDirectory(prefix="podflame-deep-")
    try:
        builds = Path(tmp.name)
        build_programs(builds)
        ours = side(builds, args.deep, args.shallow, args.frequency, args.seconds)
        theirs = None
        if args.checkout is not None:
            child = subprocess.run([str(args.checkout / ".venv/bin/python"), str(Path(__file__).resolve()),
                                    f"--builds={builds}", f"--deep={args.deep}", f"--shallow={args.shallow}",
                                    f"--frequency={args.frequency}", f"--seconds={args.seconds}"],
                                   cwd=args.checkout,
                                   env={"PODFLAME_CHECKOUT": str(args.checkout), "PATH": "/usr/bin:/bin"},
                                   capture_output=True, text=True, check=True, timeout=600)
            theirs = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        STATS.write_text(before)
        tmp.cleanup()
    result: dict[str, object] = {"this": ours}
    for build in BUILDS:
        a, b = ours[f"{build} {args.deep}"], ours[f"{build} {args.shallow}"]
        result[f"{build} deep/shallow"] = ratio(a["ns_per_sample"], b["ns_per_sample"])
        print(f"{build:5s} {args.shallow:4d} deep: {b['ns_per_sample']:7.0f} ns/sample, {b['frames']:3.0f} frames | "
              f"{args.deep:4d} deep: {a['ns_per_sample']:7.0f} ns/sample, {a['frames']:3.0f} frames")
        if theirs is not None:
            c, d = theirs[f"{build} {args.deep}"], theirs[f"{build} {args.shallow}"]
            print(f"  {args.checkout}: {d['ns_per_sample']:7.0f} / {c['ns_per_sample']:7.0f} ns/sample, "
                  f"{d['frames']:3.0f} / {c['frames']:3.0f} frames")
            result[f"{build} deep this/other"] = ratio(a["ns_per_sample"], c["ns_per_sample"])
            result[f"{build} shallow this/other"] = ratio(b["ns_per_sample"], d["ns_per_sample"])
    if theirs is not None:
        result["other"] = theirs
    print(json.dumps(result))


if __name__ == "__main__":
    main()
