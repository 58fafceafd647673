"""Keeps the kernel's unwind maps in step with the processes being sampled.

The sampler announces a process on its first sample (and again after exec); `NativeUnwinder` then
reads its executable mappings, builds or fetches each binary's table (profiler/unwind TableCache),
loads rows once per binary and writes the process's mapping array. Until that is done the process's
samples are walked with its executable's table when that file's table is loaded already (any earlier
process of the same binary: the kernel finds it from task->mm->exe_file, counted as `exe` samples), else
with frame pointers (counted as `fp` samples). Work happens on a thread of its own, so a slow first build of a
large binary delays neither the sampler's ring buffer nor a drain.

Maps change after start (dlopen, a JIT's code): the walker marks a process whose address fell
outside every known mapping in `unwind_stale` and announces it again (once until the next drain
empties the mark), so its maps are re-read within ~0.1 s; `maintain()` (once per drain) empties
the marks and forgets processes that exited. A walk that needs a table not loaded yet asks for it
(`unwind_wanted`) and tells the sampler's watcher, which wakes the loader (`asked`): the table is loaded
and written into the one mapping that asked for it (`_fill`), the process's other mappings left as they are.
"""

from __future__ import annotations

import ctypes as ct
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

from podflame.errors import PodflameError
from podflame.model import Mapping
from podflame.threads import daemon_thread
from profiler.bpfprog import BpfMap
from profiler.procmaps import (
    ExecVma,
    LayoutKey,
    MapsEntry,
    NewProcess,
    exec_entry,
    layout_key,
    query_vma,
    read_exec_maps,
    read_exec_vmas,
    vma_keys,
)
from profiler.unwind.maps import STAT_SLOTS, WANT, WANTS_TABLE, UnwindMaps
from profiler.unwind.table import UnwindTable

if TYPE_CHECKING:
    from profiler.unwind.builder import TableSource
from symbolizer.elf import ET_EXEC, LoadSegment, elf_build_id
from symbolizer.elffile import ElfFile, ElfFormatError
from symbolizer.normalize import PAGE, elf_address, file_offset

log = logging.getLogger("podflame.unwind")

MODES = ("auto", "fp", "tables")
MAX_MAPPINGS_PER_PROCESS = 1023  # what the walker's bounded search covers (UNWIND_MAPPING_STEPS)
# A table has ~1 row per 5-6 bytes of .eh_frame (libc 5.4, python3 6.4, libLLVM 5.3): /4 errs high.
ROWS_PER_CFI_BYTE_DIVISOR = 4
MAX_BUDGET_SHARE = 0.5  # no single binary takes more than this share of the row budget
# The sparsest CFI measured: node 20's, 7.45 bytes of .eh_frame per row (2.77 MB, 372k rows; 40 big binaries of this
# host: 4.2-7.5). A binary over MAX_BUDGET_SHARE even at this density is left without a table unbuilt (libLLVM: 5.2 MB,
# 979k rows); one that may fit is built and its real row count decides (_build). By the /4 estimate node (~693k) was
# never built and every frame of its OpenSSL assembly ended the walk (docs/benchmarks.md "Stop 23 fid23").
SPARSEST_CFI_BYTES_PER_ROW = 8
# Building tables is the loader's real cost (~1 s of CPU for 350k rows in Python): it may spend
# BUILD_CPU_SHARE of a core on average, after a burst of BUILD_BURST_S CPU seconds (a first start).
# A binary asked for beyond that waits, and processes that map it are loaded again once it may be built.
BUILD_CPU_SHARE = 0.005
BUILD_BURST_S = 5.0
SMALL_TABLE_ROWS = 50_000  # estimated: a build of ~50 ms or less (a program, libc), never deferred
# A batch's builds above this (estimated: 16 KiB of CFI, a few ms) are postponed until it is done, then made one
# process at a time, the cheapest first, alternating with the batches queued meanwhile: a walk's ask for a small
# library's table (a 21-row libpodlib) used to wait ~1 s behind other processes' python3 (0.25-0.35 s at load 10),
# libcrypto (0.49 s), libstdc++ builds queued before it, and a pod's first seconds were walked without it
QUICK_ROWS = 4096
_PF_X = 1
_WANTED_SLOT = STAT_SLOTS.index("wanted")


def cached_tables() -> TableSource:
    """Tables read from the on-disk TableCache ($PODFLAME_SYMBOL_CACHE) in this process; when not there,
    built here if small (no numpy, no child start), else in a child process (profiler/unwind/builder.py):
    a big build's memory is never the agent's."""
    from profiler.unwind.builder import TableSource

    return TableSource()


@dataclass(slots=True)
class _Binary:
    """What a mapping needs from its file: the ELF type and load segments (for the bias), and how many
    rows its table has. The rows themselves are let go once they are in the kernel (libLLVM's are
    16 MB); a binary evicted from the maps and mapped again fetches them again (from the disk cache)."""

    elf_type: str
    segments: tuple[LoadSegment, ...]
    count: int  # rows; -1: has CFI, table not built yet; 0: no table
    rows: bytes | None = None
    cfi_bytes: int = 0
    no_room: bool = False  # the last ask found no room in the row budget
    deferred: bool = False  # asked for while the build budget was spent: built on a later load
    postponed: bool = False  # a big build put after its batch's cheaper work (QUICK_ROWS): made at the batch's end
    name: str = ""  # the path a maps line gives it, for the log
    build_id: str | None = None


