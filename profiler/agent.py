"""The node agent: drain the sampler, attach process and pod context, symbolize, ship.

Context is resolved at drain time, not at upload time, so a process that exited a moment
ago still has its maps, cgroup and pod (the caches keep the recently dead for a while).
Everything here except `profiler.sampler` is plain Python, so the assembly of raw samples
into profiles (`build_profiles`) is testable without BPF.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from podflame.model import Frame, FrameKind, Line, Profile
from profiler import metrics

if TYPE_CHECKING:
    from profiler.sampler import Drain, RawSample

log = logging.getLogger("podflame.agent")

_ERRNO_NAMES = {-17: "EEXIST", -12: "ENOMEM", -14: "EFAULT"}


class Sink(Protocol):
    def __call__(self, profiles: list[Profile]) -> None: ...


class MapsLookup(Protocol):
    def refresh(self, pids: Iterable[int]) -> None: ...
    def lookup(self, pid: int, address: int): ...  # -> Mapping | None
    def process_gone(self, pid: int) -> bool: ...


class CgroupLookup(Protocol):
    def path(self, cgroup_id: int) -> str | None: ...


class PodLabeler(Protocol):
    def labels(self, cgroup_path: str) -> dict[str, str]: ...


@dataclass
class Context:
    """What turns raw samples into labelled profiles with frames; each part replaceable in tests."""

    node: str
    maps: MapsLookup
    cgroups: CgroupLookup
    pod_labels: PodLabeler
    comm_cache: dict[int, str] = field(default_factory=dict)

    def process_name(self, tgid: int, thread_comm: str) -> str:
        """The process's name (its main thread's comm), not the sampled thread's."""
        name = self.comm_cache.get(tgid)
        if name is None:
            try:
                with open(f"/proc/{tgid}/comm") as f:
                    name = f.read().strip() or thread_comm
            except OSError:
                name = thread_comm
            if len(self.comm_cache) > 65536:
                self.comm_cache.clear()
            self.comm_cache[tgid] = name
        return name


def _lost_stack_frame(kind: str, error: int) -> Frame:
    """An explicit frame for a stack the kernel could not record, so lost samples stay visible."""
    reason = _ERRNO_NAMES.get(error, str(error))
    return Frame(0, None, FrameKind.UNKNOWN, (Line(f"[{kind} stack lost: {reason}]"),))


def stack_of(sample: RawSample, ctx: Context) -> tuple[Frame, ...]:
    """Root-first frames: user stack from its outermost frame down, then the kernel stack."""
    frames: list[Frame] = []
    if sample.user_stack:
        for addr in reversed(sample.user_stack):
            frames.append(Frame(addr, ctx.maps.lookup(sample.tgid, addr), FrameKind.NATIVE))
    elif sample.user_error not in (0, -14) and sample.tgid:
        frames.append(_lost_stack_frame("user", sample.user_error))
    if sample.kernel_stack:
        frames.extend(Frame(addr, None, FrameKind.KERNEL) for addr in reversed(sample.kernel_stack))
    elif sample.kernel_error not in (0, -14):
        frames.append(_lost_stack_frame("kernel", sample.kernel_error))
    return tuple(frames)


def build_profiles(drain: Drain, ctx: Context, period_ns: int) -> list[Profile]:
    """One unsymbolized Profile per (cgroup, process) seen in the drain."""
    ctx.maps.refresh({s.tgid for s in drain.samples if s.tgid})
    by_key: dict[tuple[int, int], Profile] = {}
    pod_cache: dict[int, dict[str, str]] = {}
    for s in drain.samples:
        key = (s.cgroup_id, s.tgid)
        prof = by_key.get(key)
        if prof is None:
            labels = pod_cache.get(s.cgroup_id)
            if labels is None:
                path = ctx.cgroups.path(s.cgroup_id) or f"cgroup-id:{s.cgroup_id}"
                labels = pod_cache[s.cgroup_id] = {"cgroup": path, **ctx.pod_labels.labels(path)}
            prof = by_key[key] = Profile(
                labels={**labels, "node": ctx.node, "comm": ctx.process_name(s.tgid, s.comm), "pid": str(s.tgid)},
                start_ns=drain.start_ns, duration_ns=drain.end_ns - drain.start_ns, period_ns=period_ns)
        prof.add(stack_of(s, ctx), s.count)
    return list(by_key.values())


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


class _KubeletLabels:
    """Pod labels read from the cgroup path alone (names from the API server come with profiler.kube)."""

    def labels(self, cgroup_path: str) -> dict[str, str]:
        from profiler.cgroups import labels_for

        labels = labels_for(cgroup_path)
        labels.pop("cgroup", None)
        return labels


def create_context(node: str | None) -> Context:
    """The real host context: /proc maps, the cgroup v2 tree, kubelet cgroup naming."""
    from profiler.cgroups import CgroupResolver
    from profiler.procmaps import MapsCache

    return Context(node=node or default_node_name(), maps=MapsCache(), cgroups=CgroupResolver(),
                   pod_labels=_KubeletLabels())


class Agent:
    """Drains every `interval` seconds and hands symbolized profiles to `sink` (an uploader)."""

    def __init__(self, sampler, ctx: Context, symbolize: Callable[[Profile], Profile], sink: Sink, *,
                 interval: float = 10.0) -> None:
        self.sampler = sampler
        self.ctx = ctx
        self.symbolize = symbolize
        self.sink = sink
        self.interval = interval
        self.period_ns = int(1e9 / sampler.frequency)
        self._stop = threading.Event()
        self._last_errors: dict[str, int] = {}

    def drain_once(self) -> list[Profile]:
        t0 = time.process_time()
        drain = self.sampler.drain()
        profiles = [self.symbolize(p) for p in build_profiles(drain, self.ctx, self.period_ns)]
        metrics.record_drain(drain, profiles, self._last_errors)
        self._last_errors = dict(drain.errors)
        metrics.DRAIN_CPU.observe(time.process_time() - t0)
        return profiles

    def run(self) -> None:
        next_at = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            try:
                profiles = self.drain_once()
                if profiles:
                    self.sink(profiles)
            except Exception:  # one bad drain must not stop profiling
                log.exception("drain failed")
        # a final drain so a clean shutdown loses nothing
        try:
            profiles = self.drain_once()
            if profiles:
                self.sink(profiles)
        except Exception:
            log.exception("final drain failed")

    def stop(self) -> None:
        self._stop.set()
