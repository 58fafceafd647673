"""The disk cache's contract for DWARF: a CU under `lazy_cu_bytes` is decoded and stored whole; a
bigger one is stored as its functions' ranges and every function decoded (its inline tree and line
rows) is stored on its own, so a restart answers from the cache without reading the sections, until
the functions a process decoded reach `whole_share` of the CU's code (or an address between them
needs the whole CU): then the CU is decoded whole and stored as one entry, its function entries
dropped. The answers are the complete decode's at every address (and addr2line's: tests/test_dwarf_corpus.py
runs its oracle comparison on the persisted path too); a corrupt entry is logged and rewritten;
the byte bound holds; a binary without a build id is keyed by its DWARF's bytes."""

from __future__ import annotations

import logging
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest

from podflame.model import Frame, FrameKind, Mapping, Profile
from symbolizer import Symbolizer, libdw
from symbolizer import dwarfread as dr
from symbolizer.diskcache import DiskCache
from symbolizer.dwarf import (
    CuFunctions,
    CuIndex,
    DwarfInfo,
    FnIndex,
    _CuDecoder,
    _disjoint,
    dwarf_digest,
    read_sections,
)
from symbolizer.elf import ElfSymbols
from tests.test_dwarf_corpus import _libc_debug_file, build_corpus, functions, libpython, spread
from tests.test_dwarf_features import NESTED, nm_sized
from tests.test_symbolizer_build import build_id, need_tools

WHOLE = 1 << 62  # no CU is this big: every CU decoded whole (the complete decode)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dwarf-persist")
    out = {p.name: p for p in build_corpus(d)}
    (d / "nested.c").write_text(NESTED)
    subprocess.run(["gcc", "-O2", "-g", "-Wl,--build-id", "-o", str(d / "nested"), str(d / "nested.c")], check=True,
                   capture_output=True)
    out["nested"] = d / "nested"
    return out


def every_address(path: Path) -> list[int]:
    return [a for start, size in functions(path) for a in range(start, start + size)]


def test_every_decoded_function_is_stored_and_a_restart_decodes_nothing(built: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    for name in ("dwarf-cxx", "dwarf-pie", "libdwarflib.so"):
        path = built[name]
        bid = build_id(path)
        assert bid
        addrs = every_address(path)
        root = tmp_path / name
        cache = DiskCache(str(root))
        first = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **cache.hooks(bid))  # every CU big, never whole
        got = [first.lookup(a) for a in addrs]
        whole = DwarfInfo(str(path), store_cu=lambda off, idx: None)  # the complete decode
        assert got == [whole.lookup(a) for a in addrs], name
        assert got == [DwarfInfo(str(path)).lookup(a) for a in addrs], name  # and the cache-less lazy one
        assert first.stats["fns_decoded"] >= 2 and cache.stats["fn_stored"] == first.stats["fns_decoded"], name
        assert cache.stats["cu_stored"] == first.stats["cus_decoded"], name
        assert len(list(root.rglob("fn-*.pkl"))) == first.stats["fns_decoded"], name
        again = DiskCache(str(root))
        second = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **again.hooks(bid))
        assert [second.lookup(a) for a in addrs] == got, name
        assert second.stats["cus_decoded"] == second.stats["fns_decoded"] == 0, (name, second.stats)
        assert second.stats["fns_loaded"] == first.stats["fns_decoded"], name
        assert second._reader is None, name  # the DWARF sections were never read
        assert again.stats["errors"] == 0


