"""The eBPF CPU sampler. Only profiler/bpfcompile.py (in a child process) and bpfprog.py import bcc.

`bpf/sampler.bpf.c` runs on every `cpu-clock` tick on every CPU and counts samples in the kernel,
keyed by (cgroup id, tgid, tid, user stack, kernel stack, comm). `Sampler.drain()` hands the counts
accumulated since the previous drain to userspace as `RawSample`s with bare addresses; symbolization
happens elsewhere.

Stacks are walked with bpf_get_stack() and stored in a hash map under a 64-bit hash of their
addresses rather than with bpf_get_stackid(): a stack-trace map drops any new stack whose bucket is
taken (-EEXIST), which lost 1.6% of samples' stacks here with only 500 distinct stacks in 16384
buckets and grows with the number of distinct stacks. A hash map fails only when full (-ENOMEM,
counted) and is read and cleared with batch syscalls. Errors keep get_stackid's codes.

A row of the stack map holds 127 frames (STACK_HEAD); a deeper stack's further frames are in a small
overflow map of the same set (deep0/1: chunks of DEEP_CHUNK frames keyed by (stack, index)), which the
drain empties with it and appends (`_join_chunks`). Stacks are kept up to MAX_STACK_DEPTH (264) frames; one
of exactly that length was cut there, its callers lost (the agent marks it).

Lossless draining. The program writes into one of two map sets (counts + stack traces), chosen by
`control[CTL_ACTIVE_SET]`, which it reads once per sample. A drain flips that index, then waits until
every program that may still have read the old index has returned, and only then reads and clears
the now inactive set. The wait is exact, not a guess: updating a BPF_MAP_TYPE_ARRAY_OF_MAPS from
userspace makes the kernel run synchronize_rcu() before the syscall returns, and perf-event BPF
programs run inside an RCU read-side section (hard-irq context, preemption off). So after the flip
and one such update, no program touches the inactive set: each sample lands in exactly one drain,
and clearing cannot race with a write.

BCC only compiles the program, in a child process (profiler/bpfcompile.py), and only when
profiler/bpfprog.py has no compiled image of it cached; the maps, perf events and ring buffer are
driven with bpf() and perf_event_open() directly. This process never imports bcc, so `RawSample`,
`Drain` and `SamplerError` import on machines without BPF (the server and its tests).
"""

from __future__ import annotations

import ctypes as ct
import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

from bpf import SOURCE_DIR, expanded_source
from podflame.errors import PodflameError, SystemUnsupported
from podflame.threads import daemon_thread
from profiler.bpfcompile import CompileError, compile_in_child
from profiler.bpfprog import (
    PERF_COUNT_SW_CPU_CLOCK,
    PERF_TYPE_SOFTWARE,
    BpfMap,
    ImageCache,
    LoadedProgram,
    MapSpec,
    ProgramImage,
    online_cpus,
)
from profiler.btf import kernel_has_find_vma, mmap_lock_tracepoint_is_cheap

if TYPE_CHECKING:
    from profiler.procmaps import NewProcess
    from profiler.pyframes import EarlyReads, PythonRegistry
    from profiler.python.detect import PythonProcess
    from profiler.unwind.loader import NativeUnwinder

BPF_SOURCE = SOURCE_DIR / "sampler.bpf.c"
log = logging.getLogger("podflame.sampler")

# Slots of the BPF arrays; they mirror the #defines in bpf/sampler.bpf.c.
CTL_ACTIVE_SET, CTL_TGID_FILTER, CTL_CGROUP_FILTER = 0, 1, 2
ERROR_SLOTS: tuple[str, ...] = (
    "user_stack_eexist", "user_stack_enomem", "user_stack_efault", "user_stack_other",
    "kernel_stack_eexist", "kernel_stack_enomem", "kernel_stack_efault", "kernel_stack_other",
    "counts_full", "counts_other",
)  # fmt: skip
STACK_ERRORS = ("eexist", "enomem", "efault", "other")
# Entries per batch syscall. The kernel's cost is per entry (~0.4 us a 1016-byte stack, ~0.3 us a count),
# not per call: 2500 stacks took ~1 ms in 20 calls of 128 as in one of 4096, so the buffers stay small.
COUNTS_CHUNK = 4096  # 4096 x 64 bytes of buffer
STACKS_CHUNK = 512  # 512 x 1016 bytes
COMM_CACHE_SIZE = 4096  # decoded comms kept across drains (cleared when full)
TGID_FILTER_MIN = 1024
CGROUP_FILTER_SIZE = 4096
SEEN_TGIDS_SIZE = 16384  # recently seen processes (LRU)
NEW_TGIDS_PAGES = 32  # ring buffer of new-process events: 128 KiB, 5461 events (24 bytes each) between polls
# A new_tgids record (struct new_process_event): tgid, kind (NEW_*), the process's start time (ns of boot time)
NEW_EVENT = struct.Struct("<IIQ")
NEW_FIRST, NEW_STALE, NEW_ASK = 0, 1, 2
# task_struct members whose offsets struct new_process_config holds (start times from the kernel; self_exec_id: every
# exec raises it, so a process announces each image it runs)
NEW_PROCESS_CONFIG_FIELDS = (("task_struct", "group_leader"), ("task_struct", "start_boottime"),
                             ("task_struct", "self_exec_id"))
