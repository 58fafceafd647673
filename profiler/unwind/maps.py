"""Unwind tables in the sampler's BPF maps: one shared row array, binaries loaded once, per-process mappings.

The in-kernel walker (bpf/native_unwind.bpf.h) finds a process's executable mappings in
`unwind_procs` (tgid -> a run of `unwind_mappings`, sorted by start) and each mapping's binary in
`unwind_tables` (-> a run of `unwind_rows`). Rows of a binary are written once however many
processes map it, and counted by reference; a binary no process uses stays loaded until its space
is wanted (a process that exits and starts again, as a CGI or a shell loop does, finds it there).

The row array has a fixed size, the node's budget (`rows` x 16 bytes of kernel memory: arrays
round the 12-byte row up to 8-byte multiples). A binary that does not fit even after evicting every
unused one gets no rows: the walker steps its frames with frame pointers, and `stats` counts it.

Each loaded binary built from a file is also entered in `unwind_exe_files` under the file's identity as
the kernel sees it (device, inode, size, mtime): a process sampled before its mapping array is written
(its first samples, all of a short-lived one's) is walked with its executable's table, found from
task->mm->exe_file, and with the table of the first library its walk enters (libc, libpython), found from
that VMA's file (bpf_find_vma) and placed by the VMA's file offset. The entry goes with the binary's rows;
it takes no reference (an executable whose processes all exited stays evictable). `PODFLAME_UNWIND_EXE=0`
leaves that fallback off.

Not thread-safe: `NativeUnwinder` (profiler/unwind/loader.py) drives it from one thread.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import mmap
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from podflame.errors import PodflameError
from profiler.bpfprog import MAP_ARRAY, BpfMap

log = logging.getLogger("podflame.unwind")

NO_TABLE = 0xFFFF_FFFF
BPF_F_MMAPABLE = 1 << 10  # an array map whose values this process can map (unwind_mappings)
ROW_SIZE = 12  # struct unwind_row
MAPPING = struct.Struct("<QQQII")  # struct unwind_mapping: start, end, bias, table, flags
WANTS_TABLE = 1  # unwind_mapping.flags: the walker asks for this mapping's table when it needs it
WANT = struct.Struct("<QII")  # struct unwind_want: start, tgid, reserved
SPAN = struct.Struct("<II")  # struct unwind_table and struct unwind_proc: first, count
FILE_KEY = struct.Struct("<QQQII")  # struct unwind_file_key: ino, size, mtime_ns, dev (kernel encoding), reserved
EXE = struct.Struct("<QqII")  # struct unwind_exe: vaddr of the lowest executable segment, its vaddr - file offset,
# table, reserved
# struct unwind_exe_config: (struct, member path) of each offset the kernel side reads, in order
EXE_CONFIG_FIELDS = (("task_struct", "mm"), ("mm_struct", "exe_file"), ("mm_struct", "start_code"),
                     ("mm_struct", "end_code"), ("file", "f_inode"), ("inode", "i_ino"), ("inode", "i_sb"),
                     ("inode", "i_size"), ("inode", "i_mtime_sec"), ("inode", "i_mtime_nsec"), ("super_block", "s_dev"),
                     ("vm_area_struct", "vm_start"), ("vm_area_struct", "vm_end"), ("vm_area_struct", "vm_pgoff"),
                     ("vm_area_struct", "vm_flags"), ("vm_area_struct", "vm_file"), ("task_struct", "files"),
                     ("files_struct", "fdt"), ("fdtable", "fd"))
HASH_ELEM_OVERHEAD = 64  # a preallocated hash map element's header (struct htab_elem) and bucket share: fdinfo
# memlock of unwind_exe_files (4096 x 32 + 24 bytes) is 492640 on 6.18, 120.3 bytes an element
BATCH = 65536  # elements per BPF_MAP_UPDATE_BATCH
KERNEL_ROW_BYTES = 16  # an array map stores values rounded up to 8 bytes

# unwind_stats[] slots; mirrored in bpf/native_unwind.bpf.h (US_*).
STAT_SLOTS: tuple[str, ...] = (
    "tables", "fp", "end", "truncated", "read_fault", "no_mapping", "unsupported", "fp_steps", "zero_ra",
    "tail_fail", "bad_cfa", "wanted", "exe", "exe_outside", "guess_outside", "remapped", "vma", "vma_fail",
    "vma_no_table", "lib_known",
)  # fmt: skip


class Extents:
    """First-fit allocator of runs of slots in [0, capacity); frees coalesce with their neighbours."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: list[tuple[int, int]] = [(0, capacity)] if capacity else []  # (start, length), sorted
        self.used = 0

    def alloc(self, n: int) -> int | None:
        for i, (start, length) in enumerate(self._free):
            if length >= n:
                if length == n:
                    del self._free[i]
                else:
                    self._free[i] = (start + n, length - n)
                self.used += n
                return start
        return None

    def free(self, start: int, n: int) -> None:
        self.used -= n
        free = self._free
        i = 0
        while i < len(free) and free[i][0] < start:
            i += 1
        free.insert(i, (start, n))
        if i + 1 < len(free) and start + n == free[i + 1][0]:  # merge with the next run
            free[i] = (start, n + free[i + 1][1])
            del free[i + 1]
        if i > 0 and free[i - 1][0] + free[i - 1][1] == start:  # and with the previous one
            free[i - 1] = (free[i - 1][0], free[i - 1][1] + free[i][1])
            del free[i]


