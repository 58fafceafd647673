"""What the unwind loader spends on one new process (profiler/unwind/loader.py), by thread CPU.

A busy node starts processes of the same few binaries again and again (python3, sh, coreutils): each new
one gets its executable mappings read and placed, and a mapping array written into the kernel. This runs
the real loader on a real sampler's maps for N live processes (long-lived Python processes like
bench/agent_overhead.py's, `sleep` and `sh -c sleep`), every table loaded once, then loads each process
again `--passes` times as if it were new (its kernel entry removed, its last signature forgotten):

- "known": what the loader keeps across processes stays (a binary's placement by its PROCMAP_QUERY key,
  the vDSO's by its header): a new process of known binaries;
- "first" (the peer, same run): those placements emptied before each process, as for a process whose
  binaries the loader has not placed yet (tables stay loaded: no row is written in either case).

Prints per-process microseconds of the loader thread's CPU for each, the ratio, and one JSON object.

    .venv/bin/python bench/unwind_loader.py [--processes 24] [--passes 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_overhead import LONG_PY, stop_all  # noqa: E402


def spawn(argv: list[str], stdin: int | None = None) -> subprocess.Popen[bytes]:
    """In a session of its own, output to /dev/null: sh's sleep is killed with its group and holds no pipe."""
    return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def live_processes(n: int, sort: bool = False) -> list[subprocess.Popen[bytes]]:
    """`n` each of: long-lived Python processes like bench/agent_overhead.py's, `sleep`, `sh -c` (and `sort`
    reading a pipe that never ends): what a busy node starts again and again."""
    procs = [spawn(["/usr/bin/python3", "-c", LONG_PY.replace("{seed}", str(i)), str(i)]) for i in range(n)]
    procs += [spawn(["sleep", "600"]) for _ in range(n)]
    procs += [spawn(["sh", "-c", "sleep 600; true"]) for _ in range(n)]
    procs += [spawn(["sort"], stdin=subprocess.PIPE) for _ in range(n if sort else 0)]
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=24, help="live processes (a third each: python3, sleep, sh)")
    ap.add_argument("--passes", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the sampler loads eBPF programs")
    cache = tempfile.mkdtemp(prefix="podflame-bench-loader-")
    os.environ["PODFLAME_SYMBOL_CACHE"] = cache
    from profiler.sampler import Sampler

    procs = live_processes(max(1, args.processes // 3))
    try:
        time.sleep(1.0)  # past exec and the Python processes' imports
        with Sampler(1, unwind="auto", python_frames=False) as sampler:
            u = sampler.unwinder
            assert u is not None
            pids = [p.pid for p in procs]
            u.load_now(pids)  # every table in the kernel once
            result: dict[str, float] = {}
            for name in ("known", "first"):
                spent, loads = 0.0, 0
                for _ in range(args.passes):
                    for pid in pids:
                        with u._lock:
                            u._seen.pop(pid, None)
                            u.maps.remove_process(pid)
                            if name == "first":
                                u._placed.clear()
                                u._identities.clear()
                                u._vdso_placed.clear()
                            t = time.thread_time()
                            u._load_process(pid, take_wanted=False)
                            spent += time.thread_time() - t
                            loads += 1
                result[f"{name}_us_per_process"] = round(spent / loads * 1e6, 1)
            result["processes"] = len(pids)
            result["loaded"] = len(u.maps.processes)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        stop_all(procs)
        subprocess.run(["rm", "-rf", cache], check=False)
    result["first_over_known"] = round(result["first_us_per_process"] / result["known_us_per_process"], 2)
    print(f"loader CPU per new process: known binaries {result['known_us_per_process']} us, binaries placed for the "
          f"first time {result['first_us_per_process']} us ({result['first_over_known']}x)", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
