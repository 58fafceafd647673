"""Python frames in native stacks: register CPython processes with the BPF walker, name the frames it
recorded, and put them where the native stack runs the interpreter.

The kernel (bpf/python.bpf.h) records per Python frame the code object's address, the instruction
field as read and two flag bits; it knows a process's layout only once `PythonRegistry` wrote it into
the `py_procs` map, which happens when the sampler announces the process (its first sample) and
profiler/python/detect.py recognizes CPython in it.

Merging. A native stack runs Python code in `_PyEval_EvalFrameDefault`, one C call per run of Python
frames: 3.10 and older call it once per Python frame; 3.11 runs Python-to-Python calls inside one
call and marks the first frame of each call `is_entry`; 3.12+ put a shim frame (owner
FRAME_OWNED_BY_CSTACK) below each call's frames. The Python stack is split into those runs, root
first, and the i-th eval frame of the native stack (root first) is replaced by the i-th run. Native
frames of the interpreter's own call machinery between two eval frames (`_PyEval_Vector`,
`PyObject_Call`, ..., any function of the interpreter binary named Py*/_Py* or without a symbol)
are dropped: they are how one Python call became the next, not work of their own. Everything else
stays: the process's entry (`main`, `Py_RunMain`, ...) above the first eval frame, and the C code a
Python frame called below the last one (`zlib.compress` -> deflate), so a stack reads
`main;...;<module>;handler;parse;zlib_compress_impl;deflate`.

When the native stack has fewer eval frames than the Python stack has runs (a frame-pointer walk
through an interpreter built without frame pointers loses most frames above the leaf), runs are
matched from the leaf and the extra outer runs go where the native stack reaches its outermost eval
frame. When it has none at all, the Python frames replace the native frames from the root down to
the leaf-most one that is in the interpreter binary or outside every mapping (the unreliable part of
a broken walk), so the C code the interpreter called stays below them.

Frames are named once per (process, code address, instruction offset) through
profiler/python/code.py's CodeReader (validated against freed and reused code objects, bounded
cache); readers outlive their process for a while, so a process that exited before the drain keeps
the names already read. Each drain re-reads the fixed part of every code object its samples name (one
process_vm_readv per process); what was named from them (frames, a raw stack's runs) is kept until an
address reads as another object, which drops the process's memos (`_ProcessState.answer`).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import compress
from typing import cast

from podflame.errors import PodflameError
from podflame.model import Frame, FrameKind, Line, Stack
from profiler import metrics
from profiler.btf import task_fsbase_offset
from profiler.procmaps import ExecVma, MapsEntry, NewProcess, read_exec_maps, read_exec_vmas, start_time
from profiler.python.code import CodeInfo, CodeReader, CodeReadError
from profiler.python.detect import (
    Derivation,
    LayoutKey,
    Layouts,
    PythonProcess,
    Unsupported,
    inspect_process,
    layout_key,
    no_python,
)
from profiler.python.offsets import LASTI_BYTES, LASTI_UNITS, NO_FIELD, PyOffsets, instr_offset
from profiler.python.remote import ProcessGone
from profiler.python.walk import walk
from profiler.sampler import PY_PROC_SIZE, Drain
from symbolizer.elf import ElfReadError, ElfSymbols

log = logging.getLogger("podflame.pyframes")

# struct py_proc of bpf/python.bpf.h
_PY_PROC = struct.Struct("<QIIIIiIiIIIIBBBBQQ")
assert _PY_PROC.size == PY_PROC_SIZE, "struct py_proc: profiler/sampler.py and this packing disagree"
_RUNTIME_FIELD = struct.Struct("<Q")  # struct py_proc's first field: &_PyRuntime, the one a process's own
ADDR_MASK = (1 << 56) - 1
FLAG_ENTRY = 1 << 56
OWNER_SHIFT = 57
FLAG_GAP = 1 << 60  # bpf/python.bpf.h PY_FLAG_GAP_SHIFT: frames were left out root-ward of this one
EVAL_FUNCTION = "_PyEval_EvalFrameDefault"
MAX_DETECT_TRIES = 3  # a process announced before its interpreter was mapped is looked at again
GONE_GRACE_S = 60.0  # a registered process's names are kept this long after it exited
UNREADABLE = Frame(0, None, FrameKind.PYTHON, (Line("[unreadable Python frame]"),))
# the process exited before any drain read this code object: its native frames stay, and this says why
# the Python ones have no name (docs/python-frames.md: how many samples of short-lived processes)
# read per frame: module globals, not class attributes (an enum member through its class costs ~130 ns)
_KERNEL, _UNKNOWN = FrameKind.KERNEL, FrameKind.UNKNOWN
EXITED = Frame(0, None, FrameKind.PYTHON, (Line("[python: process exited before read]"),))
# where the kernel left Python frames out of a stack deeper than it keeps (bpf/python.bpf.h py_walk): the
# graph shows the cut instead of passing the frames on either side of it off as caller and callee
TRUNCATED = Frame(0, None, FrameKind.PYTHON, (Line("[truncated: Python frames left out]"),))
# split_runs' key for TRUNCATED (no code address is negative). Compared by value, never with `is`: compiled by mypyc
# a tuple[int, int] is unboxed and boxed anew where it is used, so no two uses are the same object
_GAP = (-1, 0)


def pack_config(process: PythonProcess, fsbase_offset: int = 0) -> bytes:
    """The `struct py_proc` the kernel walks `process` with; `fsbase_offset` is task_struct.thread.fsbase's
    offset in the running kernel (needed by versions without native_thread_id; 0: unknown)."""
    o = process.offsets
    instr_mask = 0xFFFF_FFFF if o.frame_instr_kind in (LASTI_BYTES, LASTI_UNITS) else (1 << 64) - 1
    # one 8-byte read holds both flag bytes (3.11: is_entry and owner are adjacent; 3.12+: owner alone)
    present = [off for off in (o.frame_is_entry, o.frame_owner) if off != NO_FIELD]
    flags_at = min(present) if present else o.frame_code
    if present and max(present) - flags_at > 7:
        raise ValueError(f"is_entry and owner are {max(present) - flags_at} bytes apart: not one 8-byte read")
    entry_shift = 8 * (o.frame_is_entry - flags_at) if o.frame_is_entry != NO_FIELD else 0
    owner_shift = 8 * (o.frame_owner - flags_at) if o.frame_owner != NO_FIELD else 0
    return _PY_PROC.pack(process.runtime_address, o.runtime_interpreters_head, o.interp_threads_head, o.tstate_next,
                         o.tstate_thread_id, o.tstate_native_thread_id, o.tstate_frame, o.cframe_current_frame,
                         o.frame_previous, o.frame_code, o.frame_instr, flags_at, entry_shift, owner_shift,
                         1 if o.frame_is_entry != NO_FIELD else 0, 7 if o.frame_owner != NO_FIELD else 0, instr_mask,
                         fsbase_offset)


class EarlyReads:
    """`--python-early-reads` (off by default): userspace walks of a newly registered process's threads, `delays`
    seconds after it was registered, into the CodeReader the next drain will use (`take`), so the code
    objects running then are read while the process lives. A process shorter than the drain interval
    is otherwise gone before its code objects are read (docs/python-frames.md). Measured with
    bench/python_short_lived.py --early-reads 0.1,0.3: named share of short-lived processes 6.8% -> 84% at
    10 s drains for ~0.9 ms of CPU per process (two walks, loaded machine); ~0.3% of a core on a node
    starting 3 Python processes a second: off until the busy node's budget allows it."""

    def __init__(self, delays: tuple[float, ...] = (), capacity: int = 1024) -> None:
        self.delays = delays
        self.capacity = capacity
        self._lock = threading.Lock()
        self._readers: OrderedDict[int, tuple[PythonProcess, CodeReader]] = OrderedDict()
        self.walks = self.failed = 0
        self.cpu_s = 0.0

    def schedule(self, process: PythonProcess) -> None:
        if not self.delays:
            return
        reader = CodeReader(process.pid, process.offsets, process.code_type)
        with self._lock:
            self._readers[process.pid] = (process, reader)
            while len(self._readers) > self.capacity:
                self._readers.popitem(last=False)
        for delay in self.delays:
            timer = threading.Timer(delay, self._walk, (process, reader))
            timer.daemon = True
            timer.start()

    def _walk(self, process: PythonProcess, reader: CodeReader) -> None:
        t0 = time.thread_time()
        try:
            walk(process, reader)  # the readers' caches keep what it read; the frames are not needed
            self.walks += 1
        except (PodflameError, OSError) as e:  # gone, or caught mid-change: nothing lost but the early read
            self.failed += 1
            log.debug("pid %d: early read: %s", process.pid, e)
        self.cpu_s += time.thread_time() - t0

    def take(self, process: PythonProcess) -> CodeReader | None:
        """The reader early walks of this registration filled, handed over once (None: there is none)."""
        with self._lock:
            got = self._readers.get(process.pid)
            if got is None or got[0] is not process:
                return None
            del self._readers[process.pid]
            return got[1]


