"""The row and mapping allocator of profiler/unwind/maps.py: runs of slots that coalesce when freed,
so a node that loads and evicts binaries all day does not fragment its row budget away."""

from __future__ import annotations

import ctypes as ct
import os
import random
import struct

import pytest

from profiler.bpfprog import (
    _MAP_LOOKUP_ELEM,
    _MAP_UPDATE_ELEM,
    MAP_ARRAY,
    MAP_HASH,
    MAP_PERCPU_ARRAY,
    BpfMap,
    MapSpec,
    _Elem,
    _possible_cpus,
    bpf,
    create_map,
)
from profiler.unwind.maps import MAPPING, SPAN, STAT_SLOTS, WANT, WANTS_TABLE, Extents, UnwindMaps


def test_first_fit_and_exhaustion() -> None:
    e = Extents(100)
    assert e.alloc(60) == 0
    assert e.alloc(50) is None  # 40 left
    assert e.alloc(40) == 60
    assert e.alloc(1) is None and e.used == 100


def test_freed_runs_coalesce_on_both_sides() -> None:
    e = Extents(30)
    a, b, c = e.alloc(10), e.alloc(10), e.alloc(10)
    assert (a, b, c) == (0, 10, 20)
    e.free(0, 10)
    e.free(20, 10)
    assert e.alloc(20) is None  # two runs of 10, not one of 20
    e.free(10, 10)  # joins its neighbours into one run
    assert e.alloc(30) == 0 and e.used == 30


def test_random_churn_never_overlaps_and_gives_everything_back() -> None:
    rng = random.Random(7)
    e = Extents(1000)
    held: dict[int, int] = {}
    for _ in range(5000):
        if held and rng.random() < 0.5:
            start = rng.choice(list(held))
            e.free(start, held.pop(start))
        else:
            n = rng.randint(1, 80)
            start = e.alloc(n)
            if start is not None:
                assert all(start + n <= s or s + m <= start for s, m in held.items())
                held[start] = n
        assert e.used == sum(held.values())
    for start, n in list(held.items()):
        e.free(start, n)
    assert e.alloc(1000) == 0


@pytest.mark.bpf
def test_binaries_are_shared_refcounted_and_evicted_only_when_unused() -> None:
    """Real BPF maps shaped as bpf/native_unwind.bpf.h declares them, with a 100-row budget."""
    specs = {"unwind_procs": MapSpec("unwind_procs", MAP_HASH, 4, 8, 16),
             "unwind_mappings": MapSpec("unwind_mappings", MAP_ARRAY, 4, 32, 16),
             "unwind_tables": MapSpec("unwind_tables", MAP_ARRAY, 4, 8, 4),
             "unwind_rows": MapSpec("unwind_rows", MAP_ARRAY, 4, 12, 100),
             "unwind_stats": MapSpec("unwind_stats", MAP_PERCPU_ARRAY, 4, 8, 12),
             "unwind_stale": MapSpec("unwind_stale", MAP_HASH, 4, 1, 16),
             "unwind_wanted": MapSpec("unwind_wanted", MAP_HASH, 16, 1, 16)}
    maps = {name: create_map(spec) for name, spec in specs.items()}
    try:
        m = UnwindMaps(maps)
        a, b = rows(60, 0x1000), rows(50, 0x9000)
        assert m.binary("a", a) is not None  # a reference for the process being loaded...
        assert m.binary("b", b) is None  # ...so "a" is not evicted for "b"
        assert m.set_process(7, [(0x5000, 0x6000, 0x4000, "a", 0), (0x1000, 0x2000, 0, None, WANTS_TABLE)])
        assert m.binary("a", b"") is not None  # loaded already: shared, rows not needed
        assert m.set_process(8, [(0x5000, 0x6000, 0x4000, "a", 0)])
        p7 = m.processes[7].first  # sorted by start: the wanting mapping first, flag kept
        assert lookup(maps["unwind_mappings"], p7, 32) == MAPPING.pack(0x1000, 0x2000, 0, 0xFFFF_FFFF, WANTS_TABLE)
        assert m.binaries["a"].refs == 2
        m.remove_process(7)
        assert m.binary("b", b) is None  # nor while a process still uses it
        m.remove_process(8)
        assert (m.memory()["rejected_binaries"], m.memory()["rejected_rows"]) == (1, 50)  # once per binary
        assert m.room() == 100
        loaded = m.binary("b", b)  # unused now: evicted for "b"
        assert loaded is not None and "a" not in m.binaries
        assert lookup(maps["unwind_tables"], loaded.table, 8) == SPAN.pack(loaded.first, 50)
        assert lookup(maps["unwind_rows"], loaded.first + 3, 12) == b[36:48]
        assert m.set_process(9, [(0x9000, 0xA000, 0x8000, "b", 0)])
        assert lookup(maps["unwind_procs"], 9, 8) == SPAN.pack(m.processes[9].first, 1)
        first = m.processes[9].first
        assert lookup(maps["unwind_mappings"], first, 32) == MAPPING.pack(0x9000, 0xA000, 0x8000, loaded.table, 0)
        mem = m.memory()
        assert (mem["rows"], mem["rejected_binaries"], mem["processes"]) == (50, 0, 1)
    finally:
        for bm in maps.values():
            os.close(bm.fd)


