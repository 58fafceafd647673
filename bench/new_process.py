"""What the agent spends on one new process between its first sample and its first drain, by reader.

The sampler announces each process on its first sample; then the agent's maps cache reads its maps (so a
process that exits before the drain still symbolizes), Python detection looks for CPython in it, and the
unwind loader places its mappings and writes them into the kernel. On a busy node (hundreds of short-lived
processes a minute) that is most of the agent's steady CPU. This runs those readers, wired as the agent
wires them (a real sampler, `create_context`), on live processes (long-lived Python processes like
bench/agent_overhead.py's, `sleep`, `sh -c`, `sort`), each made new again `--passes` times (forgotten by
every reader), in two ways in the same run:

- "shared": the watcher reads each new process once (procmaps.read_new_process: start time and executable
  VMAs) and every reader takes that read, as the agent does;
- "separate" (the peer): each reader is given the bare pid and reads the process itself, as before.

Prints per-process microseconds of CPU (thread time) per reader and kind of process, the totals and their
ratio; the last line is one JSON object.

    .venv/bin/python bench/new_process.py [--processes 4] [--passes 20]
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_overhead import stop_all  # noqa: E402
from unwind_loader import live_processes  # noqa: E402

KINDS = ("python", "sleep", "sh", "sort")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=4, help="live processes of each kind")
    ap.add_argument("--passes", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the sampler loads eBPF programs")
    cache = tempfile.mkdtemp(prefix="podflame-bench-newproc-")
    os.environ["PODFLAME_SYMBOL_CACHE"] = cache
    from profiler.agent import create_context
    from profiler.procmaps import MapsCache, read_new_process
    from profiler.sampler import Sampler

    n = args.processes
    procs = live_processes(n, sort=True)
    kind_of = {p.pid: KINDS[i // n] for i, p in enumerate(procs)}
    result: dict[str, object] = {"bench": "new_process", "processes": len(procs), "passes": args.passes}
    try:
        time.sleep(1.0)  # past exec and the Python processes' imports
        with Sampler(1, unwind="auto", python_frames=True) as sampler:
            ctx = create_context("bench", 60.0)
            maps_cache = ctx.maps
            assert isinstance(maps_cache, MapsCache)
            loader = sampler.unwinder
            assert loader is not None
            pids = [p.pid for p in procs]
            loader.load_now(pids)  # every table in the kernel once: placing, not building, is measured
            sampler._announce_python([])  # the registry, made on first use
            registry = sampler._python
            assert registry is not None

            def forget(pid: int) -> None:
                """Every reader forgets the process, as if its pid were new (what they keep across processes
                stays: lines and placements of known binaries, ELF facts)."""
                maps_cache._procs.pop(pid, None)
                registry.processes.pop(pid, None)
                registry.unsupported.pop(pid, None)
                registry._retry.pop(pid, None)
                with loader._lock:
                    loader._seen.pop(pid, None)
                    loader.maps.remove_process(pid)

            readers: dict[str, Callable[[list], None]] = {
                "maps cache": maps_cache.prefetch,
                "python detection": registry.announce,
                "unwind loader": lambda news: loader.load_batch(news),
            }
            for way in ("shared", "separate"):
                spent: dict[str, dict[str, float]] = {k: dict.fromkeys(["read", *readers], 0.0) for k in KINDS}
                for _ in range(args.passes):
                    for pid in pids:
                        forget(pid)
                        kind = spent[kind_of[pid]]
                        t = time.thread_time()
                        batch = [read_new_process(pid)] if way == "shared" else [pid]
                        kind["read"] += time.thread_time() - t
                        for name, reader in readers.items():
                            t = time.thread_time()
                            reader(batch)
                            kind[name] += time.thread_time() - t
                per = args.passes * n
                table = {k: {part: round(v / per * 1e6, 1) for part, v in parts.items()} for k, parts in spent.items()}
                total = round(sum(sum(parts.values()) for parts in spent.values()) / (per * len(KINDS)) * 1e6, 1)
                result[way] = {"us_per_process": total, "by_kind": table}
                print(f"{way:8s}: {total} us a new process; " + "; ".join(
                    f"{k} " + ", ".join(f"{part} {us}" for part, us in parts.items()) for k, parts in table.items()),
                    file=sys.stderr)
            result["registered_python"] = sum(1 for pid in pids if pid in registry.processes)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        stop_all(procs)
        subprocess.run(["rm", "-rf", cache], check=False)
    shared, separate = result["shared"], result["separate"]
    assert isinstance(shared, dict) and isinstance(separate, dict)
    result["separate_over_shared"] = round(separate["us_per_process"] / shared["us_per_process"], 2)
    print(f"CPU per new process: {shared['us_per_process']} us with one shared read, {separate['us_per_process']} us "
          f"with a read per reader ({result['separate_over_shared']}x)", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