def _detect(tgid: int, started: int | None, maps: list[MapsEntry] | None = None,
            exe: str | None = None) -> PythonProcess | Unsupported:
    """Detection for a process whose start time the registry has just read (not read twice per new process),
    and whose executable mappings the sampler's watcher read (`maps`; None: read them now)."""
    return inspect_process(tgid, started=started, maps=maps, exe=exe)


class PythonRegistry:
    """Which processes the kernel walks Python frames of; detection runs on the sampler's announcements.

    `write(tgid, config_or_None)` updates the kernel's map (Sampler.set_python_process). A registration is
    one process, (pid, start time), not a pid: `started` (procmaps.start_time) is read before detection
    and at every refresh, and a pid now held by a process that started later is detected afresh (the
    kernel announces a (tgid, comm) once, so a reused pid of the same name is never announced again)."""

    def __init__(self, write: Callable[[int, bytes | None], None],
                 detect: Callable[[int, int | None, list[MapsEntry] | None, str | None],
                                  PythonProcess | Unsupported] = _detect,
                 started: Callable[[int], int | None] = start_time, early: EarlyReads | None = None) -> None:
        self._write = write
        self.early = early  # walks new registrations soon after (EarlyReads); PythonFrames takes its readers
        self._detect = detect
        self._started = started
        self._lock = threading.Lock()
        self.processes: dict[int, PythonProcess] = {}
        self._gone: dict[int, float] = {}  # tgid -> monotonic time it was seen gone
        self._retry: dict[int, int] = {}  # tgid -> detections tried
        self.unsupported: dict[int, str] = {}  # tgid -> reason (last few)
        self._fsbase: int | None = None  # task_struct.thread.fsbase offset, read from BTF on first need
        # (executable, its executable VMAs' PROCMAP_QUERY keys) of processes found without CPython: a busy
        # node's next `sh` or `sort` is known to be none by a readlink and a dict hit (detection: ~35 us).
        # Emptied every drain (refresh), as a file rewritten in place keeps its device, inode and name.
        self._no_python: set[tuple[str, tuple[object, ...]]] = set()
        # layouts (detect.layout_key: the executable, its executable VMAs' keys and sizes as a set) of processes
        # found with CPython: the next python3 of a known layout is registered by rebasing (real detection
        # only: a detector given by a test derives nothing). Emptied every drain too.
        self.layouts: Layouts | None = Layouts() if detect is _detect else None
        self._tails: dict[int, tuple[PyOffsets, int, bytes]] = {}  # _config's: id(offsets) -> (offsets, fsbase, tail)
        self._logged: set[tuple[str, tuple[int, int, int]]] = set()  # (interpreter file, version) logged at INFO

    def announce(self, tgids: Iterable[int] | Iterable[NewProcess]) -> None:
        """Detect CPython in processes just seen; register the ones found. A NewProcess (the sampler's
        watcher's read) gives the start time and executable mappings: nothing is read twice."""
        for item in tgids:
            new = None if isinstance(item, int) else item
            tgid = item.pid if isinstance(item, NewProcess) else item
            if tgid <= 0:
                continue
            with self._lock:
                known = self.processes.get(tgid)
            if known is not None and self._same_process(tgid, known, new):
                continue
            self._try(tgid, new)

    def _same_process(self, tgid: int, known: PythonProcess, new: NewProcess | None = None) -> bool:
        # an exec or a pid reuse announces the tgid again: keep the registration only if it is the same
        # process (start time) and its interpreter is still mapped where it was (an exec keeps the start time,
        # and a python3 exec'ing a python3 keeps the path: its addresses are what tells)
        if (self._started(tgid) if new is None else new.starttime) != known.start_time:
            return False
        if new is not None and new.vmas is not None:
            return _still_mapped(known, new.vmas)
        return _still_mapped_now(tgid, known, unreadable=False)

    def _place(self, tgid: int, key: LayoutKey, started: int | None, vmas: list[ExecVma]) -> bool:
        """Register `tgid` from the known answer of its layout (Layouts.place); False when there is none."""
        assert self.layouts is not None
        placed = self.layouts.place(key, tgid, started, vmas)
        if placed is None:
            return False
        with self._lock:
            self._register(tgid, placed)
        return True

    def _try(self, tgid: int, new: NewProcess | None = None) -> None:
        key = exe = None
        layout: LayoutKey | None = None
        derived: list[Derivation] | None = None
        if new is not None:
            started = new.starttime
            if new.vmas is not None:
                exe = new.exe()  # read once for every reader (the unwind loader's too)
                if exe is not None:
                    key = (exe, tuple(v[2] for v in new.vmas))  # ordered: cheaper, and stable in a sh or sort
                    if key in self._no_python:
                        with self._lock:
                            self._not_python(tgid, no_python(tgid, exe), exe)
                        return
                    layout = layout_key(exe, new.vmas, new.layout()) if self.layouts is not None else None
                    if layout is not None:
                        if self._place(tgid, layout, started, new.vmas):
                            return
                        derived = []
            maps = new.entries()
        else:
            started, maps = self._started(tgid), None
        if derived is None:
            got = self._detect(tgid, started, maps, exe)
        else:  # real detection (the default _detect), telling what the answer rested on
            got = inspect_process(tgid, started=started, maps=maps, exe=exe, derived=derived)
        with self._lock:
            if isinstance(got, PythonProcess):
                # read before detection: a pid that changed hands meanwhile is seen at the next refresh
                if got.start_time != started:
                    got = replace(got, start_time=started)
                if self._register(tgid, got) and derived and layout is not None and new is not None \
                        and new.vmas is not None and self.layouts is not None:
                    self.layouts.learn(layout, got, new.vmas, derived[0])
                return
            if key is not None and got.no_python:
                if len(self._no_python) >= 4096:
                    self._no_python.clear()
                self._no_python.add(key)
            self._not_python(tgid, got, exe)

    def _register(self, tgid: int, got: PythonProcess) -> bool:
        """Write a found process's layout into the kernel's map and keep it (with the lock held); False when
        the write failed."""
        try:
            self._write(tgid, self._config(got))
        except Exception as e:
            log.warning("cannot register Python process %d: %s", tgid, e)
            return False
        first = tgid not in self.processes
        self.processes[tgid] = got
        self._retry.pop(tgid, None)
        self._gone.pop(tgid, None)
        if self.early is not None:
            self.early.schedule(got)
        if first:
            metrics.PYTHON_PROCESSES.inc()
            # once per interpreter file and version at INFO: a node starting python3 a few times a
            # second would log (and format, and write) a line for each
            seen = (got.path, got.version) in self._logged
            log.log(logging.DEBUG if seen else logging.INFO,
                    "pid %d: CPython %d.%d.%d (%s), Python frames on%s", tgid, *got.version, got.path,
                    "" if seen else " (the next processes of it: debug)")
            if not seen and len(self._logged) < 256:
                self._logged.add((got.path, got.version))
        return True

    def _not_python(self, tgid: int, got: Unsupported, exe: str | None) -> None:
        """Book a process detection did not register (with the lock held); `exe`: its /proc/PID/exe if read."""
        if tgid in self.processes:  # exec'd into something else
            del self.processes[tgid]
            self._write(tgid, None)
        reason = got.reason
        if _is_interpreter(reason) and tgid not in self.unsupported:
            metrics.PYTHON_UNSUPPORTED.inc()
            log.info("pid %d: no Python frames: %s", tgid, reason)
        if len(self.unsupported) > 4096:
            self.unsupported.clear()
        self.unsupported[tgid] = reason
        if _looks_like_python(tgid, exe):  # announced before its interpreter was mapped: again next drain
            self._retry[tgid] = self._retry.get(tgid, 0) + 1
            if self._retry[tgid] >= MAX_DETECT_TRIES:
                del self._retry[tgid]

    def _config(self, process: PythonProcess) -> bytes:
        """pack_config(process, its fsbase offset): past the first field (the runtime's address) the bytes are a
        function of the offsets object and the fsbase offset, kept by the offsets' identity (the processes of one
        layout share their template's)."""
        fsbase = self._fsbase_offset(process)
        tail = self._tails.get(id(process.offsets))
        if tail is not None and tail[0] is process.offsets and tail[1] == fsbase:
            return _RUNTIME_FIELD.pack(process.runtime_address) + tail[2]
        config = pack_config(process, fsbase)
        if len(self._tails) >= 64:
            self._tails.clear()
        self._tails[id(process.offsets)] = (process.offsets, fsbase, config[_RUNTIME_FIELD.size:])
        return config

    def _fsbase_offset(self, process: PythonProcess) -> int:
        """Where the kernel keeps a thread's FS base (pthread_self(): how 3.10 and older name a thread),
        read from the kernel's BTF the first time such a process comes (3.11+ match the tid instead)."""
        if process.offsets.tstate_native_thread_id != NO_FIELD:
            return 0
        if self._fsbase is None:
            try:
                self._fsbase = task_fsbase_offset()
            except PodflameError as e:  # no BTF (SystemUnsupported), or malformed
                log.warning("no task_struct.thread.fsbase offset (%s): no Python frames for CPython < 3.11", e)
                self._fsbase = 0
        return self._fsbase

    def refresh(self) -> dict[int, PythonProcess]:
        """Called once per drain: retry young processes, unregister exited ones (after a grace period,
        so their samples of this drain are still named), detect afresh a pid taken by a new process;
        the processes known now."""
        self._no_python.clear()
        if self.layouts is not None:
            self.layouts.clear()
        for tgid in list(self._retry):
            self._try(tgid)
        now = time.monotonic()
        reused = []
        with self._lock:
            for tgid, process in list(self.processes.items()):
                started = self._started(tgid)
                if started is not None and started == process.start_time:
                    if _still_mapped_now(tgid, process, unreadable=True):  # exited since: seen gone next time
                        continue
                    # the same process exec'd (a python3 sampled between its fork and its exec of a python3
                    # keeps its comm: the kernel announced it once, with its parent's interpreter)
                    log.info("pid %d exec'd: detecting it afresh", tgid)
                if started is not None:  # another process has the pid (or an image): the old layout must go
                    reused.append(tgid)
                    del self.processes[tgid]
                    self._gone.pop(tgid, None)
                    self._write_quietly(tgid)
                    continue
                since = self._gone.setdefault(tgid, now)
                if since == now:
                    self._write_quietly(tgid)
                elif now - since > GONE_GRACE_S:
                    del self.processes[tgid], self._gone[tgid]
        for tgid in reused:
            log.info("pid %d is a new process: detecting it afresh", tgid)
            self._try(tgid)
        with self._lock:
            return dict(self.processes)

    def _write_quietly(self, tgid: int) -> None:
        try:
            self._write(tgid, None)
        except Exception as e:
            log.debug("unregistering %d: %s", tgid, e)


