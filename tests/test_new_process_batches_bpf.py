"""The sampler's watcher reads processes first sampled close together in one batch (profiler/sampler.py
NEW_PROCESS_BATCH_S): after a wake-up it lingers before reading, so that a shell pipeline's or a build's
processes cost one wake-up of the watcher and of each reader it hands them to, not one each.

Real processes, the real program and ring buffer. The linger is stretched here (seconds, where the agent's is
20 ms) so that the kernel's timing cannot decide the outcome: four processes spin from the start, a fifth is
released a moment after the perf events attach, well within the linger, and all five must come in one batch
(without the linger the fifth's first sample, a moment later, was a batch of its own); a process released
after the batch was read comes in a batch of its own, read as soon as its linger ends."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from profiler import sampler as sampler_module
from profiler.procmaps import NewProcess
from profiler.sampler import Sampler

pytestmark = pytest.mark.bpf

FREQ = 99
LINGER_S = 4.0


def _blocked(fifo: Path) -> subprocess.Popen[bytes]:
    """A shell that spins once a writer opens `fifo` (until then it sleeps in open(): never sampled)."""
    return subprocess.Popen(["sh", "-c", f": < {fifo}; while :; do :; done"])


def _release(fifo: Path) -> None:
    fd = os.open(fifo, os.O_WRONLY)  # every reader blocked in open() goes on
    os.close(fd)


def _wait_for(batches: list[list[NewProcess]], pids: set[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not pids <= {n.pid for b in batches for n in b}:
        time.sleep(0.05)


def test_processes_first_sampled_within_the_linger_are_read_in_one_batch(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler_module, "NEW_PROCESS_BATCH_S", LINGER_S)
    early, late = tmp_path / "early", tmp_path / "late"
    os.mkfifo(early)
    os.mkfifo(late)
    spinners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(4)]
    second, third = _blocked(early), _blocked(late)
    procs = [*spinners, second, third]
    batches: list[list[NewProcess]] = []
    try:
        with Sampler(FREQ, pids=[p.pid for p in procs], unwind="fp", python_frames=False) as s:
            s.watch_new_processes(batches.append)
            time.sleep(0.3)  # the spinners are sampled: the watcher woke and lingers
            _release(early)
            first_pids = {p.pid for p in [*spinners, second]}
            _wait_for(batches, first_pids, 30)
            read_at = time.monotonic()
            _release(late)  # after the first batch was read: a batch of its own
            _wait_for(batches, {third.pid}, 30)
            third_at = time.monotonic()
        ours = [{n.pid for n in b} & {p.pid for p in procs} for b in batches]
        ours = [b for b in ours if b]
        assert ours[0] == first_pids, f"batches: {ours}"
        assert ours[1:] == [{third.pid}], f"batches: {ours}"
        # the third was read once its own linger ended, not at a later wake-up
        assert third_at - read_at < LINGER_S + 5
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_the_agents_linger_reads_a_short_lived_process_before_it_exits(tmp_path: Path) -> None:
    """With the default linger a process living 1 s once released is read alive (its VMAs)."""
    assert 0 < sampler_module.NEW_PROCESS_BATCH_S <= 0.05
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    p = subprocess.Popen(["/usr/bin/python3", "-c", f"import time\nopen({str(fifo)!r}).close()\n"
                          "end = time.monotonic() + 1\nwhile time.monotonic() < end: pass"])
    batches: list[list[NewProcess]] = []
    try:
        with Sampler(FREQ, pids=[p.pid], unwind="fp", python_frames=False) as s:
            s.watch_new_processes(batches.append)
            _release(fifo)
            p.wait(timeout=30)
            time.sleep(0.2)
        got = [n for b in batches for n in b if n.pid == p.pid]
        assert got and got[0].vmas, "the process was not read before it exited"
        assert any(v[2][5].endswith(b"/python3.11") for v in got[0].vmas)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
