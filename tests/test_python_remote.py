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


def test_a_range_past_the_address_space_is_unreadable_not_an_error() -> None:
    """A torn or freed object's pointer can be any word; near 2**64, a field's offset added to it passes the top
    of the address space. Such a range reads as unreadable (None), as the kernel answers an unmapped one: the
    array of iovecs cannot hold it, and the OverflowError that raised failed the agent's whole drain."""
    p = _process()
    try:
        (start, _end), _ = _regions(p.pid)
        top = 1 << 64
        ranges = [(start, 8), (top - 4, 8), (top + 16, 8), (-8, 8), (top - 8, 8), (start + 64, 16)]
        got = remote.read_many(p.pid, ranges)
        assert got[1:5] == [None] * 4
        assert got[0] == _mem(p.pid, start, 8) and got[5] == _mem(p.pid, start + 64, 16)
        with pytest.raises(remote.MemoryReadError):
            remote.read(p.pid, top + 0x10, 8)
    finally:
        p.kill()
        p.wait()


def test_a_code_object_whose_pointers_point_past_the_address_space_is_a_read_error() -> None:
    """CodeReader adds field offsets to the pointers of what it reads (a type's tp_name, a string's data): garbage
    there is a CodeReadError for that code object, never an exception out of the drain."""
    from profiler.python.code import CodeReader, CodeReadError
    from profiler.python.offsets import TABLES

    o = TABLES[max(TABLES)]
    near_top = (1 << 64) - 8
    heads = []
    for type_word in (near_top, 0x7F00_1234_5678):  # a type checked by its tp_name (at type + offset), or known
        head = bytearray(o.code_size)
        for off, value in ((o.object_type, type_word), (o.code_name, near_top), (o.code_qualname, near_top),
                           (o.code_filename, near_top - 8), (o.code_linetable, near_top)):
            head[off:off + 8] = value.to_bytes(8, "little")
        heads.append(head.hex())
    code = ("import ctypes, sys, time; bs = [ctypes.create_string_buffer(bytes.fromhex(h)) for h in sys.argv[1:]]; "
            "print(*[ctypes.addressof(b) for b in bs], flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, *heads], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        unknown_type, known_type = map(int, p.stdout.readline().split())
        for addr, reader in ((unknown_type, CodeReader(p.pid, o)),
                             (known_type, CodeReader(p.pid, o, 0x7F00_1234_5678))):
            got = reader.read_many([addr])
            assert isinstance(got[addr], CodeReadError), got
            with pytest.raises(CodeReadError):
                reader.read(addr)
    finally:
        p.kill()
        p.wait()
