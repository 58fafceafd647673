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
from array import array
from collections.abc import Sequence
from itertools import accumulate, chain

from podflame.errors import PodflameError, Unavailable

# struct iovec is (void *iov_base, size_t iov_len): two words, as an array("Q") holds them
assert array("Q").itemsize == ctypes.sizeof(ctypes.c_void_p) == ctypes.sizeof(ctypes.c_size_t) == 8


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_readv = _libc.process_vm_readv
# the iovec arrays are passed by address (`_batch` packs them as arrays of struct iovec's two words)
_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
_readv.restype = ctypes.c_ssize_t
IOV_MAX = 1024  # the kernel's UIO_MAXIOV
_TOP = 1 << 64


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
    if not all(0 <= addr <= _TOP - size for addr, size in ranges):
        # a garbage pointer plus a field's offset can pass the top of the address space: no iovec holds it,
        # and it is no more readable than an unmapped range (the rest are read as they are)
        valid = [i for i, (addr, size) in enumerate(ranges) if 0 <= addr <= _TOP - size]
        out: list[bytes | None] = [None] * n
        for i, data in zip(valid, _batch(pid, [ranges[i] for i in valid]), strict=True):
            out[i] = data
        return out
    sizes = [size if size > 0 else 0 for _, size in ranges]
    total = sum(sizes)
    # a bytearray, its address through a c_char over its first byte: create_string_buffer makes a ctypes array
    # type per size (`c_char * n`), held by a cycle and cached only weakly, so every read left a type (~4 KB with
    # its dict and descriptors) for the cyclic GC, ~25 a drain
    buf = bytearray(total or 1)
    anchor = ctypes.c_char.from_buffer(buf)  # holds the buffer exported (not resized) until the read returns
    # both iovec arrays packed in C (array of (base, length) words): setting four ctypes fields per range
    # cost ~1.5 us a range, most of a drain's read of a process's code objects (60 ranges: 120 us), and all of
    # it for a process that turns out to have exited
    starts = list(accumulate(sizes, initial=ctypes.addressof(anchor)))
    local = array("Q", chain.from_iterable(zip(starts, sizes, strict=False)))  # starts: one more
    remote = array("Q", chain.from_iterable(zip((addr for addr, _ in ranges), sizes, strict=True)))
    got = _readv(pid, local.buffer_info()[0], n, remote.buffer_info()[0], n, 0)
    del anchor
    if got < 0:
        err = ctypes.get_errno()
        if err == errno.ESRCH:
            raise ProcessGone(f"pid {pid} exited")
        if err == errno.EPERM:
            raise MemoryReadError(f"pid {pid}: not allowed to read its memory (needs CAP_SYS_PTRACE)")
        got = 0  # EFAULT: the first range is unreadable; find out which ones are
    if got == total:
        raw = bytes(buf)
        base = starts[0]
        return [raw[start - base:start - base + size] for start, size in zip(starts, sizes, strict=False)]
    if n == 1:
        return [None]
    return [_batch(pid, [r])[0] for r in ranges]
