"""unwind_mappings mapped into the agent (BPF_F_MMAPABLE): a process's mapping array is written with stores
instead of a BPF_MAP_UPDATE_BATCH syscall per process (profiler/unwind/maps.py). What the kernel reads must be
exactly what the syscalls wrote."""

from __future__ import annotations

import ctypes as ct
import os
import subprocess
import time

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
from profiler.unwind.maps import BPF_F_MMAPABLE, MAPPING, SPAN, STAT_SLOTS, WANTS_TABLE, UnwindMaps

pytestmark = pytest.mark.bpf

SLOTS = 64


def _maps(mmapable: bool) -> dict[str, BpfMap]:
    specs = [MapSpec("unwind_procs", MAP_HASH, 4, 8, 16),
             MapSpec("unwind_mappings", MAP_ARRAY, 4, 32, SLOTS, BPF_F_MMAPABLE if mmapable else 0),
             MapSpec("unwind_tables", MAP_ARRAY, 4, 8, 4), MapSpec("unwind_rows", MAP_ARRAY, 4, 12, 100),
             MapSpec("unwind_stats", MAP_PERCPU_ARRAY, 4, 8, len(STAT_SLOTS)),
             MapSpec("unwind_stale", MAP_HASH, 4, 1, 16), MapSpec("unwind_wanted", MAP_HASH, 16, 1, 16)]
    return {s.name: create_map(s) for s in specs}


def _lookup(m: BpfMap, key: int, size: int) -> bytes | None:
    value = ct.create_string_buffer(size)
    k = ct.c_uint32(key)
    try:
        bpf(_MAP_LOOKUP_ELEM, _Elem(map_fd=m.fd, key=ct.addressof(k), value=ct.addressof(value)))
    except OSError:
        return None
    return value.raw


def _kernel_view(maps: dict[str, BpfMap]) -> tuple[list[bytes | None], list[bytes | None]]:
    """Every slot of unwind_mappings and the span of tgids 1..9 in unwind_procs, as the kernel reads them."""
    return ([_lookup(maps["unwind_mappings"], i, 32) for i in range(SLOTS)],
            [_lookup(maps["unwind_procs"], t, 8) for t in range(1, 10)])


def test_a_mapped_array_reads_in_the_kernel_as_the_syscalls_wrote_it() -> None:
    """The same steps on two sets of real maps, one mapped and one written with syscalls: set a process (sorted,
    a mapping waiting for its table), another, fill the waiting mapping with a loaded table, replace a process
    (its slots reused by the next), remove one. After every step each slot reads the same in both."""
    rows = bytes(12 * 10)
    sets = {flag: _maps(flag) for flag in (True, False)}
    try:
        um = {flag: UnwindMaps(maps) for flag, maps in sets.items()}
        assert um[True]._mapping_memory is not None and um[False]._mapping_memory is None
        steps = [
            lambda m: m.set_process(3, [(0x7000, 0x8000, 0x6000, None, WANTS_TABLE), (0x1000, 0x2000, 0, None, 0)]),
            lambda m: m.binary("libc", rows) is not None and m.set_process(4, [(0x9000, 0xA000, -0x1000, "libc", 0)]),
            lambda m: m.binary("libc", b"") is not None and m.fill(3, (0x7000, 0x8000, 0x6000, "libc", 0)),
            lambda m: m.set_process(4, [(0x4000, 0x5000, 0x3000, None, WANTS_TABLE),
                                        (0x5000, 0x6000, 0x3000, None, 0), (0x9000, 0xA000, 0, None, 0)]),
            lambda m: m.set_process(5, [(0x2000, 0x3000, 0x2000, None, 0)]),  # the slots process 4 gave back
            lambda m: m.remove_process(3) is None,
        ]
        for i, step in enumerate(steps):
            assert step(um[True]) and step(um[False]), i
            assert _kernel_view(sets[True]) == _kernel_view(sets[False]), i
        p = um[True].processes[4]
        assert _lookup(sets[True]["unwind_procs"], 4, 8) == SPAN.pack(p.first, 3)
        assert _lookup(sets[True]["unwind_mappings"], p.first, 32) == \
            MAPPING.pack(0x4000, 0x5000, 0x3000, 0xFFFF_FFFF, WANTS_TABLE)
        assert _lookup(sets[True]["unwind_mappings"], p.first + 2, 32) == \
            MAPPING.pack(0x9000, 0xA000, 0, 0xFFFF_FFFF, 0)
        um[True].close()
        assert um[True]._mapping_memory is None
        assert um[True].set_process(6, [(0x1000, 0x2000, 0, None, 0)])  # by syscall once unmapped
        first = um[True].processes[6].first
        assert _lookup(sets[True]["unwind_mappings"], first, 32) == MAPPING.pack(0x1000, 0x2000, 0, 0xFFFF_FFFF, 0)
    finally:
        for maps in sets.values():
            for m in maps.values():
                os.close(m.fd)


def test_the_samplers_mapping_array_is_mapped_and_written_through_it() -> None:
    """The real sampler's unwind_mappings (bpf/native_unwind.bpf.h) is created mmapable, the loader writes a
    process's array through the mapping, and the kernel reads that array; closing the sampler unmaps it."""
    from profiler.sampler import Sampler

    proc = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)  # past exec and the dynamic loader: libc is mapped
        with Sampler(19, pids=[proc.pid], unwind="auto") as sampler:
            assert sampler.unwinder is not None
            maps = sampler.unwinder.maps
            assert maps._mappings.spec.flags & BPF_F_MMAPABLE
            assert maps._mapping_memory is not None
            p = maps.processes[proc.pid]
            assert p.count >= 2  # sleep and libc at least
            written = bytes(maps._mapping_memory[p.first * MAPPING.size:(p.first + p.count) * MAPPING.size])
            read = b"".join(_lookup(maps._mappings, p.first + i, MAPPING.size) or b"" for i in range(p.count))
            assert read == written
            starts = [MAPPING.unpack_from(read, i * MAPPING.size)[0] for i in range(p.count)]
            assert starts == sorted(starts) and starts[0] > 0
        assert maps._mapping_memory is None
    finally:
        proc.kill()
        proc.wait()
