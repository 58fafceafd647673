"""Give freed C heap back to the kernel.

BCC's clang/LLVM compile frees ~50 MB that glibc keeps mapped, and a drain that symbolizes a new
binary frees its temporary buffers the same way: RSS would stay at the high-water mark forever.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


def release_freed_memory() -> bool:
    """malloc_trim(0): a few ms; True when glibc returned something."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
