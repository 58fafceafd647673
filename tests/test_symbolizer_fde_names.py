"""Frames in code no symbol names (a stripped binary's static functions) are named by their function's start,
read from .eh_frame_hdr, so one function is one frame; code without CFI keeps its own address.

The oracles: `nm -S` of the same build before `strip` (where each function begins and ends) and readelf's FDEs.
Before, every sampled instruction of such a function was a frame of its own (`unnamed_funcs+0x1219`,
`+0x121d`, ...): openssl's SHA-256 leaf in libcrypto's assembly read as 38 names in a 3 s capture.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from podflame.model import Frame, FrameKind, Unresolved
from profiler.procmaps import MapsCache
from symbolizer import Symbolizer
from symbolizer.elf import ElfSymbols
from symbolizer.elffile import ElfFile
from symbolizer.fdespans import fde_spans
from tests.realsys import WORKLOADS
from tests.test_symbolizer import resolve
from tests.test_symbolizer_build import nm_functions, running

FUNCS = ("hot_leaf", "hot_mid", "main")


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the -O2 build, the same stripped of every symbol)."""
    d = tmp_path_factory.mktemp("unnamed")
    full, bare = d / "unnamed_funcs_full", d / "unnamed_funcs"
    subprocess.run(["gcc", "-O2", "-o", str(full), str(WORKLOADS / "unnamed_funcs.c")], check=True)
    shutil.copy(full, bare)
    subprocess.run(["strip", "--strip-all", str(bare)], check=True)
    assert not nm_functions(bare, dynamic=True).keys() & {*FUNCS, "nocfi_spin"}
    return full, bare


def readelf_fdes(path: Path) -> list[tuple[int, int]]:
    out = subprocess.run(["readelf", "--debug-dump=frames", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return sorted((int(a, 16), int(b, 16)) for a, b in re.findall(r"FDE .*pc=([0-9a-f]+)\.\.([0-9a-f]+)", out))


def test_spans_are_readelfs_fdes(builds: tuple[Path, Path]) -> None:
    full, bare = builds
    with open(bare, "rb") as f:
        spans = fde_spans(ElfFile(f))
    assert spans is not None
    assert list(zip(spans.starts, spans.ends, strict=True)) == readelf_fdes(bare) == readelf_fdes(full)
    funcs = nm_functions(full)
    for name in FUNCS:
        start, size = funcs[name]
        assert {spans.start_of(a) for a in (start, start + size // 2, start + size - 1)} == {start}, name
    nocfi, size = funcs["nocfi_spin"]
    assert all(spans.start_of(a) is None for a in range(nocfi, nocfi + size))
    libz = "/usr/lib/x86_64-linux-gnu/libz.so.1"  # Debian's: stripped to .dynsym, its internals unnamed
    with open(libz, "rb") as f:
        real = fde_spans(ElfFile(f))
    assert real is not None and list(zip(real.starts, real.ends, strict=True)) == readelf_fdes(Path(libz))


def test_a_stripped_function_is_one_frame_named_by_its_start(builds: tuple[Path, Path]) -> None:
    full, bare = builds
    funcs = nm_functions(full)
    maps = MapsCache()
    sym = Symbolizer(maps, debug_dirs=())
    with running(bare) as r:
        maps.refresh([r.pid])

        def frame(address: int) -> Frame:
            return Frame(address, maps.lookup(r.pid, address), FrameKind.NATIVE)

        def start_name(name: str) -> str:
            at = r.addresses[name]
            m = maps.lookup(r.pid, at)
            assert m is not None
            return f"{bare.name}+{at - m.start + m.offset:#x}"

        for name in ("hot_leaf", "hot_mid"):
            at, size = r.addresses[name], funcs[name][1]
            for address in (at, at + size // 2, at + size - 1):  # as the leaf: its own address is looked up
                (f,) = resolve(sym, r.pid, [frame(address)])
                assert f.reason is None and f.names() == (start_name(name),), (name, hex(address - at))
        # a return address (a caller's frame) just past its call: the byte before is looked up
        call_site = r.addresses["hot_mid"] + funcs["hot_mid"][1] // 2
        caller, leaf = resolve(sym, r.pid, [frame(call_site), frame(r.addresses["hot_leaf"] + 4)])
        assert caller.names() == (start_name("hot_mid"),) and leaf.names() == (start_name("hot_leaf"),)
        # no CFI: the address itself, unresolved, as before
        nocfi = r.addresses["nocfi_spin"] + 2
        (f,) = resolve(sym, r.pid, [frame(nocfi)])
        m = f.mapping
        assert m is not None and f.reason is Unresolved.NO_SYMBOLS and not f.lines
        assert f.fallback_name() == f"{bare.name}+{nocfi - m.start + m.offset:#x}"
    with running(full) as r:  # the build with symbols (the same build id: another symbolizer) by its symbols
        maps.refresh([r.pid])
        at = r.addresses["hot_leaf"] + 4
        (f,) = resolve(Symbolizer(maps, debug_dirs=()), r.pid, [Frame(at, maps.lookup(r.pid, at), FrameKind.NATIVE)])
        assert f.names() == ("hot_leaf",)


def test_a_binary_read_from_bytes_or_gone_keeps_addresses(builds: tuple[Path, Path], tmp_path: Path) -> None:
    """No file to read the FDEs from (the vDSO's image after its symbols were read, an exited process's
    map_files): no start, so the frame keeps its address."""
    _, bare = builds
    elf = ElfSymbols(bare.read_bytes())
    assert len(elf) >= 0  # reads the symbols, then drops the bytes
    assert elf.function_start(0x1000) is None
    gone = tmp_path / "gone"
    shutil.copy(bare, gone)
    elf = ElfSymbols(str(gone))
    gone.unlink()
    assert elf.function_start(nm_functions(builds[0])["hot_leaf"][0]) is None