@dataclass(slots=True)
class LoadedBinary:
    table: int  # slot in unwind_tables
    first: int  # first row in unwind_rows
    count: int
    refs: int = 0
    exe_key: bytes | None = None  # its unwind_exe_files key, when entered there


@dataclass(slots=True)
class ProcessMappings:
    first: int
    count: int
    binaries: list[object] = field(default_factory=list)  # keys of the binaries it holds a reference to
    # mappings a walk may ask a table for (WANTS_TABLE, no table): start -> (slot in unwind_mappings, end)
    wants: dict[int, tuple[int, int]] = field(default_factory=dict)
    ranges: frozenset[tuple[int, int]] = frozenset()  # the (start, end) of each mapping


class UnwindMaps:
    """The BPF side's state, written through the maps of a loaded sampler program."""

    def __init__(self, maps: dict[str, BpfMap]) -> None:
        self._procs = maps["unwind_procs"]
        self._mappings = maps["unwind_mappings"]
        self._tables = maps["unwind_tables"]
        self._rows = maps["unwind_rows"]
        self.stats_map = maps["unwind_stats"]
        self.stale_map = maps["unwind_stale"]
        self.wanted_map = maps["unwind_wanted"]
        self._exe_files = maps.get("unwind_exe_files")  # absent: a program without the fallback
        self._exe_libs = maps.get("unwind_exe_libs")  # a new process's libraries, remembered from its mmaps
        config = maps.get("unwind_exe_config")
        self.exe_fallback = self._exe_files is not None and config is not None \
            and os.environ.get("PODFLAME_UNWIND_EXE", "1") != "0" and _write_exe_config(config)
        if self._rows.spec.value_size != ROW_SIZE or self._mappings.spec.value_size != MAPPING.size \
                or self._tables.spec.value_size != SPAN.size or self._procs.spec.value_size != SPAN.size:
            raise ValueError("the unwind maps of bpf/native_unwind.bpf.h and profiler/unwind/maps.py disagree")
        self._row_space = Extents(self._rows.spec.max_entries)
        self._mapping_space = Extents(self._mappings.spec.max_entries)
        # unwind_mappings mapped here: a process's mapping array is written with a store, where a bpf() syscall
        # (BPF_MAP_UPDATE_BATCH) cost 45-55 us a process on the watcher's cold wake-ups (docs/benchmarks.md,
        # stop 23); None for a map created otherwise (the syscall then)
        self._mapping_memory = _mapped(self._mappings)
        self._free_tables = list(range(self._tables.spec.max_entries - 1, -1, -1))
        self.binaries: OrderedDict[object, LoadedBinary] = OrderedDict()  # unused ones first out
        self.processes: dict[int, ProcessMappings] = {}
        # tgids whose mapping array was removed since the walks' marks (unwind_stale) were last emptied: the kernel
        # marks only a process with an array (a walk outside it, on_new_area), so a process given its first array
        # can find a mark left only under one of these pids (a reused pid, an exec'd process removed between)
        self._may_be_marked: set[int] = set()
        self.rejected: dict[object, int] = {}  # binaries that did not fit the row budget (or table slots): rows
        self.rejected_processes = 0  # processes that did not fit (mapping slots, process entries)

    # -- binaries ----------------------------------------------------------------------------

    def binary(self, key: object, rows: bytes, exe_vaddr: int | None = None,
               file_vaddr: int = 0) -> LoadedBinary | None:
        """The loaded rows of `key`, loading `rows` (packed unwind_rows) on first use; None when they
        do not fit. The caller holds a reference, which it hands to `set_process` (so loading a
        process's second binary can never evict its first). `exe_vaddr`: the ELF vaddr of the lowest
        executable segment of a file `key` (a (st_dev, st_ino, st_size, st_mtime_ns) identity), which
        enters it in unwind_exe_files; `file_vaddr`: that segment's vaddr - its file offset (a walk that finds
        the file's VMA places the table from the VMA's file offset with it)."""
        b = self.binaries.get(key)
        if b is not None:
            self.binaries.move_to_end(key)
            b.refs += 1
            return b
        count = len(rows) // ROW_SIZE
        if count == 0:
            return None
        first = self._row_space.alloc(count)
        while (first is None or not self._free_tables) and self._evict_one():
            if first is None:
                first = self._row_space.alloc(count)
        if first is None or not self._free_tables:
            if first is not None:
                self._row_space.free(first, count)
            self.reject(key, count)
            return None
        self.rejected.pop(key, None)
        table = self._free_tables.pop()
        for at in range(0, count, BATCH):
            n = min(BATCH, count - at)
            keys = struct.pack(f"<{n}I", *range(first + at, first + at + n))
            self._rows.update_batch(keys, rows[at * ROW_SIZE:(at + n) * ROW_SIZE], n)
        self._tables.update(ct.c_uint32(table), SPAN.pack(first, count))  # rows first: never a half table
        b = self.binaries[key] = LoadedBinary(table, first, count, refs=1)
        if exe_vaddr is not None and self.exe_fallback:
            b.exe_key = self._enter_exe(key, table, exe_vaddr, file_vaddr)
        return b

    def _enter_exe(self, key: object, table: int, vaddr: int, file_vaddr: int) -> bytes | None:
        """Enter a loaded file's table in unwind_exe_files; None when `key` is no file identity or the
        map is full (that file's processes then wait for their mapping arrays, as before)."""
        if self._exe_files is None or not (isinstance(key, tuple) and len(key) == 4
                                           and all(isinstance(x, int) for x in key)):
            return None
        st_dev, ino, size, mtime_ns = key
        file_key = FILE_KEY.pack(ino, size, mtime_ns, (os.major(st_dev) << 20) | os.minor(st_dev), 0)
        try:
            self._exe_files.update(file_key, EXE.pack(vaddr, file_vaddr, table, 0))
        except OSError:
            return None
        return file_key

    def reject(self, key: object, rows: int) -> None:
        """Count a binary left without rows (once per binary, however many processes map it)."""
        if key not in self.rejected and len(self.rejected) < 65536:
            self.rejected[key] = rows

    def room(self) -> int:
        """Rows a new binary could get, evicting every unused one (fragmentation aside)."""
        return self._row_space.capacity - self._row_space.used + sum(
            b.count for b in self.binaries.values() if b.refs == 0)

    @property
    def row_budget(self) -> int:
        return self._row_space.capacity

    def _evict_one(self) -> bool:
        for key, b in self.binaries.items():
            if b.refs == 0:
                if b.exe_key is not None and self._exe_files is not None:  # first: the slot is reused once free
                    self._exe_files.delete(b.exe_key)
                self._tables.update(ct.c_uint32(b.table), SPAN.pack(0, 0))
                self._row_space.free(b.first, b.count)
                self._free_tables.append(b.table)
                del self.binaries[key]
                return True
        return False

    # -- processes ---------------------------------------------------------------------------

    def set_process(self, tgid: int, mappings: list[tuple[int, int, int, object | None, int]]) -> bool:
        """Give `tgid` these (start, end, bias, binary key or None, flags) executable mappings, replacing
        what it had. Each key is a reference taken with `binary`, which the process now holds (and
        gives back when it is replaced or removed, or here when it does not fit: then False)."""
        mappings = sorted(mappings, key=lambda m: m[0])
        keys = [m[3] for m in mappings if m[3] is not None]
        old = self.processes.get(tgid)
        first = self._mapping_space.alloc(len(mappings)) if mappings else None
        if first is None:
            self.rejected_processes += bool(mappings)
            self._release(ProcessMappings(0, 0, keys))
            self.remove_process(tgid)
            return False
        packed = bytearray()
        wants = {}
        for i, (start, end, bias, key, flags) in enumerate(mappings):
            b = self.binaries[key] if key is not None else None
            packed += MAPPING.pack(start, end, bias & 0xFFFF_FFFF_FFFF_FFFF, b.table if b else NO_TABLE,
                                   0 if b else flags)
            if b is None and flags & WANTS_TABLE:
                wants[start] = (first + i, end)
        n = len(mappings)
        if self._mapping_memory is not None:
            self._mapping_memory[first * MAPPING.size:(first + n) * MAPPING.size] = packed
        else:
            self._mappings.update_batch(struct.pack(f"<{n}I", *range(first, first + n)), bytes(packed), n)
        try:
            self._procs.update(ct.c_uint32(tgid), SPAN.pack(first, n))
        except OSError:  # the process map is full
            self._release(ProcessMappings(first, n, keys))
            self.rejected_processes += 1
            self.remove_process(tgid)
            return False
        ranges = frozenset((m[0], m[1]) for m in mappings)
        if (tgid in self._may_be_marked) if old is None else not ranges <= old.ranges:
            self._rearm(tgid)  # a new process's first array costs no syscall here (~1 in 4 of the watcher's)
        self.processes[tgid] = ProcessMappings(first, n, keys, wants, ranges)
        if old is not None:
            self._release(old)  # after the switch: a walk in flight reads either whole array
        return True

    def _rearm(self, tgid: int) -> None:
        """Let the next walk outside the new array mark `tgid` stale again. The kernel marks a process once until
        the drain empties the marks (`unwind_stale`): one marked while its mappings were changing (an exec's
        loader still mapping libc, a dlopen) would otherwise end its walks at the library it had not mapped when
        read, for a drain (~1 s). Only when the array covers new ranges: unchanged ones (JIT code outside any
        mapping) stay marked until the drain, so no walk wakes the watcher for them again."""
        with contextlib.suppress(OSError):  # not marked: nothing to re-arm
            self.stale_map.delete(ct.c_uint32(tgid))
        self._may_be_marked.discard(tgid)

    def taking_marks(self) -> set[int]:
        """Called before the marks are emptied (the drain): the tgids that may hold one until then. Processes
        removed from now on are remembered afresh; give the set back (`marks_left`) when the emptying failed."""
        taken, self._may_be_marked = self._may_be_marked, set()
        return taken

    def marks_left(self, taken: set[int]) -> None:
        """The marks were not all emptied: the tgids of `taking_marks` may still hold one."""
        self._may_be_marked |= taken

    def fill(self, tgid: int, mapping: tuple[int, int, int, object | None, int]) -> bool:
        """Write one mapping of `tgid` that waited for its table (WANTS_TABLE, set by `set_process`) again, as
        (start, end, bias, binary key or None, flags): its table once loaded, or its flags (the table deferred,
        refused). The process holds the key's reference from then on; False (the reference given back) when
        no such mapping waits. A walk reading the slot meanwhile finds the same range and either table."""
        start, end, bias, key, flags = mapping
        p = self.processes.get(tgid)
        at = p.wants.pop(start, None) if p is not None else None
        if p is None or at is None or at[1] != end:
            if at is not None and p is not None:
                p.wants[start] = at
            if key is not None:
                self.release([key])
            return False
        b = self.binaries[key] if key is not None else None
        value = MAPPING.pack(start, end, bias & 0xFFFF_FFFF_FFFF_FFFF, b.table if b else NO_TABLE, 0 if b else flags)
        if self._mapping_memory is not None:
            self._mapping_memory[at[0] * MAPPING.size:(at[0] + 1) * MAPPING.size] = value
        else:
            self._mappings.update(ct.c_uint32(at[0]), value)
        if key is not None:
            p.binaries.append(key)
        elif flags & WANTS_TABLE:
            p.wants[start] = at
        return True

    def close(self) -> None:
        """Unmap unwind_mappings (written with syscalls from then on, as long as its fd is open)."""
        memory, self._mapping_memory = self._mapping_memory, None
        if memory is not None:
            memory.close()

    def remove_process(self, tgid: int) -> None:
        """Forget `tgid`: a process never set (one that exited before it was loaded) costs no syscall."""
        old = self.processes.pop(tgid, None)
        if old is not None:
            self._procs.delete(ct.c_uint32(tgid))
            self._may_be_marked.add(tgid)  # a mark set while it had the array stays until the drain's
            self._release(old)

    def release(self, keys: list[object]) -> None:
        """Give back references taken with `binary` that no process will hold."""
        self._release(ProcessMappings(0, 0, keys))

    def _release(self, p: ProcessMappings) -> None:
        if p.count:
            self._mapping_space.free(p.first, p.count)
        for key in p.binaries:
            b = self.binaries.get(key)
            if b is not None:
                b.refs -= 1

    # -- reporting ---------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Cumulative walk outcomes from the kernel (per sample or per frame, see US_* in the C)."""
        return {name: self.stats_map.percpu_sum(slot) for slot, name in enumerate(STAT_SLOTS)}

    def memory(self) -> dict[str, int]:
        """What the tables hold now, and the budget they live in."""
        used = sum(b.count for b in self.binaries.values())
        in_use = sum(b.count for b in self.binaries.values() if b.refs)
        return {
            "binaries": len(self.binaries),
            "binaries_in_use": sum(1 for b in self.binaries.values() if b.refs),
            "rows": used,
            "rows_in_use": in_use,
            "row_budget": self._rows.spec.max_entries,
            "row_bytes": used * KERNEL_ROW_BYTES,
            "map_bytes": self.budget_bytes(),
            "processes": len(self.processes),
            "exe_files": sum(1 for b in self.binaries.values() if b.exe_key is not None),
            "mappings": self._mapping_space.used,
            "rejected_binaries": len(self.rejected),
            "rejected_rows": sum(self.rejected.values()),
            "rejected_processes": self.rejected_processes,
        }

    def budget_bytes(self) -> int:
        """Kernel memory the preallocated unwind maps take, whatever they hold."""
        return (self._rows.spec.max_entries * KERNEL_ROW_BYTES + self._mappings.spec.max_entries * MAPPING.size
                + self._tables.spec.max_entries * SPAN.size + self._procs.spec.max_entries * (SPAN.size + 4 + 48)
                + (self._exe_files.spec.max_entries * (FILE_KEY.size + EXE.size + HASH_ELEM_OVERHEAD)
                   if self._exe_files is not None else 0)
                + (self._exe_libs.spec.max_entries * (self._exe_libs.spec.key_size + self._exe_libs.spec.value_size
                                                      + HASH_ELEM_OVERHEAD) if self._exe_libs is not None else 0))


def _mapped(m: BpfMap) -> mmap.mmap | None:
    """The values of array map `m`, mapped shared into this process when it was created BPF_F_MMAPABLE (element i
    at i x value_size: the kernel rounds an element to 8 bytes, which a value of a multiple of 8 already is), so
    that a store writes what the BPF program reads; None for any other map, or when the mapping fails."""
    spec = m.spec
    if spec.type != MAP_ARRAY or not spec.flags & BPF_F_MMAPABLE or spec.value_size % 8:
        return None
    size = -(-spec.max_entries * spec.value_size // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        return mmap.mmap(m.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as e:
        log.info("%s is written with bpf() syscalls: it could not be mapped (%s)", spec.name, e)
        return None


def _write_exe_config(config: BpfMap) -> bool:
    """Give the kernel side the running kernel's member offsets (from its BTF); False (fallback off) when
    the BTF lacks one (an older kernel's inode keeps i_mtime as a struct: no fallback, as before)."""
    from profiler.btf import packed_offsets

    try:
        config.update(ct.c_uint32(0), packed_offsets(EXE_CONFIG_FIELDS))
    except (PodflameError, OSError) as e:
        log.info("no executable fallback for the first samples of new processes: %s", e)
        return False
    return True
