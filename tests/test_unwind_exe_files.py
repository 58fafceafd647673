"""unwind_exe_files follows the loaded tables: a file's table is entered under the identity the kernel
computes from task->mm->exe_file (device in the kernel's encoding, inode, size, mtime), with its lowest
executable segment's vaddr, and leaves with the table's rows; no reference is taken, so an executable
whose processes all exited stays evictable. Real BPF maps shaped as bpf/native_unwind.bpf.h declares them."""

from __future__ import annotations

import ctypes as ct
import errno
import os
import struct

import pytest

from profiler.bpfprog import (
    _MAP_LOOKUP_ELEM,
    MAP_ARRAY,
    MAP_HASH,
    MAP_PERCPU_ARRAY,
    BpfMap,
    MapSpec,
    _Elem,
    bpf,
    create_map,
)
from profiler.unwind.maps import EXE, EXE_CONFIG_FIELDS, FILE_KEY, STAT_SLOTS, UnwindMaps

pytestmark = pytest.mark.bpf


def lookup(fd: int, key: bytes, size: int) -> bytes | None:
    value = ct.create_string_buffer(size)
    k = ct.create_string_buffer(key, len(key))
    try:
        bpf(_MAP_LOOKUP_ELEM, _Elem(map_fd=fd, key=ct.addressof(k), value=ct.addressof(value)))
    except OSError as e:
        assert e.errno == errno.ENOENT
        return None
    return value.raw


def unwind_maps() -> dict[str, BpfMap]:
    """Real maps shaped as the C declares them: a 100-row budget, 4 tables."""
    specs = [MapSpec("unwind_procs", MAP_HASH, 4, 8, 16), MapSpec("unwind_mappings", MAP_ARRAY, 4, 32, 16),
             MapSpec("unwind_tables", MAP_ARRAY, 4, 8, 4), MapSpec("unwind_rows", MAP_ARRAY, 4, 12, 100),
             MapSpec("unwind_stats", MAP_PERCPU_ARRAY, 4, 8, len(STAT_SLOTS)),
             MapSpec("unwind_stale", MAP_HASH, 4, 1, 16), MapSpec("unwind_wanted", MAP_HASH, 16, 1, 16),
             MapSpec("unwind_exe_files", MAP_HASH, FILE_KEY.size, EXE.size, 4),
             MapSpec("unwind_exe_config", MAP_ARRAY, 4, 8 * len(EXE_CONFIG_FIELDS), 1)]
    return {s.name: create_map(s) for s in specs}


def test_a_files_table_is_entered_by_its_identity_and_leaves_with_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODFLAME_UNWIND_EXE", raising=False)
    maps = unwind_maps()
    try:
        m = UnwindMaps(maps)
        assert m.exe_fallback  # this kernel's BTF has every member the kernel side reads
        config = lookup(maps["unwind_exe_config"].fd, struct.pack("<I", 0), 8 * len(EXE_CONFIG_FIELDS))
        assert config is not None and struct.unpack_from("<Q", config)[0] > 0  # task_struct.mm's offset
        st_dev = os.makedev(254, 1)  # userspace's encoding; the kernel's is major << 20 | minor
        identity = (st_dev, 4242, 9000, 1_700_000_000_123_456_789)
        row = struct.pack("<IhhBBH", 0x1000, 8, 0, 1, 0, 0)
        loaded = m.binary(identity, row * 60, exe_vaddr=0x2000)
        assert loaded is not None
        key = FILE_KEY.pack(4242, 9000, 1_700_000_000_123_456_789, (254 << 20) | 1, 0)
        assert lookup(maps["unwind_exe_files"].fd, key, EXE.size) == EXE.pack(0x2000, 0, loaded.table, 0)
        assert m.binary(("vdso", 1), row * 10, exe_vaddr=0x1000) is not None  # no file: not entered
        assert m.memory()["exe_files"] == 1
        m.release([identity, ("vdso", 1)])  # no process holds them: both evictable
        assert m.binary("other", row * 95) is not None  # evicts the file's rows, and its entry first
        assert identity not in m.binaries
        assert lookup(maps["unwind_exe_files"].fd, key, EXE.size) is None
    finally:
        for bm in maps.values():
            os.close(bm.fd)


def test_the_fallback_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODFLAME_UNWIND_EXE", "0")
    maps = unwind_maps()
    try:
        m = UnwindMaps(maps)
        assert not m.exe_fallback
        assert m.binary((1, 2, 3, 4), struct.pack("<IhhBBH", 0x1000, 8, 0, 1, 0, 0), exe_vaddr=0) is not None
        assert m.memory()["exe_files"] == 0
    finally:
        for bm in maps.values():
            os.close(bm.fd)
