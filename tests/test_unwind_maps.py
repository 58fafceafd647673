"""The row and mapping allocator of profiler/unwind/maps.py: runs of slots that coalesce when freed,
so a node that loads and evicts binaries all day does not fragment its row budget away."""

from __future__ import annotations

import random

from profiler.unwind.maps import Extents


def test_first_fit_and_exhaustion() -> None:
    e = Extents(100)
    assert e.alloc(60) == 0
    assert e.alloc(50) is None  # 40 left
    assert e.alloc(40) == 60
    assert e.alloc(1) is None and e.used == 100


def test_freed_runs_coalesce_on_both_sides() -> None:
    e = Extents(30)
    a, b, c = e.alloc(10), e.alloc(10), e.alloc(10)
    assert (a, b, c) == (0, 10, 20)
    e.free(0, 10)
    e.free(20, 10)
    assert e.alloc(20) is None  # two runs of 10, not one of 20
    e.free(10, 10)  # joins its neighbours into one run
    assert e.alloc(30) == 0 and e.used == 30


def test_random_churn_never_overlaps_and_gives_everything_back() -> None:
    rng = random.Random(7)
    e = Extents(1000)
    held: dict[int, int] = {}
    for _ in range(5000):
        if held and rng.random() < 0.5:
            start = rng.choice(list(held))
            e.free(start, held.pop(start))
        else:
            n = rng.randint(1, 80)
            start = e.alloc(n)
            if start is not None:
                assert all(start + n <= s or s + m <= start for s, m in held.items())
                held[start] = n
        assert e.used == sum(held.values())
    for start, n in list(held.items()):
        e.free(start, n)
    assert e.alloc(1000) == 0
