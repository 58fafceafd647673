"""How complete are user stacks? podflame (tables, and --unwind fp) vs BCC's profile vs perf --call-graph dwarf.

Each workload runs alone in a kubelet-shaped cgroup and is sampled by each profiler in turn, for
the same seconds at the same frequency, from the same process:

- chain-nofp / chain-fp: tests/workloads/unwind_chain.c built with `gcc -O2` (no frame pointers)
  and with `-fno-omit-frame-pointer`: main -> run_chain -> level1..3 -> libc qsort -> compare ->
  leaf_work (a frameless leaf);
- python3-debian / python3.12-pyenv: a pure-Python loop under /usr/bin/python3 (static libpython,
  no frame pointers) and pyenv's 3.12.

Per workload and profiler: the share of samples whose user stack reaches the process entry
(root frame `_start`; for Python also through Py_BytesMain and _PyEval_EvalFrameDefault) and, for
the C chain, the share with the exact chain from main to the leaf (tests/test_unwind_bpf.py's
definition). The last line is one JSON object.

    .venv/bin/python bench/unwind.py [--seconds 5] [--frequency 99]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.realsys import WORKLOADS, kubelet_cgroup, spawn_in_cgroup  # noqa: E402
from tests.test_unwind_bpf import BUSY_PY, PYTHONS, exact_chain, perf_stacks, through_eval, user_part  # noqa: E402

Stacks = Counter[tuple[str, ...]]
PODFLAME = Path(sys.executable).parent / "podflame"


def ours(pid: int, seconds: float, frequency: int, tmp: Path, mode: str) -> Stacks:
    out = tmp / f"ours-{mode}.folded"
    subprocess.run([str(PODFLAME), "record", f"--pid={pid}", f"--duration={seconds}", f"--frequency={frequency}",
                    f"--unwind={mode}", "--format=folded", f"-o{out}"], check=True, capture_output=True, timeout=300)
    stacks: Stacks = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stacks[user_part(tuple(stack.split(";")))] += int(count)
    return stacks


def bcc_profile(pid: int, seconds: float, frequency: int) -> Stacks:
    """profile-bpfcc -U -f: user stacks only, folded `comm;root;...;leaf count`."""
    text = subprocess.run(["profile-bpfcc", "-U", "-f", "-F", str(frequency), "-p", str(pid), str(int(seconds))],
                          check=True, capture_output=True, text=True, timeout=300).stdout
    stacks: Stacks = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks[tuple(stack.split(";")[1:])] += int(count)
    return stacks


def perf_dwarf(pid: int, seconds: float, frequency: int, tmp: Path) -> Stacks:
    import tests.test_unwind_bpf as t

    t.SECONDS, t.FREQUENCY = seconds, frequency
    return perf_stacks(pid, tmp)


def shares(stacks: Stacks, entry: Callable[[tuple[str, ...]], bool],
           chain: Callable[[tuple[str, ...]], bool] | None) -> dict[str, float | int | None]:
    total = sum(stacks.values())
    if not total:
        return {"samples": 0, "entry": None, "exact_chain": None}
    return {"samples": total, "entry": round(sum(n for s, n in stacks.items() if entry(s)) / total, 4),
            "exact_chain": None if chain is None else round(sum(n for s, n in stacks.items() if chain(s)) / total, 4)}


def c_entry(s: tuple[str, ...]) -> bool:
    return bool(s) and s[0] == "_start"


def py_entry(s: tuple[str, ...]) -> bool:
    return through_eval(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--frequency", type=int, default=99)
    args = ap.parse_args()
    results: dict[str, dict[str, dict[str, float | int | None]]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        script = tmp / "busy.py"
        script.write_text(BUSY_PY)
        workloads: dict[str, tuple[list[str], Callable, Callable | None]] = {}
        for name, flags in (("chain-nofp", ["-O2"]), ("chain-fp", ["-O2", "-fno-omit-frame-pointer"])):
            exe = tmp / name
            subprocess.run(["gcc", *flags, "-pthread", "-o", str(exe), str(WORKLOADS / "unwind_chain.c")], check=True)
            workloads[name] = ([str(exe), "chain", "600"], c_entry, exact_chain)
        for name, label in (("debian", "python3-debian"), ("pyenv-3.12", "python3.12-pyenv")):
            if PYTHONS[name] is not None:
                workloads[label] = ([str(PYTHONS[name]), str(script)], py_entry, None)
        for name, (argv, entry, chain) in workloads.items():
            with kubelet_cgroup() as cg:
                proc = spawn_in_cgroup(cg.path, argv)
                try:
                    time.sleep(0.5)
                    peers = {
                        "podflame": ours(proc.pid, args.seconds, args.frequency, tmp, "auto"),
                        "podflame_fp": ours(proc.pid, args.seconds, args.frequency, tmp, "fp"),
                        "profile_bpfcc": bcc_profile(proc.pid, args.seconds, args.frequency),
                        "perf_dwarf": perf_dwarf(proc.pid, args.seconds, args.frequency, tmp),
                    }
                finally:
                    proc.kill()
                    proc.wait()
            results[name] = {peer: shares(stacks, entry, chain) for peer, stacks in peers.items()}
            for peer, r in results[name].items():
                chain_text = "" if r["exact_chain"] is None else f"  exact chain {r['exact_chain']:7.2%}"
                entry_text = "-" if r["entry"] is None else f"{r['entry']:7.2%}"
                print(f"{name:18s} {peer:14s} {r['samples']:6d} samples  entry {entry_text}{chain_text}")
    # profile-bpfcc's share is often 0, so the comparison is a difference in points, not a ratio
    gain = {name: round(float(r["podflame"]["entry"] or 0) - float(r["profile_bpfcc"]["entry"] or 0), 4)
            for name, r in results.items()}
    print(json.dumps({"bench": "unwind", "seconds": args.seconds, "frequency": args.frequency,
                      "entry_share_minus_profile_bpfcc": gain, "results": results}))


if __name__ == "__main__":
    main()
