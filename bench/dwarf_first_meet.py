"""The symbolizer's first meeting with binaries that carry DWARF, disk cache on: big CUs decoded one
function at a time and persisted per function, until enough of a CU's functions are reached to decode
it whole (this tree), against every CU decoded whole and stored (the layout before: `lazy_cu_bytes`
out of reach), and with `--baseline DIR` against another checkout's layout (its own child), measured
in the same run.

Per binary (libc through its libc6-dbg debug file, pyenv's libpython3.11, a C++ program built here
from a template-heavy source, a Go program built here) and per number of addresses (uniform over
the bytes of its functions, as a sampled profile's leaves spread), each mode runs as fresh
processes: a first meet (empty cache directory) then a restart (same directory), rounds alternating
the modes' order, medians reported. Timed in the child: opening the DWARF and every lookup
(section reads, decoding, cache reads and writes), not interpreter start. Every child's answers are
hashed: both modes must give the same frames, names, file:line and inline chains at every address.

`--by-size`: per CU of libpython (in-process, best of 3), one function's lookup with the CU decoded
whole and stored against its functions' ranges plus that one function decoded and stored: where the
per-function layout starts to pay, which sets `dwarf.LAZY_CU_BYTES`.

    .venv/bin/python bench/dwarf_first_meet.py [--addresses 40,200] [--rounds 3] [--by-size] [--targets ...]
        [--baseline /work/main] [--whole-share 0.4]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from symbolizer import dwarfread as dr  # noqa: E402
from symbolizer import libdw  # noqa: E402
from symbolizer.diskcache import DiskCache  # noqa: E402
from symbolizer.dwarf import LAZY_CU_BYTES, WHOLE_SHARE, CuFunctions, DwarfInfo, read_sections  # noqa: E402
from symbolizer.elf import ElfSymbols  # noqa: E402
from tests.test_dwarf_corpus import functions, spread  # noqa: E402  # nm's sized functions; addresses over their bytes

WHOLE = 1 << 62  # lazy_cu_bytes no CU reaches: every CU decoded whole and stored (the old layout)

CXX = r"""
#include <algorithm>
#include <iostream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>
template <int N> struct Stage {
    static std::map<std::string, int> run(const std::vector<std::string>& in) {
        std::map<std::string, int> out;
        std::regex re("([a-z]+)(\\d+)");
        for (const auto& s : in) { std::smatch m; if (std::regex_search(s, m, re)) out[m[1]] += N + std::stoi(m[2]); }
        auto more = Stage<N - 1>::run(in);
        for (auto& [k, v] : more) out[k] ^= v;
        return out;
    }
};
template <> struct Stage<0> { static std::map<std::string, int> run(const std::vector<std::string>&) { return {}; } };
int main(int argc, char** argv) {
    std::vector<std::string> in(argv + 1, argv + argc);
    std::unordered_map<std::string, std::vector<double>> h;
    for (auto& s : in) { h[s].push_back(s.size()); std::sort(h[s].begin(), h[s].end()); }
    std::ostringstream os;
    for (auto& [k, v] : Stage<24>::run(in)) os << k << v;
    std::cout << os.str() << h.size() << std::endl;
}
"""

GO = """
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
)

