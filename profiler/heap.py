"""Keep the agent's heap small and cheap to keep: give freed C heap back, keep the GC off old objects.

BCC's clang/LLVM compile frees ~50 MB that glibc keeps mapped, and a drain that symbolizes a new
binary frees its temporary buffers the same way: RSS would stay at the high-water mark forever.

The agent's memos and symbol tables are hundreds of thousands of long-lived objects, freed by
reference counting when dropped, yet every full collection of the cyclic GC walks them all (~40 ms
each on a busy node, ~12% of the agent's steady CPU with gen0/gen1 passes over the survivors).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Callable, Iterator
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


class SurvivorFreezer:
    """After each drain, move every object the GC tracks into the permanent generation (gc.freeze),
    so later collections only walk what is newer. Frozen objects are still freed by reference
    counting; only reference cycles among them wait, until every `full_every` drains, when all are
    unfrozen and collected: cyclic garbage lives at most that many intervals."""

    def __init__(self, full_every: int = 30) -> None:
        if full_every < 1:
            raise ValueError("full_every must be >= 1")
        self.full_every = full_every
        self.drains = 0

    @contextlib.contextmanager
    def drain(self) -> Iterator[None]:
        """Around one drain: the collector off while it runs, then `after_drain`. What a drain allocates and
        keeps (memos, frames, profiles, the pprof messages) would be walked by ~15 young and one middle
        collection a drain at 99 Hz on a busy node, only to be frozen at its end (~8% of a warm drain's CPU).
        Reference cycles made meanwhile (~300 small objects a drain) are frozen with the rest and wait for
        the full collection every `full_every` drains. Any thread's collections wait while a drain runs."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            self.after_drain()  # freezes, and resets the young generation's count: no collection follows
            if was_enabled:
                gc.enable()

    def after_drain(self) -> None:
        self.drains += 1
        if self.drains % self.full_every == 0:
            gc.unfreeze()
            gc.collect()
        gc.freeze()