def test_an_address_between_functions_is_stored_as_one_more_entry(built: dict[str, Path], tmp_path: Path) -> None:
    """A GCC nested function's code lies outside its host's ranges: no top-level function covers it
    (nor a C++ lambda's whose host was only inlined). The gap between the functions around it becomes
    one more entry, cut from the CU's whole code, stored like a function, when the CU is never to be
    decoded whole (`whole_share=None`; by default that address makes the CU whole: the next test)."""
    path = built["nested"]
    bid = build_id(path)
    assert bid
    (inner, _), = [(a, s) for a, s, name in nm_sized(path) if name.startswith("inner")]
    outer = next(a for a, s, name in nm_sized(path) if name == "outer")
    cache = DiskCache(str(tmp_path))
    d = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **cache.hooks(bid))
    got = d.lookup(outer + 1)
    assert got is not None and [f.name for f in got[0]] == ["outer"]
    off = d._cu_for(inner + 2)
    assert off is not None
    fns = d.cu(off)
    assert isinstance(fns, CuFunctions) and d.stats["fns_decoded"] == 1
    n = len(fns.fn_start)
    assert fns.function_at(inner + 2) is None
    want = DwarfInfo(str(path), store_cu=lambda o, i: None).lookup(inner + 2)
    got = d.lookup(inner + 2)
    assert got == want and got is not None and [f.name for f in got[0]] == ["inner"]
    assert d.cu(off) is fns and len(fns.fn_start) == n + 1 and d.stats["fns_decoded"] == 2
    stored = DiskCache(str(tmp_path)).load_cu(bid, off)
    assert isinstance(stored, CuFunctions) and len(stored.fn_start) == n + 1  # the gap is in the stored ranges
    assert len(list(tmp_path.rglob("fn-*.pkl"))) == 2
    restart = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **DiskCache(str(tmp_path)).hooks(bid))
    assert restart.lookup(inner + 2) == want and restart.stats["cus_decoded"] == restart.stats["fns_decoded"] == 0
    addrs = every_address(path)  # every address of the binary, the gaps' too, as the complete decode
    assert [restart.lookup(a) for a in addrs] == [DwarfInfo(str(path), store_cu=lambda o, i: None).lookup(a)
                                                  for a in addrs]


def test_an_address_between_functions_makes_the_cu_whole(built: dict[str, Path], tmp_path: Path) -> None:
    """By default an address no top-level function covers is answered by decoding the CU whole (its
    whole code is what says what is there): stored as one entry in place of the ranges, the function
    entries already stored for it removed; first meet and restart equal the complete decode."""
    path = built["nested"]
    bid = build_id(path)
    assert bid
    (inner, _), = [(a, s) for a, s, name in nm_sized(path) if name.startswith("inner")]
    outer = next(a for a, s, name in nm_sized(path) if name == "outer")
    cache = DiskCache(str(tmp_path))
    d = DwarfInfo(str(path), lazy_cu_bytes=0, **cache.hooks(bid))
    d.lookup(outer + 1)
    off = d._cu_for(inner + 2)
    assert off is not None and isinstance(d.cu(off), CuFunctions) and d.stats["fns_decoded"] == 1
    assert len(list(tmp_path.rglob("fn-*.pkl"))) == 1
    complete = DwarfInfo(str(path), store_cu=lambda o, i: None)
    assert d.lookup(inner + 2) == complete.lookup(inner + 2)
    assert d.stats["cus_made_whole"] == 1 and d.stats["fns_decoded"] == 1 and isinstance(d.cu(off), CuIndex)
    assert isinstance(DiskCache(str(tmp_path)).load_cu(bid, off), CuIndex)
    assert not list(tmp_path.rglob("fn-*.pkl")) and cache.stats["fn_dropped"] == 1
    addrs = every_address(path)
    want = [complete.lookup(a) for a in addrs]
    assert [d.lookup(a) for a in addrs] == want
    restart = DwarfInfo(str(path), lazy_cu_bytes=0, **DiskCache(str(tmp_path)).hooks(bid))
    assert [restart.lookup(a) for a in addrs] == want
    assert restart.stats["cus_decoded"] == restart.stats["fns_decoded"] == restart.stats["fns_loaded"] == 0
    assert restart.stats["cus_loaded"] >= 1 and restart._reader is None


def _fn_bytes(idx: CuFunctions) -> list[tuple[int, int]]:
    """(an address, code bytes) per top-level function of a big CU, smallest first."""
    out: dict[int, list[int]] = {}
    for lo, hi, die in zip(idx.fn_start, idx.fn_end, idx.fn_die, strict=True):
        out.setdefault(die, [lo, 0])[1] += hi - lo
    return sorted(((a, n) for a, n in out.values()), key=lambda f: (f[1], f[0]))


