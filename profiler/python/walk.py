"""A userspace walk of a CPython process's threads and frames: the reference the kernel's walker is
compared with, and what tests check the offsets with.

It follows exactly the pointers the in-kernel walker follows (see offsets.py for the chain per
version), with process_vm_readv instead of bpf_probe_read_user, and reads without stopping the
process: a frame being pushed or popped can make one walk short, which a depth bound and a
cycle check keep from going wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from profiler.python import remote
from profiler.python.code import CodeInfo, CodeReader
from profiler.python.detect import PythonProcess
from profiler.python.offsets import LASTI_BYTES, LASTI_UNITS, NO_FIELD, instr_offset

MAX_THREADS = 4096
MAX_DEPTH = 256


@dataclass(frozen=True)
class RawFrame:
    """What the kernel records per Python frame."""

    code: int  # code object address
    instr: int  # frame_instr as read: f_lasti (3.8-3.10) or a pointer (3.11+)
    entry: bool  # the first frame its _PyEval_EvalFrameDefault call ran (the oldest of its run)


@dataclass(frozen=True)
class Thread:
    tstate: int
    thread_id: int  # pthread_self()
    native_thread_id: int | None  # kernel tid (3.11+)
    frame: int  # the innermost frame's address (0: no Python frame running)


@dataclass(frozen=True)
class Frame:
    """A resolved Python frame."""

    code: CodeInfo | None  # None when the code object could not be read
    line: int | None
    entry: bool
    raw: RawFrame


def threads(proc: PythonProcess) -> Iterator[Thread]:
    """The thread states of every interpreter of the process, newest thread first."""
    o = proc.offsets
    pid = proc.pid
    interp = _word(pid, proc.runtime_address + o.runtime_interpreters_head)
    seen: set[int] = set()
    size = max(o.tstate_next, o.tstate_thread_id, o.tstate_native_thread_id, o.tstate_frame) + 8
    while interp and interp not in seen:
        seen.add(interp)
        tstate = _word(pid, interp + o.interp_threads_head)
        while tstate and tstate not in seen and len(seen) < MAX_THREADS:
            seen.add(tstate)
            raw = remote.read(pid, tstate, size)
            frame = _u64(raw, o.tstate_frame)
            if frame and o.cframe_current_frame != NO_FIELD:
                frame = _word(pid, frame + o.cframe_current_frame)
            native = _u64(raw, o.tstate_native_thread_id) if o.tstate_native_thread_id != NO_FIELD else None
            yield Thread(tstate, _u64(raw, o.tstate_thread_id), native, frame)
            tstate = _u64(raw, o.tstate_next)
        interp = _word(pid, interp + o.interp_next)


def raw_frames(proc: PythonProcess, frame: int, max_depth: int = MAX_DEPTH) -> list[RawFrame]:
    """The frames from `frame` outwards, innermost first, shim frames (3.12+) left out."""
    o = proc.offsets
    pid = proc.pid
    fields = [o.frame_previous, o.frame_code, o.frame_instr]
    if o.frame_owner != NO_FIELD:
        fields.append(o.frame_owner)
    if o.frame_is_entry != NO_FIELD:
        fields.append(o.frame_is_entry)
    size = max(fields) + 8
    out: list[RawFrame] = []
    seen: set[int] = set()
    while frame and frame not in seen and len(out) < max_depth:
        seen.add(frame)
        raw = remote.read(pid, frame, size)
        previous = _u64(raw, o.frame_previous)
        if o.has_shim_frames and raw[o.frame_owner] == o.owner_cstack:
            if out:  # the shim ends the run of frames its _PyEval_EvalFrameDefault call pushed
                out[-1] = RawFrame(out[-1].code, out[-1].instr, True)
            frame = previous
            continue
        if o.frame_instr_kind in (LASTI_BYTES, LASTI_UNITS):  # int f_lasti
            instr = struct.unpack_from("<i", raw, o.frame_instr)[0]
        else:
            instr = _u64(raw, o.frame_instr)
        # 3.11 says it; 3.8-3.10: every PyFrameObject is a call of its own; 3.12+: the shim below says it
        entry = bool(raw[o.frame_is_entry]) if o.has_entry_flag else not o.has_shim_frames
        out.append(RawFrame(_u64(raw, o.frame_code), instr, entry))
        frame = previous
    return out


def resolve(proc: PythonProcess, reader: CodeReader, frames: list[RawFrame]) -> list[Frame]:
    """Names and lines of raw frames; a code object that cannot be read gives a Frame with code None."""
    infos = reader.read_many(f.code for f in frames)
    out = []
    for f in frames:
        got = infos[f.code]
        info = got if isinstance(got, CodeInfo) else None
        line = None if info is None else info.line(instr_offset(proc.offsets, f.code, f.instr))
        out.append(Frame(info, line, f.entry, f))
    return out


def walk(proc: PythonProcess, reader: CodeReader | None = None) -> dict[Thread, list[Frame]]:
    """Every thread's Python stack, innermost frame first."""
    if reader is None:
        reader = CodeReader.for_process(proc)
    return {t: resolve(proc, reader, raw_frames(proc, t.frame)) for t in threads(proc)}


def _word(pid: int, address: int) -> int:
    return _u64(remote.read(pid, address, 8), 0)


def _u64(raw: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", raw, offset)[0])
