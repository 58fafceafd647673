"""Executable mappings of processes, read from /proc/PID/maps at drain time.

The agent needs a process's maps after the fact: samples are drained seconds after they were
taken, and a short-lived process may be gone by then. So `MapsCache` reads maps as soon as
a pid shows up, keeps exited processes' maps for a grace period of a few drains, re-reads a
live process whose address falls outside what is known (dlopen, a new JIT region) at most
once per drain, and notices exec (same pid, new image) and pid reuse (new start time).
Memory is bounded by the number of pids tracked; build ids are read once per file identity.

A busy node starts many processes of the same binaries, whose maps differ only in addresses (ASLR).
So what an executable line says besides its addresses (offset, path, deleted, the file's identity and
build id) is worked out once per drain and shared (`_Line`, by the line's text after the address
range): a new process costs the kernel's text, then a split and a dictionary hit per executable line.
`Mapping`s are built when a lookup lands in them, and `MappedFile`s (per-pid paths) when asked for.

On Linux 6.11+ the executable mappings are asked for with the PROCMAP_QUERY ioctl instead of read as
text (the kernel printing every line is most of a text read, and ~4 in 5 lines are not executable):
it gives the same fields, so the same `_Line`s and `_Process`es. The text stays the fallback: older
kernels, a name the text would print differently (non-ASCII, control characters), a process gone.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import struct
import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from podflame.model import Mapping
from symbolizer.cache import LRU
from symbolizer.elf import read_build_id
from symbolizer.files import DELETED, MappedFile, candidate_paths, is_special

# Characters other than "\n" that str.splitlines() breaks lines at or str.split() splits fields at, in
# ASCII; maps text without them (and without non-ASCII) splits the same on "\n" and " " alone.
_ODD = ("\t", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f")
_ODD_NAME = re.compile(b"[\n" + re.escape("".join(_ODD).encode()) + b"]")  # "\n" too: the text prints "\\012"

# PROCMAP_QUERY (linux/fs.h, 6.11+): _IOWR(0x9f, 17, struct procmap_query), on an open /proc/PID/maps.
# struct procmap_query: u64 size, query_flags, query_addr, vma_start, vma_end, vma_flags, vma_page_size,
# vma_offset, inode; u32 dev_major, dev_minor, vma_name_size, build_id_size; u64 vma_name_addr, build_id_addr.
_PROCMAP_QUERY = 0xC0686611
_QUERY = struct.Struct("<9Q4I2Q")
_ADDR = struct.Struct("<Q")  # query_addr, at 16
_NAME_SIZE = struct.Struct("<I")  # vma_name_size, at 80
_FOUND = struct.Struct("<6Q3I")  # vma_start .. vma_name_size, at 24
_QueryKey = tuple[int, int, int, int, int, bytes]  # vma_flags, offset, dev_major, dev_minor, inode, name
_VMA_EXECUTABLE = 0x04  # as a query flag: skip VMAs without VM_EXEC, the "x" the text prints in perms
_COVERING_OR_NEXT_VMA = 0x10
_NAME_MAX = 4096  # PATH_MAX, as the kernel caps it; a longer name fails with ENAMETOOLONG: read the text
_GATE = 1 << 63  # the gate area ([vsyscall]) is in the kernel's half: printed in the text, not a VMA
_LOW = 1 << 32  # 32-bit (ia32, x32) processes live below 4 GiB and have no [vsyscall]


@dataclass(frozen=True, slots=True)
class MapsEntry:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str  # as printed: may end in " (deleted)", may be empty or [vdso]

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    @property
    def deleted(self) -> bool:
        return self.inode != 0 and self.path.endswith(DELETED)

    @property
    def clean_path(self) -> str:
        """The path without the " (deleted)" marker; `[anon]` for unnamed anonymous memory."""
        if not self.path:
            return "[anon]"
        return self.path[: -len(DELETED)] if self.deleted else self.path


def parse_maps(text: str) -> list[MapsEntry]:
    """All lines of a maps file (paths may contain spaces); malformed lines are skipped."""
    return [e for line in text.splitlines() if (e := _entry(line)) is not None]


def parse_exec_maps(text: str) -> list[MapsEntry]:
    """The executable lines of a maps file, as `parse_maps` reads them, without building the others
    (a Python process's maps have ~5 lines for each executable one; the agent reads one per new process)."""
    out: list[MapsEntry] = []
    for line in text.splitlines():
        sp = line.find(" ")  # perms follow the range: "r-xp"
        if line[sp + 3:sp + 4] == "x" and (e := _entry(line)) is not None and "x" in e.perms:
            if len(out) >= 2 and not out[-1].inode and not out[-1].path:
                out[-1] = _moved_entry(out[-2], out[-1], e)
            out.append(e)
    return out


def _moved_entry(prev: MapsEntry, anon: MapsEntry, after: MapsEntry) -> MapsEntry:
    """`anon` as its file's text where it lies between two mappings of that file whose offsets it continues
    (`_text_moved`, for lines read as text); else as it is."""
    if prev.inode and (prev.dev, prev.inode, prev.path) == (after.dev, after.inode, after.path) and (
            offset := _moved_offset(prev.start, prev.end, prev.offset, anon.start, anon.end, after.start,
                                    after.offset)) is not None:
        return MapsEntry(anon.start, anon.end, anon.perms, offset, prev.dev, prev.inode, prev.path)
    return anon


def _moved_offset(prev_start: int, prev_end: int, prev_offset: int, start: int, end: int, next_start: int,
                  next_offset: int) -> int | None:
    """The file offset of the anonymous VMA [start, end) where it fills the gap between two VMAs of one file and
    their offsets say the file's text runs on through it (`_text_moved`); None where they do not."""
    offset = prev_offset + (prev_end - prev_start)
    return offset if prev_end == start and end == next_start and offset + (end - start) == next_offset else None


_PERMS = {flags: "".join(c if flags & bit else "-" for bit, c in ((1, "r"), (2, "w"), (4, "x")))
          + ("s" if flags & 8 else "p") for flags in range(16)}


def read_exec_maps(pid: int, proc: str = "/proc", query: bool = True) -> list[MapsEntry]:
    """The executable mappings of `pid`, as `parse_exec_maps` reads them from the text, without the gate
    area ([vsyscall], no VMA). On Linux 6.11+ asked for with PROCMAP_QUERY (only executable VMAs: a
    Python process's text has ~5 lines for each of them); the text where the ioctl is missing or a name
    would read otherwise there, or at once with `query=False` (a caller whose own query just said so).
    Raises OSError when the maps cannot be read (the process exited)."""
    fd = os.open(f"{proc}/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        found = _query_exec(fd) if query else None
        if found is not None:
            return found
        text = _read_fd(fd, 1 << 16).decode(errors="surrogateescape")
        return [e for e in parse_exec_maps(text) if e.start < _GATE]
    finally:
        os.close(fd)


ExecVma = tuple[int, int, _QueryKey]  # start, end, and what the VMA says apart from where it is


def read_exec_vmas(pid: int, proc: str = "/proc") -> list[ExecVma] | None:
    """The executable VMAs of `pid` as PROCMAP_QUERY answers them, keys not yet made into maps lines: a
    reader that has seen a key (the same file at the same offset, in any process) needs nothing else
    from it, and `exec_entry` makes the line of one it has not. None where the ioctl is missing or fails
    (read_exec_maps reads the text then). Raises OSError when the maps cannot be opened (exited)."""
    fd = os.open(f"{proc}/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return list(_exec_vmas(fd, bytearray(_QUERY.size), ctypes.addressof(_name_buffer())))
    except OSError:  # ENOTTY before 6.11, ESRCH: exiting
        return None
    finally:
        os.close(fd)


def exec_entry(vma: ExecVma) -> MapsEntry | None:
    """The maps line of a queried VMA; None for a name the text prints otherwise (read_exec_maps then)."""
    return _queried_entry(*vma)


LayoutKey = tuple[bool, frozenset[tuple[_QueryKey, int]]]


def layout_key(vmas: Sequence[ExecVma]) -> LayoutKey | None:
    """A process's layout, what places its executable mappings apart from where ASLR put them: whether it is
    64-bit (memory above 4 GiB: a 32-bit process's vDSO is another image) and the set of its VMAs' PROCMAP_QUERY
    keys and sizes (the size tells the vDSO's image: it has no file). A set: ASLR orders dlopen'ed libraries
    differently in processes of one program. The unwind loader keys its placements by it, Python detection
    its answers (with the executable). None without VMAs."""
    if not vmas:
        return None
    return vmas[-1][1] > _LOW, frozenset(vma_keys(vmas))


def vma_keys(vmas: Iterable[ExecVma]) -> Iterator[tuple[_QueryKey, int]]:
    """What places each VMA apart from where ASLR put it: its PROCMAP_QUERY key and its size (which tells the
    vDSO's image: it has no file). A layout's members; the unwind loader's placements are keyed by them."""
    return ((v[2], v[1] - v[0]) for v in vmas)


_UNREAD = object()


@dataclass(slots=True)
class NewProcess:
    """One read of a process the sampler just announced, shared by everything that reads a new process:
    the agent's maps cache, Python detection and the unwind loader each read /proc/PID/stat and walked
    the executable VMAs on their own (~25 us for `sleep`, ~40 us for python3 each, three times over, on
    a node starting hundreds of processes a minute). `vmas` are PROCMAP_QUERY's (None before Linux 6.11
    or where the ioctl failed: readers read the maps themselves then, as before)."""

    pid: int
    starttime: int | None  # /proc/PID/stat field 22, read before the maps: the answer is for this process
    vmas: list[ExecVma] | None
    _entries: list[MapsEntry] | None = None
    _layout: object = _UNREAD
    _exe: object = _UNREAD

    def layout(self) -> LayoutKey | None:
        """`layout_key(vmas)`, made once for every reader (the unwind loader's and Python detection's keys)."""
        if self._layout is _UNREAD:
            self._layout = layout_key(self.vmas) if self.vmas is not None else None
        return self._layout  # type: ignore[return-value]

    def exe(self, proc: str = "/proc") -> str | None:
        """The readlink of /proc/PID/exe, read once for every reader (Python detection's key, the unwind
        loader's choice of tables to load at once); None when it cannot be read (exited, a kernel thread)."""
        if self._exe is _UNREAD:
            try:
                self._exe = os.readlink(f"{proc}/{self.pid}/exe")
            except OSError:
                self._exe = None
        return self._exe  # type: ignore[return-value]

    def entries(self) -> list[MapsEntry] | None:
        """The maps lines of `vmas` (as read_exec_maps gives them); None when there are no VMAs or a name
        would read otherwise in the text (the reader reads it then)."""
        if self._entries is None and self.vmas is not None:
            lines = [_queried_entry(*v) for v in self.vmas]
            if None in lines:
                return None
            self._entries = [e for e in lines if e is not None]
        return self._entries


def read_new_process(pid: int, proc: str = "/proc", started: int | None = None) -> NewProcess | None:
    """Start time and executable VMAs of `pid`, read once for every reader; None when it exited (or is a
    zombie, or a kernel thread: no maps to read). `started`: its start time as the kernel's announcement
    gave it (the sampler's watcher), which spares reading /proc/PID/stat; else that is read first."""
    if started is None:
        st = _read_stat(pid, proc)
        if st is None or st.zombie:
            return None
        started = st.starttime
    vmas = read_live_vmas(pid, proc)
    return None if vmas is False else NewProcess(pid, started, vmas)


def read_live_vmas(pid: int, proc: str = "/proc") -> list[ExecVma] | Literal[False] | None:
    """The executable VMAs of `pid` by PROCMAP_QUERY (read_exec_vmas); None where the ioctl is missing (before
    6.11) or failed otherwise (readers read the maps themselves then); False when the process exited, is a
    zombie or a kernel thread (no mm: the ioctl says ESRCH), so that nothing of it can be read."""
    if not _QUERY_WORKS[0]:
        return None if os.path.exists(f"{proc}/{pid}") else False
    try:
        fd = os.open(f"{proc}/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return list(_exec_vmas(fd, bytearray(_QUERY.size), ctypes.addressof(_name_buffer())))
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            _QUERY_WORKS[0] = _query_supported(pid, proc)
        return None
    finally:
        os.close(fd)


def query_vma(pid: int, address: int, proc: str = "/proc") -> ExecVma | None:
    """The executable VMA of `pid` holding `address` (one PROCMAP_QUERY); None when there is none there, the
    process exited, or the ioctl is missing."""
    try:
        fd = os.open(f"{proc}/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        buf = bytearray(_QUERY.size)
        name_addr = ctypes.addressof(_name_buffer())
        _QUERY.pack_into(buf, 0, _QUERY.size, _VMA_EXECUTABLE, address, 0, 0, 0, 0, 0, 0, 0, 0, _NAME_MAX, 0,
                         name_addr, 0)
        fcntl.ioctl(fd, _PROCMAP_QUERY, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    start, end, flags, _, offset, inode, major, minor, name_size = _FOUND.unpack_from(buf, 24)
    return start, end, (flags, offset, major, minor, inode,
                        ctypes.string_at(name_addr, name_size - 1) if name_size else b"")


_QUERY_WORKS = [True]  # False once PROCMAP_QUERY was found missing (before 6.11): not tried per process


def _query_supported(pid: int, proc: str) -> bool:
    """Whether the ioctl exists: a live process's maps answer something other than ENOTTY/EINVAL."""
    try:
        fd = os.open(f"{proc}/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        buf = bytearray(_QUERY.size)
        _QUERY.pack_into(buf, 0, _QUERY.size, _COVERING_OR_NEXT_VMA, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        fcntl.ioctl(fd, _PROCMAP_QUERY, buf)
    except OSError as exc:
        return exc.errno not in (errno.ENOTTY, errno.EINVAL)
    finally:
        os.close(fd)
    return True


_NAME_BUFFERS = threading.local()  # a name buffer per thread: the loader and the agent read at once


def _name_buffer() -> ctypes.Array[ctypes.c_char]:
    buf = getattr(_NAME_BUFFERS, "buf", None)
    if buf is None:
        buf = _NAME_BUFFERS.buf = ctypes.create_string_buffer(_NAME_MAX)
    return buf


def _query_exec(fd: int) -> list[MapsEntry] | None:
    """Executable VMAs by PROCMAP_QUERY, None when the text must be read instead (see read_exec_maps)."""
    out: list[MapsEntry] = []
    try:
        for start, end, key in _exec_vmas(fd, bytearray(_QUERY.size), ctypes.addressof(_name_buffer())):
            e = _queried_entry(start, end, key)
            if e is None:
                return None
            out.append(e)
    except OSError:  # ENOTTY before 6.11 (one failed call), ESRCH: exiting, no memory
        return None
    return out


def _exec_vmas(fd: int, buf: bytearray, name_addr: int) -> Iterator[tuple[int, int, _QueryKey]]:
    """(start, end, key) of each executable VMA of the process whose maps `fd` is open on, by PROCMAP_QUERY,
    in address order, into `buf` and the name buffer at `name_addr` (_NAME_MAX bytes), text moved into
    anonymous memory given back to its file (`_text_moved`). Ends at ENOENT (no executable VMA left); raises
    the ioctl's other errors (ENOTTY before 6.11, ESRCH: exiting, ...)."""
    return _text_moved(_queried_vmas(fd, buf, name_addr))


def _text_moved(vmas: Iterable[ExecVma]) -> Iterator[ExecVma]:
    """`vmas` (in address order), where an anonymous executable VMA lies between two executable VMAs of one
    file whose offsets it continues (the file's text from the first's end to the second's start), as that
    file's: a program that copied the middle of its text into anonymous huge pages mapped over it (node
    --use-largepages, iodlr's liblppreload) runs the file's code there, whose unwind rows and names are the
    file's. Anything else anonymous (JIT code) stays as it is: it is never mapped over the middle of a file's
    text. Text moved whole (no mapping of the file's text left beside it) is not recognised."""
    prev: ExecVma | None = None
    held: ExecVma | None = None  # an anonymous VMA right after `prev`, waiting for what follows it
    for v in vmas:
        if held is not None and prev is not None:
            (p_start, p_end, pk), (a_start, a_end, ak), (n_start, _, nk) = prev, held, v
            if pk[2:] == nk[2:] and (
                    offset := _moved_offset(p_start, p_end, pk[1], a_start, a_end, n_start, nk[1])) is not None:
                held = (a_start, a_end, (ak[0], offset, *nk[2:]))
            yield held
            prev, held = held, None
        key = v[2]
        if not key[4] and not key[5] and prev is not None and prev[1] == v[0] and prev[2][4]:
            held = v
            continue
        yield v
        prev = v
    if held is not None:
        yield held


def _queried_vmas(fd: int, buf: bytearray, name_addr: int) -> Iterator[ExecVma]:
    """`_exec_vmas` as the kernel answers them."""
    _QUERY.pack_into(buf, 0, _QUERY.size, _VMA_EXECUTABLE | _COVERING_OR_NEXT_VMA, 0, 0, 0, 0, 0, 0, 0,
                     0, 0, _NAME_MAX, 0, name_addr, 0)
    end = 0
    while True:
        _ADDR.pack_into(buf, 16, end)  # the fields the kernel writes back are set again: name size, address
        _NAME_SIZE.pack_into(buf, 80, _NAME_MAX)
        try:
            fcntl.ioctl(fd, _PROCMAP_QUERY, buf)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        start, end, flags, _, offset, inode, major, minor, name_size = _FOUND.unpack_from(buf, 24)
        yield start, end, (flags, offset, major, minor, inode,
                           ctypes.string_at(name_addr, name_size - 1) if name_size else b"")


def _queried_entry(start: int, end: int, key: _QueryKey) -> MapsEntry | None:
    """The maps line a queried VMA prints; None for a name the text shows otherwise: escaped ("\\n" as
    "\\012") or split at (odd whitespace, non-ASCII), so that the text must be read instead."""
    fields = _FIELDS.get(key, _UNSEEN)
    if fields is _UNSEEN:
        fields = _line_fields(key)
    return None if fields is None else MapsEntry(start, end, *fields)


_EntryFields = tuple[str, int, str, int, str]  # MapsEntry's fields after the address range
_FIELDS: dict[_QueryKey, _EntryFields | None] = {}  # by query key: the same in every process mapping the file
_FIELDS_MAX = 8192
_UNSEEN: _EntryFields = ("", 0, "", 0, "")


def _line_fields(key: _QueryKey) -> _EntryFields | None:
    """What a maps line of a VMA with this key prints after its range (None: the text prints its name otherwise),
    remembered: a busy node's new processes map the same files, and a line's fields are a pure function of
    the key (a python3's ten executable VMAs cost 22 us to make into lines, half of it these fields)."""
    flags, offset, major, minor, inode, name = key
    fields = None if not name.isascii() or _ODD_NAME.search(name) else \
        (_PERMS[flags & 15], offset, f"{major:02x}:{minor:02x}", inode, name.decode())
    if len(_FIELDS) >= _FIELDS_MAX:
        _FIELDS.clear()
    _FIELDS[key] = fields
    return fields


def _entry(line: str) -> MapsEntry | None:
    parts = line.split(maxsplit=5)
    if len(parts) < 5:
        return None
    try:
        lo, hi = parts[0].split("-", 1)
        return MapsEntry(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), parts[3], int(parts[4]),
                         parts[5] if len(parts) > 5 else "")
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Line:
    """An executable maps line apart from its addresses, with its file's identity as of one drain.

    Shared by every process whose maps print the same line text after the address range (the same
    binaries at other addresses), so a new process does not parse, stat or look up build ids again."""

    offset: int
    path: str  # clean: no " (deleted)"; "[anon]" for unnamed memory
    deleted: bool
    special: bool  # [vdso], [vsyscall], anonymous: no file
    key: tuple[int, int, int] | None  # (st_dev, st_ino, st_mtime_ns); None when special or not stat-able
    build_id: str | None


@dataclass(slots=True)
class _Process:
    starttime: int | None
    exe: tuple[int, int] | None  # (st_dev, st_ino) of /proc/PID/exe: changes on exec
    starts: list[int]  # executable mappings, sorted by start
    ends: list[int]
    lines: list[_Line]
    built: list[Mapping | None]  # Mappings built so far: only those a lookup (or file) asked for
    read_gen: int
    used_gen: int
    version: int  # changes when the maps change (exec, pid reuse, dlopen...), not on a re-read finding the same
    gone_gen: int | None = None
    # the image an exec replaced (and its own, up to IMAGES_KEPT): the samples of a drain may predate the exec
    before: _Process | None = None
    replaced_gen: int = 0  # when a newer image replaced this one

    def find_any(self, address: int) -> Mapping | None:
        """`find` in this image, then in the images it replaced, newest first."""
        q: _Process | None = self
        while q is not None:
            m = q.find(address)
            if m is not None:
                return m
            q = q.before
        return None

    def find(self, address: int) -> Mapping | None:
        i = bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.ends[i]:
            return self.mapping(i)
        return None

    def mapping(self, i: int) -> Mapping:
        m = self.built[i]
        if m is None:
            ln = self.lines[i]
            m = self.built[i] = Mapping(self.starts[i], self.ends[i], ln.offset, ln.path, ln.build_id)
        return m

    @property
    def mappings(self) -> list[Mapping]:
        return [self.mapping(i) for i in range(len(self.starts))]


def _trim(p: _Process, keep: int) -> None:
    """Keeps at most `keep` images before `p`."""
    for _ in range(keep):
        if p.before is None:
            return
        p = p.before
    p.before = None


def _moved(item: int | NewProcess, p: _Process) -> bool:
    """Whether an announcement's executable VMAs start where `p`'s maps have none (a new image, a library),
    or hold another file (or another part of one) where `p`'s do (a library dlclosed, another dlopened at
    its address)."""
    if isinstance(item, int) or not item.vmas:
        return False
    starts, ends, lines = p.starts, p.ends, p.lines
    for start, end, key in item.vmas:
        i = bisect_right(starts, start) - 1
        if i < 0 or starts[i] != start:
            return True
        line = lines[i]
        if ends[i] != end or line.offset != key[1] or (line.key is not None and line.key[1] != key[4]):
            return True
    return False


def _placed(p: _Process) -> set[tuple[int, int, tuple[int, int, int] | None]]:
    return {(start, line.offset, line.key) for start, line in zip(p.starts, p.lines, strict=True)}


@dataclass(slots=True)
class _Stat:
    starttime: int | None
    zombie: bool


IMAGES_KEPT = 4  # images of one process held after its execs (a process exec'ing in a loop keeps the last ones)


class MapsCache:
    """Maps of recently sampled processes. The agent calls `refresh(pids)` once per drain, then
    `lookup(pid, address)` per frame; `maps_lost(pid)` tells why a frame found no mapping.

    `grace_drains`: drains an exited process keeps its maps, counting the drain that noticed the
    exit (whose samples may predate it). `idle_drains`: drains a live process not sampled is
    kept (re-reading is cheap). `max_pids` caps the processes tracked (and, times 4, a drain's
    distinct executable lines), `max_files` the build ids remembered. Not thread-safe: one agent
    thread drives it.
    """

    def __init__(self, proc: str = "/proc", *, grace_drains: int = 2, idle_drains: int = 30, max_pids: int = 4096,
                 max_files: int = 8192, procmap_query: bool = True) -> None:
        self.proc = proc
        self.grace_drains = grace_drains
        self.idle_drains = idle_drains
        self.max_pids = max_pids
        self._procs: dict[int, _Process] = {}
        self._failed: dict[int, bool] = {}  # pid -> gone, for pids whose maps could not be read this drain
        self._gen = 0  # drains seen
        self._build_ids: LRU[str | None] = LRU(max_files)
        self._versions = 0
        # an executable line's text after its address range (or its fields, for text read the slow way)
        # -> what it says and its file's identity; for one drain, so a file replaced in place is seen
        # (or an ioctl's VMA fields, but for the addresses)
        self._lines: dict[str | tuple[str, int, str, int, str] | _QueryKey, _Line] = {}
        self._query = procmap_query  # False once the ioctl failed as unsupported: the text from then on
        self._query_buf = bytearray(_QUERY.size)
        self._name_buf = ctypes.create_string_buffer(_NAME_MAX)
        self._gate: list[tuple[int, int, _QueryKey]] | None = None  # executable lines the text shows that are no VMA
        self.stats = {"reads": 0, "rereads": 0, "exits": 0, "execs": 0}

    # -- per drain ---------------------------------------------------------------------------

    def refresh(self, pids: Iterable[int]) -> None:
        """Start a drain: age out the exited, read maps of new pids and of pids that exec'd."""
        self._gen += 1
        self._failed.clear()
        self._lines.clear()  # a file replaced in place (new mtime) is seen by the next drain
        self.forget_exited()
        for pid in pids:
            p = self._procs.get(pid)
            if p is None:
                self._read(pid)
                continue
            p.used_gen = self._gen
            if p.gone_gen is None and p.read_gen < self._gen and self._exe_identity(pid) != p.exe:
                self.stats["execs"] += 1
                self._read(pid)
        self._evict()

    def prefetch(self, pids: Iterable[int | NewProcess]) -> None:
        """Read maps of pids not known yet, between drains (the kernel just saw them for the first time);
        a `NewProcess` gives what the sampler's watcher read already (no second read).

        Unlike `refresh` it does not start a drain, so exited processes' grace periods are unchanged."""
        for item in pids:
            pid = item if isinstance(item, int) else item.pid
            p = self._procs.get(pid)
            # a known pid is announced again after exec: read the new image's maps (another executable, or the
            # same one re-exec'd at new addresses; a thread's new comm alone changes neither)
            if p is None or (p.gone_gen is None and (self._exe_identity(pid) != p.exe or _moved(item, p))):
                self._read(pid, None if isinstance(item, int) else item)
        self._evict()

    def forget_exited(self) -> None:
        """Mark processes that exited (or whose pid was reused); drop them after the grace period,
        and drop live ones not sampled for `idle_drains`."""
        for pid, p in list(self._procs.items()):
            newer, q = p, p.before
            while q is not None and self._gen - q.replaced_gen < self.grace_drains:
                newer, q = q, q.before
            if q is not None:
                newer.before = None  # every sample of the images replaced that long ago was drained
            if p.gone_gen is None:
                if self._gen - p.used_gen > self.idle_drains:
                    del self._procs[pid]
                    continue
                st = self._stat(pid)
                if st is not None and st.starttime != p.starttime:
                    del self._procs[pid]  # pid reused by a new process: its maps get read afresh
                    self.stats["exits"] += 1
                    continue
                if st is None or st.zombie:
                    p.gone_gen = self._gen
                    self.stats["exits"] += 1
            if p.gone_gen is not None and self._gen - p.gone_gen >= self.grace_drains:
                del self._procs[pid]

    # -- per frame ---------------------------------------------------------------------------

    def lookup(self, pid: int, address: int) -> Mapping | None:
        """The executable mapping holding `address` in `pid`, or None."""
        p = self._procs.get(pid)
        if p is None:
            if pid in self._failed:
                return None
            p = self._read(pid)  # a caller that skipped refresh still gets maps
            if p is None:
                return None
        m = p.find(address)
        if m is None and p.gone_gen is None and p.read_gen < self._gen:
            self.stats["rereads"] += 1
            p = self._read(pid) or p
            m = p.find(address)
        if m is None and p.before is not None:  # a sample taken before an exec (same pid, another image)
            m = p.before.find_any(address)
        return m

    def file(self, pid: int, mapping: Mapping) -> MappedFile | None:
        """Where the symbolizer can open `mapping`'s file, and the file's identity (as of the read).

        Built on request: the symbolizer asks only for a binary it has not loaded (or without a build id). None
        where the maps now hold another file at the mapping's range (a library dlclosed and another dlopened at
        its address, read after the drain's samples were taken): the symbolizer then opens the mapping's own
        path, not the new file's."""
        p = self._procs.get(pid)
        while p is not None:  # this image, then those its execs replaced
            i = bisect_right(p.starts, mapping.start) - 1
            if i >= 0 and p.starts[i] == mapping.start and p.ends[i] == mapping.limit and \
                    p.lines[i].path == mapping.path and p.lines[i].offset == mapping.offset:
                if p.lines[i].special:
                    return None
                ln = p.lines[i]
                return MappedFile(candidate_paths(pid, p.mapping(i), deleted=ln.deleted, proc=self.proc), ln.key)
            p = p.before
        return None

    def version(self, pid: int) -> int | None:
        """Changes whenever the maps known for `pid` change (exec, pid reuse, a new mapping found by a
        re-read); None when the process is not tracked (never read, or dropped after its exit). What
        was derived from a process's maps (the agent's symbolized frames) holds while this is unchanged."""
        p = self._procs.get(pid)
        return p.version if p is not None else None

    def start_time(self, pid: int) -> int | None:
        """Start time (clock ticks after boot) of the process held for `pid`, exited ones in their grace
        period too; None when none is held. Read with its maps: no second read of /proc/PID/stat."""
        p = self._procs.get(pid)
        return p.starttime if p is not None else None

    def maps_lost(self, pid: int) -> bool:
        """True when the process exited before its maps were read (or after they were let go): its
        frames can get no mapping now. A process whose maps are held is not lost, exited or not: an
        address outside them has no mapping."""
        if pid in self._procs:
            return False
        if pid in self._failed:
            return self._failed[pid]
        return not os.path.exists(f"{self.proc}/{pid}")

    def __len__(self) -> int:
        return len(self._procs)

    # -- reading -----------------------------------------------------------------------------

    def _stat(self, pid: int) -> _Stat | None:
        return _read_stat(pid, self.proc)

    def _exe_identity(self, pid: int) -> tuple[int, int] | None:
        try:
            st = os.stat(f"{self.proc}/{pid}/exe")
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _read(self, pid: int, new: NewProcess | None = None) -> _Process | None:
        """(Re-)read a process's maps (or take `new`'s VMAs: read a moment ago). On failure a known process
        is marked gone and keeps its old maps; an unknown one is remembered as failed for this drain."""
        old = self._procs.get(pid)
        text = None
        queried = None
        if new is not None and new.vmas is not None and self._query and \
                (queried := self._known_lines(pid, new.vmas)) is not None:
            st: _Stat | None = _Stat(new.starttime, False)
        else:
            st = self._stat(pid)
        if queried is None and st is not None and not st.zombie:
            try:
                fd = os.open(f"{self.proc}/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if self._query:
                        queried = self._query_lines(pid, fd)
                    if queried is None:
                        # surrogateescape: a path that is not UTF-8 still round-trips to os.stat/open
                        text = _read_fd(fd, 1 << 16).decode(errors="surrogateescape")
                finally:
                    os.close(fd)
            except OSError:
                text = None
        if old is not None and st is not None and old.starttime != st.starttime:
            del self._procs[pid]  # a new process under a reused pid: the old maps are not its maps
            old = None
        if queried is None and (text is None or (not text and old is not None and old.starts)):
            gone = st is None or st.zombie or not os.path.exists(f"{self.proc}/{pid}")
            if old is not None:
                old.read_gen = self._gen
                if gone and old.gone_gen is None:
                    old.gone_gen = self._gen
                    self.stats["exits"] += 1
                return old
            self._failed[pid] = gone
            return None
        self.stats["reads"] += 1
        starts: list[int] = []
        ends: list[int] = []
        lines: list[_Line] = []
        known = self._lines
        if queried is not None:
            starts, ends, lines = queried
        elif text is not None and text.isascii() and not any(c in text for c in _ODD):
            # Lines and fields split as parse_exec_maps splits them; one dictionary hit per executable
            # line of a known binary (what follows the range is the same in every process mapping it).
            for line in text.split("\n"):
                sp = line.find(" ")  # perms follow the range: "r-xp"
                if line[sp + 3:sp + 4] != "x":
                    continue
                ln = known.get(line[sp + 1:]) if sp > 0 else None
                if ln is None:
                    e = _entry(line)
                    if e is None or "x" not in e.perms:
                        continue
                    ln = self._line(pid, e, line[sp + 1:] if sp > 0 else None)
                    start, end = e.start, e.end
                else:
                    lo, _, hi = line[:sp].partition("-")  # the range as _entry reads it (sp: first blank)
                    try:
                        start, end = int(lo, 16), int(hi, 16)
                    except ValueError:
                        continue
                starts.append(start)
                ends.append(end)
                lines.append(ln)
        elif text is not None:  # non-ASCII paths (surrogate-escaped bytes too) or odd whitespace: the general parser
            for e in parse_exec_maps(text):
                starts.append(e.start)
                ends.append(e.end)
                lines.append(self._line(pid, e, (e.perms, e.offset, e.dev, e.inode, e.path)))
        if starts != sorted(starts):  # the kernel prints them in order
            order = sorted(range(len(starts)), key=starts.__getitem__)
            starts, ends, lines = [starts[i] for i in order], [ends[i] for i in order], [lines[i] for i in order]
        starttime = st.starttime if st else None
        if (old is not None and old.starttime == starttime and old.starts == starts and old.ends == ends
                and old.lines == lines):
            version = old.version  # re-read (an address outside every mapping), nothing changed
        else:
            self._versions += 1
            version = self._versions
        p = _Process(starttime, self._exe_identity(pid), starts, ends, lines, [None] * len(starts),
                     read_gen=self._gen, used_gen=self._gen, version=version)
        if old is not None and version != old.version and starttime is not None and old.starttime == starttime \
                and not _placed(old) <= _placed(p):
            # the same process with mappings gone or holding another file (an exec's new image, a dlclose): the
            # samples of the drain under way may predate it, and keep their names from the maps they were taken
            # under where the new maps have none
            p.before, old.replaced_gen = old, self._gen
            _trim(old, IMAGES_KEPT - 1)
        elif old is not None:
            p.before = old.before  # a dlopen: the images before stay
        self._procs[pid] = p
        return p

    def _known_lines(self, pid: int, vmas: list[ExecVma]) -> tuple[list[int], list[int], list[_Line]] | None:
        """`_query_lines` for VMAs queried already (NewProcess); None for what needs the maps open: a name
        the text prints otherwise, or no VMA above 4 GiB (is it a 32-bit process, without gate lines?)."""
        if not vmas or vmas[-1][1] <= _LOW:
            return None
        return self._vma_lines(pid, vmas, True)

    def _query_lines(self, pid: int, fd: int) -> tuple[list[int], list[int], list[_Line]] | None:
        """The executable mappings of `pid` (whose maps `fd` is open on) by PROCMAP_QUERY, with the gate
        lines its text would show; None when the text must be read instead: the ioctl is unsupported
        (remembered), the process has no memory (exiting, a kernel thread: the text is empty), or a name
        would not read the same in the text. One ioctl and a dictionary hit per VMA of a known binary."""
        if self._gate is None:
            self._gate = self._read_gate()
        try:
            vmas = list(_exec_vmas(fd, self._query_buf, ctypes.addressof(self._name_buf)))
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.ENAMETOOLONG, errno.EINTR, errno.ENOMEM):
                self._query = False  # ENOTTY (before 6.11, or not a maps file), EINVAL, ...: not again
            return None
        above_low = bool(self._gate) and ((bool(vmas) and vmas[-1][1] > _LOW) or self._above_low(fd))
        return self._vma_lines(pid, vmas, above_low)

    def _vma_lines(self, pid: int, vmas: list[ExecVma],
                   above_low: bool) -> tuple[list[int], list[int], list[_Line]] | None:
        """Starts, ends and lines of these VMAs, then the gate lines (in a process with memory above 4 GiB:
        a 64-bit one); a dictionary hit per VMA of a known binary. None for a name the text shows otherwise."""
        if self._gate is None:
            self._gate = self._read_gate()
        known = self._lines
        starts: list[int] = []
        ends: list[int] = []
        lines: list[_Line] = []
        for start, end, key in [*vmas, *(self._gate if above_low else ())]:
            ln = known.get(key)
            if ln is None and (ln := self._query_line(pid, start, end, key)) is None:
                return None
            starts.append(start)
            ends.append(end)
            lines.append(ln)
        return starts, ends, lines

    def _query_line(self, pid: int, start: int, end: int, key: _QueryKey) -> _Line | None:
        """`_line` for a VMA the ioctl found; None for a name the text shows otherwise (_queried_entry)."""
        e = _queried_entry(start, end, key)
        return None if e is None else self._line(pid, e, key)

    def _above_low(self, fd: int) -> bool:
        """Whether the process has memory above 4 GiB: a 64-bit one, whose text shows the gate lines
        (32-bit ones' do not). Asked only when no executable VMA is up there (normally the vdso is)."""
        buf = bytearray(_QUERY.size)
        _QUERY.pack_into(buf, 0, _QUERY.size, _COVERING_OR_NEXT_VMA, _LOW, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        try:
            fcntl.ioctl(fd, _PROCMAP_QUERY, buf)
        except OSError as exc:
            return exc.errno != errno.ENOENT
        return True

    def _read_gate(self) -> list[tuple[int, int, _QueryKey]]:
        """The executable lines the text shows above user space that are no VMA (x86-64's [vsyscall]),
        as VMAs: the same in every 64-bit process on this kernel, so read once, from our own maps."""
        try:
            text = _slurp(f"{self.proc}/self/maps", 1 << 16).decode(errors="surrogateescape")
        except OSError:
            return []
        gate = []
        for e in parse_exec_maps(text):
            if e.start >= _GATE and is_special(e.clean_path):
                major, _, minor = e.dev.partition(":")
                flags = sum(bit for bit, c in zip((1, 2, 4, 8), e.perms, strict=False) if c in "rwxs")
                gate.append((e.start, e.end, (flags, e.offset, int(major, 16), int(minor, 16), e.inode,
                                              e.path.encode(errors="surrogateescape"))))
        return gate

    def _line(self, pid: int, e: MapsEntry, key: str | tuple[str, int, str, int, str] | _QueryKey | None) -> _Line:
        """What executable line `e` says besides its addresses, its file's identity (a stat through this
        process's /proc/PID/map_files) and its build id (read once per identity), remembered under `key`
        for the rest of the drain: a busy node starts many processes mapping the same files."""
        path = e.clean_path
        if is_special(path):
            ln = _Line(e.offset, path, e.deleted, True, None, None)
        else:
            ident = None
            for candidate in candidate_paths(pid, Mapping(e.start, e.end, e.offset, path), deleted=e.deleted,
                                             proc=self.proc):
                try:
                    st = os.stat(candidate)
                except OSError:
                    continue
                ident = (st.st_dev, st.st_ino, st.st_mtime_ns)
                if ident not in self._build_ids:
                    self._build_ids.put(ident, read_build_id(candidate))
                break
            if ident is None:  # not remembered: the next process may be able to stat it
                return _Line(e.offset, path, e.deleted, False, None, None)
            ln = _Line(e.offset, path, e.deleted, False, ident, self._build_ids.get(ident))
        if key is not None:
            if len(self._lines) >= 4 * self.max_pids:
                self._lines.clear()
            self._lines[key] = ln
        return ln

    def _evict(self) -> None:
        """Keep at most `max_pids`: drop exited processes first, then the least recently sampled."""
        excess = len(self._procs) - self.max_pids
        if excess <= 0:
            return
        order = sorted(self._procs.items(), key=lambda kv: (kv[1].gone_gen is None, kv[1].used_gen))
        for pid, _ in order[:excess]:
            del self._procs[pid]


def _read_stat(pid: int, proc: str) -> _Stat | None:
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            # one read: the line is well under 4 KiB, and a seq file hands it whole to a read that can take it
            # (the watcher reads every new process's stat; `_slurp`'s read at end of file was a second syscall)
            data = os.read(fd, 4096)
            if len(data) == 4096:
                data += _read_fd(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # comm may hold spaces and parentheses
    try:
        return _Stat(int(fields[19]), fields[0] in (b"Z", b"X"))
    except (IndexError, ValueError):
        return _Stat(None, False)


def start_time(pid: int, proc: str = "/proc") -> int | None:
    """When process `pid` started, in clock ticks after boot (/proc/PID/stat field 22); None when there is
    no such process. A pid is reused, (pid, start time) is not: it names one process for good."""
    st = _read_stat(pid, proc)
    return None if st is None else st.starttime


def _slurp(path: str, size: int) -> bytes:
    """A whole /proc file: os.read until end of file, without a Python file object (saves ~3 us a file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_fd(fd, size)
    finally:
        os.close(fd)


def _read_fd(fd: int, size: int) -> bytes:
    """The rest of an open /proc file (a maps fd the ioctl path fell back from is still at its start)."""
    chunks = []
    while chunk := os.read(fd, size):
        chunks.append(chunk)
    return b"".join(chunks)