@pytest.mark.parametrize(("share", "min_fns"), [(0.3, 1), (0.5, 1), (0.8, 1), (0.05, 8), (0.5, 8)])
def test_a_big_cu_is_made_whole_when_its_decoded_functions_reach_the_share(built: dict[str, Path], tmp_path: Path,
                                                                           share: float, min_fns: int) -> None:
    """One address per function of the C++ program's one CU (143 KiB, 22 functions), smallest first: the
    functions are decoded one by one until, with the next, they would reach `share` of the CU's function
    bytes, `min_fns` of them at least; then the CU is decoded whole, stored as one entry, its function
    entries removed. Answers equal the complete decode's at every address, first meet and
    restart; the restart reads one entry and decodes nothing."""
    path = built["dwarf-cxx"]
    bid = build_id(path)
    assert bid
    probe = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, store_cu=lambda o, i: None,
                      store_fn=lambda o, d, f: None)
    (off,) = list(probe.reader().unit_offsets())
    idx = probe.cu(off)
    assert isinstance(idx, CuFunctions)
    fns, total = _fn_bytes(idx), idx.code_bytes()
    assert len(fns) >= 10 and total == sum(n for _, n in fns)
    spent, switch_at = 0, None
    for k, (_, n) in enumerate(fns):
        if k >= min_fns and spent + n >= share * total:
            switch_at = k
            break
        spent += n
    assert switch_at is not None and switch_at >= 2
    cache = DiskCache(str(tmp_path))
    d = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=share, whole_min_fns=min_fns, **cache.hooks(bid))
    complete = DwarfInfo(str(path), store_cu=lambda o, i: None)
    for k, (a, _) in enumerate(fns):
        assert d.lookup(a) == complete.lookup(a)
        assert d.stats["fns_decoded"] == min(k + 1, switch_at), (k, d.stats)
        assert d.stats["cus_made_whole"] == (1 if k >= switch_at else 0), (k, d.stats)
        assert len(list(tmp_path.rglob("fn-*.pkl"))) == (0 if k >= switch_at else k + 1)
    made, whole = d.cu(off), complete.cu(off)
    assert isinstance(made, CuIndex) and isinstance(whole, CuIndex) and not d._fns._data
    assert made.code is not None and whole.code is not None
    # the functions decoded before were spliced into the whole decode, not read again: the same index
    assert made.__getstate__()[:4] == whole.__getstate__()[:4]
    assert made.code.__getstate__() == whole.code.__getstate__()
    assert cache.stats["fn_stored"] == cache.stats["fn_dropped"] == switch_at
    addrs = every_address(path)
    want = [complete.lookup(a) for a in addrs]
    assert [d.lookup(a) for a in addrs] == want
    again = DiskCache(str(tmp_path))
    restart = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=share, whole_min_fns=min_fns, **again.hooks(bid))
    assert [restart.lookup(a) for a in addrs] == want
    assert restart.stats["cus_loaded"] == 1 and restart.stats["cus_decoded"] == restart.stats["fns_loaded"] == 0
    assert again.stats["fn_misses"] == 0 and restart._reader is None  # one entry read, no function looked for


def test_functions_loaded_from_the_cache_do_not_count_toward_the_share(built: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """A restart that loads stored functions pays nothing for them: only the functions it decodes count
    toward the share (so reading what the cache holds never triggers a whole decode)."""
    path = built["dwarf-cxx"]
    bid = build_id(path)
    assert bid
    first = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **DiskCache(str(tmp_path)).hooks(bid))
    (off,) = list(first.reader().unit_offsets())
    idx = first.cu(off)
    assert isinstance(idx, CuFunctions)
    fns, total = _fn_bytes(idx), idx.code_bytes()
    big = fns[::-1]  # biggest first: stored until they hold 60% of the CU's function bytes
    k = next(k for k in range(1, len(big) + 1) if sum(n for _, n in big[:k]) >= 0.6 * total)
    stored, rest = [a for a, _ in big[:k]], [a for a, _ in big[k:]]
    assert len(stored) >= 2 and rest
    for a in stored:
        first.lookup(a)
    assert first.stats["fns_decoded"] == len(stored)  # decoded here with the share on, they would make it whole
    restart = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=0.5, whole_min_fns=1,
                        **DiskCache(str(tmp_path)).hooks(bid))
    complete = DwarfInfo(str(path), store_cu=lambda o, i: None)
    assert [restart.lookup(a) for a in stored] == [complete.lookup(a) for a in stored]
    assert restart.stats["fns_loaded"] == len(stored) and restart.stats["fns_decoded"] == 0
    assert [restart.lookup(a) for a in rest] == [complete.lookup(a) for a in rest]
    # the rest hold under 40%: decoded one by one, never whole
    assert restart.stats["cus_made_whole"] == 0 and restart.stats["fns_decoded"] == len(rest)


