"""The node agent: drain the sampler, attach process and pod context, symbolize, ship.

Context is resolved at drain time, not at upload time, so a process that exited a moment
ago still has its maps, cgroup and pod (the caches keep the recently dead for a while).
Everything here except `profiler.sampler` is plain Python, so the assembly of raw samples
into profiles (`build_profiles`) is testable without BPF.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from podflame.model import (
    UNMAPPED,
    Frame,
    FrameKind,
    Line,
    Mapping,
    Profile,
    Unresolved,
    collapse_unmapped,
    user_pc_is_exact,
)
from profiler import metrics
from profiler.heap import SurvivorFreezer, release_freed_memory
from profiler.pidlabel import PidLabels
from profiler.sampler import MAX_STACK_DEPTH

if TYPE_CHECKING:
    from profiler.procmaps import NewProcess
    from profiler.pyframes import PythonFrames
    from profiler.sampler import Drain, RawSample

log = logging.getLogger("podflame.agent")

_ERRNO_NAMES = {-errno.EEXIST: "EEXIST", -errno.ENOMEM: "ENOMEM", -errno.EFAULT: "EFAULT"}
# no error, or no stack to walk (a kernel thread's user stack, a user-mode sample's kernel stack): nothing lost
_NOTHING_LOST = (0, -errno.EFAULT)


class Sink(Protocol):
    def __call__(self, profiles: list[Profile]) -> None: ...


class MapsLookup(Protocol):
    def refresh(self, pids: Iterable[int]) -> None: ...
    def prefetch(self, pids: Iterable[int | NewProcess]) -> None: ...
    def lookup(self, pid: int, address: int): ...  # -> Mapping | None
    def maps_lost(self, pid: int) -> bool: ...
    def version(self, pid: int) -> Hashable | None:
        """Changes whenever the process's maps change; None: not read (see MapsCache.version)."""


class FrameResolver(Protocol):
    """One process's frames, resolved one at a time (symbolizer.ProcessSymbolizer)."""

    def frame(self, frame: Frame, leaf: bool) -> Frame: ...


class FrameSymbolizer(Protocol):
    """What StackMemo needs of symbolizer.Symbolizer."""

    def for_process(self, pid: int | None) -> FrameResolver: ...
    @property
    def generation(self) -> int:
        """Grows when earlier answers may have changed (a debug file arrived): memos must be dropped."""


class CgroupLookup(Protocol):
    def path(self, cgroup_id: int) -> str | None: ...


class PodLabeler(Protocol):
    def labels(self, cgroup_path: str) -> dict[str, str] | None:
        """Pod labels for a cgroup; {} for a non-pod cgroup; None while the pod is not known yet."""

    def give_up(self, cgroup_path: str) -> dict[str, str]:
        """Best-effort labels once a profile was held long enough."""


@dataclass
class Context:
    """What turns raw samples into labelled profiles with frames; each part replaceable in tests."""

    node: str
    maps: MapsLookup
    cgroups: CgroupLookup
    comm_cache: dict[int, str] = field(default_factory=dict)
    python: PythonFrames | None = None  # names and merges Python frames; None: native frames only
    pids: PidLabels = field(default_factory=lambda: PidLabels(0))  # which processes get a pid label

    def process_name(self, tgid: int, pid: int, thread_comm: str) -> str:
        """The process's name (its main thread's comm), not the sampled thread's.

        A sample of the main thread carries it (and refreshes the cache: an exec renames the process
        under the same pid); another thread's sample looks it up once in /proc/TGID/comm."""
        if pid != tgid:
            name = self.comm_cache.get(tgid)
            if name is not None:
                return name
            try:
                with open(f"/proc/{tgid}/comm") as f:
                    name = f.read().strip() or thread_comm
            except OSError:
                name = thread_comm
        else:
            name = thread_comm
        if len(self.comm_cache) > 65536:
            self.comm_cache.clear()
        self.comm_cache[tgid] = name
        return name


# Root end of a user stack that filled every slot the kernel has (MAX_STACK_DEPTH): its callers were cut
# off (a deep recursion), so the graph must not show the outermost frame kept as the stack's root. A
# complete stack of exactly that many frames reads the same; the name says only what is certain.
NATIVE_TRUNCATED = Frame(0, None, FrameKind.UNKNOWN,
                         (Line(f"[truncated: user stack at the {MAX_STACK_DEPTH}-frame limit]"),))


