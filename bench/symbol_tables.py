"""Reading a binary's symbol table: the symbolizer's reader against `nm` and, optionally, another checkout's reader.

A binary new to the agent (every binary on a first start, any new one on a busy node) has its table read
on the drain thread: the ELF symbols decoded, one name chosen per address, the ranges sorted
(symbolizer.elf.ElfSymbols.ranges). Per binary this prints the reader's CPU (fastest of `--repeat` fresh
reads in one process), `nm --defined-only` reading the same file (child CPU from getrusage, the same
fastest-of), and with `--baseline DIR` the reader of that checkout (its tree on sys.path, in a child with this
interpreter), checked to give the same ranges. The last line is one JSON object.

    .venv/bin/python bench/symbol_tables.py [--baseline /work/main] [--repeat 5] [BINARY ...]

Default binaries: libc (its debug file's .symtab when libc6-dbg is installed), libstdc++, Debian's python3,
bash, and the biggest shared library found under /usr/lib and this checkout's venv (by .symtab size).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
from symbolizer.elf import ElfSymbols
out = {}
for path in sys.argv[3:]:
    best, digest = None, None
    for _ in range(int(sys.argv[2])):
        elf = ElfSymbols(path, debug_dirs=["/usr/lib/debug"])
        t = time.process_time()
        r = elf.ranges
        dt = time.process_time() - t
        best = dt if best is None else min(best, dt)
    digest = hashlib.sha256(repr((list(r.starts), list(r.ends), r.names)).encode()).hexdigest()
    out[path] = {"cpu_ms": round(best * 1e3, 2), "ranges": len(r), "digest": digest, "source": elf.symbol_source}
print(json.dumps(out))
"""


def readers(root: Path, paths: list[str], repeat: int) -> dict:
    got = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(repeat), *paths], capture_output=True,
                         text=True, check=True)
    return json.loads(got.stdout.strip().splitlines()[-1])


def nm_cpu_ms(path: str, repeat: int) -> float:
    """`nm --defined-only` on the file whose table the reader used, fastest child CPU of `repeat`."""
    best = None
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(["nm", "--defined-only", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = cpu if best is None else min(best, cpu)
    return round((best or 0.0) * 1e3, 2)


def biggest_library() -> str | None:
    """The shared library with the largest .symtab among those found (by section size, via the reader's ELF layer)."""
    sys.path.insert(0, str(ROOT))
    from symbolizer.elffile import ElfFile

    best, best_size = None, 0
    venv = str(ROOT / ".venv" / "lib" / "python3*" / "site-packages" / "**" / "*.so*")
    for path in glob.glob("/usr/lib/x86_64-linux-gnu/*.so*") + glob.glob(venv, recursive=True):
        try:
            with open(path, "rb") as f:
                sec = ElfFile(f).section(".symtab")
        except Exception:  # not an ELF, truncated, unreadable: not a candidate
            continue
        if sec is not None and sec.size > best_size and os.path.realpath(path) not in (best or ""):
            best, best_size = os.path.realpath(path), sec.size
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="*")
    ap.add_argument("--baseline", type=Path, help="another checkout whose reader reads the same binaries")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    defaults = ("/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/usr/bin/python3.11", "/usr/bin/bash", biggest_library())
    paths = args.binaries or [p for p in defaults if p]
    paths = [os.path.realpath(p) for p in paths]
    ours = readers(ROOT, paths, args.repeat)
    base = readers(args.baseline.resolve(), paths, args.repeat) if args.baseline else None
    rows = []
    for path in paths:
        o = ours[path]
        source = o["source"]
        table_file = source if source and source.startswith("/") else path
        row = {"binary": path, "ranges": o["ranges"], "table": source, "ours_cpu_ms": o["cpu_ms"],
               "nm_cpu_ms": nm_cpu_ms(table_file, args.repeat)}
        row["ours_over_nm"] = round(o["cpu_ms"] / row["nm_cpu_ms"], 2) if row["nm_cpu_ms"] else None
        if base is not None:
            b = base[path]
            row.update(baseline_cpu_ms=b["cpu_ms"], baseline_over_ours=round(b["cpu_ms"] / o["cpu_ms"], 2)
                       if o["cpu_ms"] else None, same_ranges=b["digest"] == o["digest"])
        rows.append(row)
        peer = (f"  baseline {row['baseline_cpu_ms']:8.2f} ms (x{row['baseline_over_ours']}, same ranges: "
                f"{row['same_ranges']})") if base is not None else ""
        print(f"{os.path.basename(path):40} {o['ranges']:7} ranges  ours {o['cpu_ms']:8.2f} ms  "
              f"nm {row['nm_cpu_ms']:7.2f} ms{peer}", file=sys.stderr)
    total = sum(r["ours_cpu_ms"] for r in rows)
    out: dict = {"repeat": args.repeat, "binaries": rows, "ours_total_ms": round(total, 2),
                 "nm_total_ms": round(sum(r["nm_cpu_ms"] for r in rows), 2)}
    if base is not None:
        out["baseline_total_ms"] = round(sum(r["baseline_cpu_ms"] for r in rows), 2)
        out["baseline_over_ours"] = round(out["baseline_total_ms"] / total, 3) if total else None
        out["same_ranges"] = all(r["same_ranges"] for r in rows)
    print(json.dumps(out))


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print(f"({time.monotonic() - t0:.1f} s)", file=sys.stderr)
