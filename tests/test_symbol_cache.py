"""The symbol-table disk cache for binaries without a build id (Go's internal linker, `--build-id=none`):
keyed by the tables' own bytes, never by path or inode (both are reused by other files), so a restart reads
the table from the cache, a rebuilt binary at the same path is read again, a corrupt entry is logged and
rewritten, and no frame ever gets another binary's name."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from podflame.model import Frame, FrameKind, Profile
from profiler.procmaps import MapsCache
from symbolizer import Symbolizer
from symbolizer.diskcache import DiskCache
from symbolizer.elf import ElfSymbols
from tests.test_symbolizer_build import FIXTURES, need_tools, nm_functions, running

RENAMED_C = """
#include <stdio.h>
__attribute__((noinline)) static unsigned long renamed_leaf(unsigned long n) { return n * 3 + 1; }
__attribute__((noinline)) unsigned long other_work(unsigned long n) { return renamed_leaf(n) + 2; }
int main(void) { printf("%lu\\n", other_work(5)); return 0; }
"""


def _gcc(out: Path, *args: str) -> Path:
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-Wl,--build-id=none", "-o", str(out), *args],
                   check=True, capture_output=True)
    return out


@pytest.fixture
def no_build_id(tmp_path: Path) -> Path:
    need_tools("gcc", "nm")
    exe = _gcc(tmp_path / "prog", "-fPIE", "-pie", str(FIXTURES / "symprog.c"))
    assert ElfSymbols(str(exe)).build_id is None
    return exe


def _symbolize(cache: DiskCache, exe: Path, names: tuple[str, ...]) -> tuple[list[str], Symbolizer]:
    """A fresh symbolizer (a restarted agent) naming `names`' addresses in a running `exe`, as leaves."""
    maps = MapsCache()
    sym = Symbolizer(maps, disk_cache=cache, dwarf=False)
    with running(exe) as r:
        maps.refresh([r.pid])
        got = []
        for name in names:
            addr = r.addresses[name] + 1
            prof = Profile(labels={"pid": str(r.pid)}, start_ns=0, duration_ns=1, period_ns=1)
            prof.add((Frame(addr, maps.lookup(r.pid, addr), FrameKind.NATIVE),), 1)
            ((frame,),) = sym.symbolize(prof).samples
            got.append(frame.names()[-1])
    return got, sym


def test_a_binary_without_build_id_is_read_once_then_from_the_cache(no_build_id: Path, tmp_path: Path) -> None:
    cache = DiskCache(str(tmp_path / "cache"))
    names = ("static_leaf", "global_work", "main")
    first, _ = _symbolize(cache, no_build_id, names)
    assert first == list(names) and cache.stats["symbols_hits"] == 0
    stored = list((tmp_path / "cache").rglob("symbols.pkl"))
    assert len(stored) == 1
    again, _ = _symbolize(cache, no_build_id, names)  # a restart: the table from the cache
    assert again == list(names) and cache.stats["symbols_hits"] == 1
    digest = ElfSymbols(str(no_build_id)).table_digest()
    assert digest is not None and digest in str(stored[0])
    copy = tmp_path / "elsewhere" / "prog"  # the same bytes at another path (another container): the same entry
    copy.parent.mkdir()
    shutil.copy(no_build_id, copy)
    assert ElfSymbols(str(copy)).table_digest() == digest


def test_a_rebuilt_binary_at_the_same_path_is_read_again_never_named_from_the_old_table(
        no_build_id: Path, tmp_path: Path) -> None:
    cache = DiskCache(str(tmp_path / "cache"))
    _symbolize(cache, no_build_id, ("static_leaf",))
    old = ElfSymbols(str(no_build_id)).table_digest()
    src = tmp_path / "renamed.c"
    src.write_text(RENAMED_C)
    _gcc(no_build_id, "-fPIE", "-pie", str(src))  # same path (and maybe the same inode): other symbols
    new = ElfSymbols(str(no_build_id))
    assert new.build_id is None and new.table_digest() != old
    new.load_symbols = cache.symbols_loader(new, new.table_digest())
    funcs = nm_functions(no_build_id)
    assert new.lookup(funcs["renamed_leaf"][0] + 1) == "renamed_leaf" and cache.stats["symbols_hits"] == 0
    assert "static_leaf" not in new.ranges.names and len(list((tmp_path / "cache").rglob("symbols.pkl"))) == 2


def test_a_corrupt_entry_is_logged_read_again_and_rewritten(no_build_id: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = DiskCache(str(tmp_path / "cache"))
    names = ("static_leaf", "global_work")
    _symbolize(cache, no_build_id, names)
    (entry,) = (tmp_path / "cache").rglob("symbols.pkl")
    entry.write_bytes(b"\x80\x05not a pickle at all")
    with caplog.at_level(logging.WARNING, logger="podflame.symbolizer"):
        got, _ = _symbolize(cache, no_build_id, names)
    assert got == list(names) and cache.stats["errors"] == 1 and cache.stats["symbols_hits"] == 0
    assert any("cannot load" in r.getMessage() and str(entry) in r.getMessage() for r in caplog.records)
    again, _ = _symbolize(cache, no_build_id, names)  # rewritten by the read above
    assert again == list(names) and cache.stats["symbols_hits"] == 1 and cache.stats["errors"] == 1


def test_the_cache_stays_under_its_byte_bound(no_build_id: Path, tmp_path: Path) -> None:
    """Past max_bytes whole entries go, least recently used first (trim runs on the first store and every 64th)."""
    root = tmp_path / "cache"
    big = DiskCache(str(root))
    _symbolize(big, no_build_id, ("static_leaf",))
    one = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    small = DiskCache(str(root), max_bytes=one + one // 2)  # room for one entry, not two
    src = tmp_path / "renamed.c"
    src.write_text(RENAMED_C)
    other = _gcc(tmp_path / "other", "-fPIE", "-pie", str(src))
    elf = ElfSymbols(str(other))
    elf.load_symbols = small.symbols_loader(elf, elf.table_digest())
    assert elf.lookup(nm_functions(other)["renamed_leaf"][0] + 1) == "renamed_leaf"
    assert len(list(root.rglob("symbols.pkl"))) == 1 and small.stats["evicted"] == 1
    assert sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) <= small.max_bytes