def _lost_stack_frame(kind: str, error: int) -> Frame:
    """An explicit frame for a stack the kernel could not record, so lost samples stay visible."""
    reason = _ERRNO_NAMES.get(error, str(error))
    return Frame(0, None, FrameKind.UNKNOWN, (Line(f"[{kind} stack lost: {reason}]"),))


def stack_of(sample: RawSample, ctx: Context) -> tuple[Frame, ...]:
    """Root-first frames: user stack from its outermost frame down, then the kernel stack."""
    frames: list[Frame] = []
    if sample.user_stack:
        if len(sample.user_stack) >= MAX_STACK_DEPTH:
            frames.append(NATIVE_TRUNCATED)
        for addr in reversed(sample.user_stack):
            frames.append(Frame(addr, ctx.maps.lookup(sample.tgid, addr), FrameKind.NATIVE))
    elif sample.user_error not in _NOTHING_LOST and sample.tgid:
        frames.append(_lost_stack_frame("user", sample.user_error))
    if sample.kernel_stack:
        frames.extend(Frame(addr, None, FrameKind.KERNEL) for addr in reversed(sample.kernel_stack))
    elif sample.kernel_error not in _NOTHING_LOST:
        frames.append(_lost_stack_frame("kernel", sample.kernel_error))
    if sample.python_stack and ctx.python is not None:
        return ctx.python.merge(sample.tgid, sample.python_stack, tuple(frames))
    return tuple(frames)


def build_profiles(drain: Drain, ctx: Context, period_ns: int,
                   stack: Callable[[RawSample], tuple[Frame, ...]] | None = None) -> list[Profile]:
    """One Profile per (cgroup, process) seen in the drain; pod labels come later.

    Frames are unsymbolized unless `stack` (e.g. a `StackMemo`) returns symbolized ones."""
    tgids = {s.tgid for s in drain.samples if s.tgid}
    ctx.maps.refresh(tgids)
    if ctx.python is not None:
        ctx.python.begin_drain(drain)
    ctx.pids.begin_drain(tgids)
    by_key: dict[tuple[int, int], Profile] = {}
    by_labels: dict[tuple[str, str, str | None], Profile] = {}  # processes without a pid label share one
    paths: dict[int, str] = {}
    for s in drain.samples:
        key = (s.cgroup_id, s.tgid)
        prof = by_key.get(key)
        if prof is None:
            path = paths.get(s.cgroup_id)
            if path is None:
                path = paths[s.cgroup_id] = ctx.cgroups.path(s.cgroup_id) or f"cgroup-id:{s.cgroup_id}"
            comm, pid = ctx.process_name(s.tgid, s.pid, s.comm), ctx.pids.label(s.tgid, drain.end_ns)
            prof = by_labels.get((path, comm, pid))
            if prof is None:
                labels = {"cgroup": path, "node": ctx.node, "comm": comm}
                if pid is not None:
                    labels["pid"] = pid
                prof = by_labels[(path, comm, pid)] = Profile(
                    labels=labels, start_ns=drain.start_ns, duration_ns=drain.end_ns - drain.start_ns,
                    period_ns=period_ns)
            by_key[key] = prof
        prof.add(stack(s) if stack is not None else stack_of(s, ctx), s.count)
    return list(by_labels.values())


class _ProcessMemo:
    """What StackMemo knows of one process: symbolized stacks by raw stack, callers by raw user stack without
    its leaf, and frames by (address, is leaf)."""

    __slots__ = ("callers", "drain_callers", "drain_frames", "frames", "stacks", "version")

    def __init__(self, version: Hashable) -> None:
        self.version = version  # of the process's maps when these were made
        self.stacks: dict[tuple, tuple[Frame, ...]] = {}
        self.frames: dict[tuple[int, bool], Frame] = {}
        # a user stack without its leaf (addresses leaf first) -> its frames, root first, collapsed
        self.callers: dict[tuple[int, ...], tuple[Frame, ...]] = {}
        # the same for what may not be kept (it waits for maps that may come: a process that exited before
        # its maps were read): good for one drain, in which the symbolizer's answer for them holds
        self.drain_frames: dict[tuple[int, bool], Frame] = {}
        self.drain_callers: dict[tuple[int, ...], tuple[Frame, ...]] = {}

    def __len__(self) -> int:
        """Entries held, as StackMemo.entries counts them."""
        return len(self.stacks) + len(self.frames) + len(self.callers)


