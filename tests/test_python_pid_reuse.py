"""A pid is reused; (pid, start time) is not: Python registrations and code readers are one process's.

The kernel announces a (tgid, comm) once, so a new `python3` that gets a dead `python3`'s pid is never
announced: the registry must see the new start time itself, detect the newcomer afresh, and the agent
must not name its frames with the reader (and cached names) of the process that had the pid before.
Real processes, real /proc and process_vm_readv; the only thing faked is which start time the pid has.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podflame.model import FrameKind
from profiler.agent import Context, build_profiles
from profiler.procmaps import MapsCache, start_time
from profiler.pyframes import ADDR_MASK, EXITED, FLAG_ENTRY, PythonFrames, PythonRegistry, pack_config
from profiler.python import walk
from profiler.python.detect import PythonProcess
from profiler.sampler import Drain, RawSample
from tests.test_agent import FakeCgroups

CHAIN = Path(__file__).parent / "workloads" / "python_chain.py"
PYTHON = "/usr/bin/python3"  # Debian's static 3.11 (is_entry marks each eval call's first frame)
# a comm with the characters that break a naive split of /proc/PID/stat
RENAMED = "import ctypes, sys, time; ctypes.CDLL(None).prctl(15, b'a) b (c', 0, 0, 0); print('ready', flush=True); " \
          "time.sleep(60)"


def spawn(argv: list[str]) -> subprocess.Popen[str]:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline(), f"{argv[0]} did not start"
    return p


def stop(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()
    assert p.stdout is not None
    p.stdout.close()


@pytest.fixture
def two() -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    a = spawn([sys.executable, "-c", RENAMED])
    time.sleep(0.05)  # five clock ticks: the second one starts later
    b = spawn([PYTHON, str(CHAIN)])
    try:
        yield a, b
    finally:
        stop(a)
        stop(b)


def test_start_time_names_one_process_and_agrees_with_ps(two: tuple[subprocess.Popen[str], ...]) -> None:
    a, b = two
    assert Path(f"/proc/{a.pid}/comm").read_text().strip() == "a) b (c"
    sa, sb = start_time(a.pid), start_time(b.pid)
    assert sa is not None and sb is not None and sa < sb
    assert start_time(a.pid) == sa  # the same process, read again
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    for p, started in ((a, sa), (b, sb)):  # ps (procps) as the oracle: elapsed seconds since the start
        elapsed = int(subprocess.run(["ps", "-o", "etimes=", "-p", str(p.pid)], capture_output=True, text=True,
                                     check=True).stdout)
        assert abs((uptime - started / ticks) - elapsed) <= 1.5
    stop(a)
    assert start_time(a.pid) is None


def test_the_registry_keys_processes_by_start_time(two: tuple[subprocess.Popen[str], ...]) -> None:
    """Real detection of two real processes: each registration carries its process's start time, and
    a refresh keeps both while they live (nothing re-detected, nothing re-written)."""
    a, b = two
    writes: list[tuple[int, bytes | None]] = []
    reg = PythonRegistry(lambda tgid, config: writes.append((tgid, config)))
    reg.announce([a.pid, b.pid])
    assert {p: reg.processes[p].start_time for p in reg.processes} == {a.pid: start_time(a.pid),
                                                                        b.pid: start_time(b.pid)}
    reg.refresh()
    reg.announce([a.pid, b.pid])  # an announcement of a known process (an exec would send one) changes nothing
    assert [t for t, _ in writes] == [a.pid, b.pid]


def test_detection_takes_the_start_time_the_registry_read(two: tuple[subprocess.Popen[str], ...],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A new process's /proc/PID/stat is read once (by the registry, before anything else), and that start
    time is the registration's: detection does not read its own (the watcher does this per new process)."""
    import profiler.python.detect as detect

    a, _ = two
    asked: list[int] = []

    def counted(pid: int, proc: str = "/proc") -> int | None:
        asked.append(pid)
        return start_time(pid, proc)

    monkeypatch.setattr(detect, "start_time", counted)
    given = start_time(a.pid)
    assert given is not None
    reg = PythonRegistry(lambda tgid, config: None, started=lambda pid: given + 5 if pid == a.pid else None)
    reg.announce([a.pid])
    assert asked == [] and reg.processes[a.pid].start_time == given + 5


