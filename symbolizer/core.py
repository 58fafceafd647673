"""The agent's symbolizer: profiles' frames -> functions, file:line and inlined frames.

`Symbolizer.symbolize(profile)` is pure: it returns a new Profile whose frames carry `lines`
(inline frames innermost first, each `Line(function, file, line)` when DWARF is available: in the
binary, its build-id debug file or its .gnu_debuglink file) or, when no name can be had, a `reason`
(`Unresolved`) so the UI and metrics can say why. C++ and Rust names are demangled.

Work is done once per distinct thing: a frame once per call, a (binary, file offset) once
until evicted (a bounded LRU keyed by build id, else by file identity, so the same library
in a thousand processes is one entry), a binary's symbol table once while it stays in a
bounded LRU (weighted by symbol count).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

from podflame.model import Frame, FrameKind, Line, Mapping, Profile, Unresolved, collapse_unmapped, user_pc_is_exact
from symbolizer.cache import LRU
from symbolizer.debuginfod import Debuginfod
from symbolizer.demangle import demangle as default_demangle
from symbolizer.diskcache import DiskCache
from symbolizer.dwarf import DwarfInfo, dwarf_digest
from symbolizer.elf import ElfReadError, ElfSymbols
from symbolizer.files import MappedFile, candidate_paths, is_anonymous, is_special
from symbolizer.kallsyms import Kallsyms
from symbolizer.normalize import elf_address, file_offset
from symbolizer.perfmap import PerfMaps
from symbolizer.ranges import AddressRanges
from symbolizer.resolve import lines_at, open_dwarf

__all__ = ["ElfSymbols", "Kallsyms", "MapsSource", "PerfMaps", "Symbolizer"]

UNREADABLE_RETRY_SECONDS = 60.0


class MapsSource(Protocol):
    """What the symbolizer needs from profiler.procmaps.MapsCache (kept abstract: no import cycle)."""

    def file(self, pid: int, mapping: Mapping) -> MappedFile | None: ...
    def maps_lost(self, pid: int) -> bool: ...


# Members read per frame, as module globals: reading one through its class costs ~130 ns (EnumType has a
# __getattr__, so every class attribute read goes through a Python-level hook), a global ~15 ns.
_NATIVE, _KERNEL, _JIT = FrameKind.NATIVE, FrameKind.KERNEL, FrameKind.JIT
_KERNEL_UNKNOWN, _JIT_NO_MAP, _PROCESS_GONE = Unresolved.KERNEL_UNKNOWN, Unresolved.JIT_NO_MAP, Unresolved.PROCESS_GONE
_NO_MAPPING, _NO_SYMBOLS, _UNREADABLE = Unresolved.NO_MAPPING, Unresolved.NO_SYMBOLS, Unresolved.UNREADABLE

_Result = tuple[tuple[Line, ...] | None, Unresolved | None]  # lines, or why there are none
_NOT_OPENED: DwarfInfo = object()  # type: ignore[assignment]  # no entry in _dwarfs (None there: no DWARF)


def _unresolved(frame: Frame, reason: Unresolved) -> Frame:
    return Frame(frame.address, frame.mapping, frame.kind, (), reason)


def _is_file_of(key: Hashable, elf: ElfSymbols, path: str) -> bool:
    """Whether the file opened at `path` is the one the binary key names (the build id, or the identity stat'ed
    while the process lived). map_files is; a plain path after the process exited may hold another file."""
    if not isinstance(key, tuple) or not key:
        return True
    if key[0] == "build-id":
        return elf.build_id == key[1]
    if key[0] == "file":
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino, st.st_mtime_ns) == key[1:]
    return True  # ("path", ...): nothing known to check against


class _Call:
    """Per-symbolize memo: one profile is one process, so perf map and file keys are looked up once."""

    __slots__ = ("frames", "keys", "perf_map", "perf_map_read", "pid", "unmapped")

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.frames: dict[tuple[Frame, bool], Frame] = {}  # (frame, is leaf) -> resolved
        self.keys: dict[Mapping, Hashable] = {}
        self.perf_map: AddressRanges | None = None
        self.perf_map_read = False
        # why a native frame without a mapping has no name, once known to hold for every such frame of the
        # call (the process has no perf map): a process gone before its maps were read has hundreds a drain
        self.unmapped: Unresolved | None = None


class ProcessSymbolizer:
    """`Symbolizer.for_process`'s answer: symbolizes stacks or frames of one process, as `symbolize` would."""

    __slots__ = ("_call", "_symbolizer")

    def __init__(self, symbolizer: Symbolizer, call: _Call) -> None:
        self._symbolizer = symbolizer
        self._call = call

    def __call__(self, stack: tuple[Frame, ...]) -> tuple[Frame, ...]:
        """A root-first stack, each frame resolved (its last frame is the leaf)."""
        sym = self._symbolizer
        with sym._lock:
            return sym._stack(stack, self._call)

    def frame(self, frame: Frame, leaf: bool) -> Frame:
        """One frame, resolved as it would be at that place of a stack (`leaf`: the stack's last frame,
        whose address is not a return address)."""
        sym = self._symbolizer
        call = self._call
        with sym._lock:
            reason = call.unmapped
            if reason is not None and frame.mapping is None and frame.kind is _NATIVE and \
                    not frame.lines and frame.reason is None:
                # what _frame would answer, without its memo (the agent keeps these per drain itself)
                sym._stats[reason.value] += 1
                return _unresolved(frame, reason)
            # the caller memoizes across drains itself (StackMemo: shared frames by build id and file offset),
            # so the symbolizer's own cross-call memo of frames would only be written, never read
            return sym._frame(frame, leaf, call, keep=False)