def _still_mapped(known: PythonProcess, vmas: list[ExecVma]) -> bool:
    """Whether the executable mappings of `known`'s interpreter (exec_maps: where detection found them) are
    still among the process's executable VMAs `vmas`, at the same addresses and file offsets."""
    name = os.fsencode(known.path)
    if not known.exec_maps:  # a registration without them (made by hand): the file being mapped must do
        return any(v[2][5] in (name, name + b" (deleted)") for v in vmas)
    here = {(v[0], v[1], v[2][1]) for v in vmas if v[2][5] in (name, name + b" (deleted)")}
    return all(m in here for m in known.exec_maps)


def _still_mapped_now(tgid: int, known: PythonProcess, unreadable: bool) -> bool:
    """`_still_mapped`, reading the process's executable mappings now (`unreadable` when they cannot be read:
    the process is gone)."""
    try:
        vmas = read_exec_vmas(tgid)
        if vmas is None:
            vmas = [(e.start, e.end, (0, e.offset, 0, 0, e.inode, os.fsencode(e.path)))
                    for e in read_exec_maps(tgid, query=False)]
    except OSError:
        return unreadable
    return _still_mapped(known, vmas)


def _is_interpreter(reason: str) -> bool:
    """Whether detect found a CPython it cannot read (a version or build it does not know), not no Python."""
    return any(word in reason for word in ("CPython", "Py_Version", "_Py_DebugOffsets", "cannot read _PyRuntime"))


