"""The unwind loader places a new process from the layout of an earlier one with the same VMAs
(profiler/unwind/loader.py `_Layout`): what it writes into the kernel must be exactly what placing the
process VMA by VMA writes, and a layout must not be used once what it rested on changed.

Real processes (python3 with its extension modules, `sleep`), real tables (built into a temporary cache),
real BPF maps shaped as bpf/native_unwind.bpf.h declares them; the slow path is a second loader that has
never seen the layout."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiler.bpfprog import MAP_ARRAY, MAP_HASH, MAP_PERCPU_ARRAY, BpfMap, MapSpec, create_map
from profiler.procmaps import NewProcess, read_new_process
from profiler.unwind.loader import NativeUnwinder, cached_tables
from profiler.unwind.maps import MAPPING, NO_TABLE, STAT_SLOTS, UnwindMaps
from tests.test_unwind_exe_files import lookup

pytestmark = pytest.mark.bpf

PY = "import json, zlib, hashlib, decimal, time\nprint('ready', flush=True)\ntime.sleep(120)"


def _maps() -> dict[str, BpfMap]:
    specs = [MapSpec("unwind_procs", MAP_HASH, 4, 8, 64), MapSpec("unwind_mappings", MAP_ARRAY, 4, 32, 4096),
             MapSpec("unwind_tables", MAP_ARRAY, 4, 8, 256), MapSpec("unwind_rows", MAP_ARRAY, 4, 12, 1 << 20),
             MapSpec("unwind_stats", MAP_PERCPU_ARRAY, 4, 8, len(STAT_SLOTS)),
             MapSpec("unwind_stale", MAP_HASH, 4, 1, 16), MapSpec("unwind_wanted", MAP_HASH, 16, 1, 4096)]
    return {s.name: create_map(s) for s in specs}


@pytest.fixture
def loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[NativeUnwinder, NativeUnwinder]]:
    """Two loaders on maps of their own, sharing the on-disk table cache."""
    monkeypatch.setenv("PODFLAME_SYMBOL_CACHE", str(tmp_path / "cache"))
    made = [_maps(), _maps()]
    pair = [NativeUnwinder(UnwindMaps(m), cached_tables()) for m in made]
    try:
        yield pair[0], pair[1]
    finally:
        for loader, maps in zip(pair, made, strict=True):
            loader.close()
            for m in maps.values():
                os.close(m.fd)


@pytest.fixture
def processes() -> Iterator[dict[str, list[int]]]:
    """Four processes of each program, past python3's imports (the same VMAs in each, in an order ASLR picks),
    and a python3 that imports nothing (another layout: fewer extension modules)."""
    plain = "import time\nprint('ready', flush=True)\ntime.sleep(120)"
    procs = {"python": [subprocess.Popen(["/usr/bin/python3", "-c", PY], stdout=subprocess.PIPE) for _ in range(4)],
             "sleep": [subprocess.Popen(["sleep", "120"]) for _ in range(4)],
             "plain python": [subprocess.Popen(["/usr/bin/python3", "-c", plain], stdout=subprocess.PIPE)]}
    try:
        for p in procs["python"] + procs["plain python"]:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"  # imports done: its VMAs are all there
        for p in procs["sleep"]:  # past the dynamic loader: libc mapped
            deadline = time.monotonic() + 10
            while not any(b"/libc.so" in v[2][5] for v in _new(p.pid).vmas or ()):
                assert time.monotonic() < deadline, "sleep never mapped libc"
                time.sleep(0.01)
        yield {k: [p.pid for p in ps] for k, ps in procs.items()}
    finally:
        for ps in procs.values():
            for p in ps:
                p.kill()
                p.wait()


def _new(pid: int) -> NewProcess:
    new = read_new_process(pid)
    assert new is not None and new.vmas, f"pid {pid}: no executable VMAs read"
    return new


def _written(loader: NativeUnwinder, tgid: int) -> list[tuple[int, int, int, object | None, int]]:
    """The mapping array the kernel holds for `tgid`: (start, end, bias, the binary's key or None, flags)."""
    p = loader.maps.processes[tgid]
    by_table = {b.table: key for key, b in loader.maps.binaries.items()}
    out = []
    for i in range(p.first, p.first + p.count):
        value = lookup(loader.maps._mappings.fd, i.to_bytes(4, "little"), MAPPING.size)
        assert value is not None
        start, end, bias, table, flags = MAPPING.unpack(value)
        out.append((start, end, bias, None if table == NO_TABLE else by_table[table], flags))
    return out


@pytest.mark.parametrize("program", ["python", "sleep"])
def test_a_known_layout_writes_what_placing_each_vma_writes(loaders: tuple[NativeUnwinder, NativeUnwinder],
                                                            processes: dict[str, list[int]], program: str) -> None:
    fast, slow = loaders
    first, second, third, _ = processes[program]
    fast.load_batch([_new(first)])  # places VMA by VMA: its layout is kept
    assert fast.stats["layout_hits"] == 0
    fast.load_batch([_new(second)])
    assert fast.stats["layout_hits"] == 1
    slow.load_batch([_new(first)])  # the same tables loaded in the other loader (the program's and libc's)
    slow._layouts.clear()
    slow.load_batch([_new(second)])
    assert slow.stats["layout_hits"] == 0
    got, want = _written(fast, second), _written(slow, second)
    assert got == want
    assert any(m[3] is not None for m in got), "no mapping with a table: nothing was compared"
    assert any(m[0] != n[0] for m, n in zip(_written(fast, first), got, strict=True)), "ASLR moved nothing?"
    if program == "python":
        assert any(m[4] for m in got), "no mapping waits for its table (a walk asks): nothing of that compared"
    # references: the binaries the second process holds, as many as its mappings with a table
    assert sorted(map(repr, fast.maps.processes[second].binaries)) == \
        sorted(repr(m[3]) for m in got if m[3] is not None)
    # the third, by the worker's announce: loaded before announce returns, no worker needed for it
    fast.start()
    fast.announce([_new(third)])
    assert third in fast.maps.processes and fast.stats["layout_hits"] == 2


def test_a_layout_is_not_used_once_a_table_it_waited_for_is_loaded(
        loaders: tuple[NativeUnwinder, NativeUnwinder], processes: dict[str, list[int]]) -> None:
    """python3 maps libraries whose tables come on demand (WANTS_TABLE): once another process (of another
    layout: no extension modules) has them loaded, as a one-shot capture does, the next process of the first
    layout must get those tables, not the wait its layout recorded."""
    loader, _ = loaders
    first, second, _, _ = processes["python"]
    loader.load_batch([_new(first)])
    before = _written(loader, first)
    assert any(m[4] for m in before), "python3 has no mapping that waits for its table here"
    loader.load_now(processes["plain python"])  # every table of a python3 with fewer modules, loaded
    loader.load_batch([_new(second)])
    assert loader.stats["layout_hits"] == 0  # the layout's waits are stale: placed VMA by VMA
    got = _written(loader, second)
    now_loaded = [i for i, m in enumerate(before) if m[4] and got[i][3] is not None]
    assert now_loaded, "no table the first process waited for is loaded for the second"
    assert all(not got[i][4] for i in now_loaded)


@pytest.mark.parametrize("program", ["python", "sleep"])
def test_the_workers_layout_hit_is_what_it_writes_and_holds_one_reference_a_mapping(
        loaders: tuple[NativeUnwinder, NativeUnwinder], processes: dict[str, list[int]], program: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's path (`_load_process`: a process announced by pid, or one the watcher could not place)
    placed a process of a known layout from it, then VMA by VMA over it: each table's reference taken twice and
    one of them never given back, so that no table of that layout left the kernel once its processes exited;
    and a load of every table (`load_now`) or of asked-for ones read the process's maps as text."""
    from profiler.unwind import loader as loader_module

    loader, _ = loaders
    first, second, third, _ = processes[program]
    texts: list[int] = []
    read_text = loader_module.read_exec_maps

    def counted(pid: int, proc: str = "/proc", query: bool = True) -> object:
        texts.append(pid)
        return read_text(pid, proc, query)

    monkeypatch.setattr(loader_module, "read_exec_maps", counted)
    loader.load_batch([first])  # by pid: the worker reads the VMAs, places them, learns the layout
    placed = [0]
    place = loader._place

    def counting_place(*args, **kwargs):  # type: ignore[no-untyped-def]
        placed[0] += 1
        return place(*args, **kwargs)

    monkeypatch.setattr(loader, "_place", counting_place)
    loader.load_batch([second])
    assert loader.stats["layout_hits"] == 1
    assert placed[0] == 0, "a layout hit was placed VMA by VMA again"
    held = Counter(key for tgid in (first, second) for key in loader.maps.processes[tgid].binaries)
    assert held, "no table loaded: nothing compared"
    assert {key: b.refs for key, b in loader.maps.binaries.items() if b.refs} == dict(held)
    loader.load_now([third])  # every table: placed VMA by VMA, from the queried VMAs
    assert placed[0] == 1 and texts == [], f"maps read as text for {texts}"
    for tgid in (first, second, third):
        loader.maps.remove_process(tgid)
    assert all(b.refs == 0 for b in loader.maps.binaries.values())


DLOPEN_PY = ("import sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\nimport _decimal\n"
             "print('more', flush=True)\ntime.sleep(120)")


@pytest.fixture
def dlopeners() -> Iterator[list[subprocess.Popen[bytes]]]:
    """python3 processes that load an extension module (dlopen: _decimal and libmpdec) when told to."""
    procs = [subprocess.Popen(["/usr/bin/python3", "-c", DLOPEN_PY], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for _ in range(3)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _dlopen(p: subprocess.Popen[bytes]) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"more\n"


def _has_decimal(new: NewProcess) -> bool:
    return any(b"_decimal" in v[2][5] for v in new.vmas or ())


def _worker_batches(loader: NativeUnwinder, monkeypatch: pytest.MonkeyPatch,
                    gate: threading.Event | None = None) -> list[list[int]]:
    """The tgids of each batch the worker loads (its `_run` calls load_batch), after `gate` is set when given."""
    seen: list[list[int]] = []
    load = loader.load_batch

    def recorded(batch: list[int | NewProcess]) -> None:
        if gate is not None:
            gate.wait(30)
        seen.append([n if isinstance(n, int) else n.pid for n in batch])
        load(batch)

    monkeypatch.setattr(loader, "load_batch", recorded)
    return seen


def test_a_process_announced_again_with_a_known_layout_is_placed_without_the_worker(
        loaders: tuple[NativeUnwinder, NativeUnwinder], dlopeners: list[subprocess.Popen[bytes]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dlopen marks the process stale and the watcher announces it again; when another process of its program
    loaded the same library before (its new layout is known), announce places it at once, writing what placing
    it VMA by VMA writes, and the worker (another thread to wake) is not asked. On main it went to the worker."""
    fast, slow = loaders
    a, b, _ = dlopeners
    fast.load_batch([_new(a.pid), _new(b.pid)])  # both before the dlopen: one layout
    _dlopen(a)
    after_a = _new(a.pid)
    assert _has_decimal(after_a)
    fast.load_batch([after_a])  # placed VMA by VMA: the layout with _decimal is learnt
    fast.start()
    batches = _worker_batches(fast, monkeypatch)
    hits = fast.stats["layout_hits"]
    _dlopen(b)
    after_b = _new(b.pid)
    fast.announce([after_b])
    assert fast.stats["layout_hits"] == hits + 1  # placed before announce returned
    time.sleep(0.3)
    assert batches == [], "the worker was woken for a process announce could place"
    slow.load_batch([_new(a.pid)])
    slow._layouts.clear()
    slow.load_batch([after_b])  # VMA by VMA
    got, want = _written(fast, b.pid), _written(slow, b.pid)
    assert got == want
    starts = {v[0] for v in after_b.vmas or () if b"_decimal" in v[2][5]}
    assert starts and starts <= {m[0] for m in got}, "the dlopen'ed library is not in the array written"
    fast.announce([after_b])  # the same VMAs again (a new comm): nothing written, no worker
    time.sleep(0.2)
    assert batches == [] and _written(fast, b.pid) == got


def test_a_later_read_is_not_placed_before_the_workers_queued_one(
        loaders: tuple[NativeUnwinder, NativeUnwinder], dlopeners: list[subprocess.Popen[bytes]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process whose first read went to the worker (a layout not known) and that is announced again before the
    worker got to it (a dlopen right after its start) is left to the worker too: placed by announce at once, it
    would be overwritten by the worker's older VMAs, without the library, until the next drain's stale marks."""
    loader, _ = loaders
    a, c, _ = dlopeners
    _dlopen(a)
    loader.load_batch([_new(a.pid)])  # only the layout with _decimal is known
    gate = threading.Event()
    loader.start()
    batches = _worker_batches(loader, monkeypatch, gate)
    before = _new(c.pid)
    loader.announce([before])  # unknown layout: queued, the worker held at the gate
    _dlopen(c)
    after = _new(c.pid)
    assert _has_decimal(after) and not _has_decimal(before)
    loader.announce([after])  # its layout is known, but an older read of it is queued
    gate.set()
    deadline = time.monotonic() + 20
    while sum(len(b) for b in batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert [t for b in batches for t in b] == [c.pid, c.pid]
    starts = {v[0] for v in after.vmas or () if b"_decimal" in v[2][5]}
    assert starts and starts <= {m[0] for m in _written(loader, c.pid)}, "the older VMAs were placed last"
    assert not loader._queued


def test_a_layout_outlives_a_drain_and_its_files_are_stated_again(
        loaders: tuple[NativeUnwinder, NativeUnwinder], processes: dict[str, list[int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """maintain() (once a drain) emptied the layouts, so each layout's first process of every drain was placed VMA
    by VMA on the worker. Now the layout stays and its files are stat'ed once a drain, at its first use: the
    process after the drain is a layout hit and writes what placing it VMA by VMA writes."""
    fast, slow = loaders
    first, second, third, fourth = processes["python"]
    fast.load_batch([_new(first)])
    fast.maintain()
    stats: list[str] = []
    real_stat = os.stat

    def counted(path: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counted)
    fast.load_batch([_new(second)])
    assert fast.stats["layout_hits"] == 1, "the layout did not outlive the drain"
    files = {k[3] for k in fast._layouts[next(iter(fast._layouts))].entries.values()
             if k is not None and isinstance(k[3], tuple) and len(k[3]) == 4}
    assert 0 < len(stats) == len(files), f"{len(stats)} stats for {len(files)} files"
    assert all(f"/{second}/map_files/" in s for s in stats)
    stats.clear()
    fast.load_batch([_new(third)])  # the same drain: checked already
    assert fast.stats["layout_hits"] == 2 and stats == []
    monkeypatch.setattr(os, "stat", real_stat)
    slow.load_batch([_new(first)])
    slow._layouts.clear()
    slow.load_batch([_new(second)])
    assert slow.stats["layout_hits"] == 0
    assert _written(fast, second) == _written(slow, second)
    fast.maintain()
    fast.load_batch([_new(fourth)])
    assert fast.stats["layout_hits"] == 3


def test_a_layout_whose_file_changed_in_place_is_not_used_after_a_drain(
        loaders: tuple[NativeUnwinder, NativeUnwinder], tmp_path: Path) -> None:
    """A file rewritten in place keeps its device, inode and path, so the VMA keys a layout is found by: its
    identity (with size and mtime) stat'ed after a drain tells, and the process is placed VMA by VMA."""
    loader, _ = loaders
    exe = tmp_path / "sleeper"
    exe.write_bytes(Path("/usr/bin/sleep").read_bytes())
    exe.chmod(0o755)
    procs = [subprocess.Popen([str(exe), "120"]) for _ in range(3)]
    try:
        for p in procs:
            deadline = time.monotonic() + 10
            while not any(b"/libc.so" in v[2][5] for v in getattr(read_new_process(p.pid), "vmas", None) or ()):
                assert time.monotonic() < deadline, "sleep never mapped libc"
                time.sleep(0.01)
        loader.load_batch([_new(procs[0].pid)])
        loader.load_batch([_new(procs[1].pid)])
        assert loader.stats["layout_hits"] == 1
        loader.maintain()
        st = exe.stat()
        os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # what a rewrite in place changes
        layouts = len(loader._layouts)
        loader.load_batch([_new(procs[2].pid)])
        assert loader.stats["layout_hits"] == 1, "a layout resting on a changed file was used"
        assert len(loader._layouts) == layouts  # dropped, and learnt again from this process
        st = exe.stat()
        old_identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns - 1_000_000_000)
        new_identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        assert any(m[3] == old_identity for m in _written(loader, procs[0].pid))  # the program's table, at once
        # the file was stat'ed and read again; unchanged bytes (same build id and CFI) make it a twin that
        # shares the old file's table, so its mapping holds that table through the twin
        assert new_identity in loader._files or loader._twins.get(new_identity) == old_identity, "not read again"
        new_key = loader._twins.get(new_identity, new_identity)
        assert any(m[3] == new_key for m in _written(loader, procs[2].pid)), "placed from the old file"
    finally:
        for p in procs:
            p.kill()
            p.wait()
