"""Native addresses of an interpreter binary are classified (eval loop, call glue) once per binary, not once
per process: every new python3 of a busy node maps the same file elsewhere (ASLR), and each one met its
eval-loop and glue addresses afresh (a symbol lookup each). The answers must be each process's own."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from profiler.pyframes import _interpreter
from tests.test_python_reader import WORKLOADS, detect, interpreter, start, stop


@pytest.mark.parametrize("which", ["debian", "3.12"])
def test_two_processes_of_one_interpreter_share_its_classification_with_each_ones_answers(which: str) -> None:
    runs = [start([interpreter(which), str(WORKLOADS / "python_chain.py")]) for _ in range(2)]
    try:
        first, second = (_interpreter(detect(r.pid)) for r in runs)
    finally:
        for r in runs:
            stop(r)
    assert first is not None and second is not None
    assert first.shared is not None and first.shared is second.shared  # one binary, one table
    # pyenv's libpython is mapped elsewhere in each process (ASLR); Debian's python3.11 is not PIE: same
    # addresses, but each process classified them again all the same
    assert (first.bias != second.bias) == (which != "debian")
    span = first.end - first.start
    offsets = [i * span // 1499 for i in range(1499)] + [lo - first.start + d for lo, hi in first.eval_ranges
                                                          for d in (-1, 0, 1, hi - lo - 1, hi - lo)]
    offsets += [-4096, span, span + 4096]  # outside the binary: never the process's glue
    for offset in offsets:
        first.kind(first.start + offset)
    glued: list[int] = []

    def counting(glue: Callable[[int], bool]) -> Callable[[int], bool]:
        def asked(address: int) -> bool:
            glued.append(address)
            return glue(address)
        return asked

    # the second process: its own answers (a fresh, unshared classification of its addresses) ...
    alone = dataclasses.replace(second, kinds={}, shared=None)
    expected = [alone.kind(second.start + offset) for offset in offsets]
    assert any(is_eval for is_eval, _ in expected) and any(glue for _, glue in expected)
    # ... given from what the first process's addresses taught, with no symbol lookup
    shared = dataclasses.replace(second, kinds={}, glue=counting(second.glue))
    assert [shared.kind(second.start + offset) for offset in offsets] == expected
    assert glued == []
    # an address the first process never asked about is looked up (and kept for the next process)
    fresh = next(a for a in range(second.start, second.end) if a - second.bias not in second.shared)
    assert shared.kind(fresh) == alone.kind(fresh) and glued == [fresh]


@pytest.mark.parametrize("which", ["debian", "3.12"])
def test_processes_laid_out_alike_share_one_interpreter_and_others_get_their_own(which: str) -> None:
    """Every answer of an _Interpreter is a function of the file and where its executable mappings are: two
    python3 of Debian's non-PIE binary map it at the same addresses and get one object (with the addresses it
    already classified); pyenv's libpython moves with ASLR, and each process gets its own."""
    runs = [start([interpreter(which), str(WORKLOADS / "python_chain.py")]) for _ in range(2)]
    try:
        procs = [detect(r.pid) for r in runs]
        first, second = (_interpreter(p) for p in procs)
        again = _interpreter(procs[1])
    finally:
        for r in runs:
            stop(r)
    assert first is not None and second is not None and again is second
    alike = procs[0].exec_maps == procs[1].exec_maps
    assert alike == (which == "debian")
    assert (first is second) == alike
    if not alike:  # each its own layout, its own bias: answers for the same ELF address at its own place
        assert first.bias != second.bias and first.kinds is not second.kinds and first.shared is second.shared
        lo, _ = first.eval_ranges[0]
        assert first.kind(lo) == second.kind(lo - first.bias + second.bias) and first.kind(lo)[0]