def _looks_like_python(tgid: int, exe: str | None = None) -> bool:
    try:
        return os.path.basename(exe if exe is not None else os.readlink(f"/proc/{tgid}/exe")).startswith("python")
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class _Interpreter:
    """Runtime address ranges, in one process, of the interpreter binary's functions that matter here."""

    eval_ranges: tuple[tuple[int, int], ...]  # _PyEval_EvalFrameDefault (and its .cold part)
    glue: Callable[[int], bool]  # is this address interpreter call machinery
    start: int  # the binary's executable mapping(s)
    end: int
    # address -> (in the eval loop, glue that goes between runs): asked once per native address, not per sample
    kinds: dict[int, tuple[bool, bool]] = field(default_factory=dict, compare=False)
    # is this address in no named function (see merge_runs; None: not known, e.g. a test's fake interpreter)
    unnamed: Callable[[int], bool] | None = None
    # the binary's answers by ELF address (runtime address - `bias`), shared by every process running it
    # (`_Binary.kinds`): each new python3 of a busy node met its eval-loop and glue addresses afresh, a
    # symbol lookup each (~1500 a drain at 99 Hz with three new Python processes a second). None: not shared
    shared: dict[int, tuple[bool, bool]] | None = field(default=None, compare=False)
    bias: int = 0

    def kind(self, address: int) -> tuple[bool, bool]:
        got = self.kinds.get(address)
        if got is None:
            shared = self.shared
            if shared is not None and self.start <= address < self.end:
                # inside the binary both answers are functions of the ELF address alone (eval_ranges and
                # glue are the binary's, moved by `bias`)
                got = shared.get(address - self.bias)
                if got is None:
                    got = self._classify(address)
                    if len(shared) >= 65536:
                        shared.clear()
                    shared[address - self.bias] = got
            else:
                got = self._classify(address)
            if len(self.kinds) >= 65536:
                self.kinds.clear()
            self.kinds[address] = got
        return got

    def _classify(self, address: int) -> tuple[bool, bool]:
        """(in the eval loop, glue that goes): glue of the interpreter binary with a name. A frame without one
        stays (see merge_runs); asking `unnamed` here, once per address, and not per glue frame of each
        sample, saved a symbol lookup for each of ~1500 glue frames a 99 Hz drain."""
        is_eval = False
        for s, e in self.eval_ranges:
            if s <= address < e:
                is_eval = True
                break
        goes = self.start <= address < self.end and self.glue(address)
        if goes and self.unnamed is not None and self.unnamed(address):
            goes = False
        return is_eval, goes