GO = """package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
)

func main() {
	b, _ := json.Marshal(regexp.MustCompile(`a+`).FindAllString("aa b aaa", -1))
	fmt.Println(string(b), http.StatusOK)
}
"""


@pytest.fixture(scope="module")
def go_prog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("go")
    d = tmp_path_factory.mktemp("dwarf-go")
    (d / "main.go").write_text(GO)
    env = {**os.environ, "GO111MODULE": "off", "CGO_ENABLED": "0"}
    # uncompressed DWARF, so that libdw reads it too; Go's linker writes no build id
    subprocess.run(["go", "build", "-ldflags=-compressdwarf=false", "-o", str(d / "prog"), "main.go"], cwd=d, env=env,
                   check=True, capture_output=True)
    return d / "prog"


def test_libdw_finds_the_functions_the_python_scan_finds(built: dict[str, Path], go_prog: Path) -> None:
    """A big Go CU's functions' ranges come from libdw walking its top-level DIEs in C (Go's CUs carry no
    DW_AT_sibling: the Python scan reads every DIE). Both give the same (low, high, DIE) on every CU of
    the built programs, Go's and libpython's."""
    paths = [built[n] for n in ("dwarf-cxx", "dwarf-pie", "libdwarflib.so", "nested")] + [go_prog]
    lp = libpython()
    assert lp is not None, "pyenv's libpython3.11 is missing"
    for path in [*paths, lp]:
        lw = libdw.open_lines(str(path))
        assert lw is not None, path
        r = dr.Reader(read_sections(str(path)))
        found = 0
        for off in r.unit_offsets():
            u = r.unit_at(off)
            code, _ = dr.uleb(r.s.info, u.die_offset)
            if not code or u.abbrevs[code].tag != dr.TAG_compile_unit:
                continue
            want = _CuDecoder(r, u, 1, 0).functions()
            got = lw.functions(u.die_offset)
            assert got is not None and _disjoint(got) == want, (path, hex(off))
            found += len(want or [])
        assert found >= 2, path
        lw.close()


def test_go_big_cus_per_function_and_made_whole_equal_the_complete_decode(go_prog: Path, tmp_path: Path) -> None:
    """Go (no build id, no DW_AT_sibling): big CUs scanned by libdw, per function and made whole at the
    default share; every answer equal to the complete decode's, first meet and restart."""
    key = dwarf_digest(str(go_prog))
    assert key
    addrs = spread(functions(go_prog), 400, random.Random(7))
    cache = DiskCache(str(tmp_path))
    first = DwarfInfo(str(go_prog), **cache.hooks(key))
    got = [first.lookup(a) for a in addrs]
    assert got == [DwarfInfo(str(go_prog), store_cu=lambda o, i: None).lookup(a) for a in addrs]
    assert first.stats["libdw_scans"] >= 2 and first.stats["fns_decoded"] >= 20, first.stats
    lp = libpython()
    assert lp is not None
    c = DwarfInfo(str(lp), **DiskCache(str(tmp_path / "lp")).hooks("ee" * 20))
    for a in spread(functions(lp), 40, random.Random(7)):
        c.lookup(a)
    assert c.stats["fns_decoded"] > 0 and c.stats["libdw_scans"] == 0  # C: the Python scan jumps subtrees
    restart = DwarfInfo(str(go_prog), **DiskCache(str(tmp_path)).hooks(key))
    assert [restart.lookup(a) for a in addrs] == got
    assert restart.stats["cus_decoded"] == restart.stats["fns_decoded"] == 0 and restart._reader is None


def test_a_corrupt_function_entry_is_logged_and_rewritten(built: dict[str, Path], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = built["dwarf-cxx"]
    bid = build_id(path)
    assert bid
    addrs = every_address(path)[::7]
    want = [DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **DiskCache(str(tmp_path)).hooks(bid)).lookup(a)
            for a in addrs]
    torn = sorted(tmp_path.rglob("fn-*.pkl"))
    assert torn
    for f in torn:
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    cache = DiskCache(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="podflame.symbolizer"):
        third = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **cache.hooks(bid))
        assert [third.lookup(a) for a in addrs] == want
    assert cache.stats["errors"] == len(torn) and third.stats["fns_decoded"] == len(torn)
    assert str(torn[0]) in caplog.text and "rewritten" in caplog.text
    fourth = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **DiskCache(str(tmp_path)).hooks(bid))
    assert [fourth.lookup(a) for a in addrs] == want and fourth.stats["fns_decoded"] == 0  # rewritten whole