def rows(n: int, base: int) -> bytes:
    return b"".join(struct.pack("<IhhBBH", base + 16 * i, 8, 0, 1, 0, 0) for i in range(n))


def lookup(m: BpfMap, key: int, size: int) -> bytes:
    value = ct.create_string_buffer(size)
    k = ct.c_uint32(key)
    bpf(_MAP_LOOKUP_ELEM, _Elem(map_fd=m.fd, key=ct.addressof(k), value=ct.addressof(value)))
    return value.raw


def _unwind_maps(procs: int = 16, mappings: int = 16, tables: int = 4, rows: int = 100) -> dict[str, BpfMap]:
    specs = {"unwind_procs": MapSpec("unwind_procs", MAP_HASH, 4, 8, procs),
             "unwind_mappings": MapSpec("unwind_mappings", MAP_ARRAY, 4, 32, mappings),
             "unwind_tables": MapSpec("unwind_tables", MAP_ARRAY, 4, 8, tables),
             "unwind_rows": MapSpec("unwind_rows", MAP_ARRAY, 4, 12, rows),
             "unwind_stats": MapSpec("unwind_stats", MAP_PERCPU_ARRAY, 4, 8, len(STAT_SLOTS)),
             "unwind_stale": MapSpec("unwind_stale", MAP_HASH, 4, 1, 16),
             "unwind_wanted": MapSpec("unwind_wanted", MAP_HASH, 16, 1, 4096)}
    return {name: create_map(spec) for name, spec in specs.items()}


def test_the_loader_reads_the_walkers_asks_when_they_were_counted() -> None:
    """As the walker does (bpf/native_unwind.bpf.h): count the ask in unwind_stats, then put it in
    unwind_wanted. The loader empties the 4096-bucket hash map only when the count moved since it last
    did; an ask put in while it was reading is read once the count moves again (the walker counts every
    ask, repeated or not), and maintain() wakes the worker for it even when no process is announced."""
    from profiler.unwind.loader import NativeUnwinder

    maps = _unwind_maps()
    cpus = _possible_cpus()
    try:
        u = NativeUnwinder(UnwindMaps(maps), lambda source: None)  # type: ignore[arg-type,return-value]
        asks = 0

        def ask(start: int, tgid: int, counted: bool = True) -> None:
            nonlocal asks
            if counted:
                asks += 1
                values = (ct.c_uint64 * cpus)(*([asks] + [0] * (cpus - 1)))
                key = ct.c_uint32(STAT_SLOTS.index("wanted"))
                bpf(_MAP_UPDATE_ELEM, _Elem(map_fd=maps["unwind_stats"].fd, key=ct.addressof(key),
                                            value=ct.addressof(values)))
            maps["unwind_wanted"].update(WANT.pack(start, tgid, 0), b"\x01")

        ask(0x1000, 7)
        u._take_wanted()
        assert u._wanted == {7: {0x1000}}
        ask(0x2000, 8, counted=False)  # counted just before the last read, put in just after it
        u._take_wanted()
        assert 8 not in u._wanted  # the count did not move: the map was not scanned
        u.maintain()
        assert u._queue.empty()  # nothing new to wake the worker for
        ask(0x2000, 8)  # the walker asks again (the entry is there: counted, not announced)
        u.maintain()
        assert u._queue.get_nowait() == []  # the worker is woken without an announcement
        u._take_wanted()
        assert u._wanted == {7: {0x1000}, 8: {0x2000}}
    finally:
        for bm in maps.values():
            os.close(bm.fd)


