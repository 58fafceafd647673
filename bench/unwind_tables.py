"""Unwind-table builds (profiler/unwind) vs readelf's own CFI decoding of the same binaries.

For each binary: rows, table bytes, our build time (in a fresh process, after imports: the CPU the
agent's build child spends the first time the node meets a binary), that process's peak RSS, the time
to load the table again from the disk cache, the agent's wait for a table its build child makes
(`agent_child_s`: the child's start, imports and build, and the rows sent back;
profiler/unwind/builder.py), and as the peer `readelf --debug-dump=frames-interp FILE` (binutils
decoding and evaluating every FDE, output to /dev/null), wall time and peak RSS. Each side runs
`--repeat` times, alternating, fastest reported (the 2-core VM is shared and noisy).
With pyelftools importable (`--pyelftools`), it also times pyelftools decoding libc's .eh_frame rules.

    .venv/bin/python bench/unwind_tables.py [--repeat 3] [--pyelftools] [PATH ...]

Default binaries: libc, Debian's /usr/bin/python3, pyenv's libpython3.11, node, and the largest
executable and the largest shared library found under /usr, /opt and /root. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from profiler.unwind.build import build_table
from profiler.unwind.cache import TableCache
t1 = time.perf_counter()
table = build_table(sys.argv[1])
t2 = time.perf_counter()
cache = TableCache(sys.argv[2])
cache.get(sys.argv[1])
t3 = time.perf_counter()
hit = TableCache(sys.argv[2]).get(sys.argv[1])
t4 = time.perf_counter()
assert hit.rows == table.rows
from profiler.unwind.builder import TableSource
source = TableSource(sys.argv[3])
t5 = time.perf_counter()
child = source(sys.argv[1])
t6 = time.perf_counter()
source.close()
assert child.rows == table.rows
print(json.dumps({"rows": table.count, "bytes": table.nbytes, "source": table.source, "reason": table.reason,
                  "import_s": t1 - t0, "build_s": t2 - t1, "cache_hit_s": t4 - t3, "agent_child_s": t6 - t5,
                  **table.stats}))
"""


def _run(cmd: list[str], stdout: int | None = subprocess.PIPE) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one child."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    return wall, usage.ru_maxrss / 1024, out


def largest_elves() -> tuple[str | None, str | None]:
    """(largest ELF executable, largest ELF shared library) under /usr, /opt and /root."""
    best: dict[str, tuple[int, str]] = {}
    for top in ("/usr", "/opt", "/root"):
        for dirpath, _, files in os.walk(top):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_size < 1 << 20:
                        continue
                    kind = "lib" if ".so" in name else "exe" if st.st_mode & 0o111 else None
                    if kind is None or st.st_size <= best.get(kind, (0, ""))[0]:
                        continue
                    with open(path, "rb") as f:
                        if f.read(4) != b"\x7fELF":
                            continue
                    best[kind] = (st.st_size, path)
                except OSError:
                    continue
    return best.get("exe", (0, None))[1], best.get("lib", (0, None))[1]


def default_binaries() -> list[str]:
    out = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3"]
    out += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.11.*/lib/libpython3.11.so.1.0")))[-1:]
    node = shutil.which("node")
    if node:
        out.append(os.path.realpath(node))
    out += [p for p in largest_elves() if p]
    return [p for p in out if os.path.exists(p)]


def pyelftools_libc(path: str) -> dict[str, float | int] | None:
    """pyelftools decoding every .eh_frame FDE's rule table of `path` (what a parser built on it would do)."""
    try:
        from elftools.elf.elffile import ELFFile  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    t = time.perf_counter()
    rows = failed = 0
    with open(path, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for entry in dwarf.EH_CFI_entries():
            if type(entry).__name__ == "FDE":
                try:
                    rows += len(entry.get_decoded().table)  # type: ignore[union-attr]
                except Exception:  # pyelftools 0.33 raises on some of libc's hand-written CFI
                    failed += 1
    return {"rule_rows": rows, "failed_fdes": failed, "seconds": round(time.perf_counter() - t, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pyelftools", action="store_true", help="also time pyelftools on libc (needs it installed)")
    args = ap.parse_args()
    paths = args.paths or default_binaries()
    results = []
    for path in paths:
        size = os.path.getsize(path)
        ours, theirs = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as cache2:
                wall, rss, out = _run([sys.executable, "-c", _CHILD, path, cache, cache2])
            got = json.loads(out.strip().splitlines()[-1])
            ours.append((got["build_s"], rss, wall, got))
            theirs.append(_run(["readelf", "--debug-dump=frames-interp", path], stdout=subprocess.DEVNULL)[:2])
        build_s, rss, wall, got = min(ours, key=lambda x: x[0])
        readelf_s, readelf_rss = min(theirs)
        r = {"binary": path, "file_mb": round(size / 2**20, 1), "source": got["source"], "fdes": got.get("fdes", 0),
             "rows": got["rows"], "bytes": got["bytes"], "build_s": round(build_s, 3),
             "process_s": round(wall, 3), "rss_mb": round(rss, 1), "cache_hit_s": round(got["cache_hit_s"], 4),
             "agent_child_s": round(got["agent_child_s"], 3),
             "readelf_s": round(readelf_s, 3), "readelf_rss_mb": round(readelf_rss, 1),
             "build_vs_readelf": round(build_s / readelf_s, 2) if readelf_s else None,
             "unsupported_rows": got.get("unsupported_rows", 0), "reason": got["reason"]}
        results.append(r)
        print(f"{Path(path).name[:34]:34s} {r['file_mb']:7.1f} MB {r['fdes']:7d} FDEs {r['rows']:8d} rows "
              f"{r['bytes'] / 2**20:7.2f} MB  build {build_s:6.3f}s (process {wall:5.2f}s, {rss:5.0f} MB)  "
              f"cache hit {r['cache_hit_s'] * 1000:6.1f} ms  readelf {readelf_s:6.3f}s  "
              f"ratio {r['build_vs_readelf'] or 0:5.2f}x {r['reason']}")
    summary: dict[str, object] = {"bench": "unwind_tables", "repeat": args.repeat, "binaries": results}
    if args.pyelftools:
        libc = paths[0]
        peer = pyelftools_libc(libc)
        ours_libc = next((r for r in results if r["binary"] == libc), None)
        if peer is not None and ours_libc is not None:
            summary["pyelftools_libc"] = {**peer, "ours_build_s": ours_libc["build_s"],
                                          "pyelftools_vs_ours": round(peer["seconds"] / ours_libc["build_s"], 1)}
            print(f"pyelftools on {libc}: {peer['rule_rows']} rule rows ({peer['failed_fdes']} FDEs failed) "
                  f"in {peer['seconds']:.2f}s "
                  f"({summary['pyelftools_libc']['pyelftools_vs_ours']}x our build)")  # type: ignore[index]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