_NEVER_KEPT = frozenset({Unresolved.PROCESS_GONE, Unresolved.UNREADABLE, Unresolved.JIT_NO_MAP})
# Members read per frame, as module globals: reading one through its class costs ~130 ns (EnumType has a
# __getattr__, so every class attribute read goes through a Python-level hook), a global ~15 ns.
_NATIVE, _KERNEL = FrameKind.NATIVE, FrameKind.KERNEL
_NO_MAPPING, _PROCESS_GONE, _NO_SYMBOLS = Unresolved.NO_MAPPING, Unresolved.PROCESS_GONE, Unresolved.NO_SYMBOLS


class StackMemo:
    """Symbolized stacks and frames per process across drains, so a stack seen in an earlier drain costs
    one dict lookup, and a new stack of a known process costs a dict lookup per frame seen before.

    In steady state most samples repeat a stack (hot loops); on a busy node many stacks are new but
    their frames are not (the same functions called from elsewhere, a deeper recursion). Frames are
    kept per process, keyed by (address, is leaf), for as long as the process's maps are unchanged
    (`MapsCache.version`): exec, pid reuse or a new mapping drops the process's memo, and so does its
    exit (once the maps cache lets it go). An address outside every mapping of a process whose maps
    were read is `[no mapping]` (`UNMAPPED`, a run of them one frame) without asking the symbolizer, and
    keeps that answer (a frame-pointer walk through code built without frame pointers finds such
    addresses in every drain; each one cost a re-read of the maps); any address in a new mapping makes
    the maps cache re-read the maps, which drops the memo. JIT frames (perf maps grow),
    unreadable binaries (may be transient) and exited processes' frames without a mapping are redone
    every drain. Kernel frames are kept once for all processes.

    User frames of a binary with a build id are shared by all processes too: every new process (ASLR
    puts each one's binaries elsewhere) would otherwise resolve, store and ship its own copy of the
    same frames. Such a frame is rebased into the layout of the first process seen mapping that
    segment of the file, and carries that process's mapping: its file offset
    (address - mapping start + mapping offset, what pprof tools and addr2line use) is unchanged, and
    the frames of a pod's 600 short-lived `python3` processes are one set of frames, one pprof
    location each.

    Bounded: past `max_entries` stacks and frames everything is dropped, and all is rebuilt every
    `max_age_drains`. Dropped as well when the symbolizer's `generation` moves (a debug file arrived
    from debuginfod: the same frames now have file:line and inline frames).
    """

    def __init__(self, ctx: Context, symbolizer: FrameSymbolizer, *, max_entries: int = 200_000,
                 max_age_drains: int = 30, max_kernel_frames: int = 50_000, max_shared_frames: int = 200_000,
                 max_canonical_mappings: int = 8192) -> None:
        self.ctx = ctx
        self.symbolizer = symbolizer
        self.max_entries = max_entries
        self.max_age_drains = max_age_drains
        self.max_kernel_frames = max_kernel_frames
        self.max_shared_frames = max_shared_frames
        self.max_canonical_mappings = max_canonical_mappings
        self.processes: dict[int, _ProcessMemo] = {}
        self.kernel_frames: dict[tuple[int, bool], Frame] = {}
        # kernel stack (addresses leaf first) -> (its frames root first, whether one has no mapping)
        self.kernel_stacks: dict[tuple[int, ...], tuple[tuple[Frame, ...], bool]] = {}
        # user frames of binaries with a build id, shared by all processes (see _shared_frame)
        self.shared_frames: dict[tuple[Mapping, int, bool], Frame] = {}
        self.canonical_mappings: dict[tuple, Mapping] = {}  # (build id, offset, size, path) -> first seen
        self.entries = 0  # stacks and frames held in `processes`
        self._current: dict[int, _ProcessMemo] = {}  # checked against the maps this drain
        self._per_process: dict[int, FrameResolver] = {}
        self._drains = 0
        self._generation = symbolizer.generation
        self.hits = self.misses = self.frame_hits = self.frame_misses = self.shared_hits = 0

    def clear(self) -> None:
        self.processes.clear()
        self.kernel_frames.clear()
        self.kernel_stacks.clear()
        self.shared_frames.clear()
        self.canonical_mappings.clear()
        self._current.clear()
        self.entries = 0

    def begin_drain(self) -> None:
        self._per_process = {}
        self._current = {}
        self._drains += 1
        generation = self.symbolizer.generation
        if self._drains % self.max_age_drains == 0 or generation != self._generation:
            self.clear()
            self._generation = generation
            return
        for tgid, pm in list(self.processes.items()):
            # exited (past the maps cache's grace) or not sampled for long; tgid 0 (idle) has no maps
            if tgid and self.ctx.maps.version(tgid) is None:
                del self.processes[tgid]
                self.entries -= len(pm)

    def _process(self, tgid: int) -> _ProcessMemo:
        """This process's memo, checked once per drain against its maps' version."""
        version = self.ctx.maps.version(tgid)
        pm = self.processes.get(tgid)
        if pm is None or pm.version != version:
            if pm is not None:
                self.entries -= len(pm)
            pm = self.processes[tgid] = _ProcessMemo(version)
        else:
            pm.drain_frames = {}
            pm.drain_callers = {}
        self._current[tgid] = pm
        return pm

    def __call__(self, s: RawSample) -> tuple[Frame, ...]:
        pm = self._current.get(s.tgid)
        if pm is None:
            pm = self._process(s.tgid)
        key = (s.user_stack, s.kernel_stack, s.user_error, s.kernel_error)
        hit = pm.stacks.get(key)
        if hit is not None:
            self.hits += 1
            return self._with_python(s, hit)
        self.misses += 1
        fn = self._per_process.get(s.tgid)
        if fn is None:
            fn = self._per_process[s.tgid] = self.symbolizer.for_process(s.tgid or None)
        if self.entries >= self.max_entries:  # may go over by one stack's frames: bounded all the same
            self.clear()
            pm = self._process(s.tgid)
        # a process whose maps were read can keep frames without a mapping (see the class doc)
        stack, keep = self._frames(s, pm, fn.frame, pm.version is not None)
        if keep:
            pm.stacks[key] = stack
            self.entries += 1
        return self._with_python(s, stack)

    def _with_python(self, s: RawSample, native: tuple[Frame, ...]) -> tuple[Frame, ...]:
        """The native stack with the sample's Python frames merged in. Done per sample, not memoized with
        the stack: the code objects behind the frames are re-validated each drain (see PythonFrames)."""
        if s.python_stack and self.ctx.python is not None:
            return self.ctx.python.merge(s.tgid, s.python_stack, native)
        return native

    def _frames(self, s: RawSample, pm: _ProcessMemo, single: Callable[[Frame, bool], Frame],
                mapped: bool) -> tuple[tuple[Frame, ...], bool]:
        """Root-first frames as `stack_of` gives them, each resolved as the symbolizer would, from the
        memos; and whether the stack may be kept (none of its frames waits for maps that may come).

        Work per distinct part, not per sample: a stack is its callers (every user frame but the leaf),
        its leaf and its kernel stack. At 99 Hz most samples are a stack not seen before only because the
        leaf instruction moved (a hot loop, the eval loop): the callers are one lookup of the process's
        `callers` memo, and a kernel stack (a few syscall paths for all processes) one lookup of
        `kernel_stacks`; only the leaf is resolved by itself."""
        keep = True
        kernel: tuple[Frame, ...] = ()
        unmapped = False
        if s.kernel_stack:
            known = self.kernel_stacks.get(s.kernel_stack)  # most: a few syscall paths, as _kernel_frames finds first
            if known is not None:
                self.frame_hits += len(s.kernel_stack)
                kernel, unmapped = known
            else:
                kernel, unmapped = self._kernel_frames(s.kernel_stack, single)
        # the user PC is the leaf unless a syscall entered the kernel (then it is the next instruction)
        exact_leaf = user_pc_is_exact(kernel[0]) if kernel else s.kernel_error in _NOTHING_LOST
        user = s.user_stack
        frames: tuple[Frame, ...]
        if user:
            n = len(user)
            callers: tuple[Frame, ...] | None = pm.callers.get(user[1:]) if n > 1 else ()
            if callers is None and pm.drain_callers:
                callers = pm.drain_callers.get(user[1:])
                keep = callers is None
            if callers is None:
                got, keep = self._user_frames(s.tgid, user, 1, -1, pm, single, mapped)
                callers = collapse_unmapped(tuple(got))
                if keep:
                    pm.callers[user[1:]] = callers
                    self.entries += 1
                else:
                    pm.drain_callers[user[1:]] = callers
            elif n > 1:
                self.frame_hits += n - 1
            # the leaf from the process's frame memo when it is there (what _user_frames would find first)
            leaf = pm.frames.get((user[0], exact_leaf))
            if leaf is not None:
                self.frame_hits += 1
            else:
                (leaf,), keep_leaf = self._user_frames(s.tgid, user[:1], 0, 0 if exact_leaf else -1, pm, single,
                                                      mapped)
                keep = keep and keep_leaf
            if leaf.reason is _NO_MAPPING:  # collapse_unmapped across the callers and the leaf
                frames = callers if callers and callers[-1] is UNMAPPED else (*callers, UNMAPPED)
            else:
                frames = (*callers, leaf)
            if n >= MAX_STACK_DEPTH:  # the kernel's slots were full: the callers were cut off
                frames = (NATIVE_TRUNCATED, *frames)
        elif s.user_error not in _NOTHING_LOST and s.tgid:
            frames = (_lost_stack_frame("user", s.user_error),)
        else:
            frames = ()
        if kernel:
            frames = collapse_unmapped(frames + kernel) if unmapped else frames + kernel
        elif s.kernel_error not in _NOTHING_LOST:
            frames = (*frames, _lost_stack_frame("kernel", s.kernel_error))
        return frames, keep

    def _user_frames(self, tgid: int, user: tuple[int, ...], lo: int, leaf_at: int, pm: _ProcessMemo,
                     single: Callable[[Frame, bool], Frame], mapped: bool) -> tuple[list[Frame], bool]:
        """Root-first frames of user[lo:] (leaf first in `user`; index `leaf_at` is the leaf), uncollapsed,
        each from the process's frame memo or resolved and kept there; and whether all may be kept."""
        frames: list[Frame] = []
        keep = True
        memo = pm.frames
        lookup = self.ctx.maps.lookup
        shared = self.shared_frames
        transient = pm.drain_frames
        for i in range(len(user) - 1, lo - 1, -1):
            addr = user[i]
            leaf = i == leaf_at
            f = memo.get((addr, leaf))
            if f is None and transient:
                f = transient.get((addr, leaf))
                if f is not None:
                    keep = False  # waits for maps, as when it was resolved
            if f is None:
                self.frame_misses += 1
                m = lookup(tgid, addr)
                if m is not None and m.build_id is not None:
                    f = self._shared_frame(addr, m, leaf, single, shared)
                elif m is None and mapped:
                    # outside every mapping of maps we hold (re-read once a drain on such a miss):
                    # what the symbolizer would say, without asking it ~10k times a minute
                    f = UNMAPPED
                else:
                    f = single(Frame(addr, m, _NATIVE), leaf)
                reason = f.reason
                if f.kind is _NATIVE and reason not in _NEVER_KEPT and \
                        (mapped or reason is not _NO_MAPPING):
                    memo[(addr, leaf)] = f
                    self.entries += 1
                elif reason is _PROCESS_GONE or (not mapped and reason is _NO_MAPPING):
                    keep = False
                    transient[(addr, leaf)] = f
            else:
                self.frame_hits += 1
            frames.append(f)
        return frames, keep

    def _kernel_frames(self, kernel: tuple[int, ...],
                       single: Callable[[Frame, bool], Frame]) -> tuple[tuple[Frame, ...], bool]:
        """Root-first frames of a kernel stack, shared by all processes; and whether one is outside every
        mapping (never from kallsyms, but the stack is then collapsed as `stack_of`'s would be)."""
        got = self.kernel_stacks.get(kernel)
        if got is not None:
            self.frame_hits += len(kernel)
            return got
        kmemo = self.kernel_frames
        frames: list[Frame] = []
        for i in range(len(kernel) - 1, -1, -1):
            addr = kernel[i]
            leaf = i == 0
            f = kmemo.get((addr, leaf))
            if f is None:
                self.frame_misses += 1
                f = single(Frame(addr, None, _KERNEL), leaf)
                if len(kmemo) >= self.max_kernel_frames:
                    kmemo.clear()
                kmemo[(addr, leaf)] = f
            else:
                self.frame_hits += 1
            frames.append(f)
        got = (tuple(frames), any(f.reason is _NO_MAPPING for f in frames))
        if len(self.kernel_stacks) >= self.max_kernel_frames:
            self.kernel_stacks.clear()
        self.kernel_stacks[kernel] = got
        return got

    def _shared_frame(self, addr: int, m: Mapping, leaf: bool, single: Callable[[Frame, bool], Frame],
                      shared: dict[tuple[Mapping, int, bool], Frame]) -> Frame:
        """The frame at `addr` of mapping `m`, rebased into the layout of the first process seen mapping
        the same segment of the same file (same build id), and shared by every process mapping it."""
        key = (m.build_id, m.offset, m.limit - m.start, m.path)
        canonical = self.canonical_mappings.get(key)
        if canonical is None:
            if len(self.canonical_mappings) >= self.max_canonical_mappings:
                self.canonical_mappings.clear()
                shared.clear()
            canonical = self.canonical_mappings[key] = m
        at = addr - m.start + canonical.start
        f = shared.get((canonical, at, leaf))
        if f is not None:
            self.shared_hits += 1
            return f
        resolved = single(Frame(addr, m, _NATIVE), leaf)
        if canonical is not m:
            resolved = Frame(at, canonical, resolved.kind, resolved.lines, resolved.reason)
        # a build id names the bytes: a name, or no symbols there, holds for every process mapping them
        if resolved.lines or resolved.reason is _NO_SYMBOLS:
            if len(shared) >= self.max_shared_frames:
                shared.clear()
            shared[(canonical, at, leaf)] = resolved
        return resolved


