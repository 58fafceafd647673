"""The one profile type that flows from the sampler to the renderer.

Every stage is a function of `Profile`: the sampler produces it with bare addresses, the
symbolizer fills in `Frame.lines`, the store keeps it, queries merge it, exporters render it.
Stdlib only, so every folder (agent, symbolizer, server) can import it anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum


class FrameKind(StrEnum):
    KERNEL = "kernel"
    NATIVE = "native"
    JIT = "jit"
    PYTHON = "python"
    UNKNOWN = "unknown"


class Unresolved(StrEnum):
    """Why a frame has no function name: shown to users and counted in metrics."""

    NO_MAPPING = "no_mapping"  # address outside every mapping of the process
    PROCESS_GONE = "process_gone"  # the process exited before its maps were read
    NO_SYMBOLS = "no_symbols"  # stripped binary, or address between symbols
    UNREADABLE = "unreadable"  # the binary could not be opened or parsed
    JIT_NO_MAP = "jit_no_map"  # anonymous executable memory without a /tmp/perf-PID.map entry
    KERNEL_UNKNOWN = "kernel_unknown"  # kernel address outside kallsyms


@dataclass(frozen=True, slots=True)
class Mapping:
    """An executable mapping of a process, as in /proc/PID/maps."""

    start: int
    limit: int
    offset: int
    path: str
    build_id: str | None = None
    # Hash computed once: mappings are dictionary keys on every ingest (interning, pprof encode).
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.start, self.limit, self.offset, self.path, self.build_id)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:
        # Rebuild through __init__: a pickled hash of str fields is wrong in another process.
        return (Mapping, (self.start, self.limit, self.offset, self.path, self.build_id))

    @property
    def basename(self) -> str:
        return os.path.basename(self.path) or self.path


@dataclass(frozen=True, slots=True)
class Line:
    function: str
    file: str | None = None
    line: int | None = None

    def __reduce__(self) -> tuple:
        # Rebuild through __init__: compiled by mypyc (podflame/compiled.py), the default unpickling sets the
        # fields through the frozen class's __setattr__, which refuses.
        return (Line, (self.function, self.file, self.line))


@dataclass(frozen=True, slots=True, init=False)
class Frame:
    """One address in a stack, with the function(s) it resolved to.

    `lines` holds inlined frames innermost first (as pprof's Location.line does); an
    unsymbolized frame has empty `lines` and, once the symbolizer gave up, a `reason`.
    """

    address: int
    mapping: Mapping | None = None
    kind: FrameKind = FrameKind.NATIVE
    lines: tuple[Line, ...] = ()
    reason: Unresolved | None = None
    # Hash computed once: a frame is hashed per sample it appears in (stack keys, interning),
    # and the generated hash would re-hash the mapping and every Line each time.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __init__(self, address: int, mapping: Mapping | None = None, kind: FrameKind = FrameKind.NATIVE,
                 lines: tuple[Line, ...] = (), reason: Unresolved | None = None) -> None:
        # The slots written through their descriptors: a frozen dataclass's generated __init__ (one
        # object.__setattr__ per field, then __post_init__) took 1.9 us a frame, this 1.2 us; the agent
        # makes thousands a drain (every new leaf address at 99 Hz, each symbolizer answer).
        _set_address(self, address)
        _set_mapping(self, mapping)
        _set_kind(self, kind)
        _set_lines(self, lines)
        _set_reason(self, reason)
        _set_hash(self, hash((address, mapping, kind, lines, reason)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:
        return (Frame, (self.address, self.mapping, self.kind, self.lines, self.reason))

    def fallback_name(self) -> str:
        """`module+0xoffset` for an unresolved frame; without a module, why: `[process gone]+0xaddress`.

        An address outside every mapping is most often a frame-pointer walk through code built
        without frame pointers: a run of them is the one `UNMAPPED` frame, named `[no mapping]`
        (saying so beats a bare `[unknown]`).
        """
        if self.mapping is not None:
            return f"{self.mapping.basename}+{self.address - self.mapping.start + self.mapping.offset:#x}"
        if self.kind is FrameKind.KERNEL:
            return f"[kernel]+{self.address:#x}"
        why = self.reason.value.replace("_", " ") if self.reason is not None else "unresolved"
        return f"[{why}]" if self == UNMAPPED else f"[{why}]+{self.address:#x}"

    def names(self) -> tuple[str, ...]:
        """Function names this frame contributes to a stack, outermost first."""
        if not self.lines:
            return (self.fallback_name(),)
        return tuple(line.function for line in reversed(self.lines))


# vars(Frame), not Frame.__dict__: mypyc refuses the attribute on a class object; the same slot descriptors
# either way, so the compiled class (podflame/compiled.py) and the source write frames alike.
_set_address, _set_mapping, _set_kind, _set_lines, _set_reason, _set_hash = (
    vars(Frame)[name].__set__ for name in ("address", "mapping", "kind", "lines", "reason", "_hash"))

Stack = tuple[Frame, ...]  # root first

# One frame for each run of frames outside every mapping of a process whose maps were read (`[no mapping]`).
UNMAPPED = Frame(0, None, FrameKind.NATIVE, (), Unresolved.NO_MAPPING)


def collapse_unmapped(stack: Stack) -> Stack:
    """Each run of frames outside every mapping becomes one `UNMAPPED` frame.

    Such addresses come from frame-pointer walks through code built without frame pointers (Python, most
    distributions' C libraries): garbage, different in every process and drain. Kept apart, each one
    would be a root of its own in a flame graph (the real frames split across thousands of towers) and
    its own location, function and name in every pprof and store."""
    no_mapping = Unresolved.NO_MAPPING  # a local: an enum member read through its class costs ~130 ns
    if not any(f.reason is no_mapping for f in stack):
        return stack
    out: list[Frame] = []
    for f in stack:
        if f.reason is no_mapping:
            if out and out[-1] is UNMAPPED:
                continue
            f = UNMAPPED
        out.append(f)
    return tuple(out)



_SYSCALL_ENTRIES = ("entry_SYSCALL", "entry_SYSENTER", "entry_INT80")  # x86-64's and the 32-bit compat paths


def user_pc_is_exact(kernel_root: Frame) -> bool:
    """Whether the user PC under a kernel stack (root-first: `kernel_root` is its outermost frame, named) is the
    interrupted instruction itself. After an exception or interrupt (a page fault on a prologue's first push of a
    new stack page, an IRQ) it is, and a lookup one byte earlier names the function before. After a syscall it
    is the next instruction, looked up at address - 1 like a return address: a syscall may end its function
    (__restore_rt's rt_sigreturn). An unnamed root (no kallsyms) keeps the syscall reading."""
    lines = kernel_root.lines
    return bool(lines) and not lines[-1].function.startswith(_SYSCALL_ENTRIES)

@dataclass(slots=True)
class Profile:
    """Samples of one label set over one time window.

    `samples` maps a stack (root first) to a value of `sample_type` in `unit`; for the
    sampler that is a count of samples, each worth `period_ns` of CPU time.
    """

    labels: dict[str, str]
    start_ns: int
    duration_ns: int
    period_ns: int
    samples: dict[Stack, int] = field(default_factory=dict)
    sample_type: str = "samples"
    unit: str = "count"

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns

    def total(self) -> int:
        return sum(self.samples.values())

    def add(self, stack: Stack, value: int) -> None:
        if value:
            # one hash of the stack for a new one (a tuple's hash calls each frame's __hash__, a Python method):
            # most stacks a drain adds are new to their profile
            samples = self.samples
            n = len(samples)
            had = samples.setdefault(stack, value)
            if len(samples) == n:
                samples[stack] = had + value

    def name_stacks(self) -> Iterator[tuple[tuple[str, ...], int]]:
        """Stacks as function names (root first, inlines expanded), with their values."""
        for stack, value in self.samples.items():
            yield tuple(name for frame in stack for name in frame.names()), value

    @staticmethod
    def merge(profiles: Iterable[Profile], labels: dict[str, str] | None = None) -> Profile:
        """Sum profiles of one sample type into one, spanning all their windows.

        Labels default to those every input shares, so a merge of one pod's processes keeps the pod.
        """
        profiles = list(profiles)
        if not profiles:
            return Profile(labels=labels or {}, start_ns=0, duration_ns=0, period_ns=0)
        first = profiles[0]
        if labels is None:
            labels = dict(first.labels)
            for p in profiles[1:]:
                labels = {k: v for k, v in labels.items() if p.labels.get(k) == v}
        start = min(p.start_ns for p in profiles)
        end = max(p.end_ns for p in profiles)
        out = Profile(labels=labels, start_ns=start, duration_ns=end - start, period_ns=first.period_ns,
                      sample_type=first.sample_type, unit=first.unit)
        for p in profiles:
            if (p.sample_type, p.unit) != (first.sample_type, first.unit):
                raise ValueError(f"cannot merge {p.sample_type}/{p.unit} into {first.sample_type}/{first.unit}")
            for stack, value in p.samples.items():
                out.add(stack, value)
        return out