def main_thread_stack(proc: PythonProcess, depth: int = 7) -> tuple[int, ...]:
    """The main thread's Python stack as the kernel records it: (code | flags, instr) pairs, leaf first;
    waits until the workload is in its chain (<module> f1 café 函数 𠀀 f2 Worker.f3: `depth` frames)."""
    deadline = time.monotonic() + 10
    while True:
        thread = next(t for t in walk.threads(proc) if t.native_thread_id == proc.pid)
        out: list[int] = []
        for f in walk.raw_frames(proc, thread.frame):
            out += [f.code | (FLAG_ENTRY if f.entry else 0), f.instr]
        if len(out) >= 2 * depth or time.monotonic() > deadline:
            return tuple(out)
        time.sleep(0.01)


def registered(p: subprocess.Popen[str], reg: PythonRegistry) -> tuple[tuple[int, ...], RawSample]:
    """Register the workload `p` with `reg` (real detection); its main thread's raw Python stack, and a
    sample of it as the sampler would drain it."""
    reg.announce([p.pid])
    raw = main_thread_stack(reg.processes[p.pid])
    return raw, RawSample(1, p.pid, p.pid, "python3", (), (), 0, 0, 1, raw, 0)


def python_names(frames: PythonFrames, drain: Drain) -> list[str]:
    """The Python frames of the drain's one sample as the agent assembles them (build_profiles)."""
    ctx = Context(node="n1", maps=MapsCache(), cgroups=FakeCgroups(), python=frames)
    ((stack,),) = [list(p.samples) for p in build_profiles(drain, ctx, 10)]
    return [f.lines[0].function for f in stack if f.kind is FrameKind.PYTHON]


def test_a_pid_taken_by_a_new_process_is_detected_afresh_and_never_named_from_the_old_reader() -> None:
    p = spawn([PYTHON, str(CHAIN)])
    try:
        fake: dict[int, int] = {}
        writes: list[tuple[int, bytes | None]] = []
        reg = PythonRegistry(lambda tgid, config: writes.append((tgid, config)),
                             started=lambda pid: fake.get(pid, start_time(pid)))
        raw, sample = registered(p, reg)
        first = reg.processes[p.pid]
        frames = PythonFrames()
        before = python_names(frames, Drain(0, 1, [sample], python_processes=reg.refresh()))
        assert {"<module>", "f1", "Worker.f3"} <= set(before), before
        old_reader = frames._states[p.pid].reader
        codes = {raw[i] & ADDR_MASK for i in range(0, len(raw), 2)}
        assert all(old_reader.cached(c) is not None for c in codes)  # the old reader could name them all

        assert first.start_time is not None
        fake[p.pid] = first.start_time + 1  # the pid now belongs to a process that started later
        processes = reg.refresh()
        second = processes[p.pid]
        assert second is not first and second.start_time == first.start_time + 1
        assert writes == [(p.pid, pack_config(first)), (p.pid, None), (p.pid, pack_config(second))]
    finally:
        stop(p)
    # the process is gone: only a reader's cache could name its frames now, and the old one is not asked
    after = python_names(frames, Drain(1, 2, [sample], python_processes=processes))
    assert frames._states[p.pid].reader is not old_reader
    assert after == [EXITED.lines[0].function] * len(before)


def test_an_exited_process_keeps_the_names_already_read() -> None:
    """The other side of the key: the same process (start time unchanged) that exited is still named
    from its reader's cache for the drains of its grace period."""
    p = spawn([PYTHON, str(CHAIN)])
    try:
        reg = PythonRegistry(lambda tgid, config: None)
        _, sample = registered(p, reg)
        frames = PythonFrames()
        before = python_names(frames, Drain(0, 1, [sample], python_processes=reg.refresh()))
    finally:
        stop(p)
    assert python_names(frames, Drain(1, 2, [sample], python_processes=reg.refresh())) == before