def _pid_of(labels: dict[str, str]) -> int | None:
    try:
        return int(labels["pid"])
    except (KeyError, ValueError):
        return None


class Symbolizer:
    """Names for native and kernel frames. `maps` (the agent's MapsCache) says where a process's
    binaries can be opened and whether the process exited; without it the mapping's own path is used.

    `demangle` turns symbol names into readable ones (default: C++ and Rust, symbolizer.demangle).
    `debug_dirs` are searched by build id (and for .gnu_debuglink files) for separate debug files.
    `dwarf=False` keeps to ELF symbols. `disk_cache`: decoded DWARF indexes persisted per build id
    (default: a DiskCache in $PODFLAME_SYMBOL_CACHE when that is set, else none).
    `debuginfod`: fetches debug files of binaries without DWARF in the background (default: from
    $DEBUGINFOD_URLS, off when unset); frames get file:line once the file is here, and `generation`
    grows then, so callers memoizing results (the agent's StackMemo) know to drop them.
    Memory bounds: `max_binaries` / `max_symbols` symbol tables (~100 bytes a symbol),
    `max_results` cached (binary, offset) -> lines results (~300 bytes each), `max_dwarf`
    binaries' DWARF (their section bytes, plus up to `max_dwarf_rows` decoded rows each).
    """

    def __init__(self, maps: MapsSource | None = None, *, kallsyms_path: str = "/proc/kallsyms",
                 proc: str = "/proc", debug_dirs: Sequence[str] = ("/usr/lib/debug",),
                 demangle: Callable[[str], str] | None = default_demangle, max_binaries: int = 64,
                 max_symbols: int = 1_000_000, max_results: int = 200_000, dwarf: bool = True,
                 disk_cache: DiskCache | None = None, max_dwarf: int = 16,
                 max_dwarf_rows: int = 2_000_000, debuginfod: Debuginfod | None = None) -> None:
        self.maps = maps
        self.proc = proc
        self.debug_dirs = tuple(debug_dirs)
        self.kallsyms = Kallsyms(kallsyms_path)
        self.perf_maps = PerfMaps(proc)
        self._demangle = demangle
        self._binaries: LRU[ElfSymbols] = LRU(max_binaries, max_symbols, weigh=lambda e: len(e.ranges) + 1)
        self._unreadable: LRU[float] = LRU(4096)  # binary key -> when it failed (retried later)
        self._results: LRU[_Result] = LRU(max_results)
        self._resolved: LRU[Frame] = LRU(max_results)  # (input frame, is leaf) -> resolved frame
        self._vdso_keys: LRU[Hashable] = LRU(1024)  # (pid, start) -> binary key of that vDSO image
        self._lock = threading.Lock()
        self._stats: Counter[str] = Counter()
        self._line_cache: dict[str, tuple[Line, ...]] = {}
        self._dwarf_enabled = dwarf
        if disk_cache is None and (cache_dir := os.environ.get("PODFLAME_SYMBOL_CACHE")):
            disk_cache = DiskCache(cache_dir)  # the agent's node-local cache (a hostPath in Kubernetes)
        self.disk_cache = disk_cache
        self._dwarfs: LRU[DwarfInfo | None] = LRU(max_dwarf)
        self._max_dwarf_rows = max_dwarf_rows
        self.debuginfod = debuginfod if debuginfod is not None else Debuginfod.from_env()
        self._awaiting: dict[str, Hashable] = {}  # build id asked of debuginfod -> binary key
        self._generation = 0

    # -- public ------------------------------------------------------------------------------

    def symbolize(self, profile: Profile) -> Profile:
        """A new Profile with every frame resolved to a name or given a reason."""
        call = _Call(_pid_of(profile.labels))
        self._debug_files_arrived()
        out = Profile(labels=dict(profile.labels), start_ns=profile.start_ns, duration_ns=profile.duration_ns,
                      period_ns=profile.period_ns, sample_type=profile.sample_type, unit=profile.unit)
        with self._lock:
            for stack, value in profile.samples.items():
                out.add(self._stack(stack, call), value)
        return out

    def for_process(self, pid: int | None) -> ProcessSymbolizer:
        """Symbolize single root-first stacks (call it) or single frames (`.frame`) of one process, for
        callers that memoize stacks or frames across drains (the agent: most samples of a drain repeat
        a stack or frame seen before). Use one per process per drain."""
        self._debug_files_arrived()
        return ProcessSymbolizer(self, _Call(pid))

    def _stack(self, stack: tuple[Frame, ...], call: _Call) -> tuple[Frame, ...]:
        leaf = len(stack) - 1
        user_leaf = -1  # the user frame under a kernel stack, when it is the interrupted instruction itself
        k = leaf
        while k >= 0 and stack[k].kind is _KERNEL:
            k -= 1
        if 0 <= k < leaf and stack[k].kind is _NATIVE:
            root = self._frame(stack[k + 1], k + 1 == leaf, call)  # the kernel stack's outermost frame
            user_leaf = k if user_pc_is_exact(root) else -1
        return collapse_unmapped(tuple(self._frame(f, i in (leaf, user_leaf), call) for i, f in enumerate(stack)))

    def stats(self) -> dict[str, int]:
        """Distinct frames per profile by outcome (`resolved` or an Unresolved value), plus cache work."""
        with self._lock:
            base = {"resolved": 0, **{r.value: 0 for r in Unresolved}}
            fetched = self.debuginfod.stats() if self.debuginfod is not None else {}
            return {**base, **self._stats, **{f"debuginfod_{k}": v for k, v in fetched.items()}}

    def _debug_files_arrived(self) -> None:
        """Forget what was answered without the debug files debuginfod has since stored: those
        binaries are read again (now with their debug file) and every cached result is redone."""
        if self.debuginfod is None:
            return
        arrived = self.debuginfod.take_arrived()
        if not arrived:
            return
        with self._lock:
            for build_id in arrived:
                key = self._awaiting.pop(build_id, ("build-id", build_id))
                self._binaries.pop(key)
                self._dwarfs.pop(key)
                self._unreadable.pop(key)
            self._results.clear()
            self._resolved.clear()
            self._generation += 1

    @property
    def generation(self) -> int:
        """Grows when results change for the better (a debug file arrived); checks for arrivals first."""
        self._debug_files_arrived()
        return self._generation

    # -- frames ------------------------------------------------------------------------------

    def _frame(self, frame: Frame, leaf: bool, call: _Call, keep: bool = True) -> Frame:
        if frame.lines or frame.reason is not None:
            return frame  # already named (e.g. the agent's "[user stack lost]" frames)
        key = (frame, leaf)
        done = call.frames.get(key)
        if done is None:
            # across calls: a frame of a binary with a build id resolves the same forever (steady state:
            # one dictionary hit per distinct frame per drain); failures are retried, they may be transient.
            # `keep` False: the caller keeps what it asked for itself
            m = frame.mapping
            stable = keep and m is not None and m.build_id is not None and frame.kind is _NATIVE
            done = self._resolved.get(key) if stable else None
            if done is None:
                done = self._resolve(frame, leaf, call)
                if stable and done.lines:
                    self._resolved.put(key, done)
            call.frames[key] = done
            self._stats["resolved" if done.lines else str(done.reason)] += 1
        return done

    def _resolve(self, frame: Frame, leaf: bool, call: _Call) -> Frame:
        # Callers' addresses are return addresses: the instruction after the call. Look up the
        # byte before it, or a call to a noreturn function ending a function (abort, a panic)
        # would name the next function. The frame keeps its address; only the lookup moves.
        at = frame.address if leaf or not frame.address else frame.address - 1
        if frame.kind is _KERNEL:
            return self._named(frame, self.kallsyms.lookup(at), _KERNEL_UNKNOWN)
        m: Mapping | None = frame.mapping  # (annotated: mypyc infers None from the branch below)
        if m is None or is_anonymous(m.path):
            name = self._perf_map_name(at, call)
            if name is not None:
                return Frame(frame.address, frame.mapping, _JIT, (Line(name),))
            if m is not None:
                return _unresolved(frame, _JIT_NO_MAP)
            lost = call.pid is not None and self.maps is not None and self.maps.maps_lost(call.pid)
            why = _PROCESS_GONE if lost else _NO_MAPPING
            if m is None and call.perf_map is None and frame.kind is _NATIVE:
                call.unmapped = why  # no perf map to name any of them: the same answer for all
            return _unresolved(frame, why)
        if m.path == "[vdso]":
            key = self._vdso_key(m, call)
        elif is_special(m.path):
            return _unresolved(frame, _NO_SYMBOLS)  # [vsyscall], executable [heap]/[stack]
        else:
            key = self._binary_key(m, call)
        if key is None:
            return _unresolved(frame, _UNREADABLE)
        result_key = (key, file_offset(at, m))
        result = self._results.get(result_key)
        if result is None:
            result = self._lookup(key, at, m, call)
            if result[1] is not _UNREADABLE:  # unreadable may be transient: do not pin it
                self._results.put(result_key, result)
        lines, reason = result
        if lines is None and at != frame.address and reason is _NO_SYMBOLS:
            lines, reason = self._pushed_entry(key, frame.address, m, call)
        if lines is None and reason is _NO_SYMBOLS:
            lines, reason = self._unnamed_function(key, at, m, call)
        if lines is None:
            return _unresolved(frame, reason or _NO_SYMBOLS)
        return Frame(frame.address, m, frame.kind, lines)

    def _pushed_entry(self, key: Hashable, address: int, m: Mapping, call: _Call) -> _Result:
        """A return address no call pushed: the kernel's sa_restorer (__restore_rt) under a signal handler,
        makecontext's __start_context. It is a function's first byte and the byte before is padding, where the
        lookup at address - 1 names nothing; name the function it starts, as perf does. Only a symbol that
        starts there: a noreturn call ending an unnamed function must not take its neighbour's name."""
        result_key = (key, file_offset(address, m), "entry")
        result = self._results.get(result_key)
        if result is None:
            result = None, _NO_SYMBOLS
            elf = self._load(key, m, call)
            vaddr = elf_address(address, m, elf.elf_type, elf.segments) if elf is not None else None
            if elf is not None and vaddr is not None and (sym := elf.lookup_start(vaddr)) and sym[1] == vaddr:
                result = self._lookup(key, address, m, call)
            self._results.put(result_key, result)
        return result

    def _unnamed_function(self, key: Hashable, address: int, m: Mapping, call: _Call) -> _Result:
        """Code no symbol names, by where its function begins (its FDE: symbolizer/fdespans.py), so one function is
        one frame, in the form of an unnamed address (`libz.so.1.2.13+0x3a20`). Code without CFI keeps its own."""
        offset = file_offset(address, m)
        result_key = (key, offset, "fde")
        result = self._results.get(result_key)
        if result is None:
            result = None, _NO_SYMBOLS
            elf = self._load(key, m, call)
            vaddr = elf_address(address, m, elf.elf_type, elf.segments) if elf is not None else None
            if elf is not None and vaddr is not None and (start := elf.function_start(vaddr)) is not None:
                result = self._lines(f"{m.basename}+{offset - (vaddr - start):#x}"), None
            self._results.put(result_key, result)
        return result

    def _named(self, frame: Frame, name: str | None, reason: Unresolved) -> Frame:
        if name is None:
            return _unresolved(frame, reason)
        return Frame(frame.address, frame.mapping, frame.kind, self._lines(name))

    def _lines(self, name: str) -> tuple[Line, ...]:
        """One shared `(Line(name),)` per name: frames of one function share it (memory, speed)."""
        lines = self._line_cache.get(name)
        if lines is None:
            if len(self._line_cache) >= 200_000:
                self._line_cache.clear()
            lines = self._line_cache[name] = (Line(name),)
        return lines

    def _perf_map_name(self, address: int, call: _Call) -> str | None:
        if call.pid is None:
            return None
        if not call.perf_map_read:
            call.perf_map = self.perf_maps.get(call.pid)
            call.perf_map_read = True
        return call.perf_map.lookup(address) if call.perf_map is not None else None

    # -- binaries ----------------------------------------------------------------------------

    def _mapped_file(self, m: Mapping, call: _Call) -> MappedFile:
        mf = self.maps.file(call.pid, m) if self.maps is not None and call.pid is not None else None
        return mf if mf is not None else MappedFile(candidate_paths(call.pid, m, proc=self.proc))

    def _binary_key(self, m: Mapping, call: _Call) -> Hashable | None:
        """Build id when known, else the file's identity: the cache key for its symbols and results."""
        key = call.keys.get(m)
        if key is not None:
            return key
        if m.build_id:
            key = ("build-id", m.build_id)
        else:
            mf = self._mapped_file(m, call)
            ident = mf.key
            if ident is None:
                for path in mf.paths:
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    ident = (st.st_dev, st.st_ino, st.st_mtime_ns)
                    break
            key = ("file", *ident) if ident is not None else ("path", m.path)
        call.keys[m] = key
        return key

    def _load(self, key: Hashable, m: Mapping, call: _Call) -> ElfSymbols | None:
        elf = self._binaries.get(key)
        if elf is not None:
            return elf
        if m.path == "[vdso]":  # its table was evicted: read the image again
            elf = self._read_vdso(m, call.pid)
            if elf is not None:
                self._binaries.put(key, elf)
            return elf
        failed_at = self._unreadable.get(key)
        if failed_at is not None and time.monotonic() - failed_at < UNREADABLE_RETRY_SECONDS:
            return None
        roots = ([f"{self.proc}/{call.pid}/root{d}" for d in self.debug_dirs] if call.pid is not None else [])
        fetched = [self.debuginfod.debug_dir] if self.debuginfod is not None else []
        for path in self._mapped_file(m, call).paths:
            try:
                elf = ElfSymbols(path, debug_dirs=[*roots, *self.debug_dirs, *fetched], name=m.path)
                if not _is_file_of(key, elf, path):
                    continue  # another file at the path (the process exited: map_files gone): never its names
                if self.disk_cache is not None:  # a restart does not parse tables again
                    if elf.build_id:
                        elf.load_symbols = self.disk_cache.symbols_loader(elf)
                    elif (digest := elf.table_digest()) is not None:  # e.g. Go's internal linker: no GNU build id
                        elf.load_symbols = self.disk_cache.symbols_loader(elf, digest)
                elf.ranges  # noqa: B018 -- read now, while the process (and map_files) still exist
            except ElfReadError:
                continue
            self._binaries.put(key, elf)
            self._stats["binaries_loaded"] += 1
            return elf
        self._unreadable.put(key, time.monotonic())
        self._stats["binaries_unreadable"] += 1
        return None

    def _lookup(self, key: Hashable, address: int, m: Mapping, call: _Call) -> _Result:
        elf = self._load(key, m, call)
        if elf is None:
            return None, _UNREADABLE
        vaddr = elf_address(address, m, elf.elf_type, elf.segments)
        if vaddr is None:
            return None, _NO_SYMBOLS
        dwarf = self._dwarf_of(key, elf) if self._dwarf_enabled else None
        lines = lines_at(elf, dwarf, vaddr, self._demangle or _same)
        if lines is None:
            return None, _NO_SYMBOLS
        if len(lines) == 1 and lines[0].file is None:
            return self._lines(lines[0].function), None
        self._stats["dwarf_resolved"] += 1
        return lines, None

    def _dwarf_of(self, key: Hashable, elf: ElfSymbols) -> DwarfInfo | None:
        """The binary's DWARF (None when it has none), opened once per binary key."""
        got = self._dwarfs.get(key, _NOT_OPENED)
        if got is not _NOT_OPENED:
            return got
        kwargs: dict = {"max_weight": self._max_dwarf_rows}
        if self.disk_cache is not None and elf.build_id:
            kwargs.update(self.disk_cache.hooks(elf.build_id))
        elif self.disk_cache is not None and elf.path and (path := elf.dwarf_file()) is not None and \
                (digest := dwarf_digest(path)) is not None:  # e.g. Go's internal linker: no GNU build id
            kwargs.update(self.disk_cache.hooks(digest))
        dwarf = open_dwarf(elf, **kwargs)
        self._dwarfs.put(key, dwarf)
        if self.debuginfod is not None and elf.build_id and elf.path:  # not the vDSO: the kernel's
            if dwarf is None:
                if self.debuginfod.request(elf.build_id):  # in the background: this lookup goes on without
                    if len(self._awaiting) >= 4096:
                        self._awaiting.clear()  # only a hint: an arrival's build id is its key as well
                    self._awaiting[elf.build_id] = key
            elif self.debuginfod.owns(dwarf.path):
                self.debuginfod.count_hit()
        self._stats["dwarf_binaries" if dwarf is not None else "no_dwarf_binaries"] += 1
        return dwarf

    # -- vDSO --------------------------------------------------------------------------------

    def _vdso_key(self, m: Mapping, call: _Call) -> Hashable | None:
        """The vDSO has no file: read its image from the process's memory (our own as a fallback,
        the same kernel's) and key it by its build id, so all processes share one table."""
        memo = (call.pid, m.start)
        key = self._vdso_keys.get(memo)
        if key is None:
            elf = self._read_vdso(m, call.pid)
            if elf is None:
                return None
            key = ("build-id", elf.build_id) if elf.build_id else ("vdso", hash(tuple(elf.segments)))
            self._binaries.put(key, elf)
            self._vdso_keys.put(memo, key)
        return key

    def _read_vdso(self, m: Mapping, pid: int | None) -> ElfSymbols | None:
        sources: list[tuple[int | None, int, int]] = [(pid, m.start, m.limit)] if pid is not None else []
        own = _own_vdso(self.proc)
        if own is not None:
            sources.append((None, *own))
        for who, start, limit in sources:
            try:
                with open(f"{self.proc}/{'self' if who is None else who}/mem", "rb", buffering=0) as f:
                    f.seek(start)
                    data = f.read(limit - start)
                elf = ElfSymbols(data, name="[vdso]")
                elf.ranges  # noqa: B018 -- parse now: a bad image should fail here, not at lookup
                return elf
            except (OSError, ValueError, ElfReadError):
                continue
        return None


def _same(name: str) -> str:
    return name


def _own_vdso(proc: str) -> tuple[int, int] | None:
    try:
        with open(f"{proc}/self/maps") as f:
            for line in f:
                if line.rstrip().endswith("[vdso]"):
                    lo, hi = line.split()[0].split("-")
                    return int(lo, 16), int(hi, 16)
    except OSError:
        pass
    return None
