"""Executable mappings of processes, read from /proc/PID/maps at drain time.

The agent needs a process's maps after the fact: samples are drained seconds after they were
taken, and a short-lived process may be gone by then. So `MapsCache` reads maps as soon as
a pid shows up, keeps exited processes' maps for a grace period of a few drains, re-reads a
live process whose address falls outside what is known (dlopen, a new JIT region) at most
once per drain, and notices exec (same pid, new image) and pid reuse (new start time).
Memory is bounded by the number of pids tracked; build ids are read once per file identity.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from podflame.model import Mapping
from symbolizer.cache import LRU
from symbolizer.elf import read_build_id
from symbolizer.files import DELETED, MappedFile, candidate_paths, is_special


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
    out = []
    for line in text.splitlines():
        sp = line.find(" ")  # perms follow the range: "r-xp"
        if line[sp + 3:sp + 4] == "x" and (e := _entry(line)) is not None and "x" in e.perms:
            out.append(e)
    return out


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


@dataclass(slots=True)
class _Process:
    starttime: int | None
    exe: tuple[int, int] | None  # (st_dev, st_ino) of /proc/PID/exe: changes on exec
    starts: list[int]
    mappings: list[Mapping]
    files: dict[int, MappedFile]  # by mapping start
    read_gen: int
    used_gen: int
    version: int  # changes when the maps change (exec, pid reuse, dlopen...), not on a re-read finding the same
    gone_gen: int | None = None

    def find(self, address: int) -> Mapping | None:
        i = bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.mappings[i].limit:
            return self.mappings[i]
        return None


@dataclass(slots=True)
class _Stat:
    starttime: int | None
    zombie: bool


class MapsCache:
    """Maps of recently sampled processes. The agent calls `refresh(pids)` once per drain, then
    `lookup(pid, address)` per frame; `process_gone(pid)` tells why a frame found no mapping.

    `grace_drains`: drains an exited process keeps its maps, counting the drain that noticed the
    exit (whose samples may predate it). `idle_drains`: drains a live process not sampled is
    kept (re-reading is cheap). `max_pids` caps the processes tracked, `max_files` the build ids
    remembered. Not thread-safe: one agent thread drives it.
    """

    def __init__(self, proc: str = "/proc", *, grace_drains: int = 2, idle_drains: int = 30, max_pids: int = 4096,
                 max_files: int = 8192) -> None:
        self.proc = proc
        self.grace_drains = grace_drains
        self.idle_drains = idle_drains
        self.max_pids = max_pids
        self._procs: dict[int, _Process] = {}
        self._failed: dict[int, bool] = {}  # pid -> gone, for pids whose maps could not be read this drain
        self._gen = 0  # drains seen
        self._build_ids: LRU[str | None] = LRU(max_files)
        self._versions = 0
        # (device, inode, path) as the maps print them -> (st_dev, st_ino, st_mtime_ns); for one drain
        self._identities: dict[tuple[str, int, str], tuple[int, int, int]] = {}
        self.stats = {"reads": 0, "rereads": 0, "exits": 0, "execs": 0}

    # -- per drain ---------------------------------------------------------------------------

    def refresh(self, pids: Iterable[int]) -> None:
        """Start a drain: age out the exited, read maps of new pids and of pids that exec'd."""
        self._gen += 1
        self._failed.clear()
        self._identities.clear()  # a file replaced in place (new mtime) is seen by the next drain
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

    def prefetch(self, pids: Iterable[int]) -> None:
        """Read maps of pids not known yet, between drains (the kernel just saw them for the first time).

        Unlike `refresh` it does not start a drain, so exited processes' grace periods are unchanged."""
        for pid in pids:
            p = self._procs.get(pid)
            # a known pid is announced again after exec (new comm): read the new image's maps
            if p is None or (p.gone_gen is None and self._exe_identity(pid) != p.exe):
                self._read(pid)
        self._evict()

    def forget_exited(self) -> None:
        """Mark processes that exited (or whose pid was reused); drop them after the grace period,
        and drop live ones not sampled for `idle_drains`."""
        for pid, p in list(self._procs.items()):
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
        return m

    def file(self, pid: int, mapping: Mapping) -> MappedFile | None:
        """Where the symbolizer can open `mapping`'s file, and the file's identity."""
        p = self._procs.get(pid)
        return p.files.get(mapping.start) if p is not None else None

    def version(self, pid: int) -> int | None:
        """Changes whenever the maps known for `pid` change (exec, pid reuse, a new mapping found by a
        re-read); None when the process is not tracked (never read, or dropped after its exit). What
        was derived from a process's maps (the agent's symbolized frames) holds while this is unchanged."""
        p = self._procs.get(pid)
        return p.version if p is not None else None

    def process_gone(self, pid: int) -> bool:
        """True when the process has exited: its frames without a mapping cannot get one now."""
        p = self._procs.get(pid)
        if p is not None:
            return p.gone_gen is not None
        if pid in self._failed:
            return self._failed[pid]
        return not os.path.exists(f"{self.proc}/{pid}")

    def __len__(self) -> int:
        return len(self._procs)

    # -- reading -----------------------------------------------------------------------------

    def _stat(self, pid: int) -> _Stat | None:
        try:
            with open(f"{self.proc}/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return None
        fields = data[data.rfind(b")") + 2:].split()  # comm may hold spaces and parentheses
        try:
            return _Stat(int(fields[19]), fields[0] in (b"Z", b"X"))
        except (IndexError, ValueError):
            return _Stat(None, False)

    def _exe_identity(self, pid: int) -> tuple[int, int] | None:
        try:
            st = os.stat(f"{self.proc}/{pid}/exe")
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _read(self, pid: int) -> _Process | None:
        """(Re-)read a process's maps. On failure a known process is marked gone and keeps its
        old maps; an unknown one is remembered as failed for the rest of this drain."""
        old = self._procs.get(pid)
        st = self._stat(pid)
        text = None
        if st is not None and not st.zombie:
            try:
                # surrogateescape: a path that is not UTF-8 still round-trips to os.stat/open
                with open(f"{self.proc}/{pid}/maps", "rb", buffering=0) as f:
                    text = f.readall().decode(errors="surrogateescape")
            except OSError:
                text = None
        if old is not None and st is not None and old.starttime != st.starttime:
            del self._procs[pid]  # a new process under a reused pid: the old maps are not its maps
            old = None
        if text is None or (not text and old is not None and old.mappings):
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
        mappings: list[Mapping] = []
        files: dict[int, MappedFile] = {}
        for e in parse_exec_maps(text):
            path = e.clean_path
            probe = Mapping(e.start, e.end, e.offset, path)
            if is_special(path):
                mappings.append(probe)
                continue
            mf = self._mapped_file(pid, probe, e)
            files[e.start] = mf
            build_id = self._build_ids.get(mf.key) if mf.key is not None else None
            mappings.append(Mapping(e.start, e.end, e.offset, path, build_id))
        mappings.sort(key=lambda m: m.start)
        starttime = st.starttime if st else None
        if old is not None and old.starttime == starttime and old.mappings == mappings and old.files == files:
            version = old.version  # re-read (an address outside every mapping), nothing changed
        else:
            self._versions += 1
            version = self._versions
        p = _Process(starttime, self._exe_identity(pid), [m.start for m in mappings], mappings,
                     files, read_gen=self._gen, used_gen=self._gen, version=version)
        self._procs[pid] = p
        return p

    def _mapped_file(self, pid: int, probe: Mapping, e: MapsEntry) -> MappedFile:
        """Openable paths and identity of a mapping's file; its build id read once per identity.

        The identity (a stat through /proc/PID/map_files) is taken once per drain for each file as the
        maps name it (device, inode, path): a busy node starts many processes mapping the same files."""
        paths = candidate_paths(pid, probe, deleted=e.deleted, proc=self.proc)
        named = (e.dev, e.inode, e.path)
        key = self._identities.get(named)
        if key is not None:
            return MappedFile(paths, key)
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino, st.st_mtime_ns)
            if key not in self._build_ids:
                self._build_ids.put(key, read_build_id(path))
            if len(self._identities) >= 4 * self.max_pids:
                self._identities.clear()
            self._identities[named] = key
            return MappedFile(paths, key)
        return MappedFile(paths, None)

    def _evict(self) -> None:
        """Keep at most `max_pids`: drop exited processes first, then the least recently sampled."""
        excess = len(self._procs) - self.max_pids
        if excess <= 0:
            return
        order = sorted(self._procs.items(), key=lambda kv: (kv[1].gone_gen is None, kv[1].used_gen))
        for pid, _ in order[:excess]:
            del self._procs[pid]
