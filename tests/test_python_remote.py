"""profiler/python/remote.py reads many ranges of another process in one process_vm_readv; what it answers
for each range must be what that range holds, checked against /proc/PID/mem (another way into the same
memory) on a real process: readable ranges of every size, empty ones, unreadable ones among them, more
ranges than one system call takes, and a process that exited."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from profiler.python import remote


def _process() -> subprocess.Popen:
    code = "import sys, time; x = bytes(range(256)) * 4096; print('ok', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "ok\n"
    return p


def _regions(pid: int) -> tuple[tuple[int, int], int]:
    """A readable anonymous region (start, end) of the process, and an address mapped nowhere."""
    with open(f"/proc/{pid}/maps") as f:
        rows = [line.split() for line in f]
    readable = [(int(r[0].split("-")[0], 16), int(r[0].split("-")[1], 16)) for r in rows
                if r[1].startswith("rw") and (len(r) < 6 or r[5] == "[heap]")]
    start, end = max(readable, key=lambda r: r[1] - r[0])
    return (start, end), 0x1000  # the first page is never mapped


def _mem(pid: int, address: int, size: int) -> bytes | None:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        got = os.pread(fd, size, address)
    except OSError:
        return None
    finally:
        os.close(fd)
    return got if len(got) == size else None


def test_each_range_reads_what_proc_mem_reads_there_readable_or_not() -> None:
    p = _process()
    try:
        (start, end), unmapped = _regions(p.pid)
        assert end - start >= 1 << 16
        sizes = [1, 7, 8, 184, 200, 4096, 5000, 0, 3]
        ranges = [(start + 977 * i, size) for i, size in enumerate(sizes)]
        ranges.insert(3, (unmapped, 16))  # unreadable among readable ones: the kernel stops there
        ranges.append((end - 8, 64))  # runs off the end of its mapping (into the next one, if one follows)
        ranges.append((start + 12345, 64))
        got = remote.read_many(p.pid, ranges)
        want = [_mem(p.pid, a, s) if s else b"" for a, s in ranges]
        assert got == want
        assert got[3] is None and got[-1] is not None and len(got[-1]) == 64 and got[8] == b""
        assert [remote.read_many(p.pid, [r])[0] for r in ranges] == want  # as each alone
        # more ranges than one system call takes (IOV_MAX): all answered, in order
        many = [(start + 8 * i, 8 + i % 5) for i in range(remote.IOV_MAX + 300)]
        assert remote.read_many(p.pid, many) == [_mem(p.pid, a, s) for a, s in many]
    finally:
        p.kill()
        p.wait()
    with pytest.raises(remote.ProcessGone):
        remote.read_many(p.pid, ranges)


def test_reads_of_many_sizes_leave_nothing_for_the_cyclic_gc() -> None:
    # each distinct total size once made a ctypes array type (create_string_buffer), a cycle the GC had to
    # find: ~25 a drain, which a drain run with the GC off (SurvivorFreezer.drain) would keep until the full
    # collection
    import gc

    p = _process()
    try:
        (start, _), _ = _regions(p.pid)
        gc.collect()
        gc.disable()
        try:
            got = [remote.read_many(p.pid, [(start, 100 + i), (start + 4096, 3 * i + 1)]) for i in range(200)]
            assert all(g[0] == _mem(p.pid, start, 100 + i) for i, g in enumerate(got))
            assert gc.collect() == 0
        finally:
            gc.enable()
    finally:
        p.kill()
        p.wait()