@dataclass(frozen=True, slots=True)
class _Binary:
    """What `_interpreter` needs of an interpreter binary, in ELF addresses: read once per file, shared by
    every process that runs it (a node starting `python3` ten times a second read its symbols each time)."""

    elf: ElfSymbols
    evals: tuple[tuple[int, int], ...]
    kinds: dict[int, tuple[bool, bool]] = field(default_factory=dict, compare=False)  # see _Interpreter.shared
    # the executable mappings' (start, end, offset) -> the _Interpreter of a process mapping the file there: every
    # answer of one is a function of the file and those mappings (addresses outside them are no process's
    # glue), so processes laid out alike (a binary without PIE: every python3 of a node) share one, with its
    # per-address answers, instead of building one and classifying their addresses afresh each
    interpreters: dict[tuple[tuple[int, int, int], ...], _Interpreter] = field(default_factory=dict, compare=False)


_BINARIES: dict[tuple[int, int, int, int, str], _Binary | None] = {}  # the file's (dev, ino, size, mtime), eval ->


def _binary(opened: str, pid: int, eval_function: str = EVAL_FUNCTION) -> _Binary | None:
    try:
        st = os.stat(opened)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, eval_function)
    if key in _BINARIES:
        return _BINARIES[key]
    try:
        elf = ElfSymbols(opened)
        ranges = elf.ranges
        got: _Binary | None = _Binary(elf, tuple(
            (s, e) for s, e, n in zip(ranges.starts, ranges.ends, ranges.names, strict=True)
            if n == eval_function or n.startswith(eval_function + ".")))
    except ElfReadError as e:
        log.warning("pid %d: cannot read the symbols of %s: %s", pid, opened, e)
        got = None
    if len(_BINARIES) >= 64:
        _BINARIES.clear()
    _BINARIES[key] = got
    return got


