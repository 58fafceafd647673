"""What a deep Python stack costs the BPF program per sample, against a shallow one in the same run.

A stack deeper than the 64 frames the kernel keeps (bpf/python.bpf.h py_walk) is followed to its root
(two reads a frame past the 64th, up to PY_MAX_WALK = 1024 frames) so its root half can be kept. For
each depth, tests/workloads/python_fidelity.py `deep N` runs alone and a sampler that follows only it
(`--frequency` Hz, Python frames on, frame-pointer user stacks so the table walk does not blur the
figure) measures the entry program's run_time_ns over the process's samples (kernel.bpf_stats_enabled is switched on for
the run and restored). The first depth is the peer the others are divided by.

    .venv/bin/python bench/python_deep.py --python ~/.pyenv/versions/3.12.1/bin/python3.12 --seconds 4

The last line is JSON: per depth the ns per sample, samples, and the ratio to the first depth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.python_frames import STATS, run_stats  # noqa: E402
from profiler.agent import StackMemo, build_profiles, create_context  # noqa: E402
from profiler.sampler import Sampler  # noqa: E402
from symbolizer import Symbolizer  # noqa: E402

WORKLOAD = ROOT / "tests" / "workloads" / "python_fidelity.py"


def measure(python: str, depth: int, seconds: float, frequency: int) -> dict[str, object]:
    proc = subprocess.Popen([python, str(WORKLOAD), "deep", str(depth)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        sampler = Sampler(frequency, pids=[proc.pid], python_frames=True, unwind="fp")
        ctx = create_context("bench")
        memo = StackMemo(ctx, Symbolizer(ctx.maps))  # type: ignore[arg-type]
        try:
            time.sleep(1)  # the first sample announces the process; the drain registers it
            memo.begin_drain()
            build_profiles(sampler.drain(), ctx, sampler.period_ns, memo)
            prog = sampler._prog
            assert prog is not None
            t0, n0 = run_stats(prog.prog_fd)
            time.sleep(seconds)
            t1, n1 = run_stats(prog.prog_fd)
            drain = sampler.drain()
            mine = sum(s.count for s in drain.samples)
            cut = sum(s.count for s in drain.samples if s.python_error == 4)
            with_python = sum(s.count for s in drain.samples if s.python_stack)
        finally:
            sampler.close()
    finally:
        proc.kill()
        proc.wait()
    # the program runs on every CPU's tick and returns at once for other processes (~0.1 us): the time is
    # the process's samples'
    return {"depth": depth, "ns_per_sample": round((t1 - t0) / mine) if mine else None, "samples": mine,
            "runs": n1 - n0, "with_python": with_python, "truncated": cut}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--depths", default="40,300,1000,2000")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--frequency", type=int, default=99)
    args = ap.parse_args()
    before = STATS.read_text().strip()
    try:
        STATS.write_text("1")
        rows = [measure(args.python, int(d), args.seconds, args.frequency) for d in args.depths.split(",")]
    finally:
        STATS.write_text(before)
    peer = rows[0]["ns_per_sample"]
    for r in rows:
        ns = r["ns_per_sample"]
        r["ratio_to_first"] = round(ns / peer, 2) if isinstance(ns, int) and isinstance(peer, int) and peer else None
        print(f"depth {r['depth']:>5}: {ns} ns a sample ({r['samples']} samples, {r['with_python']} with Python "
              f"frames, {r['truncated']} cut), {r['ratio_to_first']}x depth {rows[0]['depth']}", file=sys.stderr)
    print(json.dumps({"python": args.python, "frequency_hz": args.frequency, "depths": rows}))


if __name__ == "__main__":
    main()