class PodLabels:
    """Adds pod labels to profiles; holds those of a pod the API server has not told us about yet.

    A container that started a moment before the drain is usually known one drain later: the
    profile waits (already symbolized, so the process may exit meanwhile) and is re-resolved,
    and after `hold_seconds` it ships with whatever is known. Nothing is dropped.
    """

    def __init__(self, labeler: PodLabeler, *, hold_seconds: float = 30.0, max_held: int = 20000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.labeler = labeler
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self.clock = clock
        self.held: list[tuple[float, Profile]] = []

    def __call__(self, profiles: Iterable[Profile]) -> list[Profile]:
        now = self.clock()
        ready: list[Profile] = []
        waiting: list[tuple[float, Profile]] = []
        for since, p in [*self.held, *((now, p) for p in profiles)]:
            labels = self.labeler.labels(p.labels["cgroup"])
            if labels is None and (now - since >= self.hold_seconds or len(waiting) >= self.max_held):
                labels = self.labeler.give_up(p.labels["cgroup"])
            if labels is None:
                waiting.append((since, p))
            else:
                p.labels = {**p.labels, **labels}
                ready.append(p)
        self.held = waiting
        metrics.HELD_PROFILES.set(len(waiting))
        return ready

    def flush(self) -> list[Profile]:
        """Everything still held, with best-effort labels (for shutdown)."""
        out = []
        for _, p in self.held:
            p.labels = {**p.labels, **self.labeler.give_up(p.labels["cgroup"])}
            out.append(p)
        self.held = []
        return out


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


class KubeletLabels:
    """Pod identity from the cgroup path, and names from the API server when the agent has one."""

    def __init__(self, kube=None, *, max_paths: int = 4096) -> None:  # kube: profiler.kube.KubeMetadata | None
        self.kube = kube
        self.max_paths = max_paths
        self._parsed: dict[str, tuple] = {}  # cgroup path -> (KubeletCgroup | None, its path labels)

    def _base(self, cgroup_path: str):
        """The pod identity and labels a cgroup path itself gives: parsed once per path (a function of the
        path alone; it was parsed twice per profile per drain), a fresh dict of them for each caller."""
        got = self._parsed.get(cgroup_path)
        if got is None:
            from profiler.cgroups import labels_for, parse_kubelet_path

            labels = labels_for(cgroup_path)
            labels.pop("cgroup", None)
            if len(self._parsed) >= self.max_paths:
                self._parsed.clear()
            got = self._parsed[cgroup_path] = (parse_kubelet_path(cgroup_path), labels)
        return got[0], dict(got[1])

    def labels(self, cgroup_path: str) -> dict[str, str] | None:
        kc, labels = self._base(cgroup_path)
        if kc is None or self.kube is None:
            return labels
        named = self.kube.resolve(kc.container_id, kc.pod_uid)
        return None if named is None else {**labels, **named}

    def give_up(self, cgroup_path: str) -> dict[str, str]:
        kc, labels = self._base(cgroup_path)
        if kc is not None and self.kube is not None:
            labels.update(self.kube.labels_for(kc))
        return labels


def create_context(node: str | None, pid_min_age_s: float = 0.0) -> Context:
    """The real host context: /proc maps, the cgroup v2 tree; `pid_min_age_s` as in profiler.pidlabel
    (0: every process is labelled by its pid, as a one-shot `record` wants)."""
    from profiler.cgroups import CgroupResolver
    from profiler.procmaps import MapsCache
    from profiler.pyframes import PythonFrames

    maps = MapsCache()
    return Context(node=node or default_node_name(), maps=maps, cgroups=CgroupResolver(),
                   python=PythonFrames(), pids=PidLabels(pid_min_age_s, maps))


class Agent:
    """Drains every `interval` seconds and hands symbolized profiles to `sink` (an uploader)."""

    def __init__(self, sampler, ctx: Context, symbolizer: FrameSymbolizer, sink: Sink, *,
                 pod_labels: PodLabeler | None = None, interval: float = 10.0) -> None:
        self.sampler = sampler
        self.ctx = ctx
        self.pods = PodLabels(pod_labels or KubeletLabels())
        self.stacks = StackMemo(ctx, symbolizer)
        self.sink = sink
        self.interval = interval
        self.period_ns = sampler.period_ns
        self._stop = threading.Event()
        self._last_errors: dict[str, int] = {}
        self._ctx_lock = threading.Lock()  # the maps cache is shared by drains and new-process prefetches
        self._waiting: list[int | NewProcess] = []  # announced while a drain held the maps cache
        self._waiting_lock = threading.Lock()
        self.last_drain_at: float | None = None  # time.monotonic() of the last successful drain (health)
        sampler.watch_new_processes(self.prefetch)

    def prefetch(self, tgids: list[int] | list[NewProcess]) -> None:
        """Read the maps of processes the kernel just saw for the first time, before they can exit (a
        NewProcess: what the sampler's watcher read of it for every reader).

        Never waits for a drain: this runs on the sampler's new-process watcher, which also announces
        processes to the unwind loader and Python detection. Waiting held it for a whole drain (a first
        start's cold drains symbolize for seconds): processes started meanwhile got no tables, and their
        builds piled up after the drain. A batch that finds the cache busy is taken by the next call or
        by the drain's end (what the watcher read of each process is in it already)."""
        with self._waiting_lock:
            self._waiting.extend(tgids)
        if self._ctx_lock.acquire(blocking=False):
            try:
                self._prefetch_waiting()
            finally:
                self._ctx_lock.release()

    def _prefetch_waiting(self) -> None:
        """Under _ctx_lock."""
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, []
        if waiting:
            self.ctx.maps.prefetch(waiting)

    def drain_once(self) -> list[Profile]:
        t0 = time.process_time()
        drain = self.sampler.drain()
        with self._ctx_lock:
            self._prefetch_waiting()
            self.stacks.begin_drain()
            profiles = self.pods(build_profiles(drain, self.ctx, self.period_ns, self.stacks))
            self._prefetch_waiting()  # announced during this drain: read now, as a waiting watcher used to
        metrics.record_drain(drain, profiles, self._last_errors)
        self._last_errors = dict(drain.errors)
        release_freed_memory()  # symbolizing new binaries leaves freed buffers resident
        metrics.DRAIN_CPU.observe(time.process_time() - t0)
        self.last_drain_at = time.monotonic()
        return profiles

    def run(self) -> None:
        next_at = time.monotonic() + self.interval
        freezer = SurvivorFreezer()  # the daemon loop owns the process's GC; drain_once alone does not
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            with freezer.drain():  # the GC off while it runs, its survivors frozen after
                try:
                    profiles = self.drain_once()
                    if profiles:
                        self.sink(profiles)
                except Exception:  # one bad drain must not stop profiling
                    log.exception("drain failed")
        # a final drain so a clean shutdown loses nothing
        try:
            profiles = self.drain_once() + self.pods.flush()
            if profiles:
                self.sink(profiles)
        except Exception:
            log.exception("final drain failed")

    def stop(self) -> None:
        self._stop.set()