def _process_mappings(maps: dict[str, BpfMap], m: UnwindMaps, tgid: int) -> list[tuple[int, int, int, int, int]]:
    p = m.processes[tgid]
    assert lookup(maps["unwind_procs"], tgid, 8) == SPAN.pack(p.first, p.count)
    return [MAPPING.unpack(lookup(maps["unwind_mappings"], p.first + i, MAPPING.size)) for i in range(p.count)]


def _release(procs: list, maps: dict[str, BpfMap]) -> None:
    for p in procs:
        p.kill()
        p.wait()
    for bm in maps.values():
        os.close(bm.fd)


def _vdso_bias(pid: int) -> tuple[int, int]:
    """(start, bias) of the process's vDSO, from its maps and its image's first PT_LOAD (read here, not
    through the loader's ELF layer): bias = where it is mapped - where it is linked."""
    with open(f"/proc/{pid}/maps") as f:
        line = next(ln for ln in f if ln.rstrip().endswith("[vdso]"))
    start = int(line.split("-")[0], 16)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(start)
        head = mem.read(4096)
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr = struct.unpack_from("<IIQQ", head, phoff + i * phentsize)
        if p_type == 1 and p_offset == 0:
            return start, start - p_vaddr
    raise AssertionError("no PT_LOAD at offset 0 in the vDSO")


def test_a_vdso_placed_once_gets_each_process_its_own_bias() -> None:
    """The loader reads a new process's vDSO header only and reuses the table and ELF address of the one
    it placed first: every process still gets a mapping at its own (ASLR) base with its own bias, and a
    pid reused by a process whose vDSO is elsewhere gets the new one."""
    import subprocess
    import time

    from profiler.unwind.build import build_table
    from profiler.unwind.loader import NativeUnwinder

    maps = _unwind_maps(procs=64, mappings=1024, tables=64, rows=200_000)
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        time.sleep(0.3)  # past exec
        m = UnwindMaps(maps)
        u = NativeUnwinder(m, build_table)
        for p in procs:
            u._load_process(p.pid, take_wanted=False)
        vdso_tables = set()
        for p in procs:
            start, bias = _vdso_bias(p.pid)
            got = [mp for mp in _process_mappings(maps, m, p.pid) if mp[0] == start]
            assert len(got) == 1 and got[0][2] == bias and got[0][3] != 0xFFFF_FFFF, got
            vdso_tables.add(got[0][3])
        assert len(vdso_tables) == 1 and len(u._vdso_placed) == 1  # one image, built and loaded once
        assert len({_vdso_bias(p.pid)[0] for p in procs}) == 3  # ASLR: three bases
        # the first process's pid is taken by another process (its own vDSO base): loaded afresh
        u._seen.pop(procs[0].pid)
        other = subprocess.Popen(["sleep", "30"])
        procs.append(other)
        time.sleep(0.3)
        u._load_process(other.pid, take_wanted=False)
        m.remove_process(procs[0].pid)
        start, bias = _vdso_bias(other.pid)
        assert [mp[2] for mp in _process_mappings(maps, m, other.pid) if mp[0] == start] == [bias]
    finally:
        _release(procs, maps)


