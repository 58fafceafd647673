"""`podflame record`'s capture: the agent's drain -> profiles step in a loop, then symbolize and label once.

A one-shot capture differs from the agent only in when it symbolizes (once, at the end, after waiting
for debuginfod) and where profiles go (a file, not the server); the drain, the stack memo and the
frame building are the agent's own (`profiler.agent.build_profiles`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from podflame.model import Profile

if TYPE_CHECKING:
    from profiler.procmaps import NewProcess


def record(duration: float, frequency: int, *, unwind: str, python_frames: bool,
           python_early_reads: tuple[float, ...] = (), pids: Sequence[int] | None = None,
           cgroup_ids: Sequence[int] | None = None,
           progress: Callable[[float, int], None] = lambda left, samples: None,
           say: Callable[[str], None] = lambda text: None) -> list[Profile]:
    """Sample for `duration` seconds; one symbolized, pod-labelled profile per process (label set).

    Drains every second, so maps of short-lived processes are read while they live. Ctrl-C ends the
    capture early and keeps what was sampled. Raises SamplerError when BPF cannot run here.
    `unwind`, `python_frames` and `python_early_reads` are the sampler's (profiler.sampler.Sampler).
    """
    from profiler.agent import KubeletLabels, PodLabels, build_profiles, create_context
    from profiler.cgroups import CgroupResolver
    from profiler.procmaps import MapsCache
    from profiler.sampler import Sampler
    from symbolizer import Symbolizer

    ctx = create_context(None)
    # the cgroup's processes get their tables before the first sample, as a --pid capture's does
    preload = CgroupResolver().processes(set(cgroup_ids)) if cgroup_ids else []
    sampler = Sampler(frequency, pids=pids, cgroup_ids=cgroup_ids, unwind=unwind, python_frames=python_frames,
                      python_early_reads=python_early_reads, preload=preload)
    assert isinstance(ctx.maps, MapsCache)  # create_context's: the symbolizer reads binaries through it
    # symbolized once at the end (not per drain, as the agent does): the maps of a process that exited, and of the
    # images an exec replaced, are held for the whole capture (a drain a second)
    ctx.maps.grace_drains = max(ctx.maps.grace_drains, int(duration) + 2)
    symbolizer = Symbolizer(ctx.maps)
    period_ns = int(1e9 / frequency)
    profiles: list[Profile] = []
    # The maps of a process the kernel just saw are read then, as the agent reads them: one that execs or exits
    # before the next drain keeps its names (a drain reads only what is mapped when it runs)
    maps_lock = threading.Lock()

    def prefetch(news: list[NewProcess]) -> None:
        with maps_lock:
            ctx.maps.prefetch(news)

    sampler.watch_new_processes(prefetch)
    started = time.monotonic()
    end = started + duration
    try:
        with sampler:
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(1.0, left))
                # seen before the drain, so the drain that follows holds the last samples of the processes
                gone = bool(pids) and not any(_alive(pid) for pid in pids or ())
                drain = sampler.drain()
                with maps_lock:
                    profiles.extend(build_profiles(drain, ctx, period_ns))
                progress(max(0.0, end - time.monotonic()), sum(p.total() for p in profiles))
                if gone:  # nothing more to sample: a capture of a process that ended ends with it
                    say(f"{_processes(pids or ())} exited after {time.monotonic() - started:.1f}s: "
                        "writing what was captured")
                    break
    except KeyboardInterrupt:
        say("interrupted: writing what was captured")
    by_labels: dict[tuple[tuple[str, str], ...], list[Profile]] = {}
    for p in profiles:
        by_labels.setdefault(tuple(sorted(p.labels.items())), []).append(p)
    pods = PodLabels(KubeletLabels(), hold_seconds=0)
    groups = [Profile.merge(group) for group in by_labels.values()]
    symbolized = [symbolizer.symbolize(p) for p in groups]
    fetcher = symbolizer.debuginfod  # a one-shot capture can wait for the debug files it asked for
    if fetcher is not None:
        if not fetcher.wait(0):
            say(f"waiting up to {fetcher.max_time:.0f}s for debug files from debuginfod...")
            fetcher.wait(fetcher.max_time)
        symbolized = [symbolizer.symbolize(p) for p in groups]  # redoes only binaries whose file arrived
    return pods(symbolized)


def _alive(pid: int) -> bool:
    """Whether the process still runs (a zombie has ended: it is only waiting for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _processes(pids: Sequence[int]) -> str:
    return f"process {pids[0]}" if len(pids) == 1 else "processes " + ", ".join(map(str, pids))
