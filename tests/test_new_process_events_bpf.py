"""The new_tgids ring buffer's records say what happened (bpf/sampler.bpf.c struct new_process_event), and the
sampler's watcher hands each to the readers that need it (profiler/sampler.py `_start_watcher`):

- a first sample (NEW_FIRST) carries the process's start time from the kernel, so the watcher reads the
  process's executable VMAs and no /proc/PID/stat, and every reader gets it;
- an address outside the known mappings (NEW_STALE) is the unwind loader's; the other readers (the agent's
  maps cache, Python detection) get the process again only when its executable mappings changed (a dlopen),
  not for JIT code the walker keeps finding outside every mapping;
- an ask for a table (NEW_ASK) wakes the loader, which writes the table into the asking mapping alone
  (`NativeUnwinder._fill`): what a whole reload would write, without reading the process's VMAs again.

Real processes, the real program and maps, real tables (a temporary cache)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiler import procmaps
from profiler.procmaps import NewProcess
from profiler.unwind import loader as loader_module
from profiler.unwind.loader import NativeUnwinder
from profiler.unwind.maps import WANT, WANTS_TABLE
from tests import test_unwind_loader_layouts as layouts
from tests.realsys import WORKLOADS
from tests.test_unwind_loader_layouts import PY, _new, _written

pytestmark = pytest.mark.bpf
loaders = layouts.loaders  # the fixture: two loaders on maps of their own

FREQ = 99


@pytest.fixture(autouse=True)
def _table_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODFLAME_SYMBOL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counter[int]]:
    """Which pids each reader was handed: the unwind loader (its announce) and Python detection (the
    sampler's); the agent's place is the test's own callback ("agent")."""
    from profiler.sampler import Sampler

    seen: dict[str, Counter[int]] = {"loader": Counter(), "python": Counter(), "agent": Counter()}
    announce, python = NativeUnwinder.announce, Sampler._announce_python

    def loader_announce(self: NativeUnwinder, tgids: list[int | NewProcess]) -> None:
        batch = list(tgids)
        seen["loader"].update(n if isinstance(n, int) else n.pid for n in batch)
        announce(self, batch)

    def python_announce(self: Sampler, news: list[NewProcess]) -> None:
        seen["python"].update(n.pid for n in news)
        python(self, news)

    monkeypatch.setattr(NativeUnwinder, "announce", loader_announce)
    monkeypatch.setattr(Sampler, "_announce_python", python_announce)
    return seen


def _build(tmp_path: Path, name: str, *extra: str) -> Path:
    exe = tmp_path / name
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(WORKLOADS / f"{name}.c"), *extra], check=True)
    return exe


def _sample(sampler, seconds: float, until=lambda: False) -> None:  # type: ignore[no-untyped-def]
    """Drain once a second (the walker's stale marks are once a drain) for `seconds`, or until `until()`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        time.sleep(1.0)
        sampler.drain()


@pytest.fixture
def stats_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids whose /proc/PID/stat the sampler's watcher thread reads (for a start time the kernel should give)."""
    read: list[int] = []
    read_stat = procmaps._read_stat

    def watched(pid: int, proc: str) -> procmaps._Stat | None:
        if "new-processes" in threading.current_thread().name:
            read.append(pid)
        return read_stat(pid, proc)

    monkeypatch.setattr(procmaps, "_read_stat", watched)
    return read


def test_a_first_sample_carries_the_start_time_and_the_watcher_reads_no_stat(stats_read: list[int]) -> None:
    from profiler.sampler import Sampler

    got: list[NewProcess] = []
    p = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        with Sampler(FREQ, pids=[p.pid], unwind="auto", python_frames=True) as s:
            assert s._start_clock is not None, "no task_struct offsets from the kernel's BTF"
            s.watch_new_processes(got.extend)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not [n for n in got if n.pid == p.pid]:
                time.sleep(0.1)
        new = next(n for n in got if n.pid == p.pid)
        assert new.starttime == procmaps.start_time(p.pid)  # the kernel's, in /proc/PID/stat's clock ticks
        assert new.vmas and any(v[2][5].endswith((b"/dash", b"/sh")) for v in new.vmas)
        assert p.pid not in stats_read
    finally:
        p.kill()
        p.wait()


