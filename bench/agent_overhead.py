"""Our agent vs BCC's profile-bpfcc, side by side on the same busy host for the same time.

Both sample at the same frequency while `--busy` single-threaded burners keep CPUs busy. For each
tool it prints CPU seconds (total, start-up, and steady state as a share of one core), peak RSS, and
captured samples of the burners against frequency x their own CPU seconds. The last line is JSON.
CPU includes reaped children (a compile in a child process counts). Peak RSS is that of each tool's
whole process tree: the sum of the RSS of the process and its descendants, sampled every 20 ms, and
never below the main process's VmHWM (the process alone would not show a child's peak).

It runs twice by default, each time beside a new profile-bpfcc: first as the agent's first start on a
node (empty caches: BCC compiles the sampler, every binary's symbols are decoded), then as a restart
with the caches that run filled (the compiled program and the symbol cache, both kept on a hostPath by
the DaemonSet). `--runs 1` runs the first start only.

    .venv/bin/python bench/agent_overhead.py --duration 60 --frequency 99

A busy node (`--churn RATE`, `--processes N`): a real node runs many processes, short-lived ones
(health checks, shells, cron, build steps) and long-lived ones with deep stacks in big binaries.
`--processes N` starts N long-lived Python processes before both tools, each running different code
(its own recursion depth and C work: json, re, zlib, hashlib, sorting, decimal) at ~25% of a core,
so their stacks differ. `--churn RATE` starts RATE short-lived processes a second during the measured
window, in turn: `python3 -c` recursing into C work, an `sh -c` pipeline (seq | sort | md5sum), and
tests/workloads/deep_calls.c (a call tree 4-12 deep whose branches depend on a seed); each lives
0.1-1 s. The burners still measure capture.

    .venv/bin/python bench/agent_overhead.py --duration 60 --frequency 99 --churn 10 --processes 8

Native unwinding: `--unwind auto` (the agent's default: .eh_frame tables) or `--unwind fp` (frame pointers
only); Python frames: `--python-frames on|off` ($PODFLAME_PYTHON_FRAMES). CPU counts each tool's whole
process tree: reaped children and live ones (the agent's unwind table builder is a child process).

The whole matrix in one invocation (~15 min on a quiet 2-core machine): tables and frame pointers, 19 and
99 Hz, plain and busy (`--churn 10 --processes 8`), each a first start (empty caches) and a restart, plus
Python frames off for tables at 19 Hz plain; `--cell-duration` seconds measured per run:

    .venv/bin/python bench/agent_overhead.py --matrix [--cell-duration 30]

One run per cell does not separate changes of 10% on a shared machine: `--repeat N` runs each pair (first
start and restart, fresh caches each time) N times, the cells of a matrix in turn (cell A, cell B, A, B...),
and prints the median and the spread (min-max) of the steady share, in total and per thread. Every run also
lists the unwind tables built inside its steady window, from the agent's log (each binary, where it was
built and its CPU, and the build child's starts): a window whose "children" CPU is not zero shows what it
went to (a binary new to the host, another process's, a restart that missed the disk cache).

    .venv/bin/python bench/agent_overhead.py --matrix --cell-duration 25 --only "auto 99 Hz busy" --repeat 5

Where the agent's own time goes: `--where` records the agent with py-spy (`py-spy record --pid`, 50 Hz,
native frames off, active threads only) over the measured window and prints the shares of its CPU per part
(drain, maps refresh, symbolize, unwind tables, Python frames, upload, other). py-spy counts a thread that
waits for a CPU as busy (the watcher's poll and the loader's queue on a loaded machine), so every run
also prints the agent's steady CPU seconds per thread from /proc/PID/task (`steady_cpu_s_by_thread`):
pf-agent drains, symbolizes and uploads, pf-unwind loads tables, pf-new-processe reads new processes,
"children" is the table builder.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.realsys import build_c  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, plus (recursively) its live children's: the
    agent's table builder lives for seconds and is reaped only when it exits."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / TICK + sum(cpu_seconds(c) for c in TreeRss._children(pid))


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (the thread's kernel name, its utime + stime): the agent names its threads (pf-agent is the
    drain, pf-unwind the table loader, pf-new-processe the watcher), so this splits its CPU without a
    profiler, and without counting a thread that waits for a CPU as busy, as a sampling profiler does."""
    out = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                comm = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = ("main" if int(task.name) == pid else comm,
                                       (int(fields[11]) + int(fields[12])) / TICK)
    return out


