"""Merging Python frames into native stacks, and the kernel's per-process layout record, without BPF.

The rules (profiler/pyframes.py): runs of Python frames split by the version's markers replace the
eval-loop frames one for one (root first), glue between eval frames goes, C code below the innermost
Python frame stays; with fewer eval frames than runs the outer runs gather at the outermost eval
frame, and with none the Python frames replace the unreliable root part of a broken native walk.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from podflame.model import UNMAPPED, Frame, FrameKind, Line, Mapping
from profiler.pyframes import (
    FLAG_ENTRY,
    OWNER_SHIFT,
    PythonRegistry,
    _Interpreter,
    merge_runs,
    pack_config,
    split_runs,
)
from profiler.python.detect import PythonProcess, Unsupported
from profiler.python.offsets import PY310, PY311, PY312
from profiler.sampler import PY_PROC_SIZE

LIBPY = Mapping(0x1000, 0x9000, 0, "/usr/lib/libpython3.11.so.1.0")
LIBZ = Mapping(0xA000, 0xB000, 0, "/usr/lib/libz.so.1")
EXE = Mapping(0x100, 0x800, 0, "/usr/bin/python3.11")
# eval loop at [0x2000, 0x3000); glue (Py*-named) at [0x4000, 0x5000); other interpreter code elsewhere
INTERP = _Interpreter(eval_ranges=((0x2000, 0x3000),), glue=lambda a: 0x4000 <= a < 0x5000, start=0x1000, end=0x9000)


def native(address: int, name: str, mapping: Mapping | None = LIBPY) -> Frame:
    return Frame(address, mapping, FrameKind.NATIVE, (Line(name),))


def py(name: str) -> Frame:
    return Frame(0, None, FrameKind.PYTHON, (Line(name, "/app/x.py", 1),))


def names(frames: list[Frame]) -> list[str]:
    return [f.lines[0].function if f.lines else "?" for f in frames]


MAIN, RUN = native(0x200, "main", EXE), native(0x6000, "Py_RunMain")
EVAL1, EVAL2 = native(0x2100, "_PyEval_EvalFrameDefault"), native(0x2200, "_PyEval_EvalFrameDefault")
VECTOR, CALL = native(0x4100, "_PyEval_Vector"), native(0x4200, "PyObject_Call")
SORTED = native(0x7000, "builtin_sorted")  # interpreter code, not glue: a C function Python called
DEFLATE, FREE = native(0xA100, "deflate", LIBZ), native(0x4300, "PyObject_Free")


def test_each_eval_frame_becomes_its_run_and_glue_between_goes() -> None:
    user = [MAIN, RUN, EVAL1, CALL, SORTED, VECTOR, EVAL2, CALL, DEFLATE]
    runs = [[py("<module>"), py("handler")], [py("key")]]
    assert names(merge_runs(user, runs, INTERP)) == ["main", "Py_RunMain", "<module>", "handler", "builtin_sorted",
                                                     "key", "deflate"]


def test_glue_below_the_innermost_python_frame_stays_when_it_is_the_leaf() -> None:
    assert names(merge_runs([MAIN, EVAL1, FREE], [[py("f")]], INTERP)) == ["main", "f", "PyObject_Free"]
    assert names(merge_runs([MAIN, EVAL1, CALL, DEFLATE], [[py("f")]], INTERP)) == ["main", "f", "deflate"]


def test_outer_runs_a_broken_native_walk_lost_gather_at_the_outermost_eval_frame() -> None:
    user = [UNMAPPED, EVAL2, DEFLATE]  # frame pointers lost everything above the leaf's eval frame
    runs = [[py("<module>")], [py("main")], [py("leaf")]]  # 3.10: one run per frame
    assert names(merge_runs(user, runs, INTERP)) == ["?", "<module>", "main", "leaf", "deflate"]


def test_without_an_eval_frame_python_frames_replace_the_unreliable_root() -> None:
    # the walk went through the interpreter without frame pointers: garbage, then libz's leaf frames
    user = [native(0x5500, "junk"), UNMAPPED, DEFLATE]
    assert names(merge_runs(user, [[py("<module>"), py("f")]], INTERP)) == ["<module>", "f", "deflate"]
    # the sample is inside the interpreter: its leaf function stays visible
    assert names(merge_runs([UNMAPPED, FREE], [[py("f")]], INTERP)) == ["f", "PyObject_Free"]


def test_more_eval_frames_than_runs_pair_from_the_leaf_and_leave_the_rest_native() -> None:
    user = [MAIN, EVAL1, VECTOR, EVAL2, DEFLATE]  # the Python walk was truncated at its root end
    assert names(merge_runs(user, [[py("inner")]], INTERP)) == ["main", "_PyEval_EvalFrameDefault", "_PyEval_Vector",
                                                                "inner", "deflate"]


def test_runs_split_by_each_versions_markers() -> None:
    a, b, c = 0x7F0000001000, 0x7F0000002000, 0x7F0000003000
    # raw kernel stacks are leaf first: (code | flags, instr) pairs
    assert split_runs((c, 3, b, 2, a, 1), PY310) == [[(a, 1)], [(b, 2)], [(c, 3)]]
    assert split_runs((c, 3, b | FLAG_ENTRY, 2, a | FLAG_ENTRY, 1), PY311) == [[(a, 1)], [(b, 2), (c, 3)]]
    shim = 0x7F0000009000 | 3 << OWNER_SHIFT
    assert split_runs((c, 3, shim, 0, b, 2, a, 1, shim, 0), PY312) == [[(a, 1), (b, 2)], [(c, 3)]]
    assert split_runs((c | 2 << OWNER_SHIFT, 3,), PY312) == [[(c, 3)]]  # a generator's frame: not a shim


def test_pack_config_is_struct_py_proc() -> None:
    proc = PythonProcess(pid=1, version=(3, 12, 1), path="/x", runtime_address=0x7F0012345678, code_type=None,
                         offsets=PY312)
    raw = pack_config(proc)
    assert len(raw) == PY_PROC_SIZE == 72
    layout = struct.Struct("<QIIIIiIiIIIIBBBBQQ")
    fields = layout.unpack(raw)
    assert fields[0] == 0x7F0012345678
    assert fields[1:4] == (PY312.runtime_interpreters_head, PY312.interp_threads_head, PY312.tstate_next)
    assert fields[5] == PY312.tstate_native_thread_id and fields[-2] == (1 << 64) - 1  # pointers, not f_lasti
    assert fields[-1] == 0  # no FS base needed: 3.12 matches threads by native_thread_id
    assert fields[11:16] == (PY312.frame_owner, 0, 0, 0, 7)  # owner alone in its flags word; no is_entry
    f311 = layout.unpack(pack_config(replace(proc, offsets=PY311)))
    assert f311[11:16] == (PY311.frame_is_entry, 0, 8, 1, 7)  # is_entry, then owner in the next byte
    f310 = layout.unpack(pack_config(replace(proc, offsets=PY310), fsbase_offset=3128))
    assert f310[-2] == 0xFFFF_FFFF and f310[14:16] == (0, 0)  # f_lasti is an int; no flags at all
    assert f310[-1] == 3128


def test_registry_registers_detected_processes_and_skips_the_rest() -> None:
    written: dict[int, bytes | None] = {}
    proc = PythonProcess(pid=4242, version=(3, 11, 7), path="/x", runtime_address=1, code_type=None, offsets=PY311)
    detected = {4242: proc, 4243: Unsupported("/x: CPython 3.8.18: only CPython 3.9-3.13 are supported")}
    reg = PythonRegistry(written.__setitem__, detect=lambda pid, *_: detected.get(pid, Unsupported("no libpython")))
    reg.announce([4242, 4243, 4244])
    assert written == {4242: pack_config(proc)}  # 3.11 matches the tid: no FS base offset, no BTF read
    assert set(reg.processes) == {4242} and "3.8" in reg.unsupported[4243]


def test_metrics_count_python_processes_unsupported_versions_and_samples() -> None:
    from profiler import metrics
    from profiler.sampler import Drain, RawSample

    def value(counter: object, *labels: str) -> float:
        c = counter.labels(*labels) if labels else counter  # type: ignore[attr-defined]
        return float(c._value.get())

    before = (value(metrics.PYTHON_PROCESSES), value(metrics.PYTHON_UNSUPPORTED),
              value(metrics.PYTHON_SAMPLES, "frames"), value(metrics.PYTHON_SAMPLES, "no_thread_state"))
    proc = PythonProcess(pid=5151, version=(3, 12, 1), path="/x", runtime_address=1, code_type=None, offsets=PY312)
    detected = {5151: proc, 5152: Unsupported("/x: CPython 3.14.0: only CPython 3.9-3.13 are supported")}
    reg = PythonRegistry(lambda tgid, config: None,
                         detect=lambda pid, *_: detected.get(pid, Unsupported("no libpython")))
    reg.announce([5151, 5152, 5153])
    reg.announce([5152])  # the same unsupported process announced again: counted once
    samples = [RawSample(1, 5151, 5151, "python3", (), (), 0, 0, 7, (0x1000, 2), 0),
               RawSample(1, 5151, 5160, "python3", (), (), 0, 0, 2, (), 2),
               RawSample(1, 9, 9, "bash", (), (), 0, 0, 5)]  # not Python: not counted
    metrics.record_drain(Drain(0, 1, samples), [], {})
    after = (value(metrics.PYTHON_PROCESSES), value(metrics.PYTHON_UNSUPPORTED),
             value(metrics.PYTHON_SAMPLES, "frames"), value(metrics.PYTHON_SAMPLES, "no_thread_state"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 7, 2]


def test_a_process_like_one_found_without_python_is_not_detected_again_until_the_next_drain() -> None:
    """Given the watcher's read (NewProcess), a process with the executable and executable mappings of one
    detection found without CPython is known to have none by a dict hit; a real CPython process beside
    them is still detected and registered, and the memory of it goes with every drain (refresh)."""
    import subprocess
    import time

    from profiler.procmaps import read_exec_maps, read_new_process
    from profiler.pyframes import _detect

    calls: list[int] = []

    def counting(pid: int, *args: object) -> PythonProcess | Unsupported:
        calls.append(pid)
        return _detect(pid, *args)  # type: ignore[arg-type]

    written: dict[int, bytes | None] = {}
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    procs.append(subprocess.Popen(["/usr/bin/python3", "-c", "import time; time.sleep(60)"]))
    try:
        for p in procs:
            for _ in range(200):  # past exec and, for Python, past its initialization
                if any(e.path.endswith(("/sleep", "/python3.11")) for e in read_exec_maps(p.pid)):
                    break
                time.sleep(0.01)
        time.sleep(0.3)
        reg = PythonRegistry(written.__setitem__, detect=counting)
        sleeps, python = [p.pid for p in procs[:3]], procs[3].pid
        reg.announce([read_new_process(pid) for pid in [*sleeps[:2], python]])  # type: ignore[misc]
        assert calls == [sleeps[0], python]  # the second sleep: known to have no CPython
        assert set(reg.processes) == {python} and written[python] is not None, reg.unsupported
        assert all("does not export _PyRuntime" in reg.unsupported[pid] and str(pid) in reg.unsupported[pid]
                   for pid in sleeps[:2])
        reg.refresh()  # a drain: a binary rewritten in place would be seen
        reg.announce([read_new_process(sleeps[2])])  # type: ignore[list-item]
        assert calls == [sleeps[0], python, sleeps[2]]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_registrations_of_one_interpreter_are_logged_at_info_once(caplog) -> None:
    """A node starting python3 a few times a second: the first registration of an interpreter file and version
    is an INFO line, the next ones of it are DEBUG; another interpreter gets its own INFO line."""
    import logging

    procs = {pid: PythonProcess(pid=pid, version=(3, 11, 7), path="/usr/bin/python3.11", runtime_address=1,
                                code_type=None, offsets=PY311) for pid in (7001, 7002, 7003)}
    procs[7004] = PythonProcess(pid=7004, version=(3, 12, 1), path="/opt/py/libpython3.12.so", runtime_address=1,
                                code_type=None, offsets=PY312)
    reg = PythonRegistry(lambda tgid, config: None, detect=lambda pid, *_: procs[pid])
    with caplog.at_level(logging.DEBUG, logger="podflame.pyframes"):
        reg.announce(list(procs))
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records
             if r.levelno == logging.DEBUG and "Python frames on" in r.getMessage()]
    assert len(info) == 2 and "pid 7001" in info[0] and "pid 7004" in info[1], info
    assert len(debug) == 2 and set(reg.processes) == set(procs)