func main() {
	re := regexp.MustCompile(`(\\w+)=(\\d+)`)
	m := map[string]int{}
	for _, s := range strings.Fields("a=1 b=2 c=3") {
		if g := re.FindStringSubmatch(s); g != nil {
			m[g[1]] = len(g[2])
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b, _ := json.Marshal(keys)
	fmt.Println(string(b), http.StatusOK)
}
"""


# -- targets ---------------------------------------------------------------------------------

def targets(work: Path, wanted: set[str]) -> list[tuple[str, str, str, str]]:
    """(name, DWARF file, disk cache key, file with the symbol table) of each binary found or built."""
    out = []
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    elf = ElfSymbols(libc, debug_dirs=["/usr/lib/debug"])
    debug = elf.dwarf_file()
    if "libc" in wanted and debug and elf.build_id:
        out.append(("libc (libc6-dbg)", debug, elf.build_id, debug))
    if "libpython" in wanted:
        probe = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
        for d in os.get_exec_path():
            exe = Path(d) / "python3.11"
            if os.access(exe, os.X_OK):
                got = subprocess.run([str(exe), "-c", probe], capture_output=True, text=True)
                lib = Path(got.stdout.strip()) / "libpython3.11.so.1.0"
                if got.returncode == 0 and lib.is_file() and (e := ElfSymbols(str(lib))).dwarf_file() == str(lib):
                    out.append(("libpython3.11 (pyenv)", str(lib), e.build_id or "", str(lib)))
                    break
    if "cxx" in wanted and shutil.which("g++"):
        src, exe = work / "big.cc", work / "big-cxx"
        src.write_text(CXX)
        subprocess.run(["g++", "-std=c++17", "-O2", "-g", "-Wl,--build-id", "-o", str(exe), str(src)], check=True)
        out.append(("C++ (g++ -O2 -g, <regex>)", str(exe), ElfSymbols(str(exe)).build_id or "", str(exe)))
    if "go" in wanted and shutil.which("go"):
        gd = work / "gobig"
        gd.mkdir(exist_ok=True)
        (gd / "main.go").write_text(GO)
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "off", "GOCACHE": str(work / "gocache"),
               "CGO_ENABLED": "0"}
        # no build id (Go's linker writes none) and uncompressed DWARF (so libdw reads it too)
        subprocess.run(["go", "build", "-ldflags=-compressdwarf=false", "-o", str(gd / "prog"), "main.go"],
                       cwd=gd, env=env, check=True)
        key = dwarf_key(str(gd / "prog"))
        out.append(("Go 1.19 (net/http, no build id)", str(gd / "prog"), key, str(gd / "prog")))
    return out


def dwarf_key(path: str) -> str:
    from symbolizer.dwarf import dwarf_digest

    key = dwarf_digest(path)
    assert key is not None
    return key


# -- one measurement (a child process) -------------------------------------------------------

def child(path: str, key: str, cache_dir: str, lazy_cu_bytes: int, addresses: list[int],
          whole_share: float | None = WHOLE_SHARE) -> dict:
    t0 = time.perf_counter()
    cache = DiskCache(cache_dir)
    d = DwarfInfo(path, lazy_cu_bytes=lazy_cu_bytes, whole_share=whole_share, **cache.hooks(key))
    answers = [d.lookup(a) for a in addresses]
    ms = 1e3 * (time.perf_counter() - t0)
    return {"ms": ms, "answers": hashlib.sha256(repr(answers).encode()).hexdigest()[:16], "dwarf": d.stats,
            "cache": cache.stats, "resolved": sum(1 for a in answers if a and a[0])}


def run_child(path: str, key: str, cache_dir: str, lazy_cu_bytes: int, addresses: list[int],
              tree: Path = ROOT, whole_share: float | None = WHOLE_SHARE) -> dict:
    """One child: this tree's bench, or another checkout's (`--baseline`: its own child, which reads the
    first four arguments alone)."""
    got = subprocess.run([sys.executable, str(tree / "bench" / "dwarf_first_meet.py"), "--child", path, key,
                          cache_dir, str(lazy_cu_bytes), str(whole_share)],
                         input=" ".join(map(str, addresses)), capture_output=True, text=True, check=True)
    return json.loads(got.stdout.splitlines()[-1])


def cache_bytes(d: str) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def first_meet(name: str, path: str, key: str, symtab: str, counts: list[int], rounds: int,
               baseline: Path | None = None, whole_share: float | None = WHOLE_SHARE) -> list[dict]:
    """Per address count: each mode's first meet and restart as fresh processes, rounds rotating the
    modes' order; medians, and each mode's spread (min-max) over the rounds."""
    rows = []
    funcs = functions(Path(symtab))
    # mode -> (tree whose child runs, lazy_cu_bytes)
    modes: dict[str, tuple[Path, int]] = {"whole": (ROOT, WHOLE), "lazy": (ROOT, LAZY_CU_BYTES)}
    if baseline is not None:
        modes["base"] = (baseline, LAZY_CU_BYTES)
    names = list(modes)
    for n in counts:
        addrs = spread(funcs, n, random.Random(n))
        times: dict[str, dict[str, list[float]]] = {m: {"first": [], "restart": []} for m in names}
        digests, sizes, stats = set(), {}, {}
        for r in range(rounds):
            for mode in names[r % len(names):] + names[:r % len(names)]:
                tree, limit = modes[mode]
                cache_dir = tempfile.mkdtemp(prefix="dw-first-meet-")
                try:
                    a = run_child(path, key, cache_dir, limit, addrs, tree, whole_share)
                    b = run_child(path, key, cache_dir, limit, addrs, tree, whole_share)
                    times[mode]["first"].append(a["ms"])
                    times[mode]["restart"].append(b["ms"])
                    digests |= {a["answers"], b["answers"]}
                    sizes[mode] = cache_bytes(cache_dir)
                    stats[mode] = (a["dwarf"], b["dwarf"])
                    assert b["dwarf"]["cus_decoded"] == 0 and b["dwarf"]["fns_decoded"] == 0, (mode, b)
                finally:
                    shutil.rmtree(cache_dir, ignore_errors=True)
        assert len(digests) == 1, f"{name}: the modes' answers differ"
        med = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}
        row = {"binary": name, "addresses": n}
        for m in names:
            row[f"{m}_first_ms"] = round(med[m]["first"], 1)
            row[f"{m}_first_spread"] = [round(min(times[m]["first"]), 1), round(max(times[m]["first"]), 1)]
            row[f"{m}_restart_ms"] = round(med[m]["restart"], 2)
            row[f"{m}_restart_spread"] = [round(min(times[m]["restart"]), 2), round(max(times[m]["restart"]), 2)]
            row[f"{m}_cache_kib"] = sizes[m] >> 10
        for m in names[::2]:  # whole and base against this tree's layout: > 1 is this tree faster
            row[f"{m}_over_lazy_first"] = round(med[m]["first"] / med["lazy"]["first"], 2)
            row[f"{m}_over_lazy_restart"] = round(med[m]["restart"] / med["lazy"]["restart"], 2)
        row.update(cus_decoded=stats["lazy"][0]["cus_decoded"], fns_decoded=stats["lazy"][0]["fns_decoded"],
                   cus_made_whole=stats["lazy"][0].get("cus_made_whole", 0),
                   cus_all_whole=stats["whole"][0]["cus_decoded"])
        if "base" in stats:
            row["base_fns_decoded"] = stats["base"][0]["fns_decoded"]
        rows.append(row)
        line = f"{name:34} {n:5d} addr  first meet / restart ms:"
        for m in names:
            line += f"  {m} {row[f'{m}_first_ms']:7.1f} / {row[f'{m}_restart_ms']:5.1f}"
        line += f" | whole/lazy x{row['whole_over_lazy_first']:.2f} / x{row['whole_over_lazy_restart']:.2f}"
        if "base" in stats:
            line += f"  base/lazy x{row['base_over_lazy_first']:.2f} / x{row['base_over_lazy_restart']:.2f}"
        kib = " / ".join(str(row[f"{m}_cache_kib"]) for m in names)
        line += (f" | cache KiB {kib} | lazy: {row['cus_decoded']} CUs, {row['fns_decoded']} functions,"
                 f" {row['cus_made_whole']} made whole")
        print(line, flush=True)
    return rows


# -- by CU size (in-process) -----------------------------------------------------------------

def by_size(path: str, repeat: int = 3) -> list[dict]:
    sections = read_sections(path)
    r = dr.Reader(sections)
    cus = sorted((r.unit_at(off).end - off, off) for off in r.unit_offsets())
    probe = DwarfInfo(path)
    starts = {off: lo for lo, _, off in probe.cu_table()[0]}
    out = []
    picked = [c for c in cus if c[0] >= 4096 and c[1] in starts][::max(1, len(cus) // 40)]
    for size, off in picked:
        best: dict[str, float] = {}
        for _ in range(repeat):
            for mode, limit in (("whole", WHOLE), ("lazy", 0)):
                tmp = tempfile.mkdtemp(prefix="dw-by-size-")
                try:
                    d = DwarfInfo(path, lazy_cu_bytes=limit, **DiskCache(tmp).hooks("ab" * 20))
                    d._reader = dr.Reader(sections)  # sections read once for the run
                    d._libdw = libdw.open_lines(path)
                    idx_fns = None
                    t0 = time.perf_counter()
                    idx = d.cu(off)
                    if isinstance(idx, CuFunctions):
                        idx_fns = idx
                        addr = idx.fn_start[len(idx.fn_start) // 2] if len(idx.fn_start) else starts[off]
                    else:
                        addr = starts[off]
                    d.lookup(addr)
                    ms = 1e3 * (time.perf_counter() - t0)
                    best[mode] = min(best.get(mode, ms), ms)
                    if mode == "lazy" and idx_fns is None:
                        best["lazy"] = best.get("whole", ms)  # functions overlap: decoded whole anyway
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        out.append({"cu_kib": round(size / 1024, 1), "whole_ms": round(best["whole"], 2),
                    "lazy_ms": round(best["lazy"], 2), "ratio": round(best["whole"] / best["lazy"], 2)})
        print(f"CU {size / 1024:7.1f} KiB  whole+stored {best['whole']:7.2f} ms  ranges + one function + stored "
              f"{best['lazy']:6.2f} ms  x{best['whole'] / best['lazy']:5.2f}", flush=True)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, key, cache_dir, limit = sys.argv[2:6]
        share = None if sys.argv[6:7] == ["None"] else float(sys.argv[6]) if len(sys.argv) > 6 else WHOLE_SHARE
        addrs = [int(x) for x in sys.stdin.read().split()]
        print(json.dumps(child(path, key, cache_dir, int(limit), addrs, share)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addresses", default="40,200", help="comma-separated address counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default="libc,libpython,cxx,go")
    ap.add_argument("--by-size", action="store_true", help="also the per-CU-size table on libpython")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. /work/main): its layout as a third mode")
    ap.add_argument("--whole-share", default=str(WHOLE_SHARE),
                    help="this tree's dwarf.WHOLE_SHARE for the run ('None': never decode a big CU whole)")
    args = ap.parse_args()
    counts = [int(x) for x in args.addresses.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dw-first-meet-bins-"))
    share = None if args.whole_share == "None" else float(args.whole_share)
    result: dict = {"lazy_cu_bytes": LAZY_CU_BYTES, "whole_share": share, "rounds": args.rounds, "rows": []}
    try:
        for name, path, key, symtab in targets(work, set(args.targets.split(","))):
            result["rows"] += first_meet(name, path, key, symtab, counts, args.rounds, args.baseline, share)
        if args.by_size:
            lib = next((p for n, p, _, _ in targets(work, {"libpython"})), None)
            if lib:
                result["by_size"] = by_size(lib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = result["rows"]
    if rows:
        result["whole_over_lazy_first_min"] = min(r["whole_over_lazy_first"] for r in rows)
        result["whole_over_lazy_first_max"] = max(r["whole_over_lazy_first"] for r in rows)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
