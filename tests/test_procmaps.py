"""Process maps: parsing, and MapsCache's life cycle on a fake /proc and on real child processes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import profiler.procmaps as procmaps
from podflame.model import Mapping
from profiler.procmaps import MapsCache, parse_exec_maps, parse_maps
from tests.test_symbolizer_build import Binaries, build_id, built, nm_functions, running

MAPS = """\
55d0c8a00000-55d0c8a01000 r--p 00000000 fd:01 1234   /opt/my app/bin/server
55d0c8a01000-55d0c8a05000 r-xp 00001000 fd:01 1234   /opt/my app/bin/server
7f1e2c000000-7f1e2c010000 rwxp 00000000 00:00 0
7f1e2c200000-7f1e2c300000 r-xp 00026000 fd:01 99     /usr/lib/libold.so (deleted)
7f1e2c400000-7f1e2c401000 r-xp 00000000 00:00 0      [anon:v8 code]
7ffd1c3f0000-7ffd1c3f2000 r-xp 00000000 00:00 0      [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]
not a maps line
"""


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    return built(tmp_path_factory)


def test_parse_maps_keeps_spaces_and_marks_deleted_and_anonymous() -> None:
    entries = parse_maps(MAPS)
    assert len(entries) == 7
    server = entries[1]
    assert (server.start, server.end, server.offset, server.inode) == (0x55D0C8A01000, 0x55D0C8A05000, 0x1000, 1234)
    assert server.executable and server.clean_path == "/opt/my app/bin/server" and not server.deleted
    assert [e.clean_path for e in entries[2:]] == ["[anon]", "/usr/lib/libold.so", "[anon:v8 code]", "[vdso]",
                                                   "[vsyscall]"]
    assert entries[3].deleted and not entries[0].executable


class FakeProc:
    """A /proc tree the test controls: stat (state, start time), maps, and an exe link."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, pid: int, maps: str, *, starttime: int = 100, state: str = "S", exe: str = "/bin/true") -> None:
        d = self.root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        # state is field 3, start time field 22; the comm has a space and a parenthesis
        (d / "stat").write_text(f"{pid} (my (app)) {state} " + "1 " * 18 + f"{starttime} 0 0\n")
        (d / "maps").write_text(maps)
        if (d / "exe").is_symlink():
            (d / "exe").unlink()
        (d / "exe").symlink_to(exe)

    def remove(self, pid: int) -> None:
        d = self.root / str(pid)
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def line(start: int, end: int, path: str, offset: int = 0, perms: str = "r-xp") -> str:
    return f"{start:x}-{end:x} {perms} {offset:08x} fd:01 42 {path}\n"