PROGRAM = "on_sample"
INNER_MAPS = {"grace_period": "control"}  # BPF_ARRAY_OF_MAPS(grace_period, "control", 1)
STACK_HEAD = 127  # frames in a stack map row (bpf/sampler.bpf.c)
DEEP_CHUNK = 46  # frames in an overflow chunk (deep0/1)
DEEP_CHUNKS = 3
MAX_STACK_DEPTH = 264  # deepest stack kept (the walker's 33 tail calls x 8 frames); one this deep was cut there
DEEP_MAP_SIZE = 8192  # overflow chunks per set: 2 x 8192 x 368 bytes of frames
DEEP_CHUNK_BATCH = 1024
assert STACK_HEAD + DEEP_CHUNK * DEEP_CHUNKS > MAX_STACK_DEPTH
TAIL_CALLS = (("unwind_progs", 0, "unwind_step"),)  # bpf/native_unwind.bpf.h: the table walk, 8 frames a call
# bpf/native_unwind.bpf.h: a new mapping placed over a known one marks its process stale (dlclose, then dlopen);
# a library's text mapped by a process without a mapping array is remembered for its first walks
TRACEPOINTS = (("on_new_area", "vm_unmapped_area"), ("on_mmap_unlock", "mmap_lock_released"))


def tracepoints() -> tuple[tuple[str, str], ...]:
    """TRACEPOINTS this kernel can afford: the mmap_lock one only where it is cheap (btf.mmap_lock_tracepoint_is_cheap;
    without it a new process's libraries are found by the walk's one bpf_find_vma, as before)."""
    if mmap_lock_tracepoint_is_cheap():
        return TRACEPOINTS
    return tuple(t for t in TRACEPOINTS if t[1] != "mmap_lock_released")
UNWIND_MODES = {"fp": 0, "auto": 1, "tables": 2}  # UNWIND_MODE in bpf/native_unwind.bpf.h
# Off by default for the continuous agent until its cost is under target on a busy node (docs/benchmarks.md):
# `podflame record` asks for "auto" itself (it loads its target's tables before sampling).
DEFAULT_UNWIND = "fp"
UNWIND_ROWS = 1 << 20  # default row budget: 16 MiB of kernel memory (rows are 16 bytes in an array map)
# Python frames (bpf/python.bpf.h): python_error codes, by value, and the maps' shapes.
PY_ERRORS: tuple[str, ...] = ("ok", "not_python", "no_thread_state", "read_fault", "truncated", "stack_map_full",
                              "no_frame", "disabled")
PY_OK, PY_NOT_PYTHON, PY_DISABLED = 0, 1, 7
PY_MAX_DEPTH = 64
PY_STACK_MAP_SIZE = 4096
PY_PROCS_SIZE = 4096
PY_PROC_SIZE = 72  # struct py_proc, which profiler/pyframes.py packs (imported only once a process needs it)


class SampleKey(ct.Structure):
    """struct sample_key of bpf/sampler.bpf.c (checked against the map's key size at start)."""

    _fields_ = [("cgroup_id", ct.c_uint64), ("user_stack", ct.c_uint64), ("kernel_stack", ct.c_uint64),
                ("tgid", ct.c_uint32), ("pid", ct.c_uint32), ("user_error", ct.c_int32),
                ("kernel_error", ct.c_int32), ("comm", ct.c_char * 16), ("python_stack", ct.c_uint64),
                ("python_error", ct.c_int32)]


class StackTrace(ct.Structure):
    """struct stack_trace, a stack map row: addresses leaf first, zero after the last one."""

    _fields_ = [("ip", ct.c_uint64 * STACK_HEAD)]


class ChunkKey(ct.Structure):
    """struct chunk_key: an overflow chunk's stack (its key in the stack map) and index."""

    _fields_ = [("stack", ct.c_uint64), ("index", ct.c_uint32), ("reserved", ct.c_uint32)]


class StackChunk(ct.Structure):
    """struct stack_chunk: frames STACK_HEAD + index x DEEP_CHUNK on, zero after the stack's last one."""

    _fields_ = [("ip", ct.c_uint64 * DEEP_CHUNK)]


class PyStackRow(ct.Structure):
    """struct py_stack: `depth` (code, instr) pairs, leaf first; code carries flag bits (profiler/pyframes.py)."""

    _fields_ = [("depth", ct.c_uint32), ("reserved", ct.c_uint32), ("frames", ct.c_uint64 * (2 * PY_MAX_DEPTH))]


class RawSample(NamedTuple):
    """Samples of one (cgroup, thread, stacks, comm) in one drain; addresses are not symbolized.

    A named tuple: a drain builds thousands (0.3 us each, against 0.7 us for a frozen dataclass)."""

    cgroup_id: int  # cgroup v2 inode number (bpf_get_current_cgroup_id)
    tgid: int  # process id
    pid: int  # thread id
    comm: str
    user_stack: tuple[int, ...]  # instruction addresses, leaf first; () if none/error
    kernel_stack: tuple[int, ...]  # leaf first; () if none/error
    user_error: int  # 0, or -errno as get_stackid gives it (-EFAULT is normal for kernel threads)
    kernel_error: int  # 0, or -errno (-EFAULT is normal for samples taken in user mode)
    count: int  # type: ignore[assignment]  # shadows tuple.count: the name every profile format gives it
    # Python frames as the kernel read them: (code | flags, instr) pairs flattened, leaf first; () if none
    python_stack: tuple[int, ...] = ()
    python_error: int = PY_NOT_PYTHON  # PY_ERRORS index; a stack may come with truncated / read_fault


@dataclass(slots=True)
class Drain:
    """What one `Sampler.drain()` collected: the samples of [start_ns, end_ns) wall-clock."""

    start_ns: int
    end_ns: int
    samples: list[RawSample] = field(default_factory=list)
    # Cumulative since the sampler started, per sample: "stack_<err>" sums the user_stack_ and
    # kernel_stack_ variants (kernel_stack_efault counts user-mode samples: normal); stack_enomem means
    # a full stack map (stack lost, sample kept); stack_eexist stays 0 with hash-keyed stacks;
    # counts_full / counts_other are samples lost because the counts map refused the key.
    errors: dict[str, int] = field(default_factory=dict)
    # CPython processes whose Python frames the kernel walks (and those that exited a moment ago), by tgid
    python_processes: dict[int, PythonProcess] = field(default_factory=dict)
    # their early reads (Sampler's python_early_reads), whose readers PythonFrames takes; None when off
    python_early: EarlyReads | None = None
    # Native unwinding (NativeUnwinder.report): cumulative walk_* counters from the kernel, table_*
    # gauges of the loaded tables; empty with --unwind fp.
    unwind: dict[str, int] = field(default_factory=dict)

    def total(self) -> int:
        return sum(s.count for s in self.samples)