def _file_bias(pid: int, line: str) -> int:
    """The bias of an executable maps line's mapping, from its file's program headers (read here)."""
    fields = line.split()
    start, offset, path = int(fields[0].split("-")[0], 16), int(fields[2], 16), fields[5]
    lo, hi = (int(x, 16) for x in fields[0].split("-"))
    with open(f"/proc/{pid}/map_files/{lo:x}-{hi:x}", "rb") as f:
        head = f.read(4096)
    e_type, = struct.unpack_from("<H", head, 0x10)
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", head, phoff + i * phentsize)
        if p_type == 1 and p_offset <= offset < p_offset + max(p_filesz, 1):
            return 0 if e_type == 2 else start - (p_vaddr + offset - p_offset)
    raise AssertionError(f"no PT_LOAD holds offset {offset:#x} of {path}")


def test_each_process_of_a_known_binary_is_placed_at_its_own_base(tmp_path) -> None:
    """A new process of binaries placed before is loaded from their PROCMAP_QUERY keys alone: every mapping
    still gets its own process's bias (ASLR), and a binary rewritten in place (same path, device and inode,
    so the same key) at another link address is placed afresh once a drain has passed (maintain)."""
    import subprocess
    import time

    from profiler.unwind.build import build_table
    from profiler.unwind.loader import NativeUnwinder

    src = tmp_path / "spin.c"
    src.write_text("#include <unistd.h>\nint main(void) { for (;;) pause(); }\n")
    exe = tmp_path / "spin"

    def build(*flags: str) -> bytes:
        out = tmp_path / "spin.new"
        subprocess.run(["gcc", "-O2", *flags, "-o", str(out), str(src)], check=True)
        return out.read_bytes()

    exe.write_bytes(build())
    exe.chmod(0o755)
    maps = _unwind_maps(procs=64, mappings=1024, tables=64, rows=200_000)
    procs: list[subprocess.Popen] = []

    def check(m: UnwindMaps, pid: int) -> int:
        with open(f"/proc/{pid}/maps") as f:
            lines = [ln for ln in f if ln.split()[1][2] == "x" and len(ln.split()) > 5 and ln.split()[5][0] == "/"]
        loaded = {mp[0]: mp for mp in _process_mappings(maps, m, pid)}
        for line in lines:
            start = int(line.split("-")[0], 16)
            assert loaded[start][2] == _file_bias(pid, line), line
            if "/ld-linux" in line:  # not walked yet: no table, asked for by the first walk that needs it
                assert loaded[start][3:] == (0xFFFF_FFFF, WANTS_TABLE), line
            elif "/libc.so" in line or line.rstrip().endswith("/spin"):  # loaded with the process
                assert loaded[start][3:] != (0xFFFF_FFFF, WANTS_TABLE) and loaded[start][3] != 0xFFFF_FFFF, line
        return len(lines)

    try:
        m = UnwindMaps(maps)
        u = NativeUnwinder(m, build_table)
        for _ in range(3):
            procs.append(subprocess.Popen([str(exe)]))
        time.sleep(0.3)
        for p in procs:
            u._load_process(p.pid, take_wanted=False)
        assert all(check(m, p.pid) >= 2 for p in procs)  # the program and libc at least, each at its own base
        for p in procs:
            p.kill()
            p.wait()
        inode = exe.stat().st_ino
        with open(exe, "r+b") as f:  # rewritten in place: linked 2 MiB higher, same inode
            new = build("-Wl,-Ttext-segment=0x200000")
            f.write(new)
            f.truncate(len(new))
        assert exe.stat().st_ino == inode
        u.maintain()  # a drain passes
        procs.append(subprocess.Popen([str(exe)]))
        time.sleep(0.3)
        u._load_process(procs[-1].pid, take_wanted=False)
        check(m, procs[-1].pid)
    finally:
        _release(procs, maps)