def test_the_byte_bound_holds_with_function_entries(built: dict[str, Path], tmp_path: Path) -> None:
    path = built["dwarf-cxx"]
    addrs = every_address(path)[::5]

    def fill(cache: DiskCache, key: str) -> None:
        d = DwarfInfo(str(path), lazy_cu_bytes=0, whole_share=None, **cache.hooks(key))
        for a in addrs:
            d.lookup(a)

    probe = DiskCache(str(tmp_path / "probe"))
    fill(probe, "aa" * 20)
    ((_, one, _),) = probe.usage()
    assert len(list((tmp_path / "probe").rglob("fn-*.pkl"))) >= 2
    bounded = DiskCache(str(tmp_path / "bounded"), max_bytes=int(one * 2.5))
    for k in "bcdef":
        fill(bounded, k * 40)
    bounded.trim()
    usage = bounded.usage()
    assert sum(size for _, size, _ in usage) <= bounded.max_bytes and len(usage) == 2
    assert bounded.stats["evicted"] == 3


def test_big_cus_of_real_libraries_persist_per_function_with_the_complete_decodes_answers(tmp_path: Path) -> None:
    """libpython (DWARF 5, 146 CUs, up to 900 KiB each) and libc's debug file, default threshold: the big
    CUs go function by function, the small ones whole; first meet and restart equal the complete decode."""
    lp, debug = libpython(), _libc_debug_file()
    if lp is None or debug is None:
        pytest.skip("pyenv's libpython3.11 or libc6-dbg is missing (scripts/setup.sh installs libc6-dbg)")
    rng = random.Random(19)
    for path, key in ((lp, ElfSymbols(str(lp)).build_id), (debug, "cc" * 20)):
        assert key
        addrs = spread(functions(path), 240, rng)
        cache = DiskCache(str(tmp_path / path.name))
        first = DwarfInfo(str(path), **cache.hooks(key))
        got = [first.lookup(a) for a in addrs[:120]]
        first.release()  # the agent's release: sections and libdw go; a function not yet decoded reads them again
        assert first._reader is None and first._libdw is None
        got += [first.lookup(a) for a in addrs[120:]]
        assert got == [DwarfInfo(str(path), store_cu=lambda o, i: None).lookup(a) for a in addrs], path
        restart = DwarfInfo(str(path), **DiskCache(str(tmp_path / path.name)).hooks(key))
        assert [restart.lookup(a) for a in addrs] == got, path
        assert restart.stats["cus_decoded"] == restart.stats["fns_decoded"] == 0 and restart._reader is None
        if path == lp:
            assert first.stats["fns_decoded"] > 50 and cache.stats["fn_stored"] == first.stats["fns_decoded"]
            small = sum(isinstance(idx, CuIndex) for idx, _ in first._cus._data.values())
            assert small > 5, "libpython has small CUs: stored whole"


def test_libdw_rows_read_from_its_array_equal_the_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """A function's rows come from libdw's row array when its layout checks out against the public
    API on that table (Debian's libdw1 0.188: it does), else through the API; both the same rows."""
    lp = libpython()
    if lp is None:
        pytest.skip("pyenv's libpython3.11.so.1.0 not found")
    fast = DwarfInfo(str(lp), lazy_cu_bytes=0, whole_share=None, store_cu=lambda o, i: None,
                     store_fn=lambda o, d, f: None)
    addrs = spread(functions(lp), 60, random.Random(5))
    fast_fns: list[FnIndex] = []
    for a in addrs:
        fast.lookup(a)
    fast_fns = [fn for fn, _ in fast._fns._data.values()]
    tables = [idx.lines for idx, _ in fast._cus._data.values() if isinstance(idx, CuFunctions)]
    assert tables and all(isinstance(t, libdw.LibdwLines) and isinstance(t._layout, struct.Struct) for t in tables), \
        "libdw's row layout changed: rows are read a ctypes call per field (correct, ~10x slower)"
    monkeypatch.setattr(libdw, "_check_layout", lambda lib, table, n: False)  # the API for every row
    slow = DwarfInfo(str(lp), lazy_cu_bytes=0, whole_share=None, store_cu=lambda o, i: None,
                     store_fn=lambda o, d, f: None)
    for a in addrs:
        assert slow.lookup(a) == fast.lookup(a)
    slow_fns = [fn for fn, _ in slow._fns._data.values()]
    assert [(f.row_addr, f.row_file, f.row_line, f.files) for f in slow_fns] == \
        [(f.row_addr, f.row_file, f.row_line, f.files) for f in fast_fns]
    monkeypatch.undo()
    monkeypatch.setattr(libdw, "_ROW_HEAD", "<4xQIi2xB")  # addresses at the wrong offset: refused by the check
    wrong = DwarfInfo(str(lp), lazy_cu_bytes=0, whole_share=None, store_cu=lambda o, i: None,
                     store_fn=lambda o, d, f: None)
    assert [wrong.lookup(a) for a in addrs] == [fast.lookup(a) for a in addrs]
    assert all(idx.lines._layout is False for idx, _ in wrong._cus._data.values()  # type: ignore[union-attr]
               if isinstance(idx, CuFunctions))


