"""The agent keeps named Python frames and stacks across drains (profiler/pyframes.py), so a kept one
must never outlive the code objects it was named from: when a code address holds another code object (a
function redefined or a module reloaded whose old code was freed and its memory reused), or no code object
at all, the next drain names it afresh. Real processes and process_vm_readv; the reuse is made on command
by tests/workloads/python_codes.py (it copies one code object over another in its own memory). Also: the
early reads (off by default) hand a filled reader to the drain."""

from __future__ import annotations

import time

import pytest

from podflame.model import Frame, FrameKind, Line
from profiler.pyframes import EXITED, UNREADABLE, EarlyReads, PythonFrames, PythonRegistry
from profiler.python.code import CodeInfo, CodeReader
from profiler.python.offsets import LASTI_BYTES, LASTI_UNITS, PyOffsets
from profiler.sampler import Drain, RawSample
from tests.test_python_pid_reuse import CHAIN, PYTHON, registered, spawn
from tests.test_python_pid_reuse import stop as stop_popen
from tests.test_python_reader import WORKLOADS, command, interpreter, start, stop


def instr_at(o: PyOffsets, code: int, offset: int) -> int:
    """The frame_instr field the kernel would record for a frame at byte `offset` of `code`."""
    if o.frame_instr_kind == LASTI_BYTES:
        return offset
    if o.frame_instr_kind == LASTI_UNITS:
        return offset // o.codeunit_size
    return code + o.code_code_adaptive + offset


def python_lines(stack: tuple[Frame, ...]) -> list[Line]:
    return [f.lines[0] for f in stack if f.kind is FrameKind.PYTHON]


@pytest.mark.parametrize("which", ["3.10", "3.12", "debian"])
def test_a_kept_stack_is_named_afresh_when_its_code_address_holds_another_object(which: str) -> None:
    r = start([interpreter(which), str(WORKLOADS / "python_codes.py")])
    try:
        reg = PythonRegistry(lambda tgid, config: None)
        reg.announce([r.pid])
        proc = reg.processes[r.pid]
        alpha, beta = int(r.facts["alpha"]), int(r.facts["beta"])  # type: ignore[call-overload]
        oracle = CodeReader.for_process(proc)
        want_alpha, want_beta = oracle.read(alpha), oracle.read(beta)
        offset = 2  # an instruction past the first: its line comes from the line table
        raw = (alpha, instr_at(proc.offsets, alpha, offset))
        sample = RawSample(1, r.pid, r.pid, "python3", (), (), 0, 0, 1, raw, 0)
        native: tuple[Frame, ...] = ()  # one object across drains, as StackMemo hands back a kept stack
        frames = PythonFrames()

        def drain() -> tuple[Frame, ...]:
            frames.begin_drain(Drain(0, 1, [sample], python_processes=reg.refresh(), python_early=reg.early))
            return frames.merge(r.pid, raw, native)

        first = drain()
        assert python_lines(first) == [Line("alpha", want_alpha.filename, want_alpha.line(offset))]
        again = drain()
        assert again == first and again[0] is first[0]  # nothing changed: the named frame is kept (could go stale)

        command(r, "reuse")  # beta's code object now where alpha's was
        assert isinstance(oracle.read(alpha), CodeInfo) and oracle.read(alpha).name == "beta"
        after = drain()
        assert python_lines(after) == [Line("beta", want_beta.filename, want_beta.line(offset))]
        assert want_beta.line(offset) != want_alpha.line(offset)  # the line is re-read too, not only the name
        assert drain()[0] is after[0]

        command(r, "clobber")  # no code object there any more
        assert drain() == (UNREADABLE,)
    finally:
        stop(r)


def test_early_reads_name_a_process_that_exited_before_its_drain() -> None:
    """pyframes.EarlyReads (--python-early-reads, off by default) walks a new process shortly after its
    registration, into the
    reader the drain then uses: a process gone before the drain is named, not `process exited before read`."""
    got = {}
    for delays in ((), (0.05,)):
        p = spawn([PYTHON, str(CHAIN)])
        try:
            reg = PythonRegistry(lambda tgid, config: None, early=EarlyReads(delays) if delays else None)
            raw, sample = registered(p, reg)  # registration schedules the early walk
            time.sleep(0.5)
        finally:
            stop_popen(p)
        frames = PythonFrames()
        # exited: kept for a grace
        frames.begin_drain(Drain(0, 1, [sample], python_processes=reg.refresh(), python_early=reg.early))
        got[delays] = [f.lines[0].function for f in frames.merge(p.pid, raw, ()) if f.kind is FrameKind.PYTHON]
    assert set(got[()]) == {EXITED.lines[0].function}
    assert {"<module>", "f1", "Worker.f3"} <= set(got[(0.05,)]), got