def test_a_name_the_ioctl_gives_otherwise_falls_back_to_the_text_without_leaking_references(tmp_path) -> None:
    """A VMA whose name the maps text escapes (a newline) makes the loader place the process from the text
    instead; the references it took for the VMAs before it (placed from their keys) go back, so each
    binary's count is the processes holding it and unused ones can be evicted."""
    import subprocess
    import sys
    from pathlib import Path

    from profiler.unwind.build import build_table
    from profiler.unwind.loader import NativeUnwinder
    from tests.test_procmaps import _ODD_MAPPINGS

    names = [tmp_path / "first.so", tmp_path / "new\nline.so", tmp_path / "plain.so"]
    for name in names:
        name.write_bytes(Path("/bin/true").read_bytes())
    plain = subprocess.Popen([sys.executable, "-c", _ODD_MAPPINGS, str(names.pop())], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    proc = subprocess.Popen([sys.executable, "-c", _ODD_MAPPINGS, *map(str, names)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    maps = _unwind_maps(procs=64, mappings=1024, tables=64, rows=400_000)
    try:
        for p in (plain, proc):
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        m = UnwindMaps(maps)
        u = NativeUnwinder(m, build_table)
        u._load_process(plain.pid, everything=True, take_wanted=False)  # every table; placed by their keys
        m.remove_process(plain.pid)
        for _ in range(3):  # its binaries are found by their keys until the odd name sends it to the text
            u._seen.pop(proc.pid, None)
            u._load_process(proc.pid, take_wanted=False)
            held = m.processes[proc.pid].binaries
            assert held and all(m.binaries[key].refs == held.count(key) for key in m.binaries), \
                [(key, b.refs) for key, b in m.binaries.items()]
        assert any(len(k) == 4 for k in u._placed if isinstance(k, tuple))  # some placed from the text's lines
    finally:
        _release([plain, proc], maps)


def test_a_new_process_is_loaded_from_the_watchers_read(monkeypatch) -> None:
    """The loader's batch of announced processes (NewProcess: what the sampler's watcher read of each) is
    placed from those VMAs without reading the maps again, into the same mapping array a read of its own
    gives; a bare pid (a re-announcement) is read afresh."""
    import subprocess
    import time

    import profiler.unwind.loader as loader
    from profiler.procmaps import read_exec_maps, read_new_process
    from profiler.unwind.build import build_table

    maps = _unwind_maps(procs=64, mappings=1024, tables=64, rows=200_000)
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        for p in procs:
            for _ in range(200):
                if any(e.path.endswith("/sleep") for e in read_exec_maps(p.pid)):
                    break
                time.sleep(0.01)
        m = UnwindMaps(maps)
        u = loader.NativeUnwinder(m, build_table)
        u.load_batch([procs[0].pid])  # read by the loader itself
        news = [read_new_process(p.pid) for p in procs]
        reads: list[int] = []
        real = loader.read_exec_vmas

        def counted(pid: int, proc: str = "/proc") -> list | None:
            reads.append(pid)
            return real(pid, proc)

        monkeypatch.setattr(loader, "read_exec_vmas", counted)
        u._seen.clear()
        u.load_batch(news)  # type: ignore[arg-type]
        assert reads == []
        assert m.processes.keys() == {p.pid for p in procs}
        one, two = (_process_mappings(maps, m, p.pid) for p in procs)
        assert len(one) == len(two) >= 3  # sleep, libc, ld.so, the vDSO: each at its own process's addresses
        assert [mp[3:] for mp in one] == [mp[3:] for mp in two]  # the same tables and flags
        u.load_batch([procs[1].pid])
        assert reads == [procs[1].pid]
    finally:
        _release(procs, maps)


def test_a_small_binary_new_to_the_host_is_loaded_with_no_build_child(tmp_path) -> None:
    """The busy node's restart used to start a build child (0.12-0.14 s of CPU) for each binary new to
    the host's table cache, md5sum's 2 ms build included. Through the agent's real table source, a
    process whose only new binary is small gets its table built in the agent, loaded into the kernel
    and stored on disk, and no child starts; with agent builds off (the old behaviour, the peer) one does."""
    import shutil
    import subprocess
    import time

    from profiler.unwind.build import build_table
    from profiler.unwind.builder import TableSource
    from profiler.unwind.cache import TableCache
    from profiler.unwind.loader import NativeUnwinder

    exe = tmp_path / "md5sum-copy"  # a file new to the cache (keyed by its build id: a fresh root)
    shutil.copy("/usr/bin/md5sum", exe)
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE)  # waits on its stdin
    procs = [proc]
    maps = _unwind_maps(procs=64, mappings=1024, tables=64, rows=200_000)
    try:
        deadline = time.monotonic() + 30
        while True:  # past exec and the dynamic loader's mapping of libc (a loaded machine is slow)
            with open(f"/proc/{proc.pid}/maps") as f:
                lines = [ln.split() for ln in f if " r-xp " in ln or ln.rstrip().endswith("[vdso]")]
            names = {fields[-1] for fields in lines}
            if str(exe) in names and any(name.endswith("/libc.so.6") for name in names):
                break
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        image = None
        for root in (tmp_path / "agent", tmp_path / "child"):  # what the host has: every table but md5sum's
            cache = TableCache(str(root))
            for fields in lines:
                if fields[-1] == "[vdso]":
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    with open(f"/proc/{proc.pid}/mem", "rb") as mem:
                        mem.seek(start)
                        image = mem.read(end - start)
                    cache.store_image(image, build_table(image))
                elif fields[-1] != str(exe):
                    cache.get(fields[-1])
        results = {}
        for name, limit in (("agent", None), ("child", 0)):
            source = TableSource(str(tmp_path / name)) if limit is None else \
                TableSource(str(tmp_path / name), agent_cfi_bytes=limit)
            m = UnwindMaps(maps)
            u = NativeUnwinder(m, source)
            try:
                u.load_now([proc.pid])
                start = next(int(fields[0].split("-")[0], 16) for fields in lines if fields[-1] == str(exe))
                got = [mp for mp in _process_mappings(maps, m, proc.pid) if mp[0] == start]
                assert len(got) == 1 and got[0][3] != 0xFFFF_FFFF, got  # md5sum's table is in the kernel
                results[name] = (dict(source.stats), u.stats["tables_built_in_agent"])
                m.remove_process(proc.pid)
            finally:
                source.close()
        agent, child = results["agent"], results["child"]
        assert agent[0]["child_starts"] == 0 and agent[0]["agent_builds"] == 1 and agent[1] == 1, agent
        assert child[0]["child_starts"] == 1 and child[0]["child_builds"] == 1 and child[1] == 0, child
        assert TableCache(str(tmp_path / "agent")).lookup(str(exe)) is not None  # stored: a restart reads it
    finally:
        _release(procs, maps)


def test_a_small_table_is_not_built_behind_another_processs_big_one() -> None:
    """A batch's builds above QUICK_ROWS wait until its cheaper work is done: a process needing only small
    tables (sleep: ~1k rows) gets them before another process's big ones (bash, ~26k estimated rows, and
    libc) are built, though it was announced after it. Under load a pod's 21-row library waited ~1 s behind
    other processes' python3 and libcrypto builds (tests/test_fidelity_containers_bpf.py). The big builds
    come at the batch's end, the cheapest process first; while another batch is queued, one build only: the
    queued batch goes next, the rest after it (none waits for ever)."""
    import subprocess
    import time

    from profiler.unwind.build import build_table
    from profiler.unwind.loader import QUICK_ROWS, NativeUnwinder

    built: list[str] = []

    def source(path: str | bytes) -> object:
        built.append("[vdso]" if isinstance(path, bytes) else os.path.basename(os.readlink(path)))
        return build_table(path)

    procs = [subprocess.Popen(["bash", "-c", "read x"], stdin=subprocess.PIPE),
             subprocess.Popen(["sleep", "60"])]
    big, small = (p.pid for p in procs)
    maps = _unwind_maps(procs=64, mappings=1024, tables=64, rows=400_000)
    try:
        for p in procs:  # past exec and the dynamic loader's mapping of libc
            for _ in range(500):
                with open(f"/proc/{p.pid}/maps") as f:
                    text = f.read()
                if "/libc.so" in text and ("/bash" in text or "/sleep" in text):
                    break
                time.sleep(0.01)

        def tables(m: UnwindMaps, pid: int, name: str, field: int = 3) -> list[int]:
            with open(f"/proc/{pid}/maps") as f:
                starts = {int(ln.split("-")[0], 16) for ln in f if " r-xp " in ln and ln.rstrip().endswith(name)}
            return [mp[field] for mp in _process_mappings(maps, m, pid) if mp[0] in starts]

        def afresh() -> tuple[UnwindMaps, NativeUnwinder]:
            """Empty maps and a new loader: each part of the test starts with nothing built."""
            nonlocal maps
            for bm in maps.values():
                os.close(bm.fd)
            maps = _unwind_maps(procs=64, mappings=1024, tables=64, rows=400_000)
            built.clear()
            fresh = UnwindMaps(maps)
            return fresh, NativeUnwinder(fresh, source)  # type: ignore[arg-type]

        m = UnwindMaps(maps)
        u = NativeUnwinder(m, source)  # type: ignore[arg-type]
        u.load_batch([big, small])
        assert built.index("sleep") < built.index("bash") and built.index("sleep") < built.index("libc.so.6"), built
        assert u.stats["tables_postponed"] >= 2 and not u._later, u.stats
        for pid, name in ((big, "/bash"), (small, "/sleep"), (big, "/libc.so.6"), (small, "/libc.so.6")):
            got = tables(m, pid, name)
            assert got and all(t != 0xFFFF_FFFF for t in got), (name, got)  # every table loaded by the end
        assert QUICK_ROWS < 26_000

        # a batch queued meanwhile: one postponed process (the cheapest: sleep's libc), then the queued batch
        m, u = afresh()
        u._queue.put([])
        u.load_batch([big, small])
        assert "bash" not in built and built.count("libc.so.6") == 1 and list(u._later) == [big], built
        assert tables(m, big, "/bash") == [0xFFFF_FFFF]  # walked with frame pointers meanwhile, not asking
        assert tables(m, big, "/bash", 4) == [0] and WANTS_TABLE in tables(m, big, "/ld-linux-x86-64.so.2", 4)
        u.load_batch(u._queue.get_nowait())
        assert "bash" in built and not u._later
        assert all(t != 0xFFFF_FFFF for t in tables(m, big, "/bash"))

        # one big build, not one process's all, between queued batches: bash's, then the queued batch, then libc's
        m, u = afresh()
        u._queue.put([])
        u.load_batch([big])
        assert "bash" in built and "libc.so.6" not in built and list(u._later) == [big], built
        assert all(t != 0xFFFF_FFFF for t in tables(m, big, "/bash")) and tables(m, big, "/libc.so.6") == [0xFFFF_FFFF]
        u.load_batch(u._queue.get_nowait())
        assert "libc.so.6" in built and not u._later and tables(m, big, "/libc.so.6") != [0xFFFF_FFFF]
    finally:
        _release(procs, maps)


def test_a_copy_of_a_file_gets_the_table_of_the_first_with_its_build_id(tmp_path) -> None:
    """A container image's own libc, or one image layer under each pod's overlay mount (each mount its own
    device): the same bytes under another file identity. The first copy's table is built and loaded; a copy
    with its build id and layout gets that table (one build, one set of rows in the kernel) at its own bias."""
    import shutil
    import subprocess
    import time

    from profiler.unwind.build import build_table
    from profiler.unwind.loader import NativeUnwinder

    copies = [tmp_path / "sleep-a", tmp_path / "sleep-b"]
    for c in copies:
        shutil.copy("/usr/bin/sleep", c)
    assert copies[0].stat().st_ino != copies[1].stat().st_ino
    built: list[str] = []

    def source(path: str | bytes) -> object:
        built.append("[vdso]" if isinstance(path, bytes) else os.path.basename(os.readlink(path)))
        return build_table(path)

    procs = [subprocess.Popen([str(c), "60"]) for c in copies]
    maps = _unwind_maps(procs=64, mappings=1024, tables=64, rows=400_000)
    try:
        for p in procs:
            for _ in range(500):
                with open(f"/proc/{p.pid}/maps") as f:
                    if "/libc.so" in f.read():
                        break
                time.sleep(0.01)
        m = UnwindMaps(maps)
        u = NativeUnwinder(m, source)  # type: ignore[arg-type]
        u.load_now([procs[0].pid])
        loaded = len(m.binaries)
        u.load_now([procs[1].pid])
        assert built.count("sleep-a") == 1 and "sleep-b" not in built, built
        assert len(m.binaries) == loaded and u.stats["twins"] == 1  # no second set of rows

        def program(pid: int, name: str) -> tuple[int, int]:
            with open(f"/proc/{pid}/maps") as f:
                line = next(ln for ln in f if " r-xp " in ln and ln.rstrip().endswith(name))
            mp = next(mp for mp in _process_mappings(maps, m, pid) if mp[0] == int(line.split("-")[0], 16))
            assert mp[2] == _file_bias(pid, line), line  # each at its own base
            return mp[3], mp[4]

        first, second = program(procs[0].pid, "/sleep-a"), program(procs[1].pid, "/sleep-b")
        assert first == second and first[0] != 0xFFFF_FFFF, (first, second)  # the same table slot
    finally:
        _release(procs, maps)


@pytest.mark.bpf
def test_a_first_mapping_array_re_arms_only_a_pid_that_may_hold_a_walks_mark() -> None:
    """The kernel marks a process stale (unwind_stale) only while it has a mapping array. A new process's first
    array costs no delete of a mark it cannot have (the watcher writes ~10 arrays a second on a busy node); a pid
    whose earlier holder had an array, until the drain empties the marks, has its mark deleted as before, so the
    next walk outside its array announces it again; as does an array gaining ranges (a dlopen)."""
    from profiler.unwind.loader import NativeUnwinder

    maps = _unwind_maps()
    stale = maps["unwind_stale"]
    deletes: list[int] = []
    delete = stale.delete

    def counted(key: ct.c_uint32) -> None:
        deletes.append(key.value)
        delete(key)

    stale.delete = counted  # type: ignore[method-assign]
    try:
        m = UnwindMaps(maps)
        u = NativeUnwinder(m, lambda source: None)  # type: ignore[arg-type,return-value]
        exe = (0x5000, 0x6000, 0x4000, None, WANTS_TABLE)
        assert m.set_process(7, [exe]) and deletes == []  # never had an array: no mark to delete
        stale.update(ct.c_uint32(7), b"\x01")  # a walk left its array (dlopen) and marked it
        assert m.set_process(7, [exe, (0x9000, 0xA000, 0x8000, None, WANTS_TABLE)])  # gained a range
        assert deletes == [7] and not u._take_stale()  # re-armed
        stale.update(ct.c_uint32(7), b"\x01")  # marked again, then it exits before the drain
        m.remove_process(7)
        assert m.set_process(7, [exe])  # the pid reused (or the process exec'd) before the marks were emptied
        assert deletes == [7, 7] and not u._take_stale()  # its mark deleted: its walks can mark it again
        stale.update(ct.c_uint32(7), b"\x01")
        m.remove_process(7)
        assert u._take_stale() == [7]  # the drain empties the marks...
        assert m.set_process(7, [exe]) and deletes == [7, 7]  # ...after which no pid without an array holds one
        m.remove_process(7)
        stale.update(ct.c_uint32(7), b"\x01")  # marked while it had the array (a walk in flight)
        taken = m.taking_marks()
        m.marks_left(taken)  # the emptying failed: 7 may still hold its mark
        assert m.set_process(7, [exe]) and deletes == [7, 7, 7]
    finally:
        for bm in maps.values():
            os.close(bm.fd)