LINES_C = """{pad}#include <stdio.h>
__attribute__((noinline)) static int leaf(int n) {{ int s = 0; for (int i = 0; i < n; i++) s += i * i; return s; }}
int main(int argc, char **argv) {{ (void)argv; printf("%d\\n", leaf(argc * 1000)); return 0; }}
"""


def _frame_of(path: Path, function: str) -> tuple[Frame, int]:
    elf = ElfSymbols(str(path))
    text = next(s for s in elf.segments if s.executable)
    base = 0x5555_5555_4000
    m = Mapping(base + text.vaddr, base + text.vaddr + text.memsz, text.offset, str(path), None)
    (start, _), = [(a, s) for a, s, name in nm_sized(path) if name == function]
    return Frame(base + start + 4, m, FrameKind.NATIVE), start + 4


def _line(sym: Symbolizer, frame: Frame) -> tuple[str | None, int | None]:
    p = Profile(labels={}, start_ns=0, duration_ns=1, period_ns=1)
    p.add((frame,), 1)
    ((out,),) = sym.symbolize(p).samples
    return out.lines[0].function, out.lines[0].line


def test_a_binary_without_build_id_keeps_its_dwarf_in_the_cache_keyed_by_its_bytes(tmp_path: Path) -> None:
    """Go's linker and --build-id=none leave no build id: the DWARF is keyed by a digest of its sections,
    so a restart reads the cache, and a rebuild that moved only line numbers (same code, same symbols)
    is decoded again, never answered with the old lines."""
    need_tools("gcc", "nm")
    exe = tmp_path / "prog"
    src = tmp_path / "prog.c"
    src.write_text(LINES_C.format(pad=""))
    subprocess.run(["gcc", "-O2", "-g", "-fPIE", "-pie", "-Wl,--build-id=none", "-o", str(exe), str(src)], check=True)
    assert ElfSymbols(str(exe)).build_id is None
    frame, _ = _frame_of(exe, "leaf")
    root = str(tmp_path / "cache")
    first = Symbolizer(kallsyms_path="/dev/null", disk_cache=DiskCache(root))
    want = _line(first, frame)
    assert want[0] == "leaf" and want[1] == 2
    key = dwarf_digest(str(exe))
    assert key and any(p.name == key for p in Path(root).rglob("*"))
    restart = Symbolizer(kallsyms_path="/dev/null", disk_cache=DiskCache(root))
    assert _line(restart, frame) == want
    (dwarf,) = [d for d, _ in restart._dwarfs._data.values() if d is not None]
    assert dwarf.stats["cus_loaded"] == 1 and dwarf.stats["cus_decoded"] == 0 and dwarf._reader is None
    src.write_text(LINES_C.format(pad="/* one more line */\n"))  # same code and symbols, lines one down
    subprocess.run(["gcc", "-O2", "-g", "-fPIE", "-pie", "-Wl,--build-id=none", "-o", str(exe), str(src)], check=True)
    assert dwarf_digest(str(exe)) != key
    moved, _ = _frame_of(exe, "leaf")
    assert _line(Symbolizer(kallsyms_path="/dev/null", disk_cache=DiskCache(root)), moved) == ("leaf", 3)