# Decoding a drain without ctypes objects (see _decode_stacks, _decode_counts).
_KEY = struct.Struct("=QQQIIii16sQi4x")  # struct sample_key: native order, its tail padding
_STACK_ROW = ct.sizeof(StackTrace)  # a multiple of 8: rows start 8-aligned in the buffer
_ZERO_IP = bytes(8)
_UNPACK_IPS = tuple(struct.Struct(f"={n}Q").unpack_from for n in range(STACK_HEAD + 1))
_CHUNK_ROW = ct.sizeof(StackChunk)
_CHUNK_KEY = struct.Struct("=QI4x")
_PY_ROW = ct.sizeof(PyStackRow)
_PY_DEPTH = struct.Struct("=I").unpack_from
_UNPACK_PY = tuple(struct.Struct(f"={2 * n}Q").unpack_from for n in range(PY_MAX_DEPTH + 1))
assert _KEY.size == ct.sizeof(SampleKey) and _STACK_ROW % 8 == 0


class SamplerError(SystemUnsupported, RuntimeError):
    """The sampler cannot run here; the message says what to fix."""


def _kernel_headers_problem() -> str | None:
    """Why BCC would fail to find kernel headers, or None. Checked up front for a clear message."""
    if os.environ.get("BCC_KERNEL_SOURCE") or Path("/sys/kernel/kheaders.tar.xz").exists():
        return None
    kdir = Path("/lib/modules") / os.uname().release
    if any((kdir / d / "include/linux/kconfig.h").exists() for d in ("build", "source")):
        return None
    return (f"no kernel headers for {os.uname().release} under {kdir}/build or {kdir}/source: BCC compiles "
            "the sampler against them at start. Run scripts/setup.sh (as root) to link Debian's headers.")


def _max_sample_rate() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/perf_event_max_sample_rate").read_text())
    except (OSError, ValueError):
        return None


def _normalize_ids(ids: Iterable[int] | None, what: str, limit: int) -> set[int]:
    out = {int(i) for i in ids} if ids is not None else set()
    if any(i < 0 for i in out):
        raise ValueError(f"{what} must be non-negative")
    if len(out) > limit:
        raise ValueError(f"at most {limit} {what} can be filtered on, got {len(out)}")
    return out


