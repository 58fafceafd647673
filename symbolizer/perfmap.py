"""JIT symbols from /tmp/perf-PID.map (V8 --perf-basic-prof, perf-map-agent, Python -X perf, ...).

The runtime writes the file in its own mount and PID namespaces: a containerized process's
map is `/tmp/perf-<pid in its namespace>.map` inside its root, which the node reads as
`/proc/<host pid>/root/tmp/perf-<ns pid>.map`. The file grows while the JIT works, so it is
re-read when its size or mtime changes; after the process exits the last copy is kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from symbolizer.cache import LRU
from symbolizer.ranges import AddressRanges


def parse_perf_map(lines: Iterable[str]) -> AddressRanges:
    """`START SIZE NAME` lines (hex, `0x` optional); a later entry at the same start wins (re-JIT)."""
    entries: dict[int, tuple[int, str]] = {}
    for line in lines:
        parts = line.rstrip("\n").split(maxsplit=2)
        if len(parts) < 3:
            continue
        try:
            start, size = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            continue
        if size > 0:
            entries[start] = (start + size, parts[2])
    return AddressRanges((s, *entries[s]) for s in sorted(entries))


def namespace_pid(pid: int, proc: str = "/proc") -> int:
    """The pid as the process sees itself (last NSpid field): the number in its perf map's name."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


class PerfMaps:
    """Per-pid perf maps, revalidated by (size, mtime) on each `get`, bounded by pid count."""

    def __init__(self, proc: str = "/proc", *, max_pids: int = 256) -> None:
        self.proc = proc
        self._maps: LRU[tuple[tuple[int, int] | None, AddressRanges | None]] = LRU(max_pids)

    def path(self, pid: int) -> str:
        return f"{self.proc}/{pid}/root/tmp/perf-{namespace_pid(pid, self.proc)}.map"

    def get(self, pid: int) -> AddressRanges | None:
        cached = self._maps.get(pid)
        path = self.path(pid)
        try:
            st = os.stat(path)
        except OSError:
            # gone with its process (keep the last copy), or the process never wrote one
            return cached[1] if cached else None
        stamp = (st.st_size, st.st_mtime_ns)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            with open(path, errors="replace") as f:
                ranges = parse_perf_map(f)
        except OSError:
            return cached[1] if cached else None
        self._maps.put(pid, (stamp, ranges))
        return ranges