def test_jit_code_outside_every_mapping_is_the_loaders_alone(tmp_path: Path,
                                                              counted: dict[str, Counter[int]]) -> None:
    """A process spinning in anonymous executable memory is marked stale by the walker once a drain: the
    loader reads it again each time (new code could have been mapped), the maps cache and Python detection
    are handed it once, at its first sample (on main they were handed it again for every mark)."""
    from profiler.sampler import Sampler

    exe = _build(tmp_path, "jit_spin")
    p = subprocess.Popen([str(exe), "60"])
    try:
        time.sleep(0.3)  # past the dynamic loader: the page is mapped and run
        with Sampler(FREQ, pids=[p.pid], unwind="auto", python_frames=True) as s:
            s.watch_new_processes(lambda news: counted["agent"].update(n.pid for n in news))
            assert s.unwinder is not None and p.pid in s.unwinder.maps.processes  # preloaded: a mapping array
            _sample(s, 60, until=lambda: counted["loader"][p.pid] >= 3 and counted["agent"][p.pid] >= 1)
            report = s.unwinder.report()
    finally:
        p.kill()
        p.wait()
    assert report["walk_no_mapping"] > 0  # the walker found the JIT leaf outside the process's mappings
    assert counted["loader"][p.pid] >= 3, counted  # its first sample, then stale marks of three drains
    assert counted["agent"][p.pid] == 1 and counted["python"][p.pid] == 1, counted


def test_a_dlopen_reaches_every_reader_and_the_new_librarys_ask_fills_its_mapping(
        tmp_path: Path, counted: dict[str, Counter[int]], stats_read: list[int]) -> None:
    """After a dlopen the walker's stale mark has the process read again, and as its executable mappings
    changed every reader gets it, with the start time the mark carries (no /proc/PID/stat read); the new
    library's table comes on demand: the walk's ask is served in its mapping alone, which then holds what a
    whole reload of the process writes."""
    from profiler.sampler import Sampler

    handed: list[NewProcess] = []

    lib = tmp_path / "libunwind_dlopen.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(WORKLOADS / "unwind_dlopen_lib.c")],
                   check=True)
    exe = _build(tmp_path, "unwind_dlopen", "-ldl")
    # the dlopen once the sampler has the process (SIGUSR1), not 8 s after its start: a loaded start (the
    # verifier alone took 10-16 s at load 14) can come after it, and the assertion below then fails the test
    p = subprocess.Popen([str(exe), str(lib), "600", "60"])
    try:
        usr1 = 1 << (signal.SIGUSR1 - 1)
        deadline = time.monotonic() + 60
        while not int(_status(p.pid, "SigCgt"), 16) & usr1:  # its handler is in: the signal will not kill it
            assert time.monotonic() < deadline and p.poll() is None, "unwind_dlopen never caught SIGUSR1"
            time.sleep(0.01)
        time.sleep(0.3)
        with Sampler(FREQ, pids=[p.pid], unwind="auto", python_frames=True) as s:
            s.watch_new_processes(lambda news: (counted["agent"].update(n.pid for n in news), handed.extend(news)))
            u = s.unwinder
            assert u is not None
            assert not any(v[2][5] == str(lib).encode() for v in procmaps.read_live_vmas(p.pid) or ()), \
                "the sampler started after the dlopen: nothing of it is tested"
            _sample(s, 60, until=lambda: counted["agent"][p.pid] >= 1)  # its first sample, before the dlopen
            p.send_signal(signal.SIGUSR1)
            _sample(s, 60, until=lambda: u.stats["asks_filled"] >= 1 and counted["agent"][p.pid] >= 2)
            time.sleep(0.5)  # the loader's batch in flight, if any
            with u._lock:
                filled = _written(u, p.pid)  # type: ignore[arg-type]
                u._retry.add(p.pid)  # read and placed whole, as before asks were filled in place
                u._load_process(p.pid, take_wanted=False)
                whole = _written(u, p.pid)  # type: ignore[arg-type]
            assert sorted(map(repr, u.maps.processes[p.pid].binaries)) == \
                sorted(repr(m[3]) for m in whole if m[3] is not None)
            stats = dict(u.stats)
            vmas = procmaps.read_live_vmas(p.pid)
            assert vmas
            lib_start = next(v[0] for v in vmas if v[2][5] == str(lib).encode())
            started = procmaps.start_time(p.pid)
    finally:
        p.kill()
        p.wait()
    assert stats["asks_filled"] >= 1, stats
    assert filled == whole
    assert next(m for m in filled if m[0] == lib_start)[3] is not None  # the library's table, asked for
    assert counted["agent"][p.pid] == 2 and counted["python"][p.pid] == 2, counted  # first sample, the dlopen
    mine = [n for n in handed if n.pid == p.pid]
    assert len(mine) == 2 and mine[1].starttime == mine[0].starttime == started  # the kernel's, in clock ticks
    assert p.pid not in stats_read


