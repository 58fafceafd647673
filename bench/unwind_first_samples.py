"""How many samples of short-lived processes come before their unwind tables (the agent's path).

The agent learns of a process from its first sample; until the loader has written the process's
mappings into the kernel (tables read from the disk cache or already loaded), its samples are walked
with frame pointers, and a `gcc -O2` program's frame-pointer stack does not reach `_start`. This runs
tests/workloads/unwind_chain.c (-O2, no frame pointers) `--runs` times in a row, each living `--life`
seconds, in a kubelet-shaped cgroup sampled by a Sampler like the agent's (`unwind="auto"`, no
preloading), after one warm-up run (the node has seen the binary: its table is on disk, libc's rows
loaded). From the kernel's walk counters: samples walked with frame pointers (before tables), samples
walked with the executable's table before the process's own mappings were loaded (`exe`), and samples
whose walk did not end at the outermost frame. Three ways in the same run: `auto` (the agent's: the
executable's table from the first sample), `auto-noexe` (`PODFLAME_UNWIND_EXE=0`: main's approach, frame
pointers until the mapping array is written) and `fp` (frame pointers only: its share reaching `_start` is ~0).

    .venv/bin/python bench/unwind_first_samples.py [--runs 30] [--life 0.3] [--frequency 19 99]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.realsys import build_c, kubelet_cgroup, run_in_cgroup  # noqa: E402

MODES = ("auto", "auto-noexe", "fp")


def measure(exe: Path, frequency: int, mode: str, runs: int, life: float) -> dict[str, float | int | str]:
    from profiler.sampler import Sampler

    unwind = "fp" if mode == "fp" else "auto"
    os.environ["PODFLAME_UNWIND_EXE"] = "0" if mode == "auto-noexe" else "1"  # read as the sampler starts
    with kubelet_cgroup() as cg, Sampler(frequency, cgroup_ids=[cg.inode], unwind=unwind) as sampler:
        for _ in range(2):  # warm-up: the program's and libc's tables are built and stored
            run_in_cgroup(cg.path, [str(exe), "chain", f"{life:.3f}"])
            time.sleep(0.3)
        warm = sampler.drain()
        cpu = 0.0
        for _ in range(runs):
            usage = run_in_cgroup(cg.path, [str(exe), "chain", f"{life:.3f}"])
            cpu += usage.ru_utime + usage.ru_stime
        time.sleep(0.3)
        drain = sampler.drain()
    before = warm.unwind
    after = drain.unwind
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if k.startswith("walk_")}
    samples = sum(s.count for s in drain.samples)
    walked_fp = delta.get("walk_fp", 0) if unwind != "fp" else samples
    reached = delta.get("walk_end", 0)
    return {"frequency_hz": frequency, "unwind": mode, "runs": runs, "life_s": life, "cpu_s": round(cpu, 2),
            "samples": samples, "expected": round(cpu * frequency),
            "per_process": round(samples / runs, 1), "before_tables": walked_fp,
            "before_tables_share": round(walked_fp / samples, 4) if samples else None,
            "not_entry_share": round(1 - reached / samples, 4) if samples else None,
            "entry_share": round(reached / samples, 4) if samples else None,
            "exe_walks": delta.get("walk_exe", 0), "exe_outside_frames": delta.get("walk_exe_outside", 0),
            "tables_loaded": after.get("processes_loaded", 0) - before.get("processes_loaded", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--life", type=float, default=0.3, help="seconds each process runs")
    ap.add_argument("--frequency", type=int, nargs="+", default=[19, 99])
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the sampler loads eBPF programs")
    os.environ.setdefault("PODFLAME_SYMBOL_CACHE", tempfile.mkdtemp(prefix="podflame-bench-first-"))
    out = Path(tempfile.mkdtemp(prefix="podflame-bench-first-exe-"))
    exe = build_c("unwind_chain.c", out, "-O2", "-fomit-frame-pointer", "-pthread")
    results = []
    for hz in args.frequency:
        for mode in MODES:
            r = measure(exe, hz, mode, args.runs, args.life)
            results.append(r)
            before, lost = 100 * float(r["before_tables_share"] or 0), 100 * float(r["not_entry_share"] or 0)
            print(f"{hz:3d} Hz {mode:10s}: {r['samples']:5d} samples ({r['per_process']} a process of "
                  f"{args.life:g} s), {r['before_tables']} frame pointers ({before:.1f}%), {r['exe_walks']} "
                  f"by the executable's table, {lost:.1f}% not reaching _start", file=sys.stderr)
    summary: dict[str, object] = {"bench": "unwind_first_samples", "results": results}
    for hz in args.frequency:
        by = {r["unwind"]: r for r in results if r["frequency_hz"] == hz}
        # [auto, auto-noexe (main's approach), fp]
        summary[f"fp_share_{hz}hz"] = [by[m]["before_tables_share"] for m in MODES]
        summary[f"entry_share_{hz}hz"] = [by[m]["entry_share"] for m in MODES]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