@pytest.fixture
def fake(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def test_exited_process_keeps_maps_for_the_grace_period(fake: FakeProc, binaries: Binaries) -> None:
    fake.add(10, line(0x1000, 0x2000, str(binaries.pie), 0x1000))
    maps = MapsCache(str(fake.root), grace_drains=2)
    maps.refresh([10])
    m = maps.lookup(10, 0x1800)
    assert m == Mapping(0x1000, 0x2000, 0x1000, str(binaries.pie), build_id(binaries.pie))
    assert maps.file(10, m).paths[-1] == str(binaries.pie)
    fake.remove(10)
    maps.refresh([10])  # the drain that notices the exit
    assert not maps.maps_lost(10) and maps.lookup(10, 0x1800) == m  # exited, but its maps are held
    assert maps.lookup(10, 0x9000) is None  # a miss on a dead process: nothing to re-read
    maps.refresh([])
    assert maps.lookup(10, 0x1800) == m
    maps.refresh([])
    assert len(maps) == 0 and maps.lookup(10, 0x1800) is None and maps.maps_lost(10)
    assert maps.stats["exits"] == 1


def test_process_gone_before_its_maps_were_read(fake: FakeProc) -> None:
    maps = MapsCache(str(fake.root))
    maps.refresh([77])
    assert maps.lookup(77, 0x1000) is None and maps.maps_lost(77)
    fake.add(78, line(0x1000, 0x2000, "/bin/x"))
    assert not maps.maps_lost(78)


def test_zombie_counts_as_gone(fake: FakeProc) -> None:
    fake.add(11, line(0x1000, 0x2000, "/bin/x"))
    maps = MapsCache(str(fake.root))
    maps.refresh([11])
    fake.add(11, "", state="Z")  # a zombie's maps read empty
    maps.refresh([11])
    assert maps.stats["exits"] == 1 and not maps.maps_lost(11) and maps.lookup(11, 0x1800) is not None


def test_miss_rereads_maps_at_most_once_per_drain(fake: FakeProc) -> None:
    fake.add(12, line(0x1000, 0x2000, "/bin/x"))
    maps = MapsCache(str(fake.root))
    maps.refresh([12])
    fake.add(12, line(0x1000, 0x2000, "/bin/x") + line(0x5000, 0x6000, "/lib/dlopened.so"))
    assert maps.lookup(12, 0x5800) is None  # read in this very drain: no re-read
    maps.refresh([12])
    assert maps.lookup(12, 0x5800).path == "/lib/dlopened.so"
    fake.add(12, line(0x1000, 0x2000, "/bin/x") + line(0x5000, 0x6000, "/lib/dlopened.so")
             + line(0x8000, 0x9000, "/lib/later.so"))
    assert maps.lookup(12, 0x8800) is None  # already re-read once in this drain
    assert maps.stats["rereads"] == 1


def test_pid_reuse_and_exec_replace_the_maps(fake: FakeProc) -> None:
    """An exec replaces the maps, but the drain under way (and the next, as for an exited process) may hold samples
    of the image before: those keep its names. A new process under a reused pid keeps nothing of the old one."""
    fake.add(13, line(0x1000, 0x2000, "/bin/sh"), starttime=100, exe="/bin/sh")
    maps = MapsCache(str(fake.root), grace_drains=2)
    maps.refresh([13])
    fake.add(13, line(0x3000, 0x4000, "/app/server"), starttime=100, exe="/app/server")  # exec: same pid
    maps.refresh([13])
    assert maps.lookup(13, 0x3800).path == "/app/server" and maps.lookup(13, 0x1800).path == "/bin/sh"
    assert maps.file(13, maps.lookup(13, 0x1800)) is not None
    assert maps.stats["execs"] == 1
    fake.add(13, line(0x5000, 0x6000, "/app/server"), starttime=100, exe="/app/server")  # it execs itself
    maps.prefetch([13])  # announced by its first sample (NewProcess), as the watcher does; same exe
    maps.refresh([13])
    assert [maps.lookup(13, a).path for a in (0x5800, 0x3800, 0x1800)] == ["/app/server", "/app/server", "/bin/sh"]
    maps.refresh([13])  # each image is let go when the drains it could be in are over
    assert maps.lookup(13, 0x1800) is None and maps.lookup(13, 0x3800).path == "/app/server"
    maps.refresh([13])
    assert maps.lookup(13, 0x3800) is None and maps.lookup(13, 0x5800).path == "/app/server"
    fake.add(13, line(0x7000, 0x8000, "/bin/other"), starttime=555, exe="/bin/other")  # a new process
    maps.refresh([13])
    assert maps.lookup(13, 0x5800) is None and maps.lookup(13, 0x7800).path == "/bin/other"


def test_memory_is_bounded(fake: FakeProc) -> None:
    for pid in range(20, 30):
        fake.add(pid, line(0x1000, 0x2000, "/bin/x"))
    maps = MapsCache(str(fake.root), max_pids=4, idle_drains=2)
    maps.refresh(range(20, 30))
    assert len(maps) == 4
    maps.refresh([26])
    maps.refresh([26])
    maps.refresh([26])
    assert list(maps._procs) == [26]  # the idle ones were let go; re-reading them later is cheap


def test_build_ids_read_once_per_file_identity(fake: FakeProc, binaries: Binaries, monkeypatch) -> None:
    calls: list[str] = []
    real = procmaps.read_build_id
    monkeypatch.setattr(procmaps, "read_build_id", lambda p: calls.append(p) or real(p))
    text = line(0x1000, 0x2000, str(binaries.pie), 0x1000) + line(0x5000, 0x6000, str(binaries.lib), 0x1000)
    for pid in (40, 41, 42):
        fake.add(pid, text)
    maps = MapsCache(str(fake.root))
    maps.refresh([40, 41, 42])
    assert sorted(calls) == sorted([str(binaries.pie), str(binaries.lib)])
    assert maps.lookup(42, 0x5000).build_id == build_id(binaries.lib)


def test_deleted_and_special_mappings(fake: FakeProc) -> None:
    fake.add(50, MAPS)
    maps = MapsCache(str(fake.root))
    maps.refresh([50])
    deleted = maps.lookup(50, 0x7F1E2C200000)
    assert deleted.path == "/usr/lib/libold.so" and deleted.build_id is None
    assert maps.file(50, deleted).paths == (f"{fake.root}/50/map_files/7f1e2c200000-7f1e2c300000",)
    assert maps.lookup(50, 0x7F1E2C000010).path == "[anon]"
    assert maps.lookup(50, 0x7F1E2C400010).path == "[anon:v8 code]"
    assert maps.lookup(50, 0x7FFD1C3F0010).path == "[vdso]" and maps.file(50, maps.lookup(50, 0x7FFD1C3F0010)) is None
    assert maps.lookup(50, 0x55D0C8A00010) is None  # not executable


def test_same_binaries_at_other_addresses_share_the_parsed_lines(fake: FakeProc, binaries: Binaries,
                                                                  monkeypatch) -> None:
    """ASLR: the second process's lines hit the drain's line cache, yet get their own addresses and paths."""
    stats: list[str] = []
    real = procmaps.candidate_paths
    monkeypatch.setattr(procmaps, "candidate_paths", lambda *a, **k: stats.append(a[1].path) or real(*a, **k))
    tail = line(0x1000, 0x2000, str(binaries.pie), 0x1000) + line(0x3000, 0x4000, str(binaries.lib), 0x2000)
    fake.add(60, tail + "7f0000001000-7f0000002000 r-xp 00000000 00:00 0      [vdso]\n")
    fake.add(61, line(0x55AA1000, 0x55AA2000, str(binaries.pie), 0x1000)
             + line(0x7F0000010000, 0x7F0000011000, str(binaries.lib), 0x2000)
             + "7ffd00001000-7ffd00002000 r-xp 00000000 00:00 0      [vdso]\n")
    maps = MapsCache(str(fake.root))
    maps.refresh([60])
    maps.prefetch([61])
    assert sorted(stats) == sorted([str(binaries.pie), str(binaries.lib)])  # identity taken once per file
    pie, lib = build_id(binaries.pie), build_id(binaries.lib)
    assert maps.lookup(60, 0x1800) == Mapping(0x1000, 0x2000, 0x1000, str(binaries.pie), pie)
    assert maps.lookup(61, 0x55AA1800) == Mapping(0x55AA1000, 0x55AA2000, 0x1000, str(binaries.pie), pie)
    assert maps.lookup(61, 0x7F0000010010) == Mapping(0x7F0000010000, 0x7F0000011000, 0x2000, str(binaries.lib), lib)
    assert maps.lookup(61, 0x1800) is None and maps.lookup(60, 0x55AA1800) is None
    assert maps.lookup(61, 0x7FFD00001010) == Mapping(0x7FFD00001000, 0x7FFD00002000, 0, "[vdso]")
    mf = maps.file(61, maps.lookup(61, 0x7F0000010010))
    assert mf.paths[0] == f"{fake.root}/61/map_files/7f0000010000-7f0000011000" and mf.paths[-1] == str(binaries.lib)
    st = os.stat(binaries.lib)
    assert mf.key == (st.st_dev, st.st_ino, st.st_mtime_ns)
    assert maps.file(61, Mapping(0x7F0000010000 + 1, 0x7F0000011000, 0, str(binaries.lib))) is None
    v = maps.version(61)
    maps.refresh([61])
    assert maps.lookup(61, 0x9000) is None and maps.stats["rereads"] == 1 and maps.version(61) == v  # unchanged


def test_a_file_replaced_in_place_is_seen_by_the_next_drain(fake: FakeProc, binaries: Binaries,
                                                            tmp_path: Path) -> None:
    """Same path, device and inode, new contents and mtime: the next drain stats it again."""
    exe = tmp_path / "app"
    exe.write_bytes(binaries.pie.read_bytes())
    os.utime(exe, ns=(10**18, 10**18))
    fake.add(70, line(0x1000, 0x2000, str(exe), 0x1000))
    fake.add(71, line(0x5000, 0x6000, str(exe), 0x1000))
    maps = MapsCache(str(fake.root))
    maps.refresh([70])
    assert maps.lookup(70, 0x1800).build_id == build_id(binaries.pie)
    with open(exe, "r+b") as f:  # in place: the inode stays
        f.write(binaries.with_lib.read_bytes())
        f.truncate()
    os.utime(exe, ns=(2 * 10**18, 2 * 10**18))
    maps.refresh([70, 71])
    assert maps.lookup(71, 0x5800).build_id == build_id(binaries.with_lib) != build_id(binaries.pie)
    assert maps.file(71, maps.lookup(71, 0x5800)).key[2] == 2 * 10**18
    assert maps.lookup(70, 0x1800).build_id == build_id(binaries.pie)  # read before: not re-read


def test_non_utf8_and_odd_paths_read_as_the_general_parser_reads_them(fake: FakeProc, binaries: Binaries,
                                                                      tmp_path: Path) -> None:
    raw = bytes(tmp_path) + b"/bin\xffary"
    Path(os.fsdecode(raw)).write_bytes(binaries.pie.read_bytes())
    odd = MAPS.encode() + b"7f1e2c500000-7f1e2c600000 r-xp 00001000 fd:01 77 " + raw + b"\n"
    tabbed = MAPS.replace("/opt/my app/bin/server", "/opt/my\tapp/bin/server")
    for pid, text in ((80, MAPS.encode()), (81, odd), (82, tabbed.encode())):
        fake.add(pid, "")
        (fake.root / str(pid) / "maps").write_bytes(text)
    maps = MapsCache(str(fake.root))
    maps.refresh([80, 81, 82])
    for pid in (80, 81, 82):
        text = (fake.root / str(pid) / "maps").read_bytes().decode(errors="surrogateescape")
        got = [(m.start, m.limit, m.offset, m.path) for m in maps._procs[pid].mappings]
        assert got == sorted((e.start, e.end, e.offset, e.clean_path) for e in parse_exec_maps(text))
    m = maps.lookup(81, 0x7F1E2C500010)
    assert m.path == os.fsdecode(raw) and m.build_id == build_id(binaries.pie)
    assert maps.file(81, m).paths[-1] == os.fsdecode(raw)


def test_real_maps_read_as_the_general_parser_reads_them() -> None:
    maps = MapsCache()
    pid = os.getpid()
    maps.refresh([pid])
    with open(f"/proc/{pid}/maps", "rb") as f:
        text = f.read().decode(errors="surrogateescape")
    got = [(m.start, m.limit, m.offset, m.path) for m in maps._procs[pid].mappings]
    want = [(e.start, e.end, e.offset, e.clean_path) for e in parse_exec_maps(text)]
    assert got and got == want  # (a dlopen between the two reads would differ: none happens here)


def test_start_time_read_from_the_real_stat() -> None:
    maps = MapsCache()
    with open(f"/proc/{os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert maps._stat(os.getpid()).starttime == int(fields[19])


def test_real_child_maps_and_map_files(binaries: Binaries) -> None:
    maps = MapsCache()
    with running(binaries.with_lib) as r:
        maps.refresh([r.pid])
        m = maps.lookup(r.pid, r.addresses["main"])
        lib = maps.lookup(r.pid, r.addresses["lib_static_leaf"])
        assert m.path == str(binaries.with_lib) and lib.path == str(binaries.lib)
        assert m.build_id == build_id(binaries.with_lib) and lib.build_id == build_id(binaries.lib)
        mf = maps.file(r.pid, m)
        assert mf.paths[0] == f"/proc/{r.pid}/map_files/{m.start:x}-{m.limit:x}"
        st = os.stat(binaries.with_lib)
        assert mf.key == (st.st_dev, st.st_ino, st.st_mtime_ns)
        assert not maps.maps_lost(r.pid)


def test_real_exec_is_noticed(binaries: Binaries) -> None:
    """`sh -c 'read x; exec prog'`: the same pid becomes another program (how containers start)."""
    proc = subprocess.Popen(["sh", "-c", f'read x; exec "{binaries.pie}"'], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        maps = MapsCache()
        maps.refresh([proc.pid])
        assert not any(m.path == str(binaries.pie) for m in maps._procs[proc.pid].mappings)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        addrs = {}
        for out in proc.stdout:
            if out.strip() == "ready":
                break
            name, addr = out.split()
            addrs[name] = int(addr, 16)
        maps.refresh([proc.pid])
        m = maps.lookup(proc.pid, addrs["static_leaf"])
        assert m is not None and m.path == str(binaries.pie)
        assert m.start <= addrs["static_leaf"] < m.limit and "static_leaf" in nm_functions(binaries.pie)
    finally:
        proc.kill()
        proc.wait()


# -- PROCMAP_QUERY ------------------------------------------------------------------------------

# A process with the executable mappings the text shows in special ways: unnamed and named anonymous
# memory (JIT code), execute-only, shared anonymous ("/dev/zero (deleted)"), a memfd, a deleted file,
# and files whose names have a space, a newline (escaped as \012 in the text) and non-ASCII bytes.
_ODD_MAPPINGS = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
keep = []
rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
anon = mmap.mmap(-1, 4 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=rwx)
anon[:4] = b"\xc3\x90\x90\x90"
keep.append(anon)
addr = ctypes.addressof(ctypes.c_char.from_buffer(anon))
libc.prctl(0x53564D41, 0, ctypes.c_ulong(addr), ctypes.c_ulong(4096), b"jit code")  # PR_SET_VMA_ANON_NAME
keep.append(mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_EXEC))
keep.append(mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, prot=rwx))
fd = os.memfd_create("jit")
os.ftruncate(fd, 4096)
keep.append(mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC))
for name in sys.argv[1:]:
    with open(os.fsencode(name), "rb") as f:
        keep.append(mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC))
