"""The agent hands freed C heap back after drains and keeps the cyclic GC off objects that survive them."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from profiler.heap import SurvivorFreezer, release_freed_memory


def rss_kb() -> int:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0])


def test_freed_but_fragmented_heap_is_returned() -> None:
    # seven of every eight 2 KB blocks freed: the survivors pin the heap's top, so glibc keeps the
    # 14 KB holes resident until malloc_trim releases their whole pages
    blocks = [bytearray(2048) for _ in range(40_000)]
    blocks = blocks[::8]
    before = rss_kb()
    assert release_freed_memory()
    assert rss_kb() < before - 20_000, "less than 20 MB of the ~70 MB freed came back"
    del blocks


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle(tag: list[int]) -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a, lambda _: tag.append(1))


def test_survivors_are_frozen_and_cyclic_garbage_is_still_collected_every_full_every_drains() -> None:
    freezer = SurvivorFreezer(full_every=3)
    gc.disable()  # no automatic collection may free the cycle before the freeze
    try:
        gc.unfreeze()
        collected: list[int] = []
        ref = _cycle(collected)  # unreachable already, but only the cyclic GC can free it
        freezer.after_drain()  # drain 1: it is frozen with the rest
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert ref() is not None and not collected  # a frozen cycle waits...
        freezer.after_drain()
        gc.collect()
        assert ref() is not None
        freezer.after_drain()  # drain 3: ...until the full collection every `full_every` drains
        assert ref() is None and collected == [1]

        kept = _Node()
        freezer.after_drain()  # frozen objects are still freed by reference counting
        alive = weakref.ref(kept)
        del kept
        assert alive() is None
    finally:
        gc.unfreeze()
        gc.enable()


def test_full_every_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SurvivorFreezer(full_every=0)


def test_a_drain_runs_with_the_gc_off_and_its_survivors_are_frozen_after() -> None:
    freezer = SurvivorFreezer(full_every=1000)
    gc.unfreeze()
    try:
        assert gc.isenabled()
        with freezer.drain():
            assert not gc.isenabled()
            kept = [[i] for i in range(5000)]  # past gen0's threshold: no collection runs
            assert gc.get_count()[0] >= 5000
        assert gc.isenabled()
        assert gc.get_freeze_count() >= 5000 and gc.get_count()[0] < 100  # frozen, count reset: no pass follows
        with pytest.raises(RuntimeError), freezer.drain():  # a failed drain turns it back on too
            raise RuntimeError("drain failed")
        assert gc.isenabled() and freezer.drains == 2
        gc.disable()  # a caller that had it off keeps it off
        with freezer.drain():
            pass
        assert not gc.isenabled()
        gc.enable()
        del kept
    finally:
        gc.unfreeze()
        gc.enable()