class Sampler:
    """Samples on-CPU stacks of every CPU at `frequency` Hz until closed.

    `pids` (process ids) and `cgroup_ids` (cgroup v2 inode numbers; a cgroup also selects every
    cgroup below it) restrict sampling in the kernel; None or empty means everything.
    `python_frames` walks CPython processes' Python frames in the kernel (bpf/python.bpf.h);
    `python_early_reads` (seconds after a Python process is registered) also reads its code objects
    then, so a process that exits before the next drain is named (profiler.pyframes.EarlyReads).

    `unwind` (default DEFAULT_UNWIND): "auto" walks user stacks with .eh_frame tables
    where they are loaded and with frame pointers elsewhere; "fp" only with frame pointers
    (bpf_get_stack); "tables" always with the table walker (frame pointers only for code without
    rows). `unwind_rows` (default $PODFLAME_UNWIND_ROWS, else 2^20) is the row budget of all loaded
    binaries: 16 bytes of kernel memory each. `preload`: processes whose every table is loaded (and, with
    `python_frames`, whose interpreter is registered) before the perf events attach, as for `pids` (a one-shot
    capture of a cgroup: its processes' first samples would otherwise be walked before their tables, ~0.3-3 s
    of them when the program's table must be built).
    """

    def __init__(self, frequency: int = 19, *, pids: Iterable[int] | None = None,
                 cgroup_ids: Iterable[int] | None = None, include_idle: bool = False,
                 stack_map_size: int = 16384, counts_map_size: int = 40960,
                 image_cache: ImageCache | None = None, python_frames: bool = True,
                 python_early_reads: Iterable[float] = (), unwind: str = DEFAULT_UNWIND,
                 unwind_rows: int | None = None, preload: Iterable[int] = ()) -> None:
        if frequency < 1:
            raise ValueError(f"frequency must be >= 1 Hz, got {frequency}")
        if (limit := _max_sample_rate()) is not None and frequency > limit:
            raise ValueError(f"frequency {frequency} Hz exceeds kernel.perf_event_max_sample_rate={limit}")
        if stack_map_size < 1 or counts_map_size < 1:
            raise ValueError("map sizes must be >= 1")
        if unwind not in UNWIND_MODES:
            raise ValueError(f"unwind must be one of {', '.join(UNWIND_MODES)}, got {unwind!r}")
        if unwind_rows is None:
            try:
                unwind_rows = int(os.environ.get("PODFLAME_UNWIND_ROWS") or UNWIND_ROWS)
            except ValueError:
                raise ValueError("PODFLAME_UNWIND_ROWS must be a number of rows") from None
        if not 1 <= unwind_rows <= 1 << 24:
            raise ValueError(f"unwind_rows must be 1..{1 << 24}, got {unwind_rows}")
        self.unwind = unwind
        self.unwinder: NativeUnwinder | None = None
        self.frequency = frequency
        self.compile_seconds = 0.0  # wall time of the compiler process; 0 when the image was cached
        self.start_seconds = 0.0
        self._lock = threading.Lock()
        self._prog: LoadedProgram | None = None
        pid_set = _normalize_ids(pids, "pids", 1 << 20)
        named = pid_set | {p for p in preload if p > 0}
        cgroup_set = _normalize_ids(cgroup_ids, "cgroup ids", CGROUP_FILTER_SIZE)
        self._cgroups: set[int] = set()
        self._watcher: threading.Thread | None = None
        self._watching = False
        self._new_process_callbacks: list[Callable[[list[NewProcess]], None]] = []
        self._external_watch = False
        self._python: PythonRegistry | None = None

        if os.geteuid() != 0:
            raise SamplerError("the sampler must run as root: it loads eBPF programs and opens perf events "
                               "on every CPU (CAP_BPF + CAP_PERFMON)")
        self._tracepoints = tracepoints() if unwind != "fp" else TRACEPOINTS[:1]
        cflags = [
            f"-DSTACK_MAP_SIZE={stack_map_size}",
            f"-DCOUNTS_MAP_SIZE={counts_map_size}",
            f"-DINCLUDE_IDLE={int(include_idle)}",
            f"-DTGID_FILTER_SIZE={max(TGID_FILTER_MIN, len(pid_set))}",
            f"-DCGROUP_FILTER_SIZE={CGROUP_FILTER_SIZE}",
            f"-DSEEN_TGIDS_SIZE={SEEN_TGIDS_SIZE}",
            f"-DNEW_TGIDS_PAGES={NEW_TGIDS_PAGES}",
            f"-DUNWIND_MODE={UNWIND_MODES[unwind]}",
            f"-DUNWIND_FIND_VMA={int(unwind != 'fp' and kernel_has_find_vma())}",
            f"-DUNWIND_ROWS={unwind_rows}",
            f"-DFP_DEPTH={_fp_depth()}",
            f"-DDEEP_MAP_SIZE={DEEP_MAP_SIZE}",
            *_python_cflags(python_frames),
        ]
        self.python_frames = python_frames
        self._python_early_reads = tuple(python_early_reads)
        if any(not 0 < d <= 60 for d in self._python_early_reads):
            raise ValueError(f"python_early_reads are seconds in (0, 60], got {self._python_early_reads}")
        started = time.perf_counter()
        self._prog = self._load(cflags, ImageCache.from_env() if image_cache is None else image_cache)
        try:
            maps = self._prog.maps
            self._control = maps["control"]
            self._grace_period = maps["grace_period"]
            self._errors = maps["errors"]
            self._tgid_filter = maps["tgid_filter"]
            self._cgroup_filter = maps["cgroup_filter"]
            self._counts = (maps["counts0"], maps["counts1"])
            self._stacks = (maps["stacks0"], maps["stacks1"])
            self._deep = (maps["deep0"], maps["deep1"])
            for m in self._counts:
                _expect_layout(m, SampleKey, ct.c_uint64)
            for m in self._stacks:
                _expect_layout(m, ct.c_uint64, StackTrace)
            for m in self._deep:
                _expect_layout(m, ChunkKey, StackChunk)
            self._py_procs: BpfMap | None = maps.get("py_procs")
            self._py_stacks = (maps.get("py_stacks0"), maps.get("py_stacks1"))
            if python_frames:
                for py in self._py_stacks:
                    if py is None:
                        raise SamplerError(f"{BPF_SOURCE.name} has no py_stacks maps")
                    _expect_layout(py, ct.c_uint64, PyStackRow)
                if self._py_procs is None or self._py_procs.spec.value_size != PY_PROC_SIZE:
                    raise SamplerError(f"{BPF_SOURCE.name}: py_procs is missing or its struct py_proc is not the "
                                       f"{PY_PROC_SIZE} bytes profiler/pyframes.py packs")
            self._active = 0
            self._set_control(CTL_ACTIVE_SET, 0)
            # Filters go in before the perf events are attached: nothing unwanted is ever sampled.
            self._replace_filter(self._tgid_filter, set(), pid_set, CTL_TGID_FILTER)
            self._replace_filter(self._cgroup_filter, set(), cgroup_set, CTL_CGROUP_FILTER)
            self._cgroups = cgroup_set
            # Batch-read buffers, allocated once and reused by every drain.
            self._count_reader = _BatchReader(self._counts[0].spec, COUNTS_CHUNK)
            self._stack_reader = _BatchReader(self._stacks[0].spec, STACKS_CHUNK)
            self._deep_reader = _BatchReader(self._deep[0].spec, DEEP_CHUNK_BATCH)
            self._py_reader = _BatchReader(self._py_stacks[0].spec, STACKS_CHUNK) \
                if self._py_stacks[0] is not None else None
            self._comms: dict[bytes, str] = {}
            self._start_clock = _start_clock(maps.get("new_process_config"))
            if unwind != "fp":
                self._start_unwinder(named)
                try:
                    self._prog.attach_tracepoints()
                except OSError as e:  # a kernel without it: a library loaded over another is seen at the next drain
                    log.warning("%s; unwinding goes on without it", e)
            if python_frames and named:
                # a capture of named processes has their Python frames from its first sample, whatever the
                # load: detected here, not after a first sample's announcement (~1 s of a 3 s capture at load 14)
                try:
                    self._announce_python(sorted(named))
                except Exception:  # as the watcher's callbacks: their first samples announce them again
                    log.exception("Python detection of %s failed", sorted(named))
            self._window_start = time.time_ns()
            self._prog.attach_perf_event(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, frequency, online_cpus())
            if python_frames:  # each other process's first sample announces it: detection runs then
                self._new_process_callbacks.append(self._announce_python)
                self._start_watcher()
        except Exception as e:
            self.close()
            if isinstance(e, ValueError | SamplerError):
                raise
            raise SamplerError(f"could not start the BPF sampler ({e}): BPF or perf events are unavailable "
                               "(check CONFIG_BPF_SYSCALL, kernel.perf_event_paranoid, CAP_BPF/CAP_PERFMON)") from e
        self.start_seconds = time.perf_counter() - started

    def _load(self, cflags: list[str], cache: ImageCache) -> LoadedProgram:
        """The program from the compiled-image cache, else compiled by BCC (and cached)."""
        source = expanded_source(BPF_SOURCE)
        key = cache.key(source, cflags, "+".join([PROGRAM, *(fn for _, _, fn in TAIL_CALLS),
                                                  *(f"{fn}@{tp}" for fn, tp in self._tracepoints)]))
        image = cache.get(key)
        if image is not None:
            try:
                return LoadedProgram(image)
            except OSError as e:  # e.g. a kernel that verifies differently: compile afresh
                log.warning("the cached BPF program did not load (%s): compiling it again", e)
        image = self._compile(cflags)
        try:
            prog = LoadedProgram(image)
        except OSError as e:
            raise SamplerError(f"could not load the BPF sampler ({e}): BPF is unavailable (check "
                               "CONFIG_BPF_SYSCALL and CAP_BPF/CAP_PERFMON)") from e
        cache.put(key, image)
        return prog

    def _compile(self, cflags: list[str]) -> ProgramImage:
        if problem := _kernel_headers_problem():
            raise SamplerError(problem)
        try:
            image, self.compile_seconds = compile_in_child(BPF_SOURCE, PROGRAM, cflags, INNER_MAPS,
                                                           tail_calls=TAIL_CALLS, tracepoints=self._tracepoints)
        except CompileError as e:
            raise SamplerError(f"BCC could not compile {BPF_SOURCE} ({e}). Missing or mismatched kernel headers: "
                               "run scripts/setup.sh") from e
        return image

    @property
    def compiled(self) -> bool:
        """Whether BCC compiled the program at this start (else it came from the image cache)."""
        return self.compile_seconds > 0

    @property
    def period_ns(self) -> int:
        """CPU time one sample stands for."""
        return 1_000_000_000 // self.frequency

    # --- public API ---------------------------------------------------------------------------

    def drain(self) -> Drain:
        """Everything sampled since the previous drain (or the start); cheap enough to call often."""
        python = self._python.refresh() if self._python is not None else {}  # outside the lock: it writes maps
        with self._lock:
            self._require_open()
            old = self._active
            self._active = 1 - old
            self._set_control(CTL_ACTIVE_SET, self._active)
            end_ns = time.time_ns()
            self._wait_for_programs()
            samples = self._take(old)
            drain = Drain(start_ns=self._window_start, end_ns=end_ns, samples=samples, errors=self._read_errors(),
                          python_processes=python,
                          python_early=self.python_early)
            if self.unwinder is not None:
                self.unwinder.maintain()
                drain.unwind = self.unwinder.report()
            self._window_start = end_ns
            return drain

    def set_cgroup_filter(self, cgroup_ids: Iterable[int] | None) -> None:
        """Sample only these cgroups and their descendants from now on; None or empty: all cgroups."""
        new = _normalize_ids(cgroup_ids, "cgroup ids", CGROUP_FILTER_SIZE)
        with self._lock:
            self._require_open()
            self._replace_filter(self._cgroup_filter, self._cgroups, new, CTL_CGROUP_FILTER)
            self._cgroups = new

    def set_python_process(self, tgid: int, config: bytes | None) -> None:
        """Walk the Python frames of `tgid` with this `struct py_proc` (profiler/pyframes.py packs it),
        or stop walking them (None: the process exited or is not CPython)."""
        with self._lock:
            self._require_open()
            if self._py_procs is None:
                return
            key = ct.c_uint32(tgid)
            try:
                if config is None:
                    self._py_procs.delete(key)
                else:
                    self._py_procs.update(key, config)
            except OSError as e:
                raise SamplerError(f"cannot update the Python process map for {tgid}: {e.strerror}") from e

    @property
    def python_early(self) -> EarlyReads | None:
        """The early reads of new Python processes (`python_early_reads`), once one was announced."""
        return self._python.early if self._python is not None else None

    def _announce_python(self, tgids: list[int] | list[NewProcess]) -> None:
        """Detect CPython in new processes (the watcher thread); the reader is imported on first use, so
        a start pays nothing for it."""
        if self._python is None:
            from profiler.pyframes import EarlyReads, PythonRegistry

            delays = self._python_early_reads
            self._python = PythonRegistry(self.set_python_process, early=EarlyReads(delays) if delays else None)
        self._python.announce(tgids)

    def watch_new_processes(self, callback: Callable[[list[NewProcess]], None]) -> None:
        """Call `callback(processes)` from a background thread soon (~0.1 s) after a process's first sample,
        with what was read of each (procmaps.NewProcess: start time and executable VMAs, read once for
        every callback); a process that exited before it could be read is not passed. A process whose
        executable mappings changed (a dlopen the table walker noticed) is passed again.

        The agent reads the process's maps then, so a process that exits before the next drain
        still symbolizes. Batched per poll; a callback error is logged, never fatal.
        """
        with self._lock:
            self._require_open()
            if self._external_watch:
                raise RuntimeError("watch_new_processes() was already called")
            self._external_watch = True
            # after the unwind loader's announcement (a queue put: its tables come no later than before) and
            # before Python detection; the maps of a short-lived process were read before any callback
            at = 1 if self.unwinder is not None and self._new_process_callbacks[:1] == [self.unwinder.announce] else 0
            self._new_process_callbacks.insert(at, callback)
        self._start_watcher()

    def _start_unwinder(self, pids: set[int]) -> None:
        """Native unwinding: tables for announced processes (and right away for `pids`)."""
        from profiler.unwind.loader import NativeUnwinder, cached_tables
        from profiler.unwind.maps import UnwindMaps

        assert self._prog is not None
        self.unwinder = NativeUnwinder(UnwindMaps(self._prog.maps), cached_tables())
        if pids:
            self.unwinder.load_now(pids)
        self.unwinder.start()
        self._new_process_callbacks.insert(0, self.unwinder.announce)  # a queue put: first costs nothing
        self._start_watcher()

    def _start_watcher(self) -> None:
        """One thread polls the new-process ring buffer for every callback (Python detection, the agent's).

        A first sample (NEW_FIRST) is read once (procmaps.read_new_process, with the start time the kernel
        gave: no /proc/PID/stat) and handed to every callback. The walker's announcements are the unwind
        loader's: an ask for a table (NEW_ASK) wakes the loader, which reads the kernel's asks and reads of
        the process no more than it needs; an address outside the known mappings (NEW_STALE: dlopen, JIT code;
        with the start time; a new mapping's mark waits for the next wake-up) has the process's VMAs read for
        the loader, and handed to the other callbacks only when they differ from what they were given last (a
        dlopen, not JIT code): they read a process once per image."""
        with self._lock:
            self._require_open()
            if self._watcher is not None:
                return
            from profiler.procmaps import NewProcess, read_live_vmas, read_new_process, start_time

            firsts: dict[int, int] = {}  # tgid -> start time (ns of boot time; 0: not given)
            stales: dict[int, int] = {}  # tgid -> start time, as firsts
            asks = [False]
            assert self._prog is not None
            ring = self._prog.ring_buffer("new_tgids")
            callbacks = self._new_process_callbacks
            ticks = self._start_clock
            unpack = NEW_EVENT.unpack_from
            told: dict[int, int] = {}  # tgid -> hash of the VMAs the callbacks other than the loader were given

            def on_event(data: bytes) -> None:
                tgid, kind, started = unpack(data)
                if kind == NEW_FIRST:
                    firsts[tgid] = started
                elif kind == NEW_STALE:
                    stales[tgid] = started
                else:
                    asks[0] = True

            def tell(news: list[NewProcess], to: list[Callable[[list[NewProcess]], None]]) -> None:
                for callback in to:
                    try:
                        callback(news)
                    except Exception:
                        log.exception("new-process callback failed")

            def handle() -> None:
                loader = self.unwinder.announce if self.unwinder is not None else None
                if len(told) > 16384:
                    told.clear()  # a process not told since is told again: a read more, nothing lost
                # one read of each new process for every callback (NewProcess): a process gone already is
                # read by no one (nothing of it could be read any more)
                news = [n for t, ns in firsts.items() if t > 0 and
                        (n := read_new_process(t, started=ticks(ns) if ns and ticks else None)) is not None]
                for n in news:
                    told[n.pid] = hash(tuple(n.vmas)) if n.vmas is not None else 0
                remapped: list[NewProcess] = []
                moved: list[NewProcess] = []
                for t, ns in stales.items():
                    if t <= 0 or t in firsts:
                        continue
                    vmas = read_live_vmas(t)
                    if vmas is False:
                        continue  # exited
                    n = NewProcess(t, None, vmas)
                    moved.append(n)
                    seen = hash(tuple(vmas)) if vmas is not None else 0
                    if not seen or told.get(t) != seen:  # a new image or a new library: everyone reads it
                        n.starttime = ticks(ns) if ns and ticks else start_time(t)
                        if n.starttime is not None:
                            told[t] = seen
                            remapped.append(n)
                firsts.clear()
                stales.clear()
                if loader is None:
                    tell(news + remapped, callbacks)
                    return
                if news or moved:
                    tell(news + moved, [loader])
                if asks[0]:
                    asks[0] = False
                    assert self.unwinder is not None
                    self.unwinder.asked()
                if news or remapped:
                    tell(news + remapped, [c for c in callbacks if c != loader])

            def poll() -> None:
                while self._watching:
                    try:
                        ring.poll(0.5, on_event)  # returns at once when data arrives
                    except (OSError, ValueError):  # closed under us: the sampler is closing
                        return
                    if firsts or stales or asks[0]:
                        handle()

            self._watching = True
            self._watcher = daemon_thread(poll, "podflame-new-processes")
            self._watcher.start()

    def close(self) -> None:
        """Detach from the perf events and free the maps; samples not drained yet are dropped."""
        self._watching = False
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        unwinder = getattr(self, "unwinder", None)  # None: closed before the unwinder was made
        if unwinder is not None:
            unwinder.close()
        with self._lock:
            prog, self._prog = self._prog, None
            if prog is not None:
                prog.close()

    def __del__(self) -> None:
        if getattr(self, "_prog", None) is not None:
            self.close()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._prog is None:
            raise SamplerError("the sampler is closed")

    def _set_control(self, slot: int, value: int) -> None:
        try:
            self._control.update(ct.c_uint32(slot), ct.c_uint32(value))
        except OSError as e:
            raise SamplerError(f"cannot update the control map: {e.strerror}") from e

    def _wait_for_programs(self) -> None:
        """Return once every BPF program running at the call has finished (one RCU grace period).

        Storing a map fd in an ARRAY_OF_MAPS makes the kernel call synchronize_rcu() before the
        syscall returns (kernel/bpf/syscall.c, maybe_wait_bpf_programs); it costs ~10 ms of waiting
        and no CPU. Should that ever fail, sleep far longer than a program runs (microseconds).
        """
        try:
            self._grace_period.update(ct.c_uint32(0), ct.c_uint32(self._control.fd))
        except OSError:
            time.sleep(0.05)

    def _replace_filter(self, table: BpfMap, old: set[int], new: set[int], flag_slot: int) -> None:
        """Switch a filter set without a moment where wanted samples are dropped.

        Entries are added before stale ones are removed; the flag goes on after the first fill and
        off before the last removal.
        """
        size = table.spec.key_size
        for i in new - old:
            table.update(i.to_bytes(size, "little"), b"\x01")
        if new:
            self._set_control(flag_slot, 1)
        else:
            self._set_control(flag_slot, 0)
        for i in old - new:
            table.delete(i.to_bytes(size, "little"))

    def _take(self, index: int) -> list[RawSample]:
        """Read and clear map set `index`, which no program writes any more."""
        if len(self._comms) > COMM_CACHE_SIZE:
            self._comms.clear()
        py_stacks: dict[int, tuple[int, ...]] = {}
        py_map = self._py_stacks[index]
        if self._py_reader is not None and py_map is not None:
            for ids, rows, n in self._py_reader.take(py_map):
                _decode_py_stacks(ids, rows, n, py_stacks)
        return _read_set(self._stack_reader, self._stacks[index], self._count_reader, self._counts[index],
                         self._comms, py_stacks, self._deep_reader, self._deep[index])

    def _read_errors(self) -> dict[str, int]:
        totals = {name: self._errors.percpu_sum(slot) for slot, name in enumerate(ERROR_SLOTS)}
        for err in STACK_ERRORS:
            totals[f"stack_{err}"] = totals[f"user_stack_{err}"] + totals[f"kernel_stack_{err}"]
        return totals