os.unlink(os.fsencode(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()
"""


def _query_supported() -> bool:
    maps = MapsCache()
    return maps._read(os.getpid()) is not None and maps._query


needs_query = pytest.mark.skipif(not _query_supported(), reason="no PROCMAP_QUERY (Linux 6.11+)")


def _same_as_text(pid: int) -> bool | None:
    """Whether the ioctl path reads `pid` as the text path does (None: the process could not be read)."""
    text, query = MapsCache(procmap_query=False), MapsCache()
    pt, pq = text._read(pid), query._read(pid)
    if pt is None or pq is None:
        return None
    assert query._query
    if (pt.starttime, pt.exe, pt.starts, pt.ends, pt.lines) != (pq.starttime, pq.exe, pq.starts, pq.ends, pq.lines):
        return False
    for start, end in zip(pt.starts, pt.ends, strict=True):
        for address in (start, end - 1):
            m = text.lookup(pid, address)
            if m != query.lookup(pid, address) or text.file(pid, m) != query.file(pid, m):
                return False
    version = query.version(pid)
    return query._read(pid) is not None and query.version(pid) == version  # a re-read finding the same


@needs_query
def test_query_reads_every_process_as_the_text_does() -> None:
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    assert len(pids) > 10
    for pid in pids:
        # a busy process may map or unmap between the two reads: it must agree within a few tries
        assert any(_same_as_text(pid) is not False for _ in range(3)), pid


def _queried(pid: int) -> bool:
    """Whether the ioctl path reads `pid` by the ioctl alone (no fallback to the text)."""
    maps = MapsCache()
    fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY)
    try:
        return maps._query_lines(pid, fd) is not None
    finally:
        os.close(fd)


@needs_query
def test_query_reads_special_mappings_as_the_text_does(tmp_path: Path) -> None:
    names = []
    for name in ("deleted lib.so", "new\nline.so", "caf\xe9.so"):
        path = tmp_path / name
        path.write_bytes(Path("/bin/true").read_bytes())
        names.append(str(path))
    raw = os.fsencode(tmp_path) + b"/bad\xff.so"  # not UTF-8
    with open(raw, "wb") as f:
        f.write(Path("/bin/true").read_bytes())
    # names the text prints as the ioctl returns them; names it escapes or splits (the ioctl path reads the text)
    groups = (names[:1], [*names[1:], os.fsdecode(raw)])
    procs = [subprocess.Popen([sys.executable, "-c", _ODD_MAPPINGS, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for args in groups]
    sleeper = tmp_path / "sleeper"  # a deleted executable
    sleeper.write_bytes(Path("/bin/sleep").read_bytes())
    sleeper.chmod(0o755)
    procs.append(subprocess.Popen([str(sleeper), "60"]))
    try:
        for p in procs[:2]:
            assert p.stdout.readline().strip() == "ready"
        sleeper.unlink()
        plain, odd, sleep = (p.pid for p in procs)
        text = Path(f"/proc/{plain}/maps").read_text()
        for shown in ("/dev/zero (deleted)", "/memfd:jit (deleted)", "/deleted lib.so (deleted)", "--xp"):
            assert shown in text
        assert "new\\012line.so" in Path(f"/proc/{odd}/maps").read_bytes().decode(errors="surrogateescape")
        paths = [m.path for m in MapsCache()._read(plain).mappings]
        assert "[anon]" in paths and "[vdso]" in paths and "[vsyscall]" in paths
        assert ("[anon:jit code]" in paths) == ("[anon:jit code]" in text)  # (needs CONFIG_ANON_VMA_NAME)
        assert _queried(plain) and _queried(sleep) and not _queried(odd)
        for pid in (plain, odd, sleep, os.getpid()):
            assert _same_as_text(pid), pid
        assert MapsCache()._read(sleep).lines[0].deleted
    finally:
        for p in procs:
            p.kill()
            p.wait()


@needs_query
def test_query_unsupported_falls_back_to_the_text_once(monkeypatch) -> None:
    calls = []

    def enotty(fd: int, request: int, arg: bytearray) -> None:
        calls.append(request)
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))

    monkeypatch.setattr(procmaps.fcntl, "ioctl", enotty)
    # the process-wide "ioctl missing" flag any reader (a sampler's watcher on another thread) would set meanwhile
    # is this test's: later tests still have the ioctl (stop 25: a leaked watcher left it off for the rest of the run)
    monkeypatch.setattr(procmaps, "_QUERY_WORKS", [True])
    maps, text = MapsCache(), MapsCache(procmap_query=False)
    pid = os.getpid()
    got = maps._read(pid)
    assert got is not None and got.lines and not maps._query
    assert (got.starts, got.ends, got.lines) == ((want := text._read(pid)).starts, want.ends, want.lines)
    maps._read(1)
    assert len(calls) == 1  # remembered: not asked again


def _exec_text(pid: int) -> list:
    """What read_exec_maps must give: the text's executable lines without the gate area (no VMA)."""
    return [e for e in parse_exec_maps(Path(f"/proc/{pid}/maps").read_bytes().decode(errors="surrogateescape"))
            if e.start < 1 << 63]


@needs_query
def test_read_exec_maps_reads_every_process_as_the_text_does(tmp_path: Path) -> None:
    """The unwind loader's read of a new process: the ioctl's executable VMAs equal the text's executable
    lines, odd names included (deleted files, memfd, anonymous JIT code, and names the text escapes,
    which are read from the text)."""
    raw = os.fsencode(tmp_path) + b"/bad\xff.so"
    with open(raw, "wb") as f:
        f.write(Path("/bin/true").read_bytes())
    odd = []
    for name in ("deleted lib.so", "new\nline.so"):
        (tmp_path / name).write_bytes(Path("/bin/true").read_bytes())
        odd.append(str(tmp_path / name))
    procs = [subprocess.Popen([sys.executable, "-c", _ODD_MAPPINGS, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for args in (odd[:1], [odd[1], os.fsdecode(raw)])]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        assert len(pids) > 10
        seen = 0
        for pid in pids:
            for _ in range(3):  # a busy process may map or unmap between the two reads
                try:
                    got, want = procmaps.read_exec_maps(pid), _exec_text(pid)
                    vmas = procmaps.read_exec_vmas(pid)  # the loader's keys: the same lines where it makes them
                except OSError:
                    break  # exited
                queried = [procmaps.exec_entry(v) for v in vmas or []]
                if got == want and (None in queried or queried == want):
                    seen += 1
                    break
            else:
                pytest.fail(f"pid {pid}: {procmaps.read_exec_maps(pid)} != {_exec_text(pid)}")
        assert seen > 10
        for p in procs:
            got = procmaps.read_exec_maps(p.pid)
            assert got == _exec_text(p.pid) and any(e.path.startswith("/memfd:jit") for e in got)
        assert any(e.deleted and e.clean_path == odd[0] for e in procmaps.read_exec_maps(procs[0].pid))
        vmas = procmaps.read_exec_vmas(procs[1].pid)
        assert vmas is not None and None in [procmaps.exec_entry(v) for v in vmas]  # escaped: from the text
    finally:
        for p in procs:
            p.kill()
            p.wait()
    with pytest.raises(OSError):
        procmaps.read_exec_maps(procs[0].pid)  # gone


def test_read_exec_maps_reads_the_text_without_the_ioctl(monkeypatch) -> None:
    def enotty(fd: int, request: int, arg: bytearray) -> None:
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))

    monkeypatch.setattr(procmaps.fcntl, "ioctl", enotty)
    # the process-wide "ioctl missing" flag any reader (a sampler's watcher on another thread) would set meanwhile
    # is this test's: later tests still have the ioctl (stop 25: a leaked watcher left it off for the rest of the run)
    monkeypatch.setattr(procmaps, "_QUERY_WORKS", [True])
    got = procmaps.read_exec_maps(os.getpid())
    assert got and got == _exec_text(os.getpid())
    assert procmaps.read_exec_vmas(os.getpid()) is None  # the loader reads the text then


@needs_query
def test_a_new_process_is_read_once_for_every_reader(monkeypatch) -> None:
    """The sampler's watcher reads a new process once (read_new_process: start time and executable VMAs);
    the maps cache takes that read and neither opens the process's maps nor its stat again, and holds the
    same mappings and start time as its own read would."""
    p = subprocess.Popen(["sleep", "60"])
    try:
        # past exec and the dynamic loader (sleep's maps with libc, asleep), not this interpreter's copy nor
        # half-loaded maps: two reads must see the same mappings
        for _ in range(300):
            paths = [e.path for e in procmaps.read_exec_maps(p.pid)]
            asleep = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S"
            if asleep and any(x.endswith("/sleep") for x in paths) and any("/libc" in x for x in paths):
                break
            time.sleep(0.01)
        new = procmaps.read_new_process(p.pid)
        assert new is not None and new.pid == p.pid and new.starttime == procmaps.start_time(p.pid)
        assert new.entries() == procmaps.read_exec_maps(p.pid)
        own = MapsCache()
        own.prefetch([p.pid])
        real_open = os.open
        opened = []

        def watch(path: str, *args: object, **kw: object) -> int:
            opened.append(str(path))
            return real_open(path, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(procmaps.os, "open", watch)
        shared = MapsCache()
        shared.prefetch([new])
        monkeypatch.undo()
        assert not [f for f in opened if f in (f"/proc/{p.pid}/maps", f"/proc/{p.pid}/stat")]
        a, b = own._procs[p.pid], shared._procs[p.pid]
        assert (a.starts, a.ends, a.lines, a.starttime, a.exe) == (b.starts, b.ends, b.lines, b.starttime, b.exe)
        assert any(ln.path.endswith("sleep") for ln in b.lines)
    finally:
        p.kill()
        p.wait()
    assert procmaps.read_new_process(p.pid) is None  # exited: no one reads it
