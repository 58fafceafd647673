"""bench/drain_replay.py's per-step timing of replayed drains: the finer parts it wraps (StackMemo's native stacks, the
Python merge, DWARF lookups) must count each outermost call of a warm drain once and change no answer."""

from __future__ import annotations

import time

from bench.drain_replay import _time_calls


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class _Memo:
    """Stands in for StackMemo: a method that calls itself (as StackMemo's parts may), on an instance."""

    def __init__(self) -> None:
        self.calls = 0

    def frames(self, depth: int) -> int:
        self.calls += 1
        _spin(0.01)
        return depth if depth == 0 else self.frames(depth - 1) + 1


class _Dwarf:
    """Stands in for DwarfInfo: a method wrapped on the class, for every instance."""

    def __init__(self, base: int) -> None:
        self.base = base

    def lookup(self, address: int) -> int:
        _spin(0.01)
        return self.base + address


def test_an_instance_method_is_timed_per_outermost_call_of_warm_drains_only_and_answers_as_before() -> None:
    memo, warm = _Memo(), [False]
    into: dict[str, float] = {}
    _time_calls(memo, "frames", "native stacks", into, warm)
    assert memo.frames(2) == 2  # a cold drain's call: not counted
    assert into == {"native stacks": 0.0}
    warm[0] = True
    assert memo.frames(2) == 2  # three nested calls, ~30 ms: counted once, not 30 + 20 + 10
    assert memo.calls == 6
    assert 0.025 <= into["native stacks"] < 0.055


def test_a_class_method_is_timed_for_every_instance_bound_as_before() -> None:
    original = _Dwarf.lookup
    into: dict[str, float] = {}
    warm = [True]
    try:
        _time_calls(_Dwarf, "lookup", "dwarf lookups", into, warm)
        assert _Dwarf(100).lookup(5) == 105
        assert _Dwarf(7).lookup(1) == 8
        assert 0.018 <= into["dwarf lookups"] < 0.04
    finally:
        _Dwarf.lookup = original  # type: ignore[method-assign]


def test_a_part_a_build_does_not_have_is_left_out() -> None:
    into: dict[str, float] = {}
    _time_calls(_Memo(), "_with_python", "python merge", into, [True])
    assert into == {}