def _start_clock(config: BpfMap | None) -> Callable[[int], int] | None:
    """Give the kernel the task_struct offsets its first-sample records read the process's start time with
    (struct new_process_config), and return how such a start time (ns of boot time) is made into what
    /proc/PID/stat prints (clock ticks, after this process's time namespace's boot-time offset, as the kernel
    prints it to us); None when the kernel gives none (no BTF, or no such member): /proc/PID/stat is read."""
    if config is None:
        return None
    from profiler.btf import packed_offsets

    try:
        config.update(ct.c_uint32(0), packed_offsets(NEW_PROCESS_CONFIG_FIELDS))
    except (PodflameError, OSError) as e:
        log.info("new processes' start times are read from /proc/PID/stat: %s", e)
        return None
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")  # the kernel's nsec_to_clock_t: whole ticks, rounded down
    offset = _boottime_offset_ns()
    return lambda ns: (ns + offset) // tick


def _boottime_offset_ns() -> int:
    """The boot-time offset of this process's time namespace (0 outside one), which /proc/PID/stat adds."""
    try:
        with open("/proc/self/timens_offsets") as f:
            for line in f:
                name, sec, nsec = line.split()
                if name in ("boottime", "7"):  # CLOCK_BOOTTIME is 7: older kernels print the number
                    return int(sec) * 1_000_000_000 + int(nsec)
    except (OSError, ValueError):
        pass
    return 0