def _interpreter(process: PythonProcess) -> _Interpreter | None:
    """Where the eval loop and the glue functions are in this process (None: the file is unreadable).

    The interpreter's executable mappings are detection's (`PythonProcess.exec_maps`): a new Python
    process costs no second maps read here (~0.1 ms each on a node starting python3 ten times a second);
    the maps are read only for a registration that did not record them."""
    execs = list(process.exec_maps)
    if not execs:
        try:
            execs = [(e.start, e.end, e.offset) for e in read_exec_maps(process.pid) if e.clean_path == process.path]
        except OSError:
            return None
    if not execs:
        return None
    start, end, _ = execs[0]
    # map_files first: the file mapped, even when an upgrade renamed a new one over its path
    opened = next((p for p in (f"/proc/{process.pid}/map_files/{start:x}-{end:x}",
                               f"/proc/{process.pid}/root{process.path}", process.path)
                   if os.access(p, os.R_OK)), None)
    if opened is None:
        return None
    binary = _binary(opened, process.pid, process.eval_function)  # 2.7: PyEval_EvalFrameEx
    if binary is None:
        return None
    layout = tuple(execs)
    known = binary.interpreters.get(layout)
    if known is None:
        known = _new_interpreter(binary, layout)
        if known is None:
            return None
        if len(binary.interpreters) >= 1024:
            binary.interpreters.clear()
        binary.interpreters[layout] = known
    return known


def _new_interpreter(binary: _Binary, execs: tuple[tuple[int, int, int], ...]) -> _Interpreter | None:
    start, _, offset = execs[0]
    elf = binary.elf
    segment = next((s for s in elf.segments if s.executable and s.offset <= offset < s.offset + s.filesz), None)
    if segment is None:
        return None
    bias = start - offset + segment.offset - segment.vaddr  # runtime = vaddr + bias
    evals = tuple((s + bias, e + bias) for s, e in binary.evals)
    lookup = elf.ranges.lookup

    def glue(address: int) -> bool:
        name = lookup(address - bias)
        return name is None or name.startswith(("Py", "_Py")) or name.endswith("_vectorcall")

    def unnamed(address: int) -> bool:
        return lookup(address - bias) is None

    return _Interpreter(evals, glue, min(e[0] for e in execs), max(e[1] for e in execs), unnamed=unnamed,
                        shared=binary.kinds, bias=bias)


_Runs = tuple[tuple[Frame, ...], ...]  # named Python frames, root first, split as `split_runs` splits them


class _ProcessState:
    """One registered process: its reader, and what was worked out from its code objects.

    Everything worked out from code objects (frames, runs, merged stacks) holds while each code address
    reads as the same object as before: `codes` is this drain's answer per address, `seen` the last answer
    ever, and an address whose answer changed (a function redefined, a module reloaded, a freed code
    object's memory reused: CodeReader's fingerprint) drops all of it for the process (`forget`)."""

    __slots__ = ("codes", "frames", "interp", "interp_read", "lines", "process", "raws", "reader", "runs", "seen")

    def __init__(self, process: PythonProcess, reader: CodeReader) -> None:
        self.process = process
        self.reader = reader
        self.interp: _Interpreter | None = None  # None also when the binary's symbols could not be read
        self.interp_read = False
        self.codes: dict[int, CodeInfo | Frame] = {}  # code address -> read this drain, or why not
        self.seen: dict[int, CodeInfo | Frame] = {}  # code address -> the last answer, any drain
        self.raws: set[tuple[int, ...]] = set()  # this drain's raw stacks (all their codes are in `codes`)
        self.frames: dict[tuple[int, int], Frame] = {}  # (code, instr) -> frame
        self.lines: dict[tuple[int, int | None], Frame] = {}  # (code, line) -> frame: one object per line
        self.runs: dict[tuple[int, ...], _Runs] = {}  # raw Python stack -> its named runs

    def answer(self, code: int, got: CodeInfo | Frame) -> None:
        """Record this drain's answer for a code address; a different answer than the last one drops
        everything named from the old one."""
        self.codes[code] = got
        old = self.seen.get(code)
        if old is not got:
            if old is not None and old != got:
                self.forget()
            self.seen[code] = got

    def forget(self) -> None:
        self.frames.clear()
        self.lines.clear()
        self.runs.clear()