def own_cpu(pid: int) -> float:
    """utime + stime of the process itself, every thread that ever ran in it, no children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_by_thread(start: tuple[dict[int, tuple[str, float]], float, float],
                  end: tuple[dict[int, tuple[str, float]], float, float]) -> dict[str, float]:
    """Seconds per thread name over a window, from (thread_cpu, own_cpu, cpu_seconds) at each end:
    "exited threads" is what threads gone by the end used, "children" the table builder's."""
    (t0, own0, all0), (t1, own1, all1) = start, end
    out: dict[str, float] = {}
    for tid, (name, cpu) in t1.items():
        out[name] = out.get(name, 0.0) + cpu - (t0[tid][1] if tid in t0 else 0.0)
    out["exited threads"] = max(0.0, (own1 - own0) - sum(out.values()))
    out["children"] = max(0.0, (all1 - all0) - (own1 - own0))
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _comm(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:3]
        return " ".join(os.path.basename(a) for a in args)[:60] or "?"
    except OSError:
        return "?"


class TreeRss(threading.Thread):
    """Peak RSS of each tool's process tree: the sum of the RSS of the process and all its descendants,
    sampled every `interval` seconds (a child that compiles for 0.4 s and exits shows up in the sum;
    the main process's VmHWM alone would not count it). Descendants come from the kernel's
    /proc/PID/task/TID/children lists, never from a cache of parent pids: with churn, pids are reused
    within milliseconds and a stale entry would count a stranger's RSS. A child between fork and exec (same
    command line as its parent) shares its parent's pages and is not counted."""

    def __init__(self, roots: dict[str, int], interval: float = 0.02) -> None:
        super().__init__(name="tree-rss", daemon=True)
        self.roots = roots
        self.interval = interval
        self.peak_mb = dict.fromkeys(roots, 0.0)
        self.at_peak: dict[str, list[tuple[str, float]]] = {name: [] for name in roots}  # (comm, MB) at the peak
        self._halt = threading.Event()

    @staticmethod
    def _children(pid: int) -> list[int]:
        out: list[int] = []
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return out
        for tid in tids:
            try:
                out += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
            except (OSError, ValueError):
                continue
        return out

    def sample(self) -> None:
        for name, root in self.roots.items():
            total, todo, parts = 0, [(root, b"")], []
            while todo:
                pid, parent_cmdline = todo.pop()
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read()
                    with open(f"/proc/{pid}/statm", "rb") as f:
                        pages = int(f.read().split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if cmdline == parent_cmdline:
                    continue  # forked, not exec'd yet: its pages are its parent's (a double count)
                total += pages
                parts.append((pid, pages))
                todo += [(child, cmdline) for child in self._children(pid)]
            if total * PAGE_MB > self.peak_mb[name]:
                self.peak_mb[name] = total * PAGE_MB
                self.at_peak[name] = [(_comm(pid), round(pages * PAGE_MB, 1)) for pid, pages in parts]

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        return self.peak_mb


# Python work that reaches different C code (and so different native stacks) per seed.
_PY_WORK = r"""
import decimal, hashlib, json, re, sys, time, zlib
def w_json(n): return len(json.dumps([{"k%d" % i: [i, str(i), i / 3]} for i in range(n)]))
def w_re(n): return len(re.findall(r"(a|b)+c?d*", "abacabd" * n))
def w_zlib(n): return len(zlib.compress(bytes(range(256)) * n, 6))
def w_hash(n): return hashlib.sha256(b"x" * (n * 512)).digest()[0]
def w_sort(n): return sorted((i * 7919) % 1009 for i in range(n * 8))[0]
def w_dec(n):
    decimal.getcontext().prec = 60
    return int(sum(decimal.Decimal(i).sqrt() for i in range(1, n // 4 + 2)))
WORK = [w_json, w_re, w_zlib, w_hash, w_sort, w_dec]
def rec(depth, k, n):
    if depth == 0:
        return WORK[k](n)
    return rec(depth - 1, k, n) + 1
"""

SHORT_PY = _PY_WORK + r"""
life, seed = float(sys.argv[1]), int(sys.argv[2])
t0 = time.monotonic()
end = t0 + 0.3 * life
i = 0
while time.monotonic() < end:
    rec(3 + (seed + i) % 17, (seed + i) % len(WORK), 200)
    i += 1
time.sleep(max(0.0, t0 + life - time.monotonic()))
"""

LONG_PY = _PY_WORK + r"""
seed = int(sys.argv[1])
def serve_{seed}(i):
    return rec(2 + (seed * 5 + i) % 23, (seed + i) % len(WORK), 150)
while True:
    end = time.monotonic() + 0.025
    i = 0
    while time.monotonic() < end:
        serve_{seed}(i)
        i += 1
    time.sleep(0.075)
"""


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


_WALK_METRIC = re.compile(r'^podflame_agent_unwind_(samples_total\{method|library_lookups_total\{outcome)="(\w+)"\} '
                          r'([\d.e+]+)$', re.MULTILINE)


def unwind_walks(metrics_url: str) -> dict[str, int]:
    """The agent's cumulative walk counters from its /metrics: method (tables, frame_pointers, executable_table)
    and library lookups (library_table, library_busy, library_no_table); {} when it does not answer."""
    try:
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    except OSError:
        return {}
    return {("library_" if kind.startswith("library") else "") + name: int(float(value))
            for kind, name, value in _WALK_METRIC.findall(text)}


class Churn(threading.Thread):
    """Starts `rate` short-lived processes a second (python, a shell pipeline, a deep C call tree, in
    turn), each living 0.1-1 s, until stopped; reaps them as they exit."""

    def __init__(self, rate: float, deep_calls: Path, seed: int = 1) -> None:
        super().__init__(name="churn", daemon=True)
        self.rate = rate
        self.deep_calls = deep_calls
        self.started = 0
        self._rng = random.Random(seed)
        self._halt = threading.Event()
        self._live: list[subprocess.Popen] = []

    def _command(self, kind: int) -> list[str]:
        life = self._rng.uniform(0.1, 1.0)
        seed = self._rng.randrange(1 << 20)
        if kind == 0:
            return ["/usr/bin/python3", "-c", SHORT_PY, f"{life:.3f}", str(seed)]
        if kind == 1:
            n = int(life * 150_000)
            return ["sh", "-c", f"seq 1 {n} | sort -rn | md5sum > /dev/null; sleep {life * 0.5:.3f}"]
        return [str(self.deep_calls), f"{0.3 * life:.3f}", str(seed)]

    def run(self) -> None:
        kinds = itertools.cycle(range(3))
        next_at = time.monotonic()
        while not self._halt.wait(max(0.0, next_at - time.monotonic())):
            next_at += 1 / self.rate
            self._live = [p for p in self._live if p.poll() is None]
            self._live.append(subprocess.Popen(self._command(next(kinds)), stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
            self.started += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()
        for p in self._live:
            p.wait()


# py-spy's frames are "function (file:line)"; a stack belongs to the first part any of its frames matches
WHERE = (("unwind tables", ("profiler/unwind/",)), ("python frames", ("profiler/pyframes", "profiler/python/")),
         ("upload", ("profiler/upload.py", "urllib", "http/client", "socket.py", "ssl.py")),
         ("symbolize", ("symbolizer/",)), ("maps refresh", ("profiler/procmaps.py",)),
         ("drain", ("profiler/sampler.py", "profiler/bpfprog.py")),
         ("build profiles", ("profiler/agent.py", "podflame/model.py", "podflame/pprof")))


def where_time_goes(folded: Path) -> dict[str, float]:
    """Shares of the agent's recorded samples per part, the first of WHERE that any frame of the stack
    matches (a table load inside a drain is the tables'; pprof encoding for an upload is the upload's);
    "other": the interpreter, GC, the metrics and the rest."""
    counts: dict[str, int] = dict.fromkeys([name for name, _ in WHERE] + ["other"], 0)
    total = 0
    try:
        lines = folded.read_text().splitlines()
    except OSError:
        return {"samples": 0}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        part = next((name for name, marks in WHERE if any(m in stack for m in marks)), "other")
        counts[part] += int(n)
    out: dict[str, float] = {"samples": total}
    out.update({k: round(v / total, 4) if total else 0.0 for k, v in counts.items()})
    return out


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_BUILT = re.compile(r"built the unwind table of (.*): (\d+) rows, ([\d.]+) ms in the (build child|agent)$")
_CHILD_START = re.compile(r"started the unwind table builder \(pid (\d+)\)")


def window_builds(log_text: str, start: float, end: float) -> dict:
    """The unwind tables the agent's log says were built between `start` and `end` (Unix time): each binary,
    where (the agent's own thread or the build child) and its CPU milliseconds, and the child's starts (an
    interpreter start each, which the build CPU does not include). The log's times are local, to the ms."""
    builds: list[dict] = []
    child_starts = 0
    for line in log_text.splitlines():
        m = _LOG_TIME.match(line)
        if m is None or "podflame.unwind" not in line:
            continue
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if not start <= at <= end:
            continue
        if (b := _BUILT.search(line)) is not None:
            builds.append({"binary": b.group(1), "rows": int(b.group(2)), "cpu_ms": float(b.group(3)),
                           "where": "child" if b.group(4) == "build child" else "agent",
                           "at_s": round(at - start, 2)})
        elif _CHILD_START.search(line):
            child_starts += 1
    return {"agent_ms": round(sum(b["cpu_ms"] for b in builds if b["where"] == "agent"), 1),
            "child_ms": round(sum(b["cpu_ms"] for b in builds if b["where"] == "child"), 1),
            "child_starts": child_starts, "tables": builds}


FIRST_DRAIN_S = 11.0  # the agent drains every 10 s: its first drain (cold caches) belongs to the start-up


def wait_for_line(path: Path, text: str, timeout: float) -> float:
    """time.monotonic() when `text` appeared in the file at `path`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            if text in path.read_text(errors="replace"):
                return time.monotonic()
        time.sleep(0.1)
    raise SystemExit(f"{text!r} did not appear in {path} within {timeout:.0f} s")


def wait_for(url: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--frequency", type=int, default=99)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy single-threaded burners")
    ap.add_argument("--startup", type=float, default=15.0,
                    help="seconds counted as start-up (at least until the agent samples, plus 11 s: its first, "
                         "cold drain)")
    ap.add_argument("--runs", type=int, choices=(1, 2), default=2, help="1: first start only; 2: and a restart")
    ap.add_argument("--churn", type=float, default=0.0,
                    help="busy node: short-lived processes started per second during the measured window")
    ap.add_argument("--processes", type=int, default=0,
                    help="busy node: long-lived Python processes with distinct code, started before both tools")
    ap.add_argument("--pids", action="store_true", help="print the tools' pids (to attach py-spy)")
    ap.add_argument("--python-frames", choices=("on", "off"), default="on",
                    help="the agent walks CPython processes' Python frames (PODFLAME_PYTHON_FRAMES)")
    ap.add_argument("--unwind", choices=("auto", "fp"), default="auto",
                    help="the agent's user stacks: .eh_frame tables (auto) or frame pointers only (fp)")
    ap.add_argument("--matrix", action="store_true",
                    help="every cell (unwind x frequency x plain/busy, first start and restart; Python frames off "
                         "once) in one run; --duration/--frequency/--churn/--processes/--unwind are ignored")
    ap.add_argument("--cell-duration", type=float, default=30.0, help="--matrix: measured seconds per run")
    ap.add_argument("--cell-startup", type=float, default=12.0,
                    help="--matrix: start-up seconds per run (at least until the agent samples, plus 11 s)")
    ap.add_argument("--only", default="",
                    help="--matrix: only cells whose label contains one of these (comma-separated, e.g. "
                         "'auto 19 Hz,python8')")
    ap.add_argument("--keep", action="store_true",
                    help="keep each run's folder (agent and server logs, profile-bpfcc's stacks, the store); "
                         "a failed run always keeps it")
    ap.add_argument("--where", action="store_true",
                    help="record the agent with py-spy over the measured window: shares of its CPU per part")
    ap.add_argument("--where-rate", type=int, default=50,
                    help="--where: py-spy's samples a second (the drain thread is busy ~2%% of the time: 1000 "
                         "gives a few hundred of its samples a run, at some CPU of py-spy's own)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each pair (first start, restart) this many times, a matrix's cells in turn, and "
                         "print the median and spread of the steady share, in total and per thread")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: both tools load eBPF programs")
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    if not args.matrix:
        pairs = []
        for i in range(args.repeat):
            if args.repeat > 1:
                print(f"=== repeat {i + 1} of {args.repeat}", file=sys.stderr)
            pairs.append(run_pair(args))
        results: dict = pairs[0] if args.repeat == 1 else {"repeats": pairs, "summary": summarize(pairs)}
        if args.repeat > 1:
            print_summary([("", results["summary"])])
    else:
        results = {"matrix": [], "cell_duration_s": args.cell_duration}
        cells = [cell for cell in MATRIX
                 if not args.only or any(part.strip() in cell_label(cell) for part in args.only.split(","))]
        runs: dict[str, list[dict]] = {cell_label(cell): [] for cell in cells}
        for i in range(args.repeat):  # cells in turn: a slow stretch of the machine falls on all of them
            for cell in cells:
                cell_args = argparse.Namespace(**{**vars(args), **cell, "duration": args.cell_duration,
                                                  "startup": args.cell_startup, "runs": 2})
                label = cell_label(cell)
                print(f"=== {label}" + (f" (repeat {i + 1} of {args.repeat})" if args.repeat > 1 else ""),
                      file=sys.stderr)
                runs[label].append(run_pair(cell_args))
        for cell in cells:
            pairs = runs[cell_label(cell)]
            entry = {"cell": cell_label(cell), **cell, **pairs[0]}
            if args.repeat > 1:
                entry.update({"repeats": pairs, "summary": summarize(pairs)})
            results["matrix"].append(entry)
        print_matrix(results["matrix"])
        if args.repeat > 1:
            print_summary([(c["cell"], c["summary"]) for c in results["matrix"]])
    print(json.dumps(results))


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "values": [round(v, 3) for v in values]}


def summarize(pairs: list[dict]) -> dict:
    """Per run kind (first start, restart) over the repeats: the median, min and max of the agent's steady share
    of a core, of each thread's steady CPU seconds (a thread absent from a run counts 0) and of the tables
    built in the window (CPU in the agent and in the child, child starts)."""
    out: dict = {}
    for name in ("first_start", "restart"):
        runs = [pair[name] for pair in pairs if name in pair]
        if not runs:
            continue
        ours = [r["podflame"] for r in runs]
        threads = sorted({t for o in ours for t in o["steady_cpu_s_by_thread"]})
        out[name] = {
            "runs": len(runs),
            "steady_core_pct": _spread([o["steady_core_pct"] for o in ours]),
            "steady_cpu_s_by_thread": {t: _spread([o["steady_cpu_s_by_thread"].get(t, 0.0) for o in ours])
                                       for t in threads},
            "window_build_agent_ms": _spread([o["steady_builds"]["agent_ms"] for o in ours]),
            "window_build_child_ms": _spread([o["steady_builds"]["child_ms"] for o in ours]),
            "window_child_starts": _spread([o["steady_builds"]["child_starts"] for o in ours]),
            "window_tables": _spread([len(o["steady_builds"]["tables"]) for o in ours]),
        }
    return out


def print_summary(cells: list[tuple[str, dict]]) -> None:
    print("median [min-max] over the repeats", file=sys.stderr)
    for label, summary in cells:
        for name, s in summary.items():
            pct = s["steady_core_pct"]
            print(f"{label:42} {name:11} steady {pct['median']:.2f}% [{pct['min']:.2f}-{pct['max']:.2f}] of a core "
                  f"({s['runs']} runs)", file=sys.stderr)
            for thread, t in s["steady_cpu_s_by_thread"].items():
                print(f"{'':55} {thread:18} {t['median']:.2f} s [{t['min']:.2f}-{t['max']:.2f}]", file=sys.stderr)
            print(f"{'':55} {'window builds':18} agent {s['window_build_agent_ms']['median']:.0f} ms "
                  f"[{s['window_build_agent_ms']['min']:.0f}-{s['window_build_agent_ms']['max']:.0f}], child "
                  f"{s['window_build_child_ms']['median']:.0f} ms [{s['window_build_child_ms']['min']:.0f}-"
                  f"{s['window_build_child_ms']['max']:.0f}], child starts "
                  f"{s['window_child_starts']['median']:g} [{s['window_child_starts']['min']:g}-"
                  f"{s['window_child_starts']['max']:g}]", file=sys.stderr)


BUSY = {"churn": 10.0, "processes": 8}
PLAIN = {"churn": 0.0, "processes": 0}
PYTHON = {"churn": 0.0, "processes": 8}  # issue 14: long-lived Python processes, frames on against off
MATRIX = [{"unwind": unwind, "frequency": hz, "python_frames": "on", **load}
          for unwind in ("auto", "fp") for hz in (19, 99) for load in (PLAIN, BUSY)] + \
         [{"unwind": "auto", "frequency": 19, "python_frames": "off", **PLAIN}] + \
         [{"unwind": "auto", "frequency": hz, "python_frames": frames, **PYTHON}
          for hz in (19, 99) for frames in ("on", "off")]


def cell_label(cell: dict) -> str:
    load = "busy" if cell["churn"] else "python8" if cell["processes"] else "plain"
    return f"{cell['unwind']} {cell['frequency']} Hz {load} python-frames {cell['python_frames']}"


def run_pair(args: argparse.Namespace) -> dict:
    """A first start with empty caches, then (unless --runs 1) a restart with the caches it filled."""
    caches = Path(tempfile.mkdtemp(prefix="podflame-bench-caches-"))
    env = {**os.environ, "PODFLAME_BPF_CACHE": str(caches / "bpf"), "PODFLAME_SYMBOL_CACHE": str(caches / "symbols"),
           "PODFLAME_PYTHON_FRAMES": "1" if args.python_frames == "on" else "0", "PODFLAME_UNWIND": args.unwind}
    results = {}
    try:
        for name in ("first_start", "restart")[: args.runs]:
            print(f"== {name.replace('_', ' ')}", file=sys.stderr)
            results[name] = run(args, env)
    finally:
        shutil.rmtree(caches, ignore_errors=True)
    return results


def print_matrix(cells: list[dict]) -> None:
    print(f"{'cell':42} {'run':11} {'ours cpu':>9} {'steady %':>9} {'RSS MB':>7} {'bcc cpu':>8} {'bcc RSS':>8} "
          f"{'ratio':>6} {'capture':>8}", file=sys.stderr)
    for c in cells:
        for run_name in ("first_start", "restart"):
            r = c.get(run_name)
            if r is None:
                continue
            o, t = r["podflame"], r["profile-bpfcc"]
            print(f"{c['cell']:42} {run_name:11} {o['cpu_s_total']:9.2f} {o['steady_core_pct']:9.3f} "
                  f"{o['peak_rss_mb']:7.1f} {t['cpu_s_total']:8.2f} {t['peak_rss_mb']:8.1f} "
                  f"{r['cpu_ratio_total'] or 0:6.2f} {100 * (o['capture_ratio'] or 0):7.1f}%", file=sys.stderr)


def _default_sigint() -> None:
    """Both tools stop on SIGINT: undo the SIG_IGN a shell's background job (`bench ... &`) hands down."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(args: argparse.Namespace, env: dict[str, str]) -> dict:
    podflame = ROOT / ".venv" / "bin" / "podflame"
    tmp = Path(tempfile.mkdtemp(prefix="podflame-bench-"))
    built = build_c("two_hot.c", tmp, "-O0")
    burn = tmp / f"pfb{os.getpid()}"  # a comm no other process on the host has
    built.rename(burn)
    deep_calls = build_c("deep_calls.c", tmp)
    port = 17000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "log.txt", "w")  # noqa: SIM115
    server = subprocess.Popen([str(podflame), "server", "--listen", f"127.0.0.1:{port}", "--data", str(tmp / "data")],
                              stdout=log, stderr=log)
    wait_for(url + "/healthz")
    # Long-lived busy processes run before both tools start, as on a node where the agent is (re)started.
    long_lived = [subprocess.Popen(["/usr/bin/python3", "-c", LONG_PY.replace("{seed}", str(i)), str(i)])
                  for i in range(args.processes)]
    atexit.register(stop_all, long_lived)  # also if the run fails half-way
    # Both tools start first; the burners run only once both sample, and stop before either stops,
    # so each tool saw the burners' whole life and expected = their CPU seconds x frequency.
    metrics_url = f"http://127.0.0.1:{port + 1}/metrics"
    ours = subprocess.Popen([str(podflame), "agent", "--server", url, "--frequency", str(args.frequency),
                             "--interval", "10", "--node-name", "bench", "--unwind", args.unwind,
                             "--metrics", f"127.0.0.1:{port + 1}"],
                            stdout=log, stderr=log, env=env, preexec_fn=_default_sigint)
    folded = open(tmp / "bcc.folded", "w")  # noqa: SIM115
    bcc_seconds = int(args.startup + args.duration + 600)  # stopped with SIGINT once the burners are done
    theirs = subprocess.Popen(["profile-bpfcc", "-F", str(args.frequency), "-af", str(bcc_seconds)],
                              stdout=folded, stderr=log, preexec_fn=_default_sigint)
    tree_rss = TreeRss({"podflame": ours.pid, "profile-bpfcc": theirs.pid})
    tree_rss.start()
    busy = (f", {args.processes} long-lived processes" if args.processes else "") + \
        (f", {args.churn:g} short-lived processes/s" if args.churn else "")
    print(f"start-up {args.startup:.0f}s, then {args.busy} burners{busy} for {args.duration:.0f}s "
          f"at {args.frequency} Hz", file=sys.stderr)
    if args.pids:
        print(f"pids: podflame {ours.pid}, profile-bpfcc {theirs.pid}", file=sys.stderr)
    # start-up lasts `--startup` seconds, and at least until the agent samples plus its first (cold) drain:
    # on a busy node the compile alone can take longer than --startup
    started_at = time.monotonic()
    ready_at = wait_for_line(tmp / "log.txt", "podflame agent: sampling", timeout=300)
    time.sleep(max(0.0, started_at + args.startup - time.monotonic(), ready_at + FIRST_DRAIN_S - time.monotonic()))
    start_cpu = {"podflame": cpu_seconds(ours.pid), "profile-bpfcc": cpu_seconds(theirs.pid)}
    start_threads = (thread_cpu(ours.pid), own_cpu(ours.pid), start_cpu["podflame"])
    t_steady = time.monotonic()
    walks_before = unwind_walks(metrics_url)
    window_unix = [time.time()]
    spy = None
    if args.where:
        spy = subprocess.Popen([str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", str(ours.pid),
                                "--rate", str(args.where_rate), "--duration", str(int(args.duration)),
                                "--format", "raw", "--threads", "--nonblocking", "-o", str(tmp / "agent.folded")],
                               stdout=subprocess.DEVNULL, stderr=log)
    burners = [subprocess.Popen([str(burn), str(args.duration)]) for _ in range(args.busy)]
    churn = Churn(args.churn, deep_calls) if args.churn > 0 else None
    if churn is not None:
        churn.start()
    burn_cpu = 0.0
    for b in burners:
        _, _, usage = os.wait4(b.pid, 0)
        burn_cpu += usage.ru_utime + usage.ru_stime
    if churn is not None:
        churn.stop()
    end_cpu = {"podflame": cpu_seconds(ours.pid), "profile-bpfcc": cpu_seconds(theirs.pid)}
    walks_after = unwind_walks(metrics_url)  # as of the window's last drain (--interval 10)
    threads = cpu_by_thread(start_threads, (thread_cpu(ours.pid), own_cpu(ours.pid), end_cpu["podflame"]))
    window_unix.append(time.time())
    rss = {"podflame": peak_rss_mb(ours.pid), "profile-bpfcc": peak_rss_mb(theirs.pid)}
    main_hwm = dict(rss)  # each tool's own process, without children
    steady_wall = time.monotonic() - t_steady
    if spy is not None:
        spy.wait(60)
    time.sleep(1)
    ours.send_signal(2)  # the agent drains once more and flushes on SIGINT
    theirs.send_signal(2)  # profile-bpfcc prints its stacks and exits on SIGINT, as at the end of its duration
    final_cpu = {}
    for name, proc in (("podflame", ours), ("profile-bpfcc", theirs)):
        _, _, usage = os.wait4(proc.pid, 0)  # includes profile-bpfcc's symbolization at exit
        final_cpu[name] = usage.ru_utime + usage.ru_stime
    tree_peak = tree_rss.stop()
    rss = {name: max(rss[name], tree_peak[name]) for name in rss}
    stop_all(long_lived)
    expected = burn_cpu * args.frequency

    q = urllib.parse.urlencode({"query": f'{{comm="{burn.name}"}}', "from": "now-1h", "to": "now+1m", "by": "comm"})
    series = json.loads(urllib.request.urlopen(f"{url}/api/v1/series?{q}").read())
    our_samples = sum(s["value"] for s in series["series"])
    their_samples = 0
    for line in (tmp / "bcc.folded").read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack.split(";", 1)[0] == burn.name and count.isdigit():
            their_samples += int(count)
    server.send_signal(2)
    server.wait(30)

    result = {"duration_s": args.duration, "frequency_hz": args.frequency, "busy_cpus": args.busy,
              "churn_per_s": args.churn, "churn_started": churn.started if churn is not None else 0,
              "long_lived_processes": args.processes, "python_frames": env["PODFLAME_PYTHON_FRAMES"] == "1",
              "unwind": args.unwind, "expected_samples": round(expected),
              "steady_window_unix": [round(t, 3) for t in window_unix]}
    for name, samples in (("podflame", our_samples), ("profile-bpfcc", their_samples)):
        total = final_cpu[name]
        steady = end_cpu[name] - start_cpu[name]
        result[name] = {"cpu_s_total": round(total, 2), "cpu_s_startup": round(start_cpu[name], 2),
                        "steady_core_pct": round(100 * steady / steady_wall, 3), "peak_rss_mb": round(rss[name], 1),
                        "peak_rss_main_mb": round(main_hwm[name], 1), "peak_rss_tree": tree_rss.at_peak[name],
                        "samples": samples, "capture_ratio": round(samples / expected, 4) if expected else None}
    # profile-bpfcc does nothing between start-up and exit (it symbolizes once, at the end), so its
    # steady share is ~0 and a steady ratio means nothing; the whole-run ratio is the comparison.
    ours_r, theirs_r = result["podflame"], result["profile-bpfcc"]
    result["cpu_ratio_total"] = round(ours_r["cpu_s_total"] / theirs_r["cpu_s_total"], 3) \
        if theirs_r["cpu_s_total"] > 0 else None
    result["cpu_ratio_steady"] = round(ours_r["steady_core_pct"] / theirs_r["steady_core_pct"], 3) \
        if theirs_r["steady_core_pct"] >= 0.05 else None
    result["steady_target_met"] = ours_r["steady_core_pct"] < (1.0 if args.frequency <= 19 else 2.0)
    ours_r["steady_cpu_s_by_thread"] = threads
    # user stacks walked in the drains of the steady window: tables, frame pointers, before the process's mapping
    # array with its executable's table, and of those how many found their first library's table (bpf_find_vma)
    ours_r["steady_walks"] = {k: walks_after.get(k, 0) - walks_before.get(k, 0) for k in walks_after}
    print("the agent's steady CPU by thread: " + ", ".join(f"{k} {v:.2f}s" for k, v in threads.items()),
          file=sys.stderr)
    builds = window_builds((tmp / "log.txt").read_text(errors="replace"), *window_unix)
    ours_r["steady_builds"] = builds
    print(f"unwind tables built in the steady window: {len(builds['tables'])} ({builds['agent_ms']:.0f} ms in the "
          f"agent, {builds['child_ms']:.0f} ms in the build child, {builds['child_starts']} child starts)"
          + "".join(f"\n  +{b['at_s']:.1f}s {b['binary']} ({b['rows']} rows, {b['cpu_ms']:.1f} ms, {b['where']})"
                    for b in builds["tables"]), file=sys.stderr)
    if spy is not None:
        result["where"] = where_time_goes(tmp / "agent.folded")
        print("where the agent's time goes: " + ", ".join(f"{k} {v:.1%}" for k, v in result["where"].items()
                                                          if k != "samples"), file=sys.stderr)
    for name in ("podflame", "profile-bpfcc"):
        r = result[name]
        print(f"{name:14} cpu {r['cpu_s_total']:6.2f}s (start-up {r['cpu_s_startup']:.2f}s, steady "
              f"{r['steady_core_pct']:.3f}% of a core)  peak RSS {r['peak_rss_mb']:6.1f} MB  "
              f"samples {r['samples']}/{result['expected_samples']} ({100 * (r['capture_ratio'] or 0):.1f}%)",
              file=sys.stderr)
    print(f"whole-run CPU, ours / profile-bpfcc: {result['cpu_ratio_total']}", file=sys.stderr)
    log.close()
    if args.keep:
        print(f"logs, folded stacks and the store of this run: {tmp}", file=sys.stderr)
    else:  # a matrix is 20+ runs: their stores and logs must not pile up under /tmp
        shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
