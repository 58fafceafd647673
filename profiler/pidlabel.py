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
from collections.abc import Iterable

from profiler.procmaps import start_time

PID_MIN_AGE_S = 60.0


def _boot_time_ns(proc: str) -> int:
    with open(f"{proc}/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1]) * 1_000_000_000
    raise OSError(f"{proc}/stat has no btime")


class PidLabels:
    """The pid label of each process in a drain: its pid once it is `min_age_s` old, else none.

    A process's start time is read once while it keeps appearing in drains, so one that exits keeps
    the label its earlier drains gave it; the table holds only the last drain's processes."""

    def __init__(self, min_age_s: float = PID_MIN_AGE_S, proc: str = "/proc") -> None:
        self.min_age_ns = int(min_age_s * 1e9)
        self.proc = proc
        self._started: dict[int, int | None] = {}  # tgid -> start (wall clock ns); None: gone before read
        self._boot_ns: int | None = None
        self._tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    def begin_drain(self, tgids: Iterable[int]) -> None:
        if not self.min_age_ns:
            return
        if self._boot_ns is None:
            self._boot_ns = _boot_time_ns(self.proc)
        old, new = self._started, {}
        for tgid in tgids:
            if tgid in old and old[tgid] is not None:
                new[tgid] = old[tgid]
            else:
                ticks = start_time(tgid, self.proc)
                new[tgid] = None if ticks is None else self._boot_ns + ticks * self._tick_ns
        self._started = new

    def label(self, tgid: int, at_ns: int) -> str | None:
        """The pid as a label value, or None for a process younger than the minimum age (or gone)."""
        if not self.min_age_ns:
            return str(tgid)
        started = self._started.get(tgid)
        return str(tgid) if started is not None and at_ns - started >= self.min_age_ns else None
