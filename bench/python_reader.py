"""The Python frame reader's cost against py-spy reading the same stacks of the same processes.

For each interpreter it starts tests/workloads/python_chain.py (two threads, 7 and 7 frames deep)
and measures, in CPU seconds of this process: detection (cold: every ELF fact read again; warm), a
full userspace walk with a new CodeReader (every code object read: what a new process costs) and
with a warm one (what each later drain costs: one read of the frames plus one batched read of the
code objects' fixed parts). The peer is `py-spy dump --pid` on the same process, measured by its
children CPU time: a one-shot tool, so its cost includes its own start and attaching (it pauses the
process; we do not). Ratios are py-spy's CPU per stack dump over ours. It also measures what a drain
pays to re-validate the code objects its samples name (warm cache): one CodeReader.read per code object
against one CodeReader.read_many for all of them (the agent's way: one process_vm_readv). The last line
is JSON.

    .venv/bin/python bench/python_reader.py --repeat 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiler.python import detect  # noqa: E402
from profiler.python.code import CodeReader  # noqa: E402
from profiler.python.walk import walk  # noqa: E402

PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def interpreters() -> dict[str, str]:
    out = {}
    for minor in ("3.9", "3.10", "3.11", "3.12", "3.13"):
        found = sorted(PYENV.glob(f"{minor}.*/bin/python{minor}"))
        if found:
            out[minor] = str(found[-1])
    out["debian-3.11"] = "/usr/bin/python3"
    return out


def cpu_per_call(fn: Callable[[], object], repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(python: str, repeat: int, dumps: int, py_spy: str) -> dict[str, float]:
    p = subprocess.Popen([python, str(ROOT / "tests/workloads/python_chain.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline()
        proc = detect.inspect_process(p.pid)
        assert isinstance(proc, detect.PythonProcess), proc

        def cold_detect() -> object:
            detect._FACTS.clear()
            return detect.inspect_process(p.pid)

        warm_reader = CodeReader.for_process(proc)
        stacks = walk(proc, warm_reader)
        frames = sum(len(f) for f in stacks.values())
        codes = list(dict.fromkeys(f.raw.code for stack in stacks.values() for f in stack))
        out = {
            "frames": frames,
            "detect_cold_ms": 1e3 * cpu_per_call(cold_detect, max(repeat // 20, 3)),
            "detect_warm_ms": 1e3 * cpu_per_call(lambda: detect.inspect_process(p.pid), repeat),
            "walk_cold_ms": 1e3 * cpu_per_call(lambda: walk(proc, CodeReader.for_process(proc)),
                                               repeat),
            "walk_warm_ms": 1e3 * cpu_per_call(lambda: walk(proc, warm_reader), repeat),
            "code_objects": len(codes),
            "drain_read_each_ms": 1e3 * cpu_per_call(lambda: [warm_reader.read(c) for c in codes], repeat),
            "drain_read_many_ms": 1e3 * cpu_per_call(lambda: warm_reader.read_many(codes), repeat),
        }
        out["ratio_read_each_over_read_many"] = out["drain_read_each_ms"] / out["drain_read_many_ms"]
        before = children_cpu()
        for _ in range(dumps):
            subprocess.run([py_spy, "dump", "--pid", str(p.pid)], capture_output=True, check=True)
        out["py_spy_dump_ms"] = 1e3 * (children_cpu() - before) / dumps
        out["ratio_py_spy_over_cold_walk"] = out["py_spy_dump_ms"] / out["walk_cold_ms"]
        out["ratio_py_spy_over_warm_walk"] = out["py_spy_dump_ms"] / out["walk_warm_ms"]
        return out
    finally:
        p.kill()
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200, help="walks and detections per interpreter")
    ap.add_argument("--dumps", type=int, default=5, help="py-spy dumps per interpreter")
    args = ap.parse_args()
    py_spy = str(Path(sys.executable).parent / "py-spy")
    results = {}
    for name, python in interpreters().items():
        results[name] = measure(python, args.repeat, args.dumps, py_spy)
        print(name, " ".join(f"{k}={v:.3g}" for k, v in results[name].items()), flush=True)
    warm = [r["ratio_py_spy_over_warm_walk"] for r in results.values()]
    cold = [r["ratio_py_spy_over_cold_walk"] for r in results.values()]
    batched = [r["ratio_read_each_over_read_many"] for r in results.values()]
    print(json.dumps({"bench": "python_reader", "repeat": args.repeat, "per_interpreter": results,
                      "min_ratio_py_spy_over_warm_walk": min(warm), "min_ratio_py_spy_over_cold_walk": min(cold),
                      "min_ratio_read_each_over_read_many": min(batched)}))


if __name__ == "__main__":
    main()
