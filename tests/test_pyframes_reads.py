"""The agent reads a drain's code objects in one process_vm_readv per process (CodeReader.read_many), not
one per frame: counted at the system call, on a real process (no BPF: the kernel's record of a Python
stack is built with the userspace walk that follows the same pointers)."""

from __future__ import annotations

from typing import Any

import pytest

from podflame.model import FrameKind
from profiler.pyframes import ADDR_MASK, PythonFrames, PythonRegistry
from profiler.python import remote
from profiler.sampler import Drain
from tests.test_python_pid_reuse import CHAIN, PYTHON, registered, spawn, stop


def test_a_warm_drain_reads_all_its_code_objects_in_one_system_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = remote._readv

    def counted(pid: int, local: Any, n: int, remote_iov: Any, m: int, flags: int) -> int:
        calls.append(n)
        return int(real(pid, local, n, remote_iov, m, flags))

    p = spawn([PYTHON, str(CHAIN)])
    try:
        reg = PythonRegistry(lambda tgid, config: None)
        raw, sample = registered(p, reg)
        frames = PythonFrames()
        frames.begin_drain(Drain(0, 1, [sample], python_processes=reg.refresh()))  # cold: reads every object
        monkeypatch.setattr(remote, "_readv", counted)
        frames.begin_drain(Drain(1, 2, [sample], python_processes=reg.refresh()))
        merged = frames.merge(p.pid, raw, ())
    finally:
        stop(p)
    depth = len(raw) // 2
    codes = {raw[i] & ADDR_MASK for i in range(0, len(raw), 2)}
    assert depth >= 7 and sum(f.kind is FrameKind.PYTHON for f in merged) == depth
    # every code object re-validated (its fixed part), all in one call of one range each; merging reads nothing
    assert calls == [len(codes)]


def test_a_second_process_of_a_proved_binary_is_detected_without_reading_its_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """check_layout proves a version's offsets fit a binary by reading a running interpreter (~9 reads of its
    memory); the layout is the file's, so the next process of the same file is detected without reading its
    memory at all, and is registered all the same. Offsets it was not proved with are checked again."""
    import dataclasses

    from profiler.python import detect
    from profiler.python.offsets import TABLES

    calls: list[int] = []
    real = remote._readv

    def counted(pid: int, local: Any, n: int, remote_iov: Any, m: int, flags: int) -> int:
        calls.append(pid)
        return int(real(pid, local, n, remote_iov, m, flags))

    monkeypatch.setattr(remote, "_readv", counted)
    monkeypatch.setattr(detect, "_PROVED", set())
    procs = [spawn([PYTHON, str(CHAIN)]) for _ in range(2)]  # each prints once its chain runs
    try:
        reg = PythonRegistry(lambda tgid, config: None)
        reg.announce([procs[0].pid])
        assert procs[0].pid in reg.processes and procs[0].pid in calls and len(detect._PROVED) == 1
        calls.clear()
        reg.announce([procs[1].pid])
        assert procs[1].pid in reg.processes and calls == []
        first = reg.processes[procs[0].pid]
        if first.offsets.version[:2] in TABLES:  # a table not proved for the file is checked: and refused
            (identity, _), = detect._PROVED
            other = next(t for t in TABLES.values() if t.interp_runtime != first.offsets.interp_runtime)
            assert (identity, other) not in detect._PROVED
            with pytest.raises(detect.LayoutMismatch):
                detect.check_layout(dataclasses.replace(first, offsets=other))
    finally:
        for p in procs:
            stop(p)
