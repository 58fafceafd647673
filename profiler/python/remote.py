"""Reading another process's memory with process_vm_readv(2), many ranges per system call.

The os module has no process_vm_readv, so it is called through ctypes. One call can fill many
local buffers from many remote ranges; the kernel stops at the first range that faults, so a
batch that comes back short is retried range by range to tell the good ranges from the bad.
Needs CAP_SYS_PTRACE (or ptrace rights over the target), as py-spy does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
from collections.abc import Sequence

from podflame.errors import PodflameError, Unavailable


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_readv = _libc.process_vm_readv
_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                   ctypes.c_ulong]
_readv.restype = ctypes.c_ssize_t
IOV_MAX = 1024  # the kernel's UIO_MAXIOV


class ProcessGone(Unavailable):
    """The process exited (ESRCH): what was read before stays valid, nothing new can be read."""


class MemoryReadError(PodflameError):
    """A remote range could not be read (unmapped, freed, or no permission)."""


def read(pid: int, address: int, size: int) -> bytes:
    """`size` bytes at `address` in process `pid`; raises MemoryReadError, ProcessGone."""
    got = read_many(pid, [(address, size)])[0]
    if got is None:
        raise MemoryReadError(f"pid {pid}: cannot read {size} bytes at {address:#x}")
    return got


def read_many(pid: int, ranges: Sequence[tuple[int, int]]) -> list[bytes | None]:
    """The bytes of each (address, size) range, None for a range that cannot be read whole.

    One system call per IOV_MAX ranges when all are readable; raises ProcessGone when the
    process no longer exists.
    """
    out: list[bytes | None] = []
    for i in range(0, len(ranges), IOV_MAX):
        out.extend(_batch(pid, ranges[i:i + IOV_MAX]))
    return out


def _batch(pid: int, ranges: Sequence[tuple[int, int]]) -> list[bytes | None]:
    n = len(ranges)
    if n == 0:
        return []
    total = sum(max(size, 0) for _, size in ranges)
    buf = ctypes.create_string_buffer(total or 1)
    local = (_IoVec * n)()
    remote = (_IoVec * n)()
    base = ctypes.addressof(buf)
    pos = 0
    for k, (addr, size) in enumerate(ranges):
        size = max(size, 0)
        local[k].iov_base, local[k].iov_len = base + pos, size
        remote[k].iov_base, remote[k].iov_len = addr, size
        pos += size
    got = _readv(pid, local, n, remote, n, 0)
    if got < 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ProcessGone(f"pid {pid} exited")
        if err == errno.EPERM:
            raise MemoryReadError(f"pid {pid}: not allowed to read its memory (needs CAP_SYS_PTRACE)")
        got = 0  # EFAULT: the first range is unreadable; find out which ones are
    if got == total:
        raw = buf.raw
        out: list[bytes | None] = []
        pos = 0
        for _, size in ranges:
            size = max(size, 0)
            out.append(raw[pos:pos + size])
            pos += size
        return out
    if n == 1:
        return [None]
    return [_batch(pid, [r])[0] for r in ranges]