class NativeUnwinder:
    """Loads tables for announced processes into `maps`; `table_source(path)` gives a binary's table."""

    def __init__(self, maps: UnwindMaps, table_source: Callable[[str | bytes], UnwindTable], *,
                 proc: str = "/proc", max_files: int = 4096) -> None:
        self.maps = maps
        self.table_source = table_source
        self.proc = proc
        self._seen: dict[int, tuple[tuple[int, int, int, int], ...]] = {}  # tgid -> mappings last loaded
        self._wanted: dict[int, set[int]] = {}  # tgid -> starts of mappings a walk asked tables for
        self._waiting: set[int] = set()  # tgids mapping a deferred binary
        self._retry: set[int] = set()  # tgids to load again whatever their maps say
        self._later: dict[int, int] = {}  # tgid -> estimated rows of the postponed builds it maps (QUICK_ROWS)
        self._later_asks: dict[int, set[int]] = {}  # tgid -> starts of mappings whose asks wait for those builds
        self._quick = False  # in a batch: builds above QUICK_ROWS are postponed
        self._built_big = False  # at a batch's end, one build above QUICK_ROWS was made: the next waits for the queue
        self._tokens, self._tokens_at = BUILD_BURST_S, time.monotonic()
        # (device, inode, path) of a maps line -> the file's identity, checked with stat once: a Python
        # process maps ~50 files, and a stat of each for every new process was most of loading it
        self._identities: dict[tuple[str, int, str], tuple[int, int, int, int]] = {}
        self._files: dict[object, _Binary] = {}  # by file identity, or ("vdso", hash of its image)
        # a copy of a file read before, by the same build id and layout (a container image's own libc, the same image
        # layer under each pod's overlay mount: another device, so another identity): file identity -> the first's,
        # whose table (built, loaded, in the kernel once) it gets; build id -> the identity first read with it
        self._twins: dict[tuple[int, int, int, int], tuple[int, int, int, int]] = {}
        self._by_build_id: dict[str, tuple[int, int, int, int]] = {}
        # (size, first 64 bytes) of a vDSO mapping -> its key in _files and the ELF address of its start
        self._vdso_placed: dict[tuple[int, bytes], tuple[object, int]] = {}
        self._max_files = max_files
        self._lock = threading.Lock()  # maps + files: the worker and maintain() share them
        # tgid -> its announcements in the worker's queue: a later read of the process is not placed before them
        # by announce (the worker would then place the earlier VMAs over it)
        self._queued: dict[int, int] = {}
        self._queued_lock = threading.Lock()
        self._queue: queue.SimpleQueue[list[int | NewProcess] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._last_tables: dict[str, int] = {}
        self._cpu_s = 0.0
        self._asks_taken = -1  # the ask count when unwind_wanted was last emptied
        # (device, inode, path, offset) of a maps line -> its file's identity and ELF address (of the line's
        # start in an ET_DYN file; None for ET_EXEC, loaded where linked): the same in every process mapping
        # the file, wherever ASLR put it, so a new process of known binaries costs a dict hit per line
        # (or under its PROCMAP_QUERY key: _place finds a known binary's mapping without making a maps line)
        self._placed: dict[object, tuple[tuple[int, int, int, int], int | None]] = {}
        # a whole process's placement by its VMAs' keys and sizes (_Layout): a new process of the same
        # program with the same libraries (most of a busy node's) is placed without a step per VMA and
        # without reading its vDSO; checked against the loaded tables, and its files stat'ed again once a drain
        self._layouts: dict[LayoutKey, _Layout] = {}
        self._drains = 0  # maintain() calls: a layout's files are stat'ed once a drain, at its first use
        self.stats = {"processes_loaded": 0, "processes_failed": 0, "tables_built": 0, "tables_failed": 0,
                      "tables_built_in_agent": 0,  # small: no build child started for them
                      "tables_too_big": 0, "tables_no_room": 0, "tables_deferred": 0, "rereads": 0, "exits": 0,
                      "tables_postponed": 0,  # big builds put after a batch's cheaper work (QUICK_ROWS)
                      "cpu_ms": 0,  # the loader's own CPU (the watcher's too, for processes it loads: announce)
                      "build_child_cpu_ms": 0,  # the builder child's, for the tables it built
                      "layout_hits": 0,  # processes placed from the layout of an earlier one (_Layout)
                      "asks_filled": 0,  # asks for tables served in the asking mapping alone (_fill)
                      "twins": 0}  # files given the table of an earlier file with their build id (_twins)

    # -- API -------------------------------------------------------------------------------------

    def start(self) -> None:
        warm = getattr(self.table_source, "warm", None)
        if warm is not None:
            warm()  # a first start's builds are about to come
        self._worker = daemon_thread(self._run, "podflame-unwind")
        self._worker.start()

    def announce(self, tgids: Iterable[int | NewProcess]) -> None:
        """New processes (or new images after exec): loaded soon, on the worker thread (from the VMAs the
        sampler's watcher read of a NewProcess, else read then). A new process whose layout is known
        (`_load_known`) is loaded here and now: that costs less than waking the worker, which is left the
        processes that may need a table built or read (a slow first build delays no one but the worker)."""
        batch = list(tgids)
        if batch and self._worker is not None and self._lock.acquire(blocking=False):
            try:
                started = time.thread_time()
                rest = [n for n in batch if isinstance(n, int) or not self._load_known(n)]
                self._cpu_s += time.thread_time() - started
                self.stats["cpu_ms"] = int(self._cpu_s * 1000)
            finally:
                self._lock.release()
            if not rest:
                return
            batch = rest
        with self._queued_lock:
            for n in batch:
                tgid = n if isinstance(n, int) else n.pid
                self._queued[tgid] = self._queued.get(tgid, 0) + 1
        self._queue.put(batch)

    def asked(self) -> None:
        """A walk asked for a table (the kernel's NEW_ASK): the worker reads the asks (unwind_wanted) and
        loads them (an empty batch)."""
        self._queue.put([])

    def load_now(self, tgids: Iterable[int]) -> None:
        """Load these processes, every table, before returning (a one-shot capture of a known pid)."""
        with self._lock:
            for tgid in tgids:
                self._load_process(tgid, everything=True)

    def maintain(self) -> None:
        """Once per drain: forget exited processes, re-read the ones whose samples left their mappings."""
        stale = self._take_stale()  # already announced by the kernel; re-announced in case the ring was full
        if self._lock.acquire(blocking=False):  # else the worker is building a table: exits wait a drain
            try:
                for tgid in {*self.maps.processes, *self._seen}:
                    if not os.path.exists(f"{self.proc}/{tgid}"):
                        if tgid in self.maps.processes:
                            self.maps.remove_process(tgid)
                            self.stats["exits"] += 1
                        self._seen.pop(tgid, None)
                # a file rewritten in place keeps its device, inode and path, so its processes' maps lines
                # and PROCMAP_QUERY keys: what they were placed from is stat'ed again once a drain
                self._placed.clear()
                self._identities.clear()
                self._drains += 1  # each layout's files are stat'ed again at its next use (_files_unchanged)
            finally:
                self._lock.release()
        if stale:
            self.stats["rereads"] += len(stale)
            self.announce(stale)
        elif self._asks() != self._asks_taken:
            self.announce([])  # asks the worker has not read (one whose process was announced mid-read)
        reap = getattr(self.table_source, "reap", None)
        if reap is not None:
            reap()  # a build child that went idle exits: collect it
        if self._waiting and self._may_build():
            waiting, self._waiting = self._waiting, set()
            self._retry.update(waiting)
            self.announce(waiting)

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=10)
            self._worker = None
        if self._lock.acquire(timeout=1):  # else a worker still building: its mapping goes with the loader
            try:
                self.maps.close()
            finally:
                self._lock.release()
        close = getattr(self.table_source, "close", None)
        if close is not None:
            close()

    def report(self) -> dict[str, int]:
        """Kernel counters, table memory and this loader's counts, for metrics and the log."""
        out = {f"walk_{k}": v for k, v in self.maps.counters().items()}
        if self._lock.acquire(blocking=False):  # a drain does not wait for a table build
            try:
                self._last_tables = {f"table_{k}": v for k, v in self.maps.memory().items()}
            finally:
                self._lock.release()
        out.update(self._last_tables)
        out.update(self.stats)
        return out

    # -- worker ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                batch = self._queue.get(block=not self._later)
            except queue.Empty:
                batch = []  # builds postponed while batches were queued: load_batch makes them now
            if batch is None:
                return
            started = time.thread_time()
            self.load_batch(batch)
            # summed unrounded: most batches take well under a millisecond
            self._cpu_s += time.thread_time() - started
            self.stats["cpu_ms"] = int(self._cpu_s * 1000)

    def load_batch(self, batch: list[int | NewProcess]) -> None:
        """Load one announcement's processes, and those walks asked tables for (the worker's step)."""
        # once a batch: a walk asking for a table sends an empty batch (`asked`), as maintain() does when
        # the ask count moved without one; a process announced again (a stale mark) may have asks too; a batch
        # of first announcements only (most of a busy node's) has no ask to read
        news = {n.pid: n for n in batch if not isinstance(n, int)}
        tgids = [n if isinstance(n, int) else n.pid for n in batch]
        if not tgids or any(tgid in self._seen for tgid in tgids):
            self._take_wanted()
        announced = set(tgids)
        self._quick = True
        try:
            for tgid in dict.fromkeys([*tgids, *self._wanted]):
                try:
                    with self._lock:
                        self._load_process(tgid, take_wanted=False, new=news.get(tgid), reread=tgid in announced)
                except Exception:  # one odd process must not stop the loader
                    log.exception("loading unwind tables for pid %d failed", tgid)
        finally:
            self._quick = False
        with self._queued_lock:
            for tgid in tgids:
                left = self._queued.pop(tgid, 0) - 1
                if left > 0:
                    self._queued[tgid] = left
        # then the builds it postponed (QUICK_ROWS), one process at a time, the cheapest first; batches queued
        # meanwhile come before the rest, one postponed build after each (none waits for ever)
        self._built_big = False
        while self._later:
            tgid = min(self._later, key=self._later.__getitem__)
            del self._later[tgid]
            asks = self._later_asks.pop(tgid, None)
            if asks:  # asks left waiting: filled in their mappings (_fill)
                self._wanted.setdefault(tgid, set()).update(asks)
            else:
                self._retry.add(tgid)  # placed afresh: its postponed binaries are built (_mapping), not asked for
            try:
                with self._lock:
                    self._load_process(tgid, take_wanted=False, reread=not asks)
            except Exception:
                log.exception("loading unwind tables for pid %d failed", tgid)
            self._retry.discard(tgid)  # exited before it was read
            if not self._queue.empty():
                break
        self._built_big = False

    def _take_stale(self) -> list[int]:
        taken = self.maps.taking_marks()
        failed: list[bool] = []
        stale = [tgid for keys in _empty(self.maps.stale_map, failed=failed) for tgid in keys.cast("I")]
        if failed:
            self.maps.marks_left(taken)
        return stale

    def _asks(self) -> int:
        """How many times walks have asked for tables so far (unwind_stats "wanted", counted before each
        ask goes into unwind_wanted): one lookup, where emptying the 4096-bucket hash map scans it all."""
        try:
            return self.maps.stats_map.percpu_sum(_WANTED_SLOT)
        except OSError:
            return -1  # unknown: take whatever is there

    def _take_wanted(self) -> None:
        """Move the kernel's asks for tables (unwind_wanted) into `_wanted`, tgid -> mapping starts; the
        map is read only when a walk asked since the last read (the count is read before the map, so an
        ask counted later is seen by the next call; `maintain` makes sure there is one)."""
        asks = self._asks()
        if asks == self._asks_taken and asks >= 0:
            return
        self._asks_taken = asks
        for keys in _empty(self.maps.wanted_map):
            for start, tgid, _ in WANT.iter_unpack(keys):
                self._wanted.setdefault(tgid, set()).add(start)

    def _load_process(self, tgid: int, *, everything: bool = False, take_wanted: bool = True,
                      new: NewProcess | None = None, reread: bool = True) -> None:
        """(Re)load a process's mappings. Tables come on demand: a binary's rows are loaded when a walk
        asked for them (or another process has them loaded, or `everything`); until then its mapping
        says it wants a table and its frames are stepped with frame pointers. `take_wanted`: read the
        walker's asks first (the worker reads them once per batch instead: each read scans a hash map).
        `new`: the sampler's watcher's read of a new process, whose VMAs are taken instead of read again.
        `reread` False: the process was not announced, only asked for tables, which are written into the
        mappings that asked (`_fill`) when those are still what they were (else it is read and placed)."""
        if take_wanted:
            self._take_wanted()
        wanted = self._wanted.pop(tgid, set())
        if wanted and not reread and not everything and tgid not in self._retry and self._fill(tgid, wanted):
            return
        try:
            # PROCMAP_QUERY (6.11+): executable VMAs only, as keys a known binary's mapping is placed from
            vmas: list[ExecVma] | list[MapsEntry] | None = new.vmas if new is not None and new.vmas is not None \
                else read_exec_vmas(tgid, self.proc)
            if vmas is None:  # no ioctl (before 6.11) or it failed: the text, not a second try
                vmas = read_exec_maps(tgid, self.proc, query=False)
        except OSError:  # exited already, or a kernel thread's empty maps
            self.maps.remove_process(tgid)
            self._seen.pop(tgid, None)
            return
        signature = _signature(vmas)
        retry = tgid in self._retry
        self._retry.discard(tgid)
        if self._seen.get(tgid) == signature and not wanted and not everything and not retry:
            return  # announced again (a new comm, a stale mark from JIT code) with the same mappings
        self._seen[tgid] = signature
        vmas, key = _walked(vmas, new)
        mappings = None
        if not wanted and not everything and not retry:
            mappings = self._mappings_from_layout(tgid, vmas, key, new)  # type: ignore[arg-type]  # ExecVmas: a key
        if mappings is None:
            note = _Note() if key is not None else None
            mappings = self._place(tgid, vmas, wanted, everything, note)
            if note is not None and note.ok and mappings is not None and len(note.entries) == len(vmas):
                by_vma: dict[tuple[object, int], _Placed | None] = dict(
                    zip(vma_keys(vmas), note.entries, strict=True))  # type: ignore[arg-type]
                if len(self._layouts) >= LAYOUTS:
                    self._layouts.clear()
                assert key is not None
                self._layouts[key] = _Layout(by_vma, note.exe, self._drains)
        if mappings is None:  # a name the ioctl gives otherwise than the text: the text's lines
            try:
                entries = read_exec_maps(tgid, self.proc, query=False)
            except OSError:
                self.maps.remove_process(tgid)
                self._seen.pop(tgid, None)
                return
            mappings = self._place(tgid, entries[:MAX_MAPPINGS_PER_PROCESS], wanted, everything)
            assert mappings is not None
        self._apply(tgid, mappings)

    def _load_known(self, new: NewProcess) -> bool:
        """Load an announced process whose VMAs have a known layout (`_from_layout`), as `_load_process`
        would; False, having changed nothing, for any other (the worker loads it). A process announced again
        (a stale mark: a dlopen, mostly of a library its program's other processes load too) is placed here as
        well: waking the worker for it cost more than placing it (each wake-up pays for cold caches). Its asks
        for tables are the worker's still: every ask wakes it (`asked`), and it fills them in the new array."""
        tgid, vmas = new.pid, new.vmas
        if not vmas or tgid in self._wanted or tgid in self._retry or tgid in self._queued:
            return False
        vmas, key = _walked(vmas, new)
        signature = _signature(vmas)
        if self._seen.get(tgid) == signature:
            return True  # announced again with the mappings loaded last time (a new comm, JIT code)
        mappings = self._mappings_from_layout(tgid, vmas, key, new)
        if mappings is None:
            return False
        self._seen[tgid] = signature
        self._apply(tgid, mappings)
        return True

    def _mappings_from_layout(self, tgid: int, vmas: list[ExecVma], key: LayoutKey | None,
                              new: NewProcess | None = None) -> list[tuple[int, int, int, object | None, int]] | None:
        """The mappings of a process whose layout (procmaps.layout_key of its VMAs) was placed before, from that
        placement (`_from_layout`, counted as a layout hit); None when it is unknown or no longer holds. `new`:
        the watcher's read of the process, whose executable is read once for every reader."""
        layout = self._layouts.get(key) if key is not None else None
        if layout is not None and layout.checked != self._drains:
            unchanged = self._files_unchanged(tgid, vmas, layout)
            if not unchanged:
                if unchanged is False:  # a file rewritten in place: placed VMA by VMA from now on
                    assert key is not None
                    del self._layouts[key]
                return None
            layout.checked = self._drains
        mappings = self._from_layout(tgid, vmas, layout, new) if layout is not None else None
        if mappings is not None:
            self.stats["layout_hits"] += 1
        return mappings

    def _files_unchanged(self, tgid: int, vmas: list[ExecVma], layout: _Layout) -> bool | None:
        """Whether each file `layout` was placed from is still the one it was (device, inode, size, mtime), as
        this process maps it: a file rewritten in place keeps its VMA keys. A stat of each (through the
        process's map_files, as `_mapping` stats them) once a drain, where emptying the layouts every drain
        (before) placed each layout's first process of a drain VMA by VMA again on the worker (a wake-up of
        it, a stat and a dict hit or more per VMA). None when a stat failed (the process exited): not known."""
        done: set[object] = set()
        for start, end, qkey in vmas:
            entry = layout.entries.get((qkey, end - start))
            identity = entry[3] if entry is not None else None
            if not isinstance(identity, tuple) or len(identity) != 4 or identity in done:
                continue  # no file (the vDSO: its image is its key), or stat'ed already
            try:
                st = os.stat(f"{self.proc}/{tgid}/map_files/{start:x}-{end:x}")
            except OSError:
                return None
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != identity:
                return False
            done.add(identity)
        return True

    def _fill(self, tgid: int, wanted: set[int]) -> bool:
        """Serve walks' asks for tables of a loaded process in the mappings that asked alone: each one's VMA
        asked for again (one PROCMAP_QUERY at its start, not a walk over all of them), its table loaded as
        `_load_process` would (`_mapping`), and its slot of the mapping array written. False, having written
        nothing for a mapping that does not hold, when a mapping is not one waiting for its table or its VMA is
        not the one placed there (the caller reads and places the whole process then)."""
        p = self.maps.processes.get(tgid)
        if p is None or tgid not in self._seen or not wanted.issubset(p.wants):
            return False
        vmas = []
        for start in sorted(wanted):
            v = query_vma(tgid, start, self.proc)
            if v is None or v[0] != start or v[1] != p.wants[start][1]:
                return False
            vmas.append(v)
        filled = 0
        for v in vmas:
            e = exec_entry(v)
            if e is None or e.deleted:
                return False
            loaded = self._mapping(tgid, e, True, qkey=v[2])
            if loaded is None:
                return False
            placed = self._placed.get(v[2])
            if loaded[3] is None and placed is not None and (b := self._files.get(placed[0])) is not None \
                    and b.postponed:  # left waiting: filled here at the batch's end, once built
                self._later_asks.setdefault(tgid, set()).add(e.start)
                continue
            if not self.maps.fill(tgid, loaded):
                return False
            filled += 1
        self.stats["asks_filled"] += filled
        return True

    def _apply(self, tgid: int, mappings: list[tuple[int, int, int, object | None, int]]) -> None:
        """Write a process's mapping array (it holds the references `mappings` took)."""
        if any(m[3] is not None or m[4] for m in mappings):
            if self.maps.set_process(tgid, mappings):
                self.stats["processes_loaded"] += 1
            else:
                self.stats["processes_failed"] += 1
        else:
            self.maps.remove_process(tgid)  # nothing to walk with tables: bpf_get_stack does it cheaper

    def _place(self, tgid: int, vmas: list[ExecVma] | list[MapsEntry], wanted: set[int],
               everything: bool, note: _Note | None = None) -> list[tuple[int, int, int, object | None, int]] | None:
        """The (start, end, bias, binary key, flags) of each executable mapping, tables loaded as wanted;
        None when a queried VMA's name must be read from the text. A VMA whose key was placed before (the
        same file at the same offset: any process of a known binary) whose table is loaded, or which has
        none, costs a dict hit: no maps line, no /proc/PID/exe, no stat. `note` collects how each VMA was
        placed, for the next process of the same layout (_Layout)."""
        mappings: list[tuple[int, int, int, object | None, int]] = []
        exe: str | None = None
        binaries = self.maps.binaries
        for v in vmas:
            if isinstance(v, tuple):
                start, end, qkey = v
                placed = self._placed.get(qkey)
                if placed is not None and (binary := self._files.get(placed[0])) is not None \
                        and start not in wanted and not everything:
                    identity, at = placed
                    bias = start - (start if at is None else at)
                    if identity in binaries or binary.count == 0:  # loaded, or no table
                        key = identity if binary.count and self.maps.binary(identity, b"") is not None else None
                        mappings.append((start, end, bias, key, 0))
                        if note is not None:
                            note.add(at, key, 0, identity)
                        continue
                    if binary.count < 0 and not (binary.deferred or binary.no_room or binary.postponed):  # on demand
                        if exe is None:
                            exe = self._exe(tgid)
                        small = binary.cfi_bytes // ROWS_PER_CFI_BYTE_DIVISOR <= SMALL_TABLE_ROWS
                        if not (self._eager(binary.name, exe) and small):
                            mappings.append((start, end, bias, None, WANTS_TABLE))
                            if note is not None:
                                note.add(at, None, WANTS_TABLE, identity, exe if small else None)
                            continue
                e = exec_entry(v)
                if e is None:  # the references taken so far go back: the caller places the text's lines
                    self.maps.release([m[3] for m in mappings if m[3] is not None])
                    return None
            else:
                e, qkey = v, None
            if e.path == "[vdso]":
                loaded = self._vdso(tgid, e, note)
            elif not e.inode or not e.path.startswith("/"):
                if note is not None:
                    note.entries.append(None)
                continue  # anonymous (JIT) code: frame pointers
            else:
                if exe is None:
                    exe = self._exe(tgid)
                loaded = self._mapping(tgid, e, everything or e.start in wanted, self._eager(e.path, exe), qkey,
                                       note, exe)
            if loaded is not None:
                mappings.append(loaded)
            elif note is not None:
                note.ok = False  # a stat or a read that failed: this process only
        return mappings

    def _from_layout(self, tgid: int, vmas: list[ExecVma], layout: _Layout,
                     new: NewProcess | None = None) -> list[tuple[int, int, int, object | None, int]] | None:
        """The mappings of a process whose VMAs have the keys and sizes of one placed before (`layout`), as
        `_place` would give them; None when what that placement rested on changed since (a table loaded or
        evicted, a build deferred or refused, another executable deciding which small table comes at once)."""
        binaries, files = self.maps.binaries, self._files
        for entry in layout.entries.values():
            if entry is None:
                continue
            _, key, flags, identity = entry
            if key is not None:
                if key not in binaries:
                    return None
            elif identity in binaries:
                return None  # loaded since: the slow path takes it
            elif flags:
                binary = files.get(identity)
                if binary is None or binary.count >= 0 or binary.deferred or binary.no_room or binary.postponed:
                    return None
        if layout.exe is not None and self._exe(tgid, new) != layout.exe:
            return None
        mappings: list[tuple[int, int, int, object | None, int]] = []
        entries = layout.entries
        for start, end, qkey in vmas:
            if (entry := entries[qkey, end - start]) is not None:
                at, key, flags, _ = entry
                mappings.append((start, end, 0 if at is None else start - at, key, flags))
                if key is not None:
                    self.maps.binary(key, b"")  # the process's reference (loaded: checked above)
        return mappings

    def _exe(self, tgid: int, new: NewProcess | None = None) -> str:
        if new is not None and self.proc == "/proc":
            return new.exe() or ""
        try:
            return os.readlink(f"{self.proc}/{tgid}/exe")
        except OSError:
            return ""

    @staticmethod
    def _eager(path: str, exe: str) -> bool:
        """The program and the C library are on nearly every stack: their tables come at once (when small),
        sparing the first samples a round trip through unwind_wanted."""
        return path == exe or os.path.basename(path).startswith("libc.so")

    def _vdso(self, tgid: int, e: MapsEntry,
              note: _Note | None = None) -> tuple[int, int, int, object | None, int] | None:
        """The vDSO (clock_gettime & co.) has no file: its image is read from the process's memory.
        Every process of a kernel maps the same image, so it is built and loaded once (always: it is
        a few hundred rows). A process whose vDSO has the size and ELF header of one already placed gets
        that one's table and bias from the first 64 bytes (the whole image is read again only when its
        rows must be loaded): reading and hashing the image cost each new process ~30 us."""
        try:
            fd = os.open(f"{self.proc}/{tgid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            head = os.pread(fd, 64, e.start)
            placed = self._vdso_placed.get((e.end - e.start, head))
            if placed is not None and placed[0] in self.maps.binaries:
                key, vaddr = placed
                loaded = self._load_rows(key, self._files[key], b"")
                if note is not None:
                    note.add(vaddr, loaded, 0, key)
                return e.start, e.end, e.start - vaddr, loaded, 0
            image = os.pread(fd, min(e.end - e.start, 1 << 20), e.start)
        except (OSError, ValueError, OverflowError):
            return None
        finally:
            os.close(fd)
        key = ("vdso", hash(image))
        binary = self._files.get(key)
        if binary is None:
            binary = self._files[key] = self._read_elf(image)
            binary.name = "[vdso]"
        if not binary.segments:
            return None
        found = elf_address(e.start, Mapping(e.start, e.end, 0, e.path, None), binary.elf_type, binary.segments)
        if found is None:
            return None
        vaddr = found
        loaded = self._load_rows(key, binary, image)
        if binary.elf_type != ET_EXEC:  # ET_DYN: the same ELF address at any base
            if loaded is not None:
                self._vdso_placed[(e.end - e.start, head)] = (key, vaddr)
            if note is not None and (loaded is not None or binary.count == 0):
                note.add(vaddr, loaded, 0, key)
        if note is not None and (binary.elf_type == ET_EXEC or (loaded is None and binary.count != 0)):
            note.ok = False
        return e.start, e.end, e.start - vaddr, loaded, 0

    def _mapping(self, tgid: int, e: MapsEntry, want: bool, eager: bool = False, qkey: object = None,
                 note: _Note | None = None, exe: str = "") -> tuple[int, int, int, object | None, int] | None:
        """`qkey`: the VMA's PROCMAP_QUERY key, under which its placement is kept (else the line's fields);
        `note` learns how it was placed (`exe`: the process's executable, which decided `eager`)."""
        path = f"{self.proc}/{tgid}/map_files/{e.start:x}-{e.end:x}"
        placed_key = qkey if qkey is not None else (e.dev, e.inode, e.path, e.offset)
        placed = None if e.deleted else self._placed.get(placed_key)
        if placed is not None and (binary := self._files.get(placed[0])) is not None:
            identity, at = placed
            vaddr = e.start if at is None else at  # ET_EXEC: linked where it runs
        else:
            line = (e.dev, e.inode, e.path)  # what the maps line says of the file: known, no stat needed
            known = self._identities.get(line)
            if known is None or e.deleted:
                try:
                    st = os.stat(path)
                except OSError:
                    return None
                known = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if len(self._identities) >= self._max_files:
                    self._identities.clear()
                self._identities[line] = known
            identity = self._twins.get(known, known)
            binary = self._files.get(identity)
            if binary is None:
                binary = self._read_elf(path)
                binary.name = e.clean_path
                twin = self._by_build_id.get(binary.build_id) if binary.build_id else None
                other = self._files.get(twin) if twin is not None else None
                if twin is not None and other is not None and (other.elf_type, other.segments, other.cfi_bytes) \
                        == (binary.elf_type, binary.segments, binary.cfi_bytes):
                    self._twins[known] = identity = twin
                    binary = other
                    self.stats["twins"] += 1
                else:
                    if len(self._files) >= self._max_files:
                        self._files.clear()
                        self._twins.clear()
                        self._by_build_id.clear()
                        self._placed.clear()
                        self._layouts.clear()
                        self._vdso_placed.clear()
                    self._files[identity] = binary
                    if binary.build_id:
                        self._by_build_id[binary.build_id] = identity
            mapping = Mapping(e.start, e.end, e.offset, e.clean_path, None)
            found = _exec_vaddr(e.start, mapping, binary.elf_type, binary.segments)
            if found is None:
                return None
            vaddr = found
            if not e.deleted:
                if len(self._placed) >= 4 * self._max_files:
                    self._placed.clear()
                self._placed[placed_key] = (identity, None if binary.elf_type == ET_EXEC else vaddr)
        key = None
        if eager and binary.cfi_bytes // ROWS_PER_CFI_BYTE_DIVISOR <= SMALL_TABLE_ROWS:
            want = True
        if identity in self.maps.binaries or want or binary.deferred or binary.postponed:
            key = self._load_rows(identity, binary, path)
        if binary.deferred:
            self._waiting.add(tgid)
        if binary.postponed:
            self._later[tgid] = self._later.get(tgid, 0) + binary.cfi_bytes // ROWS_PER_CFI_BYTE_DIVISOR
        if binary.no_room and binary.cfi_bytes // SPARSEST_CFI_BYTES_PER_ROW <= self.maps.room():
            binary.no_room = False  # room again (processes exited): let walks ask for it
        # CFI, not built yet: walks ask for the table (not while it could not fit: each ask costs a reload)
        flags = WANTS_TABLE if key is None and binary.count < 0 and not (binary.no_room or binary.deferred
                                                                           or binary.postponed) else 0
        if note is not None:
            if e.deleted or binary.deferred or binary.no_room or binary.postponed \
                    or (key is None and not flags and binary.count != 0):
                note.ok = False  # not kept by file (deleted), or waiting for a build: placed afresh each time
            else:
                small = binary.cfi_bytes // ROWS_PER_CFI_BYTE_DIVISOR <= SMALL_TABLE_ROWS
                note.add(None if binary.elf_type == ET_EXEC else vaddr, key, flags, identity,
                         exe if flags and small else None)
        return e.start, e.end, e.start - vaddr, key, flags

    def _load_rows(self, key: object, binary: _Binary, source: str | bytes) -> object | None:
        """`key` once the binary's rows are in the kernel (with a reference for the process being
        loaded), else None (no table, or no room)."""
        if binary.count == 0:
            return None
        rows = b""  # loaded already: the maps do not need them
        if key not in self.maps.binaries:
            if binary.count < 0:
                self._build(binary, source)
                if binary.count <= 0:
                    return None
            if binary.count > self.maps.room():  # would not fit: neither fetch nor build the rows again
                self.maps.reject(key, binary.count)
                binary.rows = None
                return None
            rows = binary.rows if binary.rows is not None else b""
            if not rows:  # evicted since: fetch the rows again
                try:
                    rows = self.table_source(source).rows
                except (OSError, PodflameError):
                    return None
            binary.rows = None
        # a file's table is also found by the file (unwind_exe_files): the first samples of a process that
        # execs or maps it are walked with it before the process's mapping array is written
        text = min((s for s in binary.segments if s.executable), key=lambda s: s.vaddr, default=None) \
            if isinstance(source, str) else None
        exe_vaddr, file_vaddr = (text.vaddr, text.vaddr - text.offset) if text is not None else (None, 0)
        return key if self.maps.binary(key, rows, exe_vaddr, file_vaddr) is not None else None

    def _read_elf(self, path: str | bytes) -> _Binary:
        """What a mapping of the ELF file at `path` (or of the ELF image `path` holds) needs for its
        bias, and whether it has CFI at all; the table is built on first demand (`_build`)."""
        try:
            with io.BytesIO(path) if isinstance(path, bytes) else open(path, "rb") as f:
                elf = ElfFile(f)
                segments = tuple(LoadSegment(s.offset, s.vaddr, s.filesz, s.memsz, bool(s.flags & _PF_X))
                                 for s in elf.segments if s.type == 1)
                elf_type = elf.e_type
                cfi_bytes = sum(sec.size for name in (".eh_frame", ".debug_frame")
                                if (sec := elf.section(name)) is not None)
                build_id = elf_build_id(elf) if isinstance(path, str) else None
        except (OSError, ElfFormatError, ValueError) as e:
            log.debug("no unwind table for %s: %s", "the vDSO" if isinstance(path, bytes) else path, e)
            self.stats["tables_failed"] += 1
            return _Binary("", (), 0)
        estimate = cfi_bytes // ROWS_PER_CFI_BYTE_DIVISOR
        if (fewest := cfi_bytes // SPARSEST_CFI_BYTES_PER_ROW) > self.maps.row_budget * MAX_BUDGET_SHARE:
            # libclang-cpp (1M rows), libLLVM: building would cost seconds and ~200 MB for rows that
            # would crowd out every other binary; frame pointers walk them
            log.info("no unwind table for %s: at least ~%d rows is over %d%% of the %d-row budget",
                     "the vDSO" if isinstance(path, bytes) else path, fewest, 100 * MAX_BUDGET_SHARE,
                     self.maps.row_budget)
            self.stats["tables_too_big"] += 1
            self.maps.reject(("estimate", path if isinstance(path, str) else "vdso"), estimate)
            return _Binary(elf_type, segments, 0, build_id=build_id)
        return _Binary(elf_type, segments, -1 if cfi_bytes else 0, cfi_bytes=cfi_bytes, build_id=build_id)

    def _build(self, binary: _Binary, source: str | bytes) -> None:
        if binary.cfi_bytes // SPARSEST_CFI_BYTES_PER_ROW > self.maps.room():
            binary.no_room = True  # not built; asked for again only once there is room
            self.stats["tables_no_room"] += 1
            return
        binary.no_room = False
        if binary.cfi_bytes // ROWS_PER_CFI_BYTE_DIVISOR > SMALL_TABLE_ROWS and not self._may_build():
            binary.deferred = True
            self.stats["tables_deferred"] += 1
            return
        binary.deferred = False
        if binary.cfi_bytes // ROWS_PER_CFI_BYTE_DIVISOR > QUICK_ROWS:
            if self._quick or (self._built_big and not self._queue.empty()):
                binary.postponed = True  # the batch's cheaper work first: load_batch builds it at its end
                self.stats["tables_postponed"] += 1
                return
            self._built_big = True
        binary.postponed = False
        started = time.thread_time()
        child_s = 0.0
        try:
            table = self.table_source(source)
            self.stats["tables_built"] += 1
            binary.count, binary.rows = table.count, table.rows
            if table.count > self.maps.row_budget * MAX_BUDGET_SHARE:  # estimated to fit, and does not
                log.info("no unwind table for %s: %d rows is over %d%% of the %d-row budget", binary.name or source,
                         table.count, 100 * MAX_BUDGET_SHARE, self.maps.row_budget)
                self.stats["tables_too_big"] += 1
                self.maps.reject(("rows", binary.name or source), table.count)
                binary.count, binary.rows = 0, None
            child_s = table.stats.get("cpu_ns", 0) / 1e9  # built in the builder child
            # not found on disk: what a restart builds says what the cache missed
            if "cpu_ns" in table.stats:
                log.info("built the unwind table of %s: %d rows, %.0f ms in the build child",
                         binary.name or source, table.count, child_s * 1000)
            elif "agent_cpu_ns" in table.stats:  # small: built on this thread, no child started for it
                self.stats["tables_built_in_agent"] += 1
                log.info("built the unwind table of %s: %d rows, %.1f ms in the agent",
                         binary.name or source, table.count, table.stats["agent_cpu_ns"] / 1e6)
        except (OSError, PodflameError) as e:
            log.info("no unwind table for %s: %s", "the vDSO" if isinstance(source, bytes) else source, e)
            self.stats["tables_failed"] += 1
            binary.count = 0
        self.stats["build_child_cpu_ms"] += int(child_s * 1000)
        self._tokens -= time.thread_time() - started + child_s

    def _may_build(self) -> bool:
        """Whether the build budget (BUILD_CPU_SHARE of a core, BUILD_BURST_S at once) has CPU left."""
        now = time.monotonic()
        self._tokens = min(BUILD_BURST_S, self._tokens + (now - self._tokens_at) * BUILD_CPU_SHARE)
        self._tokens_at = now
        return self._tokens > 0


LAYOUTS = 1024  # process layouts kept (a drain's worth of distinct programs and library sets)
# how a layout placed one VMA: the ELF address of its start (None: ET_EXEC, loaded where linked), its binary's key
# when its rows are loaded, the mapping's flags, the binary (file identity or vDSO key); None: not walked (JIT)
_Placed = tuple[int | None, object | None, int, object]


@dataclass(slots=True)
class _Layout:
    entries: dict[tuple[object, int], _Placed | None]  # by the VMA's key and size (procmaps.vma_keys)
    exe: str | None  # the executable a small table's "on demand, not at once" rested on (_eager), if any
    checked: int = 0  # the loader's drain count when its files' identities were last found unchanged


@dataclass(slots=True)
class _Note:
    """What `_place` learns about each VMA, to make a _Layout of; `ok` is False when any VMA was placed from
    something of this process alone (a failed stat, a deleted file, a deferred build)."""

    entries: list[_Placed | None] = field(default_factory=list)
    ok: bool = True
    exe: str | None = None

    def add(self, at: int | None, key: object | None, flags: int, binary: object, exe: str | None = None) -> None:
        self.entries.append((at, key, flags, binary))
        if exe is not None:
            if self.exe is not None and self.exe != exe:
                self.ok = False
            self.exe = exe


def _signature(vmas: list[ExecVma] | list[MapsEntry]) -> tuple[tuple[int, int, int, int], ...]:
    """What says a process's mappings are the ones loaded last time: each one's range, file offset and inode."""
    return tuple((v[0], v[1], v[2][1], v[2][4]) if isinstance(v, tuple) else (v.start, v.end, v.offset, v.inode)
                 for v in vmas)


@overload
def _walked(vmas: list[ExecVma], new: NewProcess | None) -> tuple[list[ExecVma], LayoutKey | None]: ...
@overload
def _walked(vmas: list[ExecVma] | list[MapsEntry], new: NewProcess | None
            ) -> tuple[list[ExecVma] | list[MapsEntry], LayoutKey | None]: ...
def _walked(vmas: list[ExecVma] | list[MapsEntry], new: NewProcess | None
            ) -> tuple[list[ExecVma] | list[MapsEntry], LayoutKey | None]:
    """The VMAs the walker's search covers (MAX_MAPPINGS_PER_PROCESS) and their layout key: the watcher's, made
    once for every reader (Python detection too), when they are its read uncut; None for maps lines (before
    Linux 6.11: no layouts)."""
    if new is not None and vmas is new.vmas and len(vmas) <= MAX_MAPPINGS_PER_PROCESS:
        return vmas, new.layout()
    vmas = vmas[:MAX_MAPPINGS_PER_PROCESS]
    if not vmas or not isinstance(vmas[0], tuple):
        return vmas, None
    return vmas, layout_key(vmas)  # type: ignore[arg-type]


def _empty(m: BpfMap, chunk: int = 1024, failed: list[bool] | None = None) -> Iterator[memoryview]:
    """Read and delete every entry of a small hash map: its keys, `chunk` at a time (a failure ends it:
    what was not read is read by the next call; `failed` gets True appended then)."""
    keys, values = bytearray(m.spec.key_size * chunk), bytearray(m.spec.value_size * chunk)
    token_in, token_out = ct.c_uint32(0), ct.c_uint32(0)
    first = True
    while True:
        try:
            n, done = m.lookup_and_delete_batch(keys, values, None if first else token_in, token_out)
        except OSError:
            if failed is not None:
                failed.append(True)
            return
        yield memoryview(bytes(keys[:n * m.spec.key_size]))
        if done or n == 0:
            return
        token_in.value, first = token_out.value, False


def _exec_vaddr(start: int, mapping: Mapping, elf_type: str, segments: tuple[LoadSegment, ...]) -> int | None:
    """ELF virtual address at the start of an executable mapping. Its first page may also hold the end of
    the read-only segment before the code (lld's layout: Rust, Zig, clang -fuse-ld=lld), whose vaddr is a
    page away from the code's: the mapping is the code's, so the executable segment places it."""
    if elf_type != ET_EXEC:
        off = file_offset(start, mapping)
        for seg in segments:
            if seg.executable and seg.offset - seg.offset % PAGE <= off < seg.offset + seg.filesz:
                return off - seg.offset + seg.vaddr
    return elf_address(start, mapping, elf_type, segments)

