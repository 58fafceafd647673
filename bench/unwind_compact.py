"""The two compactors of profiler/unwind/build.py side by side: plain Python against numpy, per binary.

Each build runs in a fresh process (as the agent's and the build child's first build of a binary do) and
reports its CPU: the whole build, with numpy's import for the numpy side (what choosing numpy costs a
process that has not imported it), and the compaction step alone. The two sides alternate `--repeat` times
and the fastest of each is kept (the 2-core VM is shared). Both sides' bytes are compared.

    .venv/bin/python bench/unwind_compact.py [--repeat 3] [PATH ...]

The last line is one JSON object: per binary, rows and CPU ms of each side, and the ratio python/numpy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["/usr/bin/dash", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11",
           "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"]
CHILD = r"""
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
from profiler.unwind import build
path, python = sys.argv[2], sys.argv[3] == "python"
compact = build._Rows.compact
spent = []
def timed(self, p=None):
    t = time.process_time()
    try:
        return compact(self, p)
    finally:
        spent.append(time.process_time() - t)
build._Rows.compact = timed
t0 = time.process_time()
table = build.build_table(path, python=python)
total = time.process_time() - t0
print(json.dumps({"rows": table.count, "ms": round(total * 1000, 1), "compact_ms": round(sum(spent) * 1000, 1),
                  "sha": hashlib.sha256(table.rows).hexdigest()[:16]}))
"""


def once(path: str, side: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), path, side], capture_output=True, text=True,
                         check=True, env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    results = {}
    for path in args.paths or [p for p in DEFAULT if Path(p).exists()]:
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for side in ("python", "numpy"):
                r = once(path, side)
                if side not in best or r["ms"] < best[side]["ms"]:
                    best[side] = r
        py, np_ = best["python"], best["numpy"]
        same = py["sha"] == np_["sha"]
        results[path] = {"rows": py["rows"], "python_ms": py["ms"], "numpy_ms": np_["ms"],
                         "python_compact_ms": py["compact_ms"], "numpy_compact_ms": np_["compact_ms"],
                         "ratio": round(py["ms"] / np_["ms"], 3) if np_["ms"] else None, "same_bytes": same}
        print(f"{path:60s} {py['rows']:7d} rows: python {py['ms']:7.1f} ms (compact {py['compact_ms']:6.1f}), "
              f"numpy {np_['ms']:7.1f} ms (compact {np_['compact_ms']:6.1f}, with its import), "
              f"ratio {results[path]['ratio']}, same bytes: {same}", flush=True)
    print(json.dumps({"bench": "unwind_compact", "repeat": args.repeat, "results": results}))


if __name__ == "__main__":
    main()
