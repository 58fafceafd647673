"""Text moved into anonymous memory over its file (node --use-largepages=on) read as the file's, by PROCMAP_QUERY
and from the text alike; nothing else anonymous is (tests/test_unwind_moved_text_bpf.py samples it)."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import pytest

import profiler.procmaps as procmaps
from tests.realsys import WORKLOADS

NODE = """\
00400000-00b6f000 r--p 00000000 fe:00 260689                             /usr/bin/node
00b6f000-00b71000 r-xp 0076f000 fe:00 260689                             /usr/bin/node
00b72000-00c00000 r-xp 00772000 fe:00 260689                             /usr/bin/node
00c00000-02400000 r-xp 00000000 00:00 0
02400000-025fe000 r-xp 02000000 fe:00 260689                             /usr/bin/node
02600000-02601000 r-xp 02200000 fe:00 260689                             /usr/bin/node
02601000-0563a000 r--p 02201000 fe:00 260689                             /usr/bin/node
7fd953e40000-7fd953fd2000 r-xp 00000000 00:00 0
7fd953fd2000-7fd953fe0000 r-xp 00000000 00:00 0
7fd953fe0000-7fd953fe8000 r-xp 00001000 fe:00 339381                             /usr/lib/x86_64-linux-gnu/libz.so.1
7fd953fe8000-7fd953ff0000 r-xp 00000000 00:00 0
7fd953ff0000-7fd953ff8000 r-xp 00012000 fe:00 339381                             /usr/lib/x86_64-linux-gnu/libz.so.1
"""


def _key(e: procmaps.MapsEntry) -> procmaps.ExecVma:
    major, _, minor = e.dev.partition(":")
    return e.start, e.end, (5, e.offset, int(major, 16), int(minor, 16), e.inode, e.path.encode())


def test_the_middle_of_nodes_text_in_huge_pages_is_nodes_and_jit_code_is_not() -> None:
    got = procmaps.parse_exec_maps(NODE)
    moved = next(e for e in got if e.start == 0xC00000)
    # node's text from 0xb72000 (offset 0x772000) runs on to 0x2400000 (offset 0x2000000): the hole is its
    assert (moved.path, moved.inode, moved.dev, moved.offset) == ("/usr/bin/node", 260689, "fe:00", 0x800000)
    # JIT code (two anonymous mappings in a row), and a hole between two mappings of libz whose offsets the hole
    # does not continue (0x9000 + 0x8000 != 0x12000): left anonymous
    assert [e.path for e in got if e.start >= 0x7FD953E40000] == ["", "", "/usr/lib/x86_64-linux-gnu/libz.so.1", "",
                                                                "/usr/lib/x86_64-linux-gnu/libz.so.1"]
    # the ioctl's VMAs: the same answer, the moved one under its file's key
    raw = [_key(e) for e in procmaps.parse_exec_maps(NODE.replace("fe:00 260689", "fe:00 260688"))]
    raw = [(s, e, k) if k[4] != 260688 else (s, e, (*k[:4], 260689, k[5])) for s, e, k in raw]
    raw[2] = (0xC00000, 0x2400000, (5, 0, 0, 0, 0, b""))
    vmas = list(procmaps._text_moved(raw))
    assert vmas[2] == (0xC00000, 0x2400000, (5, 0x800000, 0xFE, 0, 260689, b"/usr/bin/node"))
    assert [v[2][4] for v in vmas[5:]] == [0, 0, 339381, 0, 339381]


def test_a_process_that_moved_its_text_reads_as_its_file(tmp_path: Path) -> None:
    exe = tmp_path / "moved_text"
    subprocess.run(["gcc", "-O2", "-fno-toplevel-reorder", "-pthread", "-o", str(exe),
                    str(WORKLOADS / "moved_text.c"), "-ldl"], check=True)
    proc = subprocess.Popen([str(exe), "remap", "30"])
    try:
        deadline = time.monotonic() + 10
        # copied and made executable again: an unnamed r-xp line (not the vDSO's, which is named)
        while not any(ln.split()[1:] == ["r-xp", "00000000", "00:00", "0"]
                      for ln in Path(f"/proc/{proc.pid}/maps").read_text().splitlines()) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        for query in (True, False):
            mine = [e for e in procmaps.read_exec_maps(proc.pid, query=query) if e.start < 0x7F0000000000]
            assert len(mine) == 3 and all(e.path == str(exe) for e in mine), mine
            assert all(a.end == b.start and a.offset + (a.end - a.start) == b.offset
                       for a, b in itertools.pairwise(mine))
    finally:
        proc.kill()
        proc.wait()


def test_a_mapping_read_before_another_file_took_its_range_keeps_its_own_file(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """dlclose(a); dlopen(b) maps b over a's range. A drain's samples taken before are looked up in a's mapping;
    its file must not be b's (the file was matched by range alone: the symbolizer found b's build id under a's
    name and left a's frames unnamed, `libdlswap_a.so+0x1179` in 11-19% of a capture straddling the swap)."""
    from tests.test_procmaps import FakeProc, line
    from tests.test_symbolizer_build import built

    binaries = built(tmp_path_factory)
    fake = FakeProc(tmp_path / "proc")
    lo, hi = 0x7F0000010000, 0x7F0000011000
    fake.add(90, line(lo, hi, str(binaries.lib), 0x1000))
    maps = procmaps.MapsCache(str(fake.root))
    maps.refresh([90])
    old = maps.lookup(90, lo + 0x10)
    assert old is not None and old.path == str(binaries.lib)
    assert maps.file(90, old).paths[-1] == str(binaries.lib)  # type: ignore[union-attr]
    fake.add(90, line(lo, hi, str(binaries.pie), 0x1000))  # the other library, at the same range
    maps.prefetch([procmaps.NewProcess(90, 100, [(lo, hi, (5, 0x1000, 0xFD, 1, 43, str(binaries.pie).encode()))])])
    new = maps.lookup(90, lo + 0x10)
    assert new is not None and new.path == str(binaries.pie)
    assert maps.file(90, new).paths[-1] == str(binaries.pie)  # type: ignore[union-attr]
    # the old mapping's own file: its path and identity (from the image the re-read replaced, or none at all), so
    # the symbolizer opens a's path rather than b's map_files
    mf = maps.file(90, old)
    st = os.stat(binaries.lib)
    assert mf is None or (mf.paths[-1] == str(binaries.lib) and mf.key == (st.st_dev, st.st_ino, st.st_mtime_ns))
