"""How many samples of short-lived processes come before their unwind tables (the agent's path).

The agent learns of a process from its first sample; until the loader has written the process's
mappings into the kernel (tables read from the disk cache or already loaded), its samples are walked
with frame pointers, and a `gcc -O2` program's frame-pointer stack does not reach `_start`. This runs
tests/workloads/unwind_chain.c (-O2, no frame pointers; its chain passes through libc's qsort) and
tests/workloads/exe_chain.c (the same, its chain in the executable alone: each sample whose leaf is in
the chain is checked for the whole chain from main, placed with nm) `--runs` times in a row, each living
`--life` seconds, in a kubelet-shaped cgroup sampled by a Sampler like the agent's (`unwind="auto"`, no
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.realsys import build_c, kubelet_cgroup  # noqa: E402
from tests.test_unwind_first_samples_bpf import CHAIN, name_at, symbols  # noqa: E402

MODES = ("auto", "auto-noexe", "fp")


def run(cgroup: Path, argv: list[str]) -> tuple[float, int, str]:
    """(CPU seconds, pid, stdout) of argv run to completion inside `cgroup`, through a shell that execs it
    (as a container's entrypoint often is)."""
    proc = subprocess.Popen(["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *argv],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout is not None else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{argv} exited with status {status}")
    return usage.ru_utime + usage.ru_stime, proc.pid, out


def measure(exe: Path, argv: list[str], frequency: int, mode: str, runs: int,
            life: float) -> dict[str, float | int | str | None]:
    """One sampler over `runs` processes of `exe`; with `argv` empty the program is exe_chain.c, which
    prints main's address: its samples are placed with nm and checked for the whole chain from main."""
    from profiler.sampler import Sampler

    unwind = "fp" if mode == "fp" else "auto"
    os.environ["PODFLAME_UNWIND_EXE"] = "0" if mode == "auto-noexe" else "1"  # read as the sampler starts
    command = [str(exe), *argv, f"{life:.3f}"]
    with kubelet_cgroup() as cg, Sampler(frequency, cgroup_ids=[cg.inode], unwind=unwind) as sampler:
        for _ in range(2):  # warm-up: the program's and libc's tables are built and stored
            run(cg.path, command)
            time.sleep(0.3)
        warm = sampler.drain()
        cpu, mains = 0.0, {}
        for _ in range(runs):
            used, pid, out = run(cg.path, command)
            cpu += used
            if not argv:
                mains[pid] = int(out.split()[0], 16)
        time.sleep(0.3)
        drain = sampler.drain()
    before = warm.unwind
    after = drain.unwind
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if k.startswith("walk_")}
    samples = sum(s.count for s in drain.samples)
    walked_fp = delta.get("walk_fp", 0) if unwind != "fp" else samples
    reached = delta.get("walk_end", 0)
    in_chain = with_chain = 0
    if mains:
        table = symbols(exe)
        main_at = next(start for start, _, name in table if name == "main")
        for s in drain.samples:
            if s.tgid in mains and s.user_stack:
                names = tuple(name_at(table, a - (mains[s.tgid] - main_at)) for a in s.user_stack)
                if names[0] in CHAIN[:-1]:
                    in_chain += s.count
                    want = CHAIN[CHAIN.index(names[0]):]
                    with_chain += s.count if names[:len(want)] == want else 0
    return {"program": exe.name, "frequency_hz": frequency, "unwind": mode, "runs": runs, "life_s": life,
            "cpu_s": round(cpu, 2), "samples": samples, "expected": round(cpu * frequency),
            "per_process": round(samples / runs, 1), "before_tables": walked_fp,
            "before_tables_share": round(walked_fp / samples, 4) if samples else None,
            "not_entry_share": round(1 - reached / samples, 4) if samples else None,
            "entry_share": round(reached / samples, 4) if samples else None,
            "exe_walks": delta.get("walk_exe", 0), "exe_outside_frames": delta.get("walk_exe_outside", 0),
            "chain_samples": in_chain if mains else None,
            "chain_share": round(with_chain / in_chain, 4) if in_chain else None,
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
    programs = [(build_c("unwind_chain.c", out, "-O2", "-fomit-frame-pointer", "-pthread"), ["chain"]),
                (build_c("exe_chain.c", out, "-O2", "-fomit-frame-pointer"), [])]
    results = []
    for exe, argv in programs:
        for hz in args.frequency:
            for mode in MODES:
                r = measure(exe, argv, hz, mode, args.runs, args.life)
                results.append(r)
                before, lost = 100 * float(r["before_tables_share"] or 0), 100 * float(r["not_entry_share"] or 0)
                chain = "" if r["chain_share"] is None else f", chain from main {100 * float(r['chain_share']):.1f}%"
                print(f"{exe.name:12s} {hz:3d} Hz {mode:10s}: {r['samples']:5d} samples ({r['per_process']} a "
                      f"process of {args.life:g} s), {r['before_tables']} frame pointers ({before:.1f}%), "
                      f"{r['exe_walks']} by the executable's table, {lost:.1f}% not reaching _start{chain}",
                      file=sys.stderr)
    summary: dict[str, object] = {"bench": "unwind_first_samples", "modes": list(MODES), "results": results}
    for exe, _ in programs:
        for hz in args.frequency:
            by = {r["unwind"]: r for r in results if r["frequency_hz"] == hz and r["program"] == exe.name}
            # each a list in MODES order: [auto (vma8), auto-noexe (main's approach), fp]
            summary[f"{exe.name}_fp_share_{hz}hz"] = [by[m]["before_tables_share"] for m in MODES]
            summary[f"{exe.name}_entry_share_{hz}hz"] = [by[m]["entry_share"] for m in MODES]
            if by["auto"]["chain_share"] is not None:
                summary[f"{exe.name}_chain_share_{hz}hz"] = [by[m]["chain_share"] for m in MODES]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