def _python_cflags(enabled: bool) -> list[str]:
    """-D flags of bpf/python.bpf.h: on or off, and the maps' sizes."""
    if not enabled:
        return ["-DPYTHON_FRAMES=0"]
    return ["-DPYTHON_FRAMES=1", f"-DPY_MAX_DEPTH={PY_MAX_DEPTH}", f"-DPY_STACK_MAP_SIZE={PY_STACK_MAP_SIZE}",
            f"-DPY_PROCS_SIZE={PY_PROCS_SIZE}"]


def _fp_depth() -> int:
    """Frames bpf_get_stack returns here (kernel.perf_event_max_stack, 127 by default), at most
    MAX_STACK_DEPTH: the program asks for no more, and walks on from the registers past it."""
    try:
        depth = int(Path("/proc/sys/kernel/perf_event_max_stack").read_text())
    except (OSError, ValueError):
        depth = STACK_HEAD
    return max(1, min(depth, MAX_STACK_DEPTH))


def _read_set(stack_reader: _BatchReader, stack_map: BpfMap, count_reader: _BatchReader, count_map: BpfMap,
              comms: dict[bytes, str], py_stacks: dict[int, tuple[int, ...]] | None = None,
              deep_reader: _BatchReader | None = None, deep_map: BpfMap | None = None) -> list[RawSample]:
    """Empty one map set: its stacks first (the counts refer to them) with their overflow chunks, then its
    counts as RawSamples."""
    stacks: dict[int, tuple[int, ...]] = {}
    for ids, rows, n in stack_reader.take(stack_map):
        _decode_stacks(ids, rows, n, stacks)
    if deep_reader is not None and deep_map is not None:
        chunks: dict[tuple[int, int], tuple[int, ...]] = {}
        for keys, rows, n in deep_reader.take(deep_map):
            _decode_chunks(keys, rows, n, chunks)
        if chunks:
            _join_chunks(stacks, chunks)
    out: list[RawSample] = []
    for keys, counts, n in count_reader.take(count_map):
        _decode_counts(keys, counts, n, stacks, comms, out, py_stacks or {})
    return out


