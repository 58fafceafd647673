"""Which processes are named by a `pid` label: those that have run for at least a minute.

Every label value is a series. A node busy with short-lived processes (probes, shells, cron jobs,
build steps) makes a new pid every few seconds: ~70k series a day at 19 Hz on 2 CPUs. Measured with
bench/series_churn.py (docs/benchmarks.md "Series churn"), a day of that made a node's 24 h flame
graph 26x slower and the pod list 200x slower than the same node without it, since every query pays
per series and per stored row. A short-lived process's pid names nothing anyone can look up later,
so its samples are summed with its siblings' under the same cgroup (pod, container) and `comm`; a
process that has run for `min_age_s` keeps its pid. Nothing is dropped: only the split by pid is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Protocol

from profiler.procmaps import start_time

PID_MIN_AGE_S = 60.0


class StartTimes(Protocol):
    """Where a drain's processes' start times come from: the maps cache (MapsCache.start_time), which read
    /proc/PID/stat in the same drain's refresh and knows pid reuse and exited processes (kept a grace
    period of drains after their exit)."""

    def start_time(self, pid: int) -> int | None: ...


def _boot_time_ns(proc: str) -> int:
    """The wall-clock time of boot, which start times (ticks after boot) are counted from. The kernel's
    own clocks give it to the microsecond; /proc/stat's btime is whole seconds (up to 1 s early), kept
    for a /proc of another root."""
    if proc == "/proc":
        return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    with open(f"{proc}/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1]) * 1_000_000_000
    raise OSError(f"{proc}/stat has no btime")


class PidLabels:
    """The pid label of each process in a drain: its pid once it is `min_age_s` old, else none.

    Start times are the maps cache's (`starts`, read in its refresh for the drain: no second read of
    /proc/PID/stat; only a live process whose maps could not be read is asked directly). An exited
    process keeps its label for as long as the cache keeps its maps (the drain that noticed the exit
    and the next: its last samples are drained after it exited, and they stay under the series its
    earlier drains gave them); after that it is unknown and gets none, like a process that exited
    before anything read it. A reused pid is the new process (the cache drops the old one when the
    start time changes)."""

    def __init__(self, min_age_s: float = PID_MIN_AGE_S, starts: StartTimes | None = None, proc: str = "/proc") -> None:
        if min_age_s and starts is None:
            raise ValueError("a minimum pid age needs the processes' start times (the maps cache)")
        self.min_age_ns = int(min_age_s * 1e9)
        self.starts = starts
        self.proc = proc
        self._started: dict[int, int | None] = {}  # tgid -> start (wall clock ns), this drain's processes
        self._boot_ns: int | None = None
        self._tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    def begin_drain(self, tgids: Iterable[int]) -> None:
        """Take this drain's processes' start times (call after the maps cache's refresh)."""
        if not self.min_age_ns or self.starts is None:
            return
        if self._boot_ns is None:
            self._boot_ns = _boot_time_ns(self.proc)
        new: dict[int, int | None] = {}
        for tgid in tgids:
            ticks = self.starts.start_time(tgid)
            if ticks is None:  # maps unreadable (another security context), or gone: /proc/PID/stat if it lives
                ticks = start_time(tgid, self.proc)
            new[tgid] = None if ticks is None else self._boot_ns + ticks * self._tick_ns
        self._started = new

    def label(self, tgid: int, at_ns: int) -> str | None:
        """The pid as a label value, or None for a process younger than the minimum age (or unknown)."""
        if not self.min_age_ns:
            return str(tgid)
        started = self._started.get(tgid)
        return str(tgid) if started is not None and at_ns - started >= self.min_age_ns else None
