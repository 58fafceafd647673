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