class PythonFrames:
    """Names the kernel's Python frames and merges them into native stacks, per process.

    Merged stacks are not kept: on real 99 Hz drains almost every sample is a (native stack, Python
    stack) pair of its own (the native leaf and the Python instructions vary; keyed by line instead of
    instruction, still 99.6% of them), so a memo of merged stacks was a dict insert per sample for ~0.1%
    hits. A merge is made cheap instead: a raw Python stack is named once (`_ProcessState.runs`), each
    (code, instruction) once with one frame object per (code, line), each native address classified
    once (`_Interpreter.kind`), and the merge itself is list splicing."""

    def __init__(self, *, max_frames: int = 100_000) -> None:
        self.max_frames = max_frames  # per process, for each of its memos
        self.processes: dict[int, PythonProcess] = {}
        self._states: dict[int, _ProcessState] = {}
        self._early: EarlyReads | None = None
        self.read_failures = 0

    def begin_drain(self, drain: Drain) -> None:
        """Take the processes registered now (Drain.python_processes: readers of others, and of a pid's
        earlier process, are let go) and read every code object the drain's samples name, one
        process_vm_readv per process for all of them (CodeReader.read_many), plus reads for the ones
        not seen before."""
        processes = drain.python_processes
        self.processes = processes
        self._early = drain.python_early
        # a registration is one process ((pid, start time): PythonRegistry): a new one for a pid is a
        # new object, and the reader, names and merged stacks of the pid's earlier process go
        for tgid in [t for t, state in self._states.items() if processes.get(t) is not state.process]:
            del self._states[tgid]
        for state in self._states.values():
            state.codes = {}
            state.raws = set()
        raws: dict[int, set[tuple[int, ...]]] = {}
        for s in drain.samples:
            if s.python_stack and s.tgid in processes:
                got = raws.get(s.tgid)
                if got is None:
                    got = raws[s.tgid] = set()
                got.add(s.python_stack)
        for tgid, distinct in raws.items():
            found = self._state(tgid)
            if found is None:
                continue
            state = found
            if len(state.seen) > self.max_frames:  # bounded; the memos go with it (they rely on `seen`)
                state.seen.clear()
                state.forget()
            codes = {word & ADDR_MASK for raw in distinct for word in raw[::2]}
            failed = 0
            for code, read in state.reader.read_many(codes).items():
                if isinstance(read, CodeInfo):
                    state.answer(code, read)
                else:  # counted once for the process below: a process gone before its drain fails every code
                    state.answer(code, self._named(tgid, code, read, count=False))
                    failed += 1
            if failed:
                self.read_failures += failed
                metrics.PYTHON_CODE_READ_FAILURES.inc(failed)
            for memo in (state.frames, state.lines, state.runs):
                if len(memo) > self.max_frames:
                    memo.clear()
            state.raws = distinct

    def _state(self, tgid: int) -> _ProcessState | None:
        """Reader and interpreter ranges of a registered process, made on first use and kept while the
        registration (the same PythonProcess) lasts."""
        process = self.processes.get(tgid)
        if process is None:
            return None
        state = self._states.get(tgid)
        if state is None or state.process is not process:
            early = self._early.take(process) if self._early is not None else None
            reader = early or CodeReader(tgid, process.offsets, process.code_type)
            state = self._states[tgid] = _ProcessState(process, reader)
        return state

    def interpreter(self, tgid: int) -> _Interpreter | None:
        state = self._state(tgid)
        if state is None:
            return None
        if not state.interp_read:
            state.interp, state.interp_read = _interpreter(state.process), True
        return state.interp

    def runs(self, tgid: int, raw: tuple[int, ...]) -> list[list[Frame]]:
        """The Python frames of a raw kernel stack, named, in the runs `split_runs` finds."""
        state = self._state(tgid)
        if state is None or not raw:
            return []
        return [list(run) for run in self._runs(tgid, state, raw)]

    def _runs(self, tgid: int, state: _ProcessState, raw: tuple[int, ...]) -> _Runs:
        """Named runs of `raw`, whose code addresses were all answered this drain (begin_drain, or read now)."""
        got = state.runs.get(raw)
        if got is not None:
            return got
        frames = state.frames
        o = state.reader.offsets
        got = _named_runs(raw, o, frames) if o.owner_cstack == NO_FIELD else None
        if got is None:
            got = tuple(tuple(TRUNCATED if key == _GAP else frames.get(key) or self._frame(tgid, state, *key)
                              for key in run)
                        for run in split_runs(raw, o))
        state.runs[raw] = got
        return got

    def _frame(self, tgid: int, state: _ProcessState, code: int, instr: int) -> Frame:
        """The frame at (code, instr), one frame object per (code, line)."""
        info = state.codes.get(code)
        if info is None:
            info = self._info(tgid, state, code)
        if isinstance(info, Frame):
            frame = info
        else:
            line = info.line(instr_offset(state.reader.offsets, code, instr))
            frame = state.lines.get((code, line)) or \
                Frame(0, None, FrameKind.PYTHON, (Line(info.qualname, info.filename, line),))
            state.lines[(code, line)] = frame
        state.frames[(code, instr)] = frame
        return frame

    def _info(self, tgid: int, state: _ProcessState, code: int) -> CodeInfo | Frame:
        """The code object at `code`, for a stack begin_drain did not see (it reads the drain's at once)."""
        try:
            got: CodeInfo | PodflameError = state.reader.read(code)
        except (CodeReadError, ProcessGone) as e:
            got = e
        info = self._named(tgid, code, got)
        state.answer(code, info)
        return state.codes[code]

    def _named(self, tgid: int, code: int, got: CodeInfo | PodflameError, count: bool = True) -> CodeInfo | Frame:
        """The code object, or the frame that says why it has no name (a failure, counted unless the caller
        counts them together)."""
        if isinstance(got, CodeInfo):
            return got
        if count:
            self.read_failures += 1
            metrics.PYTHON_CODE_READ_FAILURES.inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("pid %d: code object %#x: %s", tgid, code, got)
        return EXITED if isinstance(got, ProcessGone) else UNREADABLE

    def merge(self, tgid: int, raw: tuple[int, ...], stack: Stack) -> Stack:
        """`stack` (root first, native then kernel frames) with the Python frames of `raw` merged in.

        Kept across drains while every code object in `raw` reads as the same object this drain (one
        validated read per code address a drain; a changed one drops the process's memos)."""
        state = self._state(tgid)
        if state is None or not raw:
            return stack
        if raw not in state.raws:  # not from this drain: its code objects are read (validated) now
            for word in raw[::2]:
                if word & ADDR_MASK not in state.codes:
                    self._info(tgid, state, word & ADDR_MASK)
            state.raws.add(raw)
        runs = self._runs(tgid, state, raw)
        if not runs:
            return stack
        split = len(stack)  # kernel frames (or the one that says the kernel stack was lost) end the stack
        while split and (stack[split - 1].kind is _KERNEL or _is_kernel_lost(stack[split - 1])):
            split -= 1
        user, kernel = list(stack[:split]), stack[split:]
        return (*merge_runs(user, runs, self.interpreter(tgid)), *kernel)


