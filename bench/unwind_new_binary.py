"""CPU and memory a binary new to the host's table cache costs the agent: built in the agent (small CFI)
against the build child (profiler/unwind/builder.py), measured in the same run.

A node that has run its workload once finds every table on disk; what a busy node still pays is the
binaries it meets for the first time (a new image's coreutils, libffi under another process). Each
pass starts a fresh process that plays the agent: an empty table cache, the real TableSource, one
binary asked for, the source closed. It reports that process's thread CPU plus its reaped children's
CPU (the child's interpreter start, numpy's import and the build) and its RSS growth. Two sides per
binary, alternated: `agent` (the default: small tables built in the agent) and its peer `child`
(`agent_cfi_bytes=0`: every table from a child, as before branch tables6). Medians of `--passes`.

    .venv/bin/python bench/unwind_new_binary.py [--passes 5] [PATH ...]

Default binaries: what the busy 19 Hz cell's restarts built (md5sum, sort, seq, sleep, dash, libffi,
ld.so), what a new container image brings (bash, libc, libstdc++), and Debian's python3 (over the
agent's limit: the child builds it on both sides). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT = ["/usr/bin/md5sum", "/usr/bin/sort", "/usr/bin/seq", "/usr/bin/sleep", "/usr/bin/dash",
           "/usr/lib/x86_64-linux-gnu/libffi.so.8", "/lib64/ld-linux-x86-64.so.2", "/usr/bin/bash",
           "/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
           os.path.realpath("/usr/bin/python3")]

_PASS = """
import json, os, resource, sys, time
def rss_kb():
    with open("/proc/self/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])
from profiler.unwind.builder import TableSource
path, cache, limit = sys.argv[1], sys.argv[2], sys.argv[3]
source = TableSource(cache) if limit == "default" else TableSource(cache, agent_cfi_bytes=int(limit))
rss0 = rss_kb()
t0 = time.thread_time()
table = source(path)
t1 = time.thread_time()
rss1 = rss_kb()
source.close()  # waits for the child: its CPU is then in RUSAGE_CHILDREN
ch = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rows": table.count, "agent_ms": (t1 - t0) * 1e3, "children_ms": (ch.ru_utime + ch.ru_stime) * 1e3,
                  "rss_growth_kb": rss1 - rss0, "child_starts": source.stats["child_starts"],
                  "agent_builds": source.stats["agent_builds"], "numpy": "numpy" in sys.modules}))
"""


def one_pass(path: str, limit: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run([sys.executable, "-c", _PASS, path, cache, limit], capture_output=True, text=True,
                              cwd=ROOT, check=True, timeout=300)
    got: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    got["total_ms"] = got["agent_ms"] + got["children_ms"]
    return got


def _median(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(x[key] for x in runs), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    paths = [p for p in (args.paths or DEFAULT) if os.path.exists(p)]
    results: list[dict[str, object]] = []
    small_agent: list[float] = []
    small_child: list[float] = []
    for path in paths:
        sides: dict[str, list[dict[str, float]]] = {"agent": [], "child": []}
        for _ in range(args.passes):
            sides["agent"].append(one_pass(path, "default"))
            sides["child"].append(one_pass(path, "0"))
        ours, peer = sides["agent"], sides["child"]
        r: dict[str, object] = {"binary": path, "rows": ours[0]["rows"]}
        for side, runs in sides.items():
            for k in ("agent_ms", "children_ms", "total_ms", "rss_growth_kb"):
                r[f"{side}_{k}"] = _median(runs, k)
            r[f"{side}_child_starts"] = runs[0]["child_starts"]
            r[f"{side}_numpy_in_agent"] = bool(runs[0]["numpy"])
        ours_ms, peer_ms = _median(ours, "total_ms"), _median(peer, "total_ms")
        r["child_vs_agent"] = round(peer_ms / max(ours_ms, 0.01), 1)
        if not ours[0]["child_starts"]:
            small_agent.append(ours_ms)
            small_child.append(peer_ms)
        results.append(r)
        print(f"{Path(path).name[:28]:28s} {r['rows']:7d} rows  in the agent: {ours_ms:7.1f} ms CPU "
              f"({_median(ours, 'agent_ms'):.1f} agent + {_median(ours, 'children_ms'):.1f} child), "
              f"RSS +{_median(ours, 'rss_growth_kb'):.0f} kB  |  child: {peer_ms:7.1f} ms "
              f"({_median(peer, 'agent_ms'):.1f} + {_median(peer, 'children_ms'):.1f})  ratio {r['child_vs_agent']}x")
    summary: dict[str, object] = {"bench": "unwind_new_binary", "passes": args.passes, "binaries": results}
    if small_agent:
        agent_ms, child_ms = statistics.mean(small_agent), statistics.mean(small_child)
        summary.update(small_mean_agent_ms=round(agent_ms, 2), small_mean_child_ms=round(child_ms, 2),
                       small_child_vs_agent=round(child_ms / agent_ms, 1))
        print(f"binaries built in the agent ({len(small_agent)}): {agent_ms:.2f} ms CPU each built in the agent, "
              f"{child_ms:.2f} ms through a child start ({child_ms / agent_ms:.1f}x)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
