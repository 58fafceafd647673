"""A raw Python stack not seen before is named through `_named_runs` when it can be (3.11 and older, no frame
left out, every (code, instr) named already): it must give exactly the runs `split_runs` and the frames memo
give, for every version's markers, and hand the rest (gaps, frames not named yet) to the general path."""

from __future__ import annotations

import os
import random

import pytest

from podflame.model import Frame, FrameKind, Line
from profiler.pyframes import _GAP, FLAG_ENTRY, FLAG_GAP, OWNER_SHIFT, TRUNCATED, _named_runs, split_runs
from profiler.python.offsets import PY310, PY311, PyOffsets


def _general(raw: tuple[int, ...], o: PyOffsets, frames: dict[tuple[int, int], Frame]) -> tuple:
    return tuple(tuple(TRUNCATED if key == _GAP else frames[key] for key in run) for run in split_runs(raw, o))


@pytest.mark.parametrize("o", [PY310, PY311], ids=["3.10", "3.11"])
def test_named_runs_are_the_split_runs_named_and_the_rest_goes_the_general_way(o: PyOffsets) -> None:
    rng = random.Random(o.version[1])
    codes = [0x7F00_0000_1000 + 0x100 * i for i in range(12)]
    frames = {(c, instr): Frame(0, None, FrameKind.PYTHON, (Line(f"f{c:x}", "/app/x.py", instr),))
              for c in codes for instr in range(6)}
    fast = 0
    for _ in range(3000):
        depth = rng.randrange(1, 30)
        raw: list[int] = []
        for i in range(depth):  # leaf first, as the kernel writes them
            word = rng.choice(codes)
            if i == depth - 1 or rng.random() < 0.2:  # the root frame of each eval-loop call
                word |= FLAG_ENTRY
            word |= rng.randrange(0, 3) << OWNER_SHIFT  # 3.11's owner field (never a C-stack shim there)
            if rng.random() < 0.02:
                word |= FLAG_GAP
            raw += [word, rng.randrange(0, 7)]  # instruction 6 was never named
        stack = tuple(raw)
        got = _named_runs(stack, o, frames)
        words = stack[::2]
        named_all = all((w & ((1 << 56) - 1), i) in frames for w, i in zip(words, stack[1::2], strict=True))
        if any(w & FLAG_GAP for w in words) or not named_all:
            assert got is None
            continue
        fast += 1
        assert got == _general(stack, o, frames)
        assert all(a is b for run, want in zip(got, _general(stack, o, frames), strict=True)
                   for a, b in zip(run, want, strict=True))  # the memo's own frame objects
    assert fast > 500



def _cut_deep(depth: int) -> tuple[int, str]:
    """Recurses `depth` frames and returns its own code object's address and the qualname to look for."""
    if depth:
        return _cut_deep(depth - 1)
    return id(_cut_deep.__code__), _cut_deep.__qualname__


def test_a_stack_the_kernel_cut_at_its_root_is_marked_there() -> None:
    """A Python stack deeper than the kernel walks comes with FLAG_GAP on its root-most kept frame: the merged
    stack starts at the `[truncated: ...]` marker, never at a code address (-1) read as a frame. Compiled by
    mypyc the gap key was a new tuple at each use, `key is _GAP` was never true and the cut read as an unreadable
    frame (stop 25: test_fidelity_deep_stacks_bpf's 2000-deep recursion). This process is the Python process."""
    from profiler.pyframes import PythonFrames, PythonRegistry
    from profiler.sampler import Drain, RawSample
    from tests.test_pyframes_memo import instr_at

    pid = os.getpid()
    reg = PythonRegistry(lambda tgid, config: None)
    reg.announce([pid])
    proc = reg.processes[pid]
    code, name = _cut_deep(3)
    instr = instr_at(proc.offsets, code, 2)
    whole = (code, instr, code, instr)  # leaf first: two frames of one eval-loop call
    cut = (code, instr, code | FLAG_GAP, instr)  # the same, with frames left out root-ward of the outer one
    frames = PythonFrames()
    samples = [RawSample(1, pid, pid, "python3", (), (), 0, 0, 1, raw, 0) for raw in (whole, cut)]
    frames.begin_drain(Drain(0, 1, samples, python_processes=reg.refresh()))
    named = frames.merge(pid, whole, ())
    assert [f.lines[0].function for f in named] == [name, name]
    assert frames.merge(pid, cut, ()) == (TRUNCATED, *named)
    assert split_runs(cut, proc.offsets) == [[_GAP, (code, instr), (code, instr)]]
    assert frames.read_failures == 0