def _status(pid: int, key: str) -> str:
    """A field of /proc/PID/status."""
    return next(line.split(":", 1)[1].strip() for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith(f"{key}:"))


# -- the loader alone, on maps of its own: an ask, served in place ---------------------------------------


@pytest.fixture
def pythons() -> Iterator[list[int]]:
    procs = [subprocess.Popen(["/usr/bin/python3", "-c", PY], stdout=subprocess.PIPE) for _ in range(1)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _ask(loader: NativeUnwinder, tgid: int, start: int) -> None:
    """What a walk does when it needs the table of the mapping at `start`: an entry in unwind_wanted (and the
    ask counted: the loader reads the map only when the count moved, here made to look moved)."""
    loader.maps.wanted_map.update(WANT.pack(start, tgid, 0), b"\x01")
    loader._asks_taken = -2


def test_an_ask_is_served_in_its_mapping_without_reading_the_process(
        loaders: tuple[NativeUnwinder, NativeUnwinder], pythons: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    fast, whole = loaders
    pid = pythons[0]
    for loader in (fast, whole):
        loader.load_batch([_new(pid)])
    waiting = [m for m in _written(fast, pid) if m[4] & WANTS_TABLE]
    assert waiting, "python3 has no mapping waiting for its table here"
    start = waiting[0][0]
    walks: list[int] = []
    real = loader_module.read_exec_vmas
    monkeypatch.setattr(loader_module, "read_exec_vmas", lambda t, proc="/proc": walks.append(t) or real(t, proc))
    _ask(fast, pid, start)
    fast.load_batch([])  # what the watcher's NEW_ASK queues (asked())
    assert fast.stats["asks_filled"] == 1 and not walks  # one PROCMAP_QUERY, no walk over its VMAs
    _ask(whole, pid, start)
    whole.load_batch([_new(pid)])  # announced again, as before: read and placed whole
    assert whole.stats["asks_filled"] == 0
    got, want = _written(fast, pid), _written(whole, pid)
    assert got == want
    assert next(m for m in got if m[0] == start)[3] is not None  # the asked table is in
    assert sorted(map(repr, fast.maps.processes[pid].binaries)) == sorted(repr(m[3]) for m in got if m[3] is not None)
    assert start not in fast.maps.processes[pid].wants


def test_an_ask_whose_mapping_changed_reads_the_process_whole(loaders: tuple[NativeUnwinder, NativeUnwinder],
                                                               pythons: list[int]) -> None:
    """A mapping not as it was placed (here: its end, as if remapped) is not filled in place: the process is
    read and placed whole, and gets the table all the same."""
    loader, _ = loaders
    pid = pythons[0]
    loader.load_batch([_new(pid)])
    start = next(m for m in _written(loader, pid) if m[4] & WANTS_TABLE)[0]
    p = loader.maps.processes[pid]
    slot, end = p.wants[start]
    p.wants[start] = (slot, end + 4096)
    _ask(loader, pid, start)
    loader.load_batch([])
    assert loader.stats["asks_filled"] == 0
    assert next(m for m in _written(loader, pid) if m[0] == start)[3] is not None


def test_read_new_process_with_the_kernels_start_time_opens_no_stat(monkeypatch: pytest.MonkeyPatch) -> None:
    p = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while not any(b"/libc.so" in v[2][5] for v in procmaps.read_live_vmas(p.pid) or ()):
            assert time.monotonic() < deadline, "sleep never mapped libc"
            time.sleep(0.01)
        want = _new(p.pid)
        opened: list[str] = []
        real_open = os.open
        monkeypatch.setattr(procmaps.os, "open",
                            lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
        new = procmaps.read_new_process(p.pid, started=want.starttime)
        monkeypatch.undo()
        assert new is not None and new.starttime == want.starttime and new.vmas == want.vmas
        assert opened == [f"/proc/{p.pid}/maps"]
    finally:
        p.kill()
        p.wait()
    assert procmaps.read_live_vmas(p.pid) is False  # exited
    assert procmaps.read_live_vmas(2) is False  # kthreadd: no mm, nothing to read
    assert procmaps.read_new_process(p.pid, started=want.starttime) is None