def split_runs(raw: tuple[int, ...], o: PyOffsets) -> list[list[tuple[int, int]]]:
    """(code address, instr) of a raw kernel stack (leaf-first (code|flags, instr) pairs), root first,
    split into the runs one eval-loop call executed each; shim frames (3.12+) are dropped. Where the
    kernel left frames out (FLAG_GAP) the run holds `_GAP` before the frame below the cut."""
    runs: list[list[tuple[int, int]]] = []
    shims = o.owner_cstack != NO_FIELD  # 3.12+
    entries = o.frame_is_entry != NO_FIELD  # 3.11
    per_frame = not entries and not shims  # 3.10 and older
    run: list[tuple[int, int]] = []
    for word, instr in zip(raw[-2::-2], raw[-1::-2], strict=False):  # root first (the kernel writes pairs)
        if shims and (word >> OWNER_SHIFT) & 7 == o.owner_cstack:
            if run:
                runs.append(run)
                run = []
            if word & FLAG_GAP:
                run.append(_GAP)
            continue
        if (per_frame or (entries and word & FLAG_ENTRY)) and run and run[-1] != _GAP:  # (cheap test first)
            runs.append(run)
            run = []
        if word & FLAG_GAP:
            run.append(_GAP)
        run.append((word & ADDR_MASK, instr))
    if run:
        runs.append(run)
    return runs


def _named_runs(raw: tuple[int, ...], o: PyOffsets, frames: dict[tuple[int, int], Frame]) -> _Runs | None:
    """What naming `split_runs(raw, o)`'s runs from `frames` gives, for 3.11 and older (no shim frames) when no
    frame was left out and every (code, instr) is in `frames` already (None otherwise: the general path). The
    common case of a 99 Hz drain (a raw stack differing from a named one in its instructions), with the
    lookups and the cuts at `is_entry` made by C iterators: no (code, instr) tuple kept per frame."""
    words = raw[-2::-2]  # root first
    if any(map(FLAG_GAP.__and__, words)):
        return None
    looked: list[Frame | None] = list(map(frames.get, zip(map(ADDR_MASK.__and__, words), raw[-1::-2], strict=True)))
    if not all(looked):  # (a frame is true: `all` asks no __eq__, as `None in` would of each)
        return None
    named = cast("list[Frame]", looked)
    if o.frame_is_entry == NO_FIELD:  # 3.10 and older: one eval-loop call per frame
        return tuple((f,) for f in named)
    cuts = [i for i in compress(range(len(words)), map(FLAG_ENTRY.__and__, words)) if i]
    if not cuts:
        return (tuple(named),)
    return tuple(tuple(named[a:b]) for a, b in zip([0, *cuts], [*cuts, len(named)], strict=True))


def _is_kernel_lost(f: Frame) -> bool:
    return f.kind is _UNKNOWN and bool(f.lines) and f.lines[0].function.startswith("[kernel stack")


def merge_runs(user: list[Frame], runs: Sequence[Sequence[Frame]], interp: _Interpreter | None) -> list[Frame]:
    """Native user frames (root first) with Python runs (root first) in place of the eval-loop frames."""
    if interp is None:  # the binary is unreadable: Python frames above whatever native frames there are
        return [f for run in runs for f in run] + user
    kinds, classify, native = interp.kinds, interp.kind, FrameKind.NATIVE
    # per frame: (in the eval loop, glue that goes), each address classified once per process
    flags = [kinds.get(f.address) or classify(f.address) for f in user]
    evals = [i for i, (is_eval, _) in enumerate(flags) if is_eval and user[i].kind is native]
    if not evals:
        inside = [i for i, f in enumerate(user) if _in_interpreter(f, interp) or f.mapping is None]
        cut = inside[-1] + 1 if inside else 0
        tail = user[cut:]
        if cut and cut == len(user):  # the sample is in the interpreter itself: keep the leaf function
            tail = user[-1:]
        return [f for run in runs for f in run] + tail
    extra = len(runs) - len(evals)
    if extra > 0:  # outer runs the native walk lost: all at the outermost eval frame
        runs = [[f for run in runs[:extra + 1] for f in run], *runs[extra + 1:]]
    elif extra < 0:  # eval frames without a run (the Python walk was truncated at its root end)
        evals = evals[-extra:]
    out = user[:evals[0]]
    last = len(evals) - 1
    for n, (at, run) in enumerate(zip(evals, runs, strict=True)):
        out.extend(run)
        upto = evals[n + 1] if n < last else len(user)
        # between two eval frames glue goes; below the innermost Python frame (the C code it called) too,
        # unless it is the leaf. A frame without a name stays (`_Interpreter._classify`): in a binary without
        # .symtab (Debian's python3) it is as likely the C code a Python function called (list.sort calling
        # a key function) as glue
        keep = upto - 1 if n == last else -1
        out.extend(user[j] for j in range(at + 1, upto)
                   if j == keep or not flags[j][1] or user[j].mapping is None)
    return out


def _in_interpreter(f: Frame, interp: _Interpreter) -> bool:
    return f.mapping is not None and interp.start <= f.address < interp.end



