"""Is a process running CPython, which version, and where is its `_PyRuntime`?

CPython lives either in a shared `libpython3.X.so*` or linked into the executable (Debian's
/usr/bin/python3, whose .symtab is stripped but whose .dynsym still exports `_PyRuntime`, the
API and `Py_Version`). The version decides the struct layouts (offsets.py), so it is read, never
guessed: `Py_Version` (PY_VERSION_HEX, 3.11+) from the ELF file, the `_Py_DebugOffsets` header
in the process's `_PyRuntime` (3.13+, which must agree), and for 3.7-3.10 the library's name with
the micro version from its PY_VERSION string. 2.7 and 3.6 have no `_PyRuntime`: their static `interp_head`
(.symtab) takes its place. Anything else is `Unsupported` with the reason.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from podflame.errors import BinaryFormatError
from podflame.model import Mapping
from profiler import procmaps
from profiler.procmaps import ExecVma, MapsEntry, read_exec_maps, start_time
from profiler.python import remote
from profiler.python.offsets import (
    DEBUG_OFFSETS_SIZE,
    DEBUG_OFFSETS_VERSIONS,
    NO_FIELD,
    TABLES,
    DebugOffsetsError,
    PyOffsets,
    debug_offsets_version,
    from_debug_offsets,
)
from profiler.python.remote import MemoryReadError, ProcessGone
from symbolizer.elf import ET_EXEC, LoadSegment
from symbolizer.elffile import PF_X, PT_LOAD, SHT_DYNSYM, SHT_NOBITS, SHT_SYMTAB, ElfFile
from symbolizer.normalize import elf_address

_LIBPYTHON = re.compile(r"/libpython(\d)\.(\d+)[a-z]*\.so(\.[\d.]+)?$")
_PYTHON_EXE = re.compile(r"/python(\d)\.(\d+)[a-z]*$")
# interp_head: 2.7's and 3.6's list of interpreters (static, .symtab only), where later versions have _PyRuntime;
# PyString_Type: 2.7's str, the type of its names and line tables
_SYMBOLS = (b"_PyRuntime", b"Py_Version", b"PyCode_Type", b"PyUnicode_Type", b"PyBytes_Type", b"interp_head",
            b"PyString_Type")
_NO_PY_SYMBOLS = tuple(n for n in _SYMBOLS if b"Py" not in n)
_SYM = struct.Struct("<IBBHQQ")  # an Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size
_NO_RUNTIME = ((2, 7), (3, 6))  # versions whose interp_head stands for _PyRuntime
_SYMTAB_ONLY = 2  # of _SYMBOLS, never in a 3.7+ .dynsym (interp_head, PyString_Type): not a reason to read .symtab


@dataclass(frozen=True)
class PythonProcess:
    """A CPython process a walker can read: where `_PyRuntime` is and the layouts to read it with."""

    pid: int
    version: tuple[int, int, int]  # major, minor, micro
    path: str  # the file holding the interpreter (libpython3.X.so or a static python3.X), as mapped
    runtime_address: int  # &_PyRuntime in the process (2.7, 3.6: &interp_head)
    code_type: int | None  # &PyCode_Type in the process: what a code object's ob_type must be
    offsets: PyOffsets
    str_type: int | None = None  # &PyUnicode_Type: the type of its names
    bytes_type: int | None = None  # &PyBytes_Type: the type of its line table
    # procmaps.start_time, read before the maps: (pid, start_time) is this process and no later one with its pid
    start_time: int | None = None
    # (start, end, file offset) of `path`'s executable mappings in this process, as detection read them: the
    # interpreter's code does not move for the life of a process, so naming frames needs no second maps read
    exec_maps: tuple[tuple[int, int, int], ...] = ()

    @property
    def eval_function(self) -> str:
        """The C function that runs Python frames (one call per run of them): what pyframes splices at."""
        return "PyEval_EvalFrameEx" if self.version[0] == 2 else "_PyEval_EvalFrameDefault"


@dataclass(frozen=True)
class Unsupported:
    """Not a CPython process this reader can read, and why (no Python, an unsupported version, ...)."""

    reason: str
    # no CPython at all: no libpython mapped and the executable does not export _PyRuntime (the answer for
    # every process of the same executable and mappings, which PythonRegistry keeps for a while)
    no_python: bool = False


@dataclass(frozen=True, slots=True)
class Derivation:
    """What a found answer rested on besides its files' contents and where they are mapped: the interpreter
    file's identity as stat'ed (its ELF facts and the proof of its layout are kept by it), and for 3.13+ the
    `_Py_DebugOffsets` bytes read from the process (its memory, not its file: read again per process)."""

    identity: tuple[int, int, int]  # (st_dev, st_ino, st_mtime_ns) of the interpreter file
    debug_raw: bytes | None  # 3.13+: the _Py_DebugOffsets the offsets were decoded from


LayoutKey = tuple[str, bool, frozenset[tuple[object, int]]]


def layout_key(exe: str, vmas: Sequence[ExecVma], vma_layout: procmaps.LayoutKey | None = None) -> LayoutKey | None:
    """What detection's answer for a process is a function of, apart from where ASLR put things: its
    executable (the one candidate besides a libpython: `ld.so /usr/bin/python3` maps what python3 maps), and
    its VMAs' layout as the unwind loader keys it (procmaps.layout_key: whether it is 64-bit, the set of its
    executable VMAs' PROCMAP_QUERY keys and sizes), given as `vma_layout` when made already (NewProcess.layout).
    None without VMAs."""
    base = vma_layout if vma_layout is not None else procmaps.layout_key(vmas)
    if base is None:
        return None
    return exe, base[0], base[1]


@dataclass(frozen=True, slots=True)
class _Known:
    template: PythonProcess  # the process the answer was found for
    anchors: dict[tuple[object, int], int]  # (VMA key, size) of the interpreter's executable VMAs -> index in exec_maps
    inodes: frozenset[int]  # theirs: what a VMA is compared by first
    derivation: Derivation
    proved: int  # _PROVED_AT[0] when the file's layout was found proved (entries leave it only when it is emptied); -1


class Layouts:
    """Detection's positive answers by process layout (`layout_key`), so that the next python3 of a known layout
    is registered by rebasing the answer found for an earlier one instead of being detected afresh (MapsEntry
    per VMA, a file's access and stat, .dynsym facts and layout proof looked up, ~60-200 us a process).

    The answer is a function of the key: which files are mapped (hence which are candidates), each file's
    ELF facts (by device and inode, as the VMA key holds them; a file rewritten in place keeps both, so the
    owner empties this every drain, as PythonRegistry does its negative answers), and where the interpreter
    file's executable VMAs are, which `place` matches one by one (each exactly once, one shift for all) and
    moves every address by. What rests on the process's memory is done again per process: the 3.13+
    `_Py_DebugOffsets` are read and must be the same bytes; the layout proof (check_layout) runs when the
    file's layout is not proved yet, as detection would; an answer chosen between two runtimes by reading
    memory is never kept (inspect_process gives no Derivation for it)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._known: dict[LayoutKey, _Known] = {}
        self.hits = 0

    def clear(self) -> None:
        self._known.clear()

    def __len__(self) -> int:
        return len(self._known)

    def learn(self, key: LayoutKey, process: PythonProcess, vmas: Sequence[ExecVma], how: Derivation) -> None:
        """Keep `process` (just detected, its VMAs `vmas`) for the next process of layout `key`."""
        by_place = {(v[0], v[1], v[2][1]): v for v in vmas}
        mine = [by_place.get(m) for m in process.exec_maps]  # in the order of exec_maps (by address)
        if not mine or None in mine:
            return
        anchors = [(v[2], v[1] - v[0]) for v in mine if v is not None]
        if any(sum((v[2], v[1] - v[0]) == a for v in vmas) != 1 for a in anchors):
            return  # the interpreter's VMAs are not told apart by key and size: no placement to rebase
        if len(self._known) >= self.capacity:
            self._known.clear()
        proved = _PROVED_AT[0] if (how.identity, process.offsets) in _PROVED else -1
        self._known[key] = _Known(process, {a: i for i, a in enumerate(anchors)},
                                  frozenset(int(v[2][4]) for v in mine if v is not None), how, proved)

    def place(self, key: LayoutKey, pid: int, started: int | None, vmas: Sequence[ExecVma]) -> PythonProcess | None:
        """The answer detection would give process `pid` (of layout `key`, executable VMAs `vmas`, start time
        `started`), rebased from a known one; None when there is none or it cannot be told exact (detect then)."""
        known = self._known.get(key)
        if known is None:
            return None
        t = known.template
        want, inodes = known.anchors, known.inodes
        starts: list[int | None] = [None] * len(want)
        for v in vmas:
            if v[2][4] in inodes and (i := want.get((v[2], v[1] - v[0]))) is not None:
                if starts[i] is not None:
                    return None  # the same key twice: which one is the interpreter's is not known
                starts[i] = v[0]
        shift = None
        for got, (was, _, _) in zip(starts, t.exec_maps, strict=True):
            if got is None or (shift is not None and got - was != shift):
                return None
            shift = got - was
        assert shift is not None
        offsets = t.offsets
        runtime = t.runtime_address + shift
        how = known.derivation
        try:
            if how.debug_raw is not None and remote.read(pid, runtime, DEBUG_OFFSETS_SIZE) != how.debug_raw:
                return None
        except (MemoryReadError, ProcessGone):
            return None  # detection says why
        placed = PythonProcess(
            pid=pid, version=t.version, path=t.path, runtime_address=runtime,
            code_type=None if t.code_type is None else t.code_type + shift, offsets=offsets,
            str_type=None if t.str_type is None else t.str_type + shift,
            bytes_type=None if t.bytes_type is None else t.bytes_type + shift, start_time=started,
            exec_maps=tuple((s + shift, e + shift, off) for s, e, off in t.exec_maps))
        # proved when learnt and _PROVED not emptied since (it loses entries no other way): still in it
        if known.proved != _PROVED_AT[0] and (how.identity, offsets) not in _PROVED:
            try:  # as detection does for a file whose layout no running interpreter proved yet
                if check_layout(placed):
                    _prove(how.identity, offsets)
            except (MemoryReadError, LayoutMismatch, ProcessGone):
                return None  # detection says why
        self.hits += 1
        return placed


@dataclass(frozen=True)
class _ElfFacts:
    elf_type: str
    segments: tuple[LoadSegment, ...]
    symbols: dict[str, int]  # name -> ELF vaddr (st_value)
    hexversion: int | None  # Py_Version's value
    version_string_micro: dict[tuple[int, int], int]  # (major, minor) -> micro from "3.<minor>.<micro>\0" strings


def inspect_process(pid: int, *, maps: Sequence[MapsEntry] | None = None, proc: str = "/proc",
                    started: int | None = None, exe: str | None = None,
                    derived: list[Derivation] | None = None) -> PythonProcess | Unsupported:
    """Find CPython in process `pid` from its executable mappings (`maps`, else read now), its version
    and `_PyRuntime`'s address. Costs the executable mappings (procmaps.read_exec_maps: PROCMAP_QUERY,
    not the whole text) and, once per file, its .dynsym. `started`: the process's start time when the
    caller read it already (before anything else: the answer is for that process); `exe`: the target of
    /proc/PID/exe, when the caller read it. `derived`: gets how a found answer was derived (Derivation),
    when it rests on the process's files and their placement alone (Layouts keeps such answers)."""
    if started is None:
        started = start_time(pid, proc)
    if started is None:
        return Unsupported(f"pid {pid} does not exist")
    try:
        if maps is None:
            maps = read_exec_maps(pid, proc)
        if exe is None:
            exe = os.readlink(f"{proc}/{pid}/exe")
    except FileNotFoundError:
        return Unsupported(f"pid {pid} does not exist")
    except OSError as e:
        return Unsupported(f"pid {pid}: cannot read its mappings: {e}")
    by_path: dict[str, list[MapsEntry]] = {}
    for entry in maps:
        if entry.executable and entry.inode and entry.path.startswith("/"):
            by_path.setdefault(entry.clean_path, []).append(entry)
    named = [p for p in by_path if _LIBPYTHON.search(p)]
    # the executable is a candidate whatever its name (uwsgi, a renamed or static python)
    candidates = named + [p for p in by_path if p == exe.removesuffix(" (deleted)") and p not in named]
    reasons = []
    found: list[PythonProcess] = []
    how: list[Derivation] = []
    for path in candidates:
        got = _inspect_file(pid, path, by_path[path], proc, how)
        if isinstance(got, PythonProcess):
            found.append(got)
        elif got is not None:
            reasons.append(got.reason)
    # a static python that also maps a libpython (an extension linked against it) has two runtimes:
    # the one running is the one with an interpreter (read from memory: no Derivation, not kept by layout)
    for p in found if len(found) > 1 else ():
        if _interpreter(p):
            return replace(p, start_time=started)
    if found:
        if derived is not None and len(found) == 1:
            derived.append(how[-1])
        return replace(found[0], start_time=started)
    if reasons:
        return Unsupported("; ".join(reasons))
    return no_python(pid, exe)


def no_python(pid: int, exe: str) -> Unsupported:
    """The answer for a process without CPython: no libpython mapped, and `exe` does not export _PyRuntime."""
    return Unsupported(f"pid {pid}: no libpython mapped and {exe} does not export _PyRuntime", no_python=True)


def _inspect_file(pid: int, path: str, maps: Sequence[MapsEntry], proc: str,
                  how: list[Derivation]) -> PythonProcess | Unsupported | None:
    """CPython in the file `path` as this process maps it; a found one appends its Derivation to `how`."""
    name_version = _version_from_name(path)
    opened = _open_path(pid, path, maps, proc)
    if opened is None:
        return Unsupported(f"{path}: cannot open the file")
    try:
        identity = _identity(opened)
        facts = _elf_facts(opened, *identity)
    except (OSError, ValueError, struct.error) as e:
        return Unsupported(f"{path}: not a readable ELF file ({e})")
    runtime_vaddr = facts.symbols.get("_PyRuntime")
    if runtime_vaddr is None and name_version in _NO_RUNTIME:
        # 2.7/3.6 have no runtime state: their static interp_head is the list head (read at offset 0)
        runtime_vaddr = facts.symbols.get("interp_head")
        if runtime_vaddr is None:
            return Unsupported(f"{path}: CPython {name_version[0]}.{name_version[1]} without .symtab: its "
                               "interp_head (the list of interpreters) cannot be found")
    if runtime_vaddr is None:
        if name_version is not None:
            return Unsupported(f"{path}: CPython {name_version[0]}.{name_version[1]} has no _PyRuntime: "
                               "only CPython 2.7 and 3.6-3.13 are supported")
        return None  # not Python at all
    if facts.hexversion is not None:
        version = (facts.hexversion >> 24, (facts.hexversion >> 16) & 0xFF, (facts.hexversion >> 8) & 0xFF)
    elif name_version is not None:
        version = (*name_version, facts.version_string_micro.get(name_version, 0))
    else:
        return Unsupported(f"{path}: exports _PyRuntime but neither Py_Version nor its name tells the version")
    if name_version is not None and name_version != version[:2]:
        return Unsupported(f"{path}: Py_Version says {version[0]}.{version[1]}, the name says otherwise")
    major_minor = (version[0], version[1])
    if major_minor not in TABLES and major_minor not in DEBUG_OFFSETS_VERSIONS:
        return Unsupported(f"{path}: CPython {'.'.join(map(str, version))}: only CPython 2.7 and 3.6-3.13 are "
                           "supported")
    bias = _load_bias(facts, path, maps)
    if bias is None:
        return Unsupported(f"{path}: no executable mapping to place its symbols")
    runtime = runtime_vaddr + bias
    types = {name: (None if (v := facts.symbols.get(name)) is None else v + bias)
             for name in ("PyCode_Type", "PyUnicode_Type", "PyBytes_Type", "PyString_Type")}
    if major_minor == (2, 7):  # names and line tables are both 2.7's str (PyBytes_Type is a macro for it)
        types["PyUnicode_Type"] = types["PyBytes_Type"] = types["PyString_Type"]
    raw = None
    if major_minor in TABLES:
        offsets = TABLES[major_minor]
    else:
        try:
            raw = remote.read(pid, runtime, DEBUG_OFFSETS_SIZE)
            hexversion = debug_offsets_version(raw)
            offsets = _debug_offsets(raw)
        except (MemoryReadError, ProcessGone) as e:
            return Unsupported(f"{path}: cannot read _PyRuntime in pid {pid}: {e}")
        except DebugOffsetsError as e:
            return Unsupported(f"{path}: {e}")
        if (hexversion >> 16) != (version[0] << 8 | version[1]):
            return Unsupported(f"{path}: _Py_DebugOffsets says {hexversion:#x}, Py_Version {version}")
    found = PythonProcess(pid=pid, version=version, path=path, runtime_address=runtime,
                          code_type=types["PyCode_Type"], offsets=offsets, str_type=types["PyUnicode_Type"],
                          bytes_type=types["PyBytes_Type"],
                          exec_maps=tuple((e.start, e.end, e.offset) for e in maps if e.executable))
    if (identity, offsets) not in _PROVED:
        try:
            proved = check_layout(found)
        except (MemoryReadError, LayoutMismatch) as e:
            return Unsupported(f"{path}: {e}")
        except ProcessGone:
            return Unsupported(f"pid {pid} exited")
        if proved:
            _prove(identity, offsets)
    how.append(Derivation(identity, raw))
    return found


def _prove(identity: tuple[int, int, int], offsets: PyOffsets) -> None:
    if len(_PROVED) >= 64:
        _PROVED.clear()
        _PROVED_AT[0] += 1
    _PROVED.add((identity, offsets))


_DEBUG_OFFSETS: dict[bytes, PyOffsets] = {}  # from_debug_offsets' answers by its bytes (a pure function of them)


def _debug_offsets(raw: bytes) -> PyOffsets:
    """from_debug_offsets(raw), once per distinct bytes: decoding and range-checking its 90 fields was most of
    a 3.13 process's detection (~150 us); every process of one build has the same bytes."""
    got = _DEBUG_OFFSETS.get(raw)
    if got is None:
        got = from_debug_offsets(raw)  # raises for bytes that are not a known _Py_DebugOffsets: not kept
        if len(_DEBUG_OFFSETS) >= 64:
            _DEBUG_OFFSETS.clear()
        _DEBUG_OFFSETS[raw] = got
    return got


# (file identity, offsets) that check_layout proved in a running interpreter: the layout is the binary's, so
# the next process of the same file is not read again (~9 reads of its memory, ~100 us of a new python3)
_PROVED: set[tuple[tuple[int, int, int], PyOffsets]] = set()
_PROVED_AT = [0]  # how many times _PROVED was emptied (Layouts: a proof seen in it is still there while this holds)


class LayoutMismatch(BinaryFormatError):
    """The process's structures do not read as the offsets for its version say they should."""


def _interpreter(p: PythonProcess) -> int:
    """The address of the process's first interpreter; 0 before Py_Initialize or when unreadable."""
    try:
        return _u64(remote.read(p.pid, p.runtime_address + p.offsets.runtime_interpreters_head, 8))
    except (MemoryReadError, ProcessGone):
        return 0


def check_layout(p: PythonProcess) -> bool:
    """Raise LayoutMismatch unless the first interpreter points back at `_PyRuntime` (3.9-3.12: the one
    field that proves the table fits this build) and its first thread points at that interpreter.
    A process that has not initialised Python yet passes: there is nothing to misread. True when the
    layout was proved (an interpreter, its thread, and its current frame's code object where checked)."""
    try:
        return _check_layout(p)
    except MemoryReadError as e:
        raise LayoutMismatch(f"{e}: not the {p.offsets.version[0]}.{p.offsets.version[1]} layout") from e


def _check_layout(p: PythonProcess) -> bool:
    o = p.offsets
    interp = _interpreter(p)
    if not interp:
        # an empty list is a runtime not initialised yet, unless the table's main interpreter says otherwise
        # (CPython sets both together): a wrong table may read zeros where its head would be
        if o.runtime_interpreters_main != NO_FIELD and \
                _u64(remote.read(p.pid, p.runtime_address + o.runtime_interpreters_main, 8)):
            raise LayoutMismatch(f"the runtime has a main interpreter but no list of them: not the "
                                 f"{o.version[0]}.{o.version[1]} layout")
        return False
    if o.interp_runtime != NO_FIELD:
        back = _u64(remote.read(p.pid, interp + o.interp_runtime, 8))
        if back != p.runtime_address:
            raise LayoutMismatch(f"interpreter {interp:#x} says its runtime is {back:#x}, not {p.runtime_address:#x}:"
                                 f" not the {o.version[0]}.{o.version[1]} layout")
    elif o.runtime_interpreters_main != NO_FIELD:  # 3.7/3.8: the main interpreter must be on the list
        main = _u64(remote.read(p.pid, p.runtime_address + o.runtime_interpreters_main, 8))
        on_list, at = False, interp
        for _ in range(16):
            if not at or at == main:
                on_list = at == main
                break
            at = _u64(remote.read(p.pid, at + o.interp_next, 8))
        if not main or not on_list:
            raise LayoutMismatch(f"the runtime's main interpreter {main:#x} is not on the list from {interp:#x}:"
                                 f" not the {o.version[0]}.{o.version[1]} layout")
    tstate = _u64(remote.read(p.pid, interp + o.interp_threads_head, 8))
    if not tstate:
        return False
    if _u64(remote.read(p.pid, tstate + o.tstate_interp, 8)) != interp:
        raise LayoutMismatch(f"thread state {tstate:#x} does not point back at interpreter {interp:#x}")
    if p.code_type is None or o.version >= (3, 13):
        return True  # 3.13's frames are as _Py_DebugOffsets says (and may hold a non-code executable)
    # the frame fields: the thread's current frame must hold a code object. The thread runs on while
    # this reads, so only a wrong type seen on every try counts
    for _ in range(3):
        frame = _u64(remote.read(p.pid, tstate + o.tstate_frame, 8))
        if frame and o.cframe_current_frame != NO_FIELD:
            frame = _u64(remote.read(p.pid, frame + o.cframe_current_frame, 8))
        if not frame:
            return False
        try:
            code = _u64(remote.read(p.pid, frame + o.frame_code, 8))
            if _u64(remote.read(p.pid, code + o.object_type, 8)) == p.code_type:
                return True
        except MemoryReadError:
            continue
    raise LayoutMismatch(f"thread state {tstate:#x}'s current frame does not hold a code object")


def _u64(raw: bytes) -> int:
    return int(struct.unpack_from("<Q", raw)[0])


def _version_from_name(path: str) -> tuple[int, int] | None:
    m = _LIBPYTHON.search(path) or _PYTHON_EXE.search(path)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _open_path(pid: int, path: str, maps: Sequence[MapsEntry], proc: str) -> str | None:
    """A path that opens the mapped file: map_files (the file mapped, wherever it lives and whatever now
    sits at its path), else through the process's root (its mount namespace). A deleted file's old path may
    hold its replacement (an upgraded python3, whose _PyRuntime is elsewhere): never read that."""
    e = maps[0]
    for candidate in (f"{proc}/{pid}/map_files/{e.start:x}-{e.end:x}",
                      *(() if any(m.deleted for m in maps) else (f"{proc}/{pid}/root{path}", path))):
        if os.access(candidate, os.R_OK):
            return candidate
    return None


def _identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _load_bias(facts: _ElfFacts, path: str, maps: Sequence[MapsEntry]) -> int | None:
    """Runtime address minus ELF address for this file in this process (0 for ET_EXEC), found with
    the symbolizer's rule (normalize.elf_address) on one of its executable mappings."""
    if facts.elf_type == ET_EXEC:
        return 0
    for e in maps:
        if e.executable:
            m = Mapping(e.start, e.end, e.offset, path)
            vaddr = elf_address(e.start, m, facts.elf_type, facts.segments)
            if vaddr is not None:
                return e.start - vaddr
    return None


_FACTS: dict[tuple[int, int, int], _ElfFacts] = {}  # (dev, ino, mtime_ns) of the file -> its facts, oldest use first
_FACTS_KEPT = 256  # a non-Python file's facts are its few load segments
_FACTS_LOCK = threading.Lock()


def _elf_facts(path: str, dev: int, ino: int, mtime_ns: int) -> _ElfFacts:
    """The few ELF facts detection needs, once per file identity (the arguments after path: the path is
    per process, /proc/PID/root/..., so keying on it read the file again for every new process)."""
    key = (dev, ino, mtime_ns)
    with _FACTS_LOCK:  # the watcher detects, and so does the drain's refresh
        got = _FACTS.pop(key, None)
        if got is not None:
            _FACTS[key] = got  # last: the most recently used
            return got
    got = _read_elf_facts(path)
    with _FACTS_LOCK:
        _FACTS[key] = got
        while len(_FACTS) > _FACTS_KEPT:  # the least recently used goes: a node running more executables than
            del _FACTS[next(iter(_FACTS))]  # the bound read all of them again when the whole dict was emptied
    return got


def _read_elf_facts(path: str) -> _ElfFacts:
    with open(path, "rb") as f:
        elf = ElfFile(f)
        segments = tuple(LoadSegment(s.offset, s.vaddr, s.filesz, s.memsz, bool(s.flags & PF_X))
                         for s in elf.segments if s.type == PT_LOAD)
        symbols = _find_symbols(elf, ".dynsym")
        # rare: look at the full table too (a symbol missing from .dynsym; CPython 3.6's interp_head)
        runtime = "_PyRuntime" in symbols
        if (runtime and len(symbols) < len(_SYMBOLS) - _SYMTAB_ONLY) or (not runtime and "PyCode_Type" in symbols):
            symbols = {**_find_symbols(elf, ".symtab"), **symbols}
        hexversion = None
        if "Py_Version" in symbols:
            raw = _read_vaddr(elf, symbols["Py_Version"], 4)
            hexversion = None if raw is None else struct.unpack("<I", raw)[0]
        micro: dict[tuple[int, int], int] = {}
        if hexversion is None and ("_PyRuntime" in symbols or "interp_head" in symbols):
            sec = elf.section(".rodata")
            data = elf.data(sec) if sec is not None else b""
            # PY_VERSION ("3.9.18"), possibly tail-merged into a longer string ("Python-3.9.18")
            for m in re.finditer(rb"(?<![0-9])([23])\.(\d{1,2})\.(\d{1,2})(?:(?:a|b|rc)\d+)?\+?\x00", data):
                micro.setdefault((int(m.group(1)), int(m.group(2))), int(m.group(3)))
    return _ElfFacts(elf.e_type, segments, symbols, hexversion, micro)


def _find_symbols(elf: ElfFile, table: str) -> dict[str, int]:
    sec = elf.section(table)
    if sec is None or sec.type not in (SHT_SYMTAB, SHT_DYNSYM) or sec.link >= len(elf.sections) \
            or elf.elfclass != 64 or not elf.little_endian:
        return {}
    strtab = elf.data(elf.sections[sec.link])
    data = elf.data(sec)
    want = {}
    # a table without "Py" holds none of the names but interp_head: one scan for most binaries, not seven
    for name in _SYMBOLS if b"Py" in strtab else _NO_PY_SYMBOLS:
        # st_name may point into a longer string the linker merged it with ("x_PyRuntime"); bytes.find, not a
        # regular expression: a big non-Python binary's .dynstr (cc1's 1.3 MB) took ~16 ms to scan with re
        needle = name + b"\0"
        at = strtab.find(needle)
        while at >= 0:
            want[at] = name.decode()
            at = strtab.find(needle, at + 1)
    out: dict[str, int] = {}
    if not want:
        return out
    # the entries naming them, found by their st_name (the entry's first 4 bytes) with bytes.find rather than
    # unpacking every entry in Python; in table order, so the last defined entry of a name wins, as before
    end = len(data) // _SYM.size * _SYM.size
    hits = []
    for st_name in want:
        needle = st_name.to_bytes(4, "little")
        at = data.find(needle, 0, end)
        while at >= 0:
            if at % _SYM.size == 0:
                hits.append(at)
            at = data.find(needle, at + 1, end)
    for at in sorted(hits):
        st_name, _info, _other, shndx, value, _size = _SYM.unpack_from(data, at)
        if shndx != 0:
            out[want[st_name]] = value
    return out


def _read_vaddr(elf: ElfFile, vaddr: int, size: int) -> bytes | None:
    for sec in elf.sections:
        if sec.type != SHT_NOBITS and sec.addr and sec.addr <= vaddr and vaddr + size <= sec.addr + sec.size:
            elf.f.seek(sec.offset + vaddr - sec.addr)
            return elf.f.read(size)
    return None
