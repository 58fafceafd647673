"""Line tables from libdw (symbolizer.libdw) against the pure-Python line programs they replace for
lazy lookups: the same answers at every address of small binaries (DWARF 5 and 4, compressed
sections, a separate debug file) and of a sample of libpython; the fallback when libdw is missing or
disabled; and the row budget that bounds what libdw keeps."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from symbolizer import libdw
from symbolizer.dwarf import DwarfInfo
from symbolizer.elf import ElfSymbols
from tests.test_dwarf_corpus import FIXTURES, _libc_debug_file, functions, libpython, spread
from tests.test_symbolizer_build import need_tools

LIBDW_MISSING = "libdw.so.1 (Debian libdw1, installed by scripts/setup.sh) cannot be loaded"


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """dwarfprog.c as DWARF 5, DWARF 4 and with zlib-compressed debug sections; dwarfprog.cc as C++."""
    need_tools("gcc", "g++", "nm")
    d = tmp_path_factory.mktemp("dwarf-libdw")
    out = {}
    for name, cc, src, flags in (("dwarf5", "gcc", "dwarfprog.c", ["-gdwarf-5"]),
                                 ("dwarf4", "gcc", "dwarfprog.c", ["-gdwarf-4"]),
                                 ("compressed", "gcc", "dwarfprog.c", ["-gz=zlib"]),
                                 ("cxx", "g++", "dwarfprog.cc", [])):
        subprocess.run([cc, "-O2", "-g", *flags, f"-I{FIXTURES}", "-o", str(d / name), str(FIXTURES / src)],
                       check=True, capture_output=True)
        out[name] = d / name
    return out


def every_address(path: Path) -> list[int]:
    return [a for start, size in functions(path) for a in range(start, start + size)]


def both_ways(path: str, addresses: list[int], **kwargs: object) -> tuple[DwarfInfo, DwarfInfo]:
    """Lazy lookups with libdw's line tables and with Python's, asserted equal everywhere."""
    fast, slow = DwarfInfo(path, use_libdw=True, **kwargs), DwarfInfo(path, use_libdw=False)  # type: ignore[arg-type]
    for a in addresses:
        assert fast.lookup(a) == slow.lookup(a), f"{path} {a:#x}"
    assert slow.stats["libdw_line_tables"] == 0
    return fast, slow


def test_libdw_loads() -> None:
    assert libdw.open_lines(str(Path(os.__file__))) is None  # not ELF: no libdw handle, no exception
    lp = libpython() or Path("/lib/x86_64-linux-gnu/libc.so.6")
    f = libdw.open_lines(str(lp))
    assert f is not None, LIBDW_MISSING
    f.close()


@pytest.mark.parametrize("name", ["dwarf5", "dwarf4", "compressed", "cxx"])
def test_same_lines_as_python_at_every_address(variants: dict[str, Path], name: str) -> None:
    fast, _ = both_ways(str(variants[name]), every_address(variants[name]))
    assert fast.stats["libdw_line_tables"] == fast.stats["cus_decoded"] >= 1


def test_same_lines_as_python_on_libpython_and_libc_debug_file() -> None:
    rng = random.Random(7)
    lp = libpython()
    if lp is None:
        pytest.skip("pyenv's libpython3.11.so.1.0 not found")
    fast, _ = both_ways(str(lp), spread(functions(lp), 3000, rng))
    assert fast.stats["libdw_line_tables"] == fast.stats["cus_decoded"] > 50
    debug = _libc_debug_file()  # a separate debug file found by build id: what DwarfInfo is given
    if debug is None:
        pytest.skip("libc6-dbg is not installed (scripts/setup.sh installs it)")
    assert ElfSymbols("/lib/x86_64-linux-gnu/libc.so.6", debug_dirs=["/usr/lib/debug"]).dwarf_file() == str(debug)
    fast, _ = both_ways(str(debug), spread(functions(debug), 2000, rng))
    assert fast.stats["libdw_line_tables"] == fast.stats["cus_decoded"] > 50


def test_env_var_and_missing_libdw_fall_back_to_python(variants: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = variants["dwarf5"]
    addrs = every_address(path)
    want = [DwarfInfo(str(path), use_libdw=True).lookup(a) for a in addrs]
    monkeypatch.setenv("PODFLAME_LIBDW", "0")
    off = DwarfInfo(str(path))
    assert [off.lookup(a) for a in addrs] == want and off.stats["libdw_line_tables"] == 0
    monkeypatch.delenv("PODFLAME_LIBDW")
    monkeypatch.setattr(libdw, "_lib", None)  # as on a host without libdw1: the load fails
    monkeypatch.setattr(libdw.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(f"{name}: not found")))
    missing = DwarfInfo(str(path))
    assert [missing.lookup(a) for a in addrs] == want and missing.stats["libdw_line_tables"] == 0
    assert libdw._lib is False


def test_row_budget_closes_libdw_and_answers_stay_the_same() -> None:
    """libdw keeps every table it decoded: past the DwarfInfo's row budget it is closed (its tables
    freed) and reopened for the next CU, and lookups in CUs decoded before still answer."""
    lp = libpython()
    if lp is None:
        pytest.skip("pyenv's libpython3.11.so.1.0 not found")
    addrs = spread(functions(lp), 400, random.Random(11))
    fast, slow = both_ways(str(lp), addrs + addrs[::-1], max_weight=240_000)
    assert fast.stats["libdw_resets"] >= 3
    assert fast._libdw is not None and fast._libdw.rows <= 240_000 // 4 + max(
        idx.lines.size for idx, _ in fast._cus._data.values() if isinstance(idx.lines, libdw.LibdwLines))
    fast.release()  # the agent's release: sections and libdw go, lookups decode again
    assert fast._libdw is None and [fast.lookup(a) for a in addrs[:50]] == [slow.lookup(a) for a in addrs[:50]]


def test_a_cu_decoded_for_the_disk_cache_uses_python_rows(variants: dict[str, Path]) -> None:
    """A CU persisted whole needs its rows in Python arrays: libdw is not used to decode it. A big CU
    persisted one function at a time takes each function's rows from libdw's table."""
    path = variants["cxx"]
    stored: list[int] = []
    whole = DwarfInfo(str(path), use_libdw=True, store_cu=lambda off, idx: stored.append(off))
    lazy = DwarfInfo(str(path), use_libdw=True)
    fns: list[int] = []
    per_fn = DwarfInfo(str(path), use_libdw=True, lazy_cu_bytes=0, whole_share=None, store_cu=lambda off, idx: None,
                       store_fn=lambda off, die, fn: fns.append(die))  # never made whole: every address is asked
    addrs = every_address(path)
    assert [whole.lookup(a) for a in addrs] == [lazy.lookup(a) for a in addrs] == [per_fn.lookup(a) for a in addrs]
    assert stored and whole.stats["libdw_line_tables"] == 0 and lazy.stats["libdw_line_tables"] >= 1
    assert per_fn.stats["libdw_line_tables"] == per_fn.stats["cus_decoded"] >= 1
    assert len(fns) == len(set(fns)) == per_fn.stats["fns_decoded"] >= 2
