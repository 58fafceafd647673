"""merge_runs on an interpreter without .symtab (Debian's static python3): the static C functions a
Python function calls (builtin_sorted, list_sort) have no names there, so the glue rule (a Py*-named
function, or no name) took them for glue and dropped them from between the two Python runs; they stay
now (tests/test_fidelity_python_bpf.py has the real interpreter)."""

from __future__ import annotations

from dataclasses import replace

from podflame.model import Frame, FrameKind
from profiler.pyframes import merge_runs
from tests.test_pyframes import CALL, EVAL1, EVAL2, INTERP, LIBPY, MAIN, VECTOR, names, py

# the fake interpreter's glue range [0x4000, 0x5000) holds an unnamed part, as glue() counts no name as glue
STRIPPED = replace(INTERP, kinds={}, unnamed=lambda a: 0x4800 <= a < 0x4900)
SORTED = Frame(0x4810, LIBPY, FrameKind.NATIVE, ())  # list.sort's C code, unnamed
USER = [MAIN, EVAL1, CALL, SORTED, VECTOR, EVAL2]
RUNS = [[py("<module>"), py("sorter")], [py("keyf")]]


def test_unnamed_interpreter_code_between_runs_stays() -> None:
    assert names(merge_runs(USER, RUNS, STRIPPED)) == ["main", "<module>", "sorter", "?", "keyf"]


def test_named_glue_still_goes() -> None:
    assert names(merge_runs(USER, RUNS, replace(STRIPPED, kinds={}, unnamed=lambda a: False))) == \
        ["main", "<module>", "sorter", "keyf"]
    assert names(merge_runs(USER, RUNS, replace(INTERP, kinds={}))) == ["main", "<module>", "sorter", "keyf"]


def test_whether_glue_has_a_name_is_asked_once_per_address_not_per_sample() -> None:
    """A 99 Hz drain merges hundreds of samples through the same glue frames: the name check is part of an
    address's classification (kept per process and per binary), not a symbol lookup per frame per sample."""
    asked: list[int] = []

    def unnamed(address: int) -> bool:
        asked.append(address)
        return 0x4800 <= address < 0x4900

    interp = replace(INTERP, kinds={}, unnamed=unnamed)
    for _ in range(50):
        assert names(merge_runs(USER, RUNS, interp)) == ["main", "<module>", "sorter", "?", "keyf"]
    assert sorted(asked) == sorted(set(asked)) and {SORTED.address, VECTOR.address} <= set(asked)