def _decode_py_stacks(ids: bytearray, rows: bytearray, n: int, into: dict[int, tuple[int, ...]]) -> None:
    """Add n (Python stack key -> flattened (code, instr) pairs, leaf first) from batch buffers."""
    row, depth_of, unpack = _PY_ROW, _PY_DEPTH, _UNPACK_PY
    for i, key in enumerate(memoryview(ids).cast("Q")[:n]):
        start = i * row
        depth = min(depth_of(rows, start)[0], PY_MAX_DEPTH)
        into[key] = unpack[depth](rows, start + 8)


def _frames_in(rows: bytearray, start: int, end: int) -> int:
    """Addresses in rows[start:end] before the first zero one (all of them if none is zero).

    bytes.find locates the first zero address in C and struct unpacks only the frames before it: ~0.7 us
    a stack, against ~2 us for a ctypes copy of all 127 slots and list.index."""
    find = rows.find
    at = find(_ZERO_IP, start, end)
    while at > 0 and at & 7:  # eight zero bytes across two addresses (rows are 8-aligned): look on
        at = find(_ZERO_IP, (at | 7) + 1, end)
    return (at - start) >> 3 if at >= 0 else (end - start) >> 3


def _decode_stacks(ids: bytearray, rows: bytearray, n: int, into: dict[int, tuple[int, ...]]) -> None:
    """Add n (stack id -> addresses up to the first zero one) from batch buffers of stack map rows."""
    row = _STACK_ROW
    for i, stack_id in enumerate(memoryview(ids).cast("Q")[:n]):
        start = i * row
        into[stack_id] = _UNPACK_IPS[_frames_in(rows, start, start + row)](rows, start)


def _decode_chunks(keys: bytearray, rows: bytearray, n: int, into: dict[tuple[int, int], tuple[int, ...]]) -> None:
    """Add n ((stack id, chunk index) -> addresses up to the first zero one) from batch buffers of deep0/1."""
    row = _CHUNK_ROW
    for i, (stack_id, index) in enumerate(_CHUNK_KEY.iter_unpack(memoryview(keys)[: n * _CHUNK_KEY.size])):
        start = i * row
        into[stack_id, index] = _UNPACK_IPS[_frames_in(rows, start, start + row)](rows, start)


def _join_chunks(stacks: dict[int, tuple[int, ...]], chunks: dict[tuple[int, int], tuple[int, ...]]) -> None:
    """Append to each stack that fills its row its overflow chunks, in order, up to the first one that does not
    fill its own. The kernel writes a stack's chunks before its row, so a full row without chunk 0 ended there;
    a chunk without its stack (the stack map was full) is left out."""
    for (stack_id, index), first in chunks.items():
        head = stacks.get(stack_id) if index == 0 else None
        if head is None or len(head) != STACK_HEAD:
            continue
        parts = [head, first]
        while len(parts[-1]) == DEEP_CHUNK and (more := chunks.get((stack_id, len(parts) - 1))) is not None:
            parts.append(more)
        stacks[stack_id] = tuple(chain.from_iterable(parts))[:MAX_STACK_DEPTH]


def _decode_counts(keys: bytearray, counts: bytearray, n: int, stacks: dict[int, tuple[int, ...]],
                   comms: dict[bytes, str], out: list[RawSample], py_stacks: dict[int, tuple[int, ...]]) -> None:
    """Append n RawSamples from batch buffers of sample_keys and their u64 counts.

    One struct.iter_unpack over the keys instead of eight ctypes field reads an entry; comms decoded
    once per distinct 16 bytes (`comms` persists across drains).
    """
    get, py_get, append, enoent = stacks.get, py_stacks.get, out.append, -errno.ENOENT
    entries = _KEY.iter_unpack(memoryview(keys)[: n * _KEY.size])
    user: tuple[int, ...] | None
    kernel: tuple[int, ...] | None
    for (cgroup_id, user_id, kernel_id, tgid, pid, user_err, kernel_err, raw_comm, py_id, py_err), count in zip(
            entries, memoryview(counts).cast("Q")[:n], strict=True):
        comm = comms.get(raw_comm)
        if comm is None:
            comm = comms[raw_comm] = raw_comm.split(b"\0", 1)[0].decode("utf-8", "replace")
        # A stack with an error is (); a missing one cannot happen once programs are done with the
        # set, and is reported (-ENOENT) rather than hidden.
        if user_err:
            user = ()
        elif (user := get(user_id)) is None:
            user, user_err = (), enoent
        if kernel_err:
            kernel = ()
        elif (kernel := get(kernel_id)) is None:
            kernel, kernel_err = (), enoent
        python = py_get(py_id, ()) if py_id else ()
        append(RawSample(cgroup_id, tgid, pid, comm, user, kernel, user_err, kernel_err, count, python, py_err))


def _expect_layout(m: BpfMap, key: type, value: type) -> None:
    """Fail closed when the C structs and their ctypes mirrors here disagree."""
    if (m.spec.key_size, m.spec.value_size) != (ct.sizeof(key), ct.sizeof(value)):
        raise SamplerError(f"map {m.spec.name}: key/value of {m.spec.key_size}/{m.spec.value_size} bytes in "
                           f"{BPF_SOURCE.name}, {ct.sizeof(key)}/{ct.sizeof(value)} in profiler/sampler.py")


class _BatchReader:
    """Empties a BPF hash map with BPF_MAP_LOOKUP_AND_DELETE_BATCH, `chunk` entries per syscall, into
    bytearrays allocated once: decoded in place with bytes.find and struct, no ctypes objects or copies."""

    def __init__(self, spec: MapSpec, chunk: int) -> None:
        self._spec = spec
        self._chunk = max(1, min(chunk, spec.max_entries))
        self._keys = bytearray(self._chunk * spec.key_size)
        self._values = bytearray(self._chunk * spec.value_size)

    def _grow(self) -> bool:
        """The kernel hands out whole hash buckets and answers ENOSPC, taking nothing, when one bucket
        holds more entries than the buffers: double them (up to the map's size) so the call can be
        repeated with the same token and no entry is lost."""
        if self._chunk >= self._spec.max_entries:
            return False
        self._chunk = min(2 * self._chunk, self._spec.max_entries)
        self._keys = bytearray(self._chunk * self._spec.key_size)
        self._values = bytearray(self._chunk * self._spec.value_size)
        return True

    def take(self, table: BpfMap) -> Iterator[tuple[bytearray, bytearray, int]]:
        """Yield (keys, values, n) per chunk; the buffers are reused, so decode before the next one."""
        token_in, token_out = ct.c_uint32(0), ct.c_uint32(0)
        first = True
        while True:
            try:
                n, done = table.lookup_and_delete_batch(self._keys, self._values, None if first else token_in,
                                                        token_out)
            except OSError as e:
                if e.errno == errno.ENOSPC and self._grow():
                    continue
                raise SamplerError(f"emptying a BPF map failed: {e.strerror}") from e
            if n:
                yield self._keys, self._values, n
            if done:
                return
            token_in.value, first = token_out.value, False
