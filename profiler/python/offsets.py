"""Where CPython keeps what a profiler reads: struct offsets per interpreter version.

CPython 2.7 and 3.6-3.12 publish no layout, so each version has a table here, written from that version's
headers (Include/cpython/*.h, Include/internal/pycore_{runtime,interp,frame}.h) and checked by
tests/test_python_reader.py against `offsetof()` compiled with the real headers. CPython 3.13 puts
`_Py_DebugOffsets` at the start of `_PyRuntime` for exactly this: its offsets are read from the
process (`from_debug_offsets`), never assumed. Layouts are x86_64 (LP64) ones.

How a walker finds a thread's frames, per version (via `_PyRuntime`; 2.7/3.6 via `interp_head`, see PY36):
  runtime + runtime_interpreters_head -> interp; interp + interp_threads_head -> first tstate;
  tstate + tstate_next -> the next one. Match a thread by tstate_thread_id (pthread_self(), which is
  the thread's fs base on x86_64 glibc) or, from 3.11, tstate_native_thread_id (the kernel tid).
  2.7-3.10: tstate + tstate_frame -> PyFrameObject*; f_back, f_code, f_lasti (int: a byte offset
            in 3.6-3.9, a code-unit index in 3.10). Each PyFrameObject is one _PyEval_EvalFrameDefault call.
  3.11:     tstate + tstate_frame -> _PyCFrame*; + cframe_current_frame -> _PyInterpreterFrame*;
            previous, f_code, prev_instr (pointer into co_code_adaptive). `is_entry` (bool) marks the
            first frame one _PyEval_EvalFrameDefault call pushed: frames from the top down to and
            including an is_entry frame ran in one C call.
  3.12:     as 3.11 (cframe->current_frame), no is_entry: each _PyEval_EvalFrameDefault call pushes a
            shim frame with owner == FRAME_OWNED_BY_CSTACK (3) below its Python frames; the shim has
            no Python meaning (skip it) and ends that call's run of frames.
  3.13:     tstate + tstate_frame is current_frame (_PyInterpreterFrame*) directly; f_executable and
            instr_ptr (the instruction running, not the one before); shim frames as in 3.12.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

from podflame.errors import BinaryFormatError

NO_FIELD = -1  # the field does not exist in this version

# How frame_instr is turned into a byte offset into the code's instructions (see instr_offset).
LASTI_BYTES = 0  # 2.7-3.9: int f_lasti, a byte offset of the last instruction
LASTI_UNITS = 1  # 3.10: int f_lasti, an index in code units
PREV_INSTR = 2  # 3.11/3.12: pointer to the code unit before the next instruction
INSTR_PTR = 3  # 3.13: pointer to the instruction executing now

# The line table's format (see profiler/python/lines.py).
LNOTAB = 0  # 3.6-3.9 co_lnotab: (byte delta, signed line delta) pairs
LINETABLE_310 = 1  # 3.10 co_linetable (PEP 626): (byte delta, signed line delta or -128 for none)
LOCATIONS = 2  # 3.11+ co_linetable (PEP 657 location table), in code units
LNOTAB_27 = 3  # 2.7 co_lnotab: as LNOTAB, but line deltas are unsigned (signed from 3.6)

FRAME_OWNED_BY_CSTACK = 3  # 3.12/3.13 enum _frameowner: the shim frame of one _PyEval_EvalFrameDefault call


@dataclass(frozen=True)
class PyOffsets:
    """Byte offsets (NO_FIELD when absent) of the fields a Python frame walker and a code reader use."""

    version: tuple[int, int]  # (major, minor) the layout is for
    # thread list
    runtime_interpreters_head: int  # _PyRuntimeState.interpreters.head
    interp_next: int  # PyInterpreterState.next
    interp_threads_head: int  # .tstate_head (3.8-3.10) / .threads.head (3.11+)
    interp_runtime: int  # PyInterpreterState.runtime, == &_PyRuntime: detection checks the table with it
    tstate_next: int
    tstate_interp: int
    tstate_thread_id: int  # unsigned long: pthread_self()
    tstate_native_thread_id: int  # unsigned long: the kernel tid (3.11+)
    tstate_frame: int  # .frame (3.8-3.10), .cframe (3.11/3.12), .current_frame (3.13+)
    cframe_current_frame: int  # _PyCFrame.current_frame (3.11/3.12)
    # frames: PyFrameObject (3.8-3.10) or _PyInterpreterFrame (3.11+)
    frame_previous: int  # f_back / previous
    frame_code: int  # f_code / f_executable
    frame_instr: int  # f_lasti (int) / prev_instr / instr_ptr (pointers)
    frame_instr_kind: int  # LASTI_BYTES, LASTI_UNITS, PREV_INSTR, INSTR_PTR
    frame_is_entry: int  # bool is_entry (3.11)
    frame_owner: int  # char owner (3.11+)
    owner_cstack: int  # owner value of shim frames (3.12+), NO_FIELD before
    # code objects
    code_size: int  # bytes to read to have every field below except the instructions
    code_name: int
    code_qualname: int  # 3.11+
    code_filename: int
    code_firstlineno: int  # int
    code_linetable: int  # co_lnotab (3.9) / co_linetable (3.10+): a bytes object
    linetable_format: int  # LNOTAB, LINETABLE_310, LOCATIONS
    code_code_adaptive: int  # 3.11+: the instructions, inline in the code object
    codeunit_size: int  # sizeof(_Py_CODEUNIT)
    # objects
    object_type: int  # PyObject.ob_type
    type_name: int  # PyTypeObject.tp_name (char*)
    bytes_size: int  # PyVarObject.ob_size
    bytes_sval: int  # PyBytesObject.ob_sval
    unicode_length: int  # PyASCIIObject.length (code points)
    unicode_state: int  # PyASCIIObject.state (a 32-bit bit field)
    unicode_ascii_size: int  # sizeof(PyASCIIObject): compact ASCII data follows
    unicode_compact_size: int  # sizeof(PyCompactUnicodeObject): other compact data follows
    # _PyRuntimeState.interpreters.main: read only where interp_runtime is missing (3.7/3.8), to check a table
    runtime_interpreters_main: int = NO_FIELD
    unicode_kind_shift: int = 2  # state: interned:2, kind:3, compact:1, ascii:1 (low bits first)
    unicode_compact_bit: int = 5
    unicode_ascii_bit: int = 6
    # 2.7: names and file names are PyStringObjects (bytes: length at bytes_size, data at bytes_sval, type
    # "str"), like the line table; there are no unicode fields
    names_are_bytes: bool = False

    @property
    def has_entry_flag(self) -> bool:
        return self.frame_is_entry != NO_FIELD

    @property
    def has_shim_frames(self) -> bool:
        return self.owner_cstack != NO_FIELD


_OBJECTS: dict[str, Any] = dict(object_type=8, type_name=24, bytes_size=16, bytes_sval=32, unicode_length=16,
                                unicode_state=32)

PY39 = PyOffsets(
    version=(3, 9), runtime_interpreters_head=32, interp_next=0, interp_threads_head=8, interp_runtime=16,
    tstate_next=8, tstate_interp=16, tstate_thread_id=176, tstate_native_thread_id=NO_FIELD,
    tstate_frame=24, cframe_current_frame=NO_FIELD,
    frame_previous=24, frame_code=32, frame_instr=104, frame_instr_kind=LASTI_BYTES,
    frame_is_entry=NO_FIELD, frame_owner=NO_FIELD, owner_cstack=NO_FIELD,
    code_size=176, code_name=112, code_qualname=NO_FIELD, code_filename=104, code_firstlineno=40,
    code_linetable=120, linetable_format=LNOTAB, code_code_adaptive=NO_FIELD, codeunit_size=2,
    unicode_ascii_size=48, unicode_compact_size=72, **_OBJECTS)

# 3.8: 3.9's layout for every field read here, but PyInterpreterState has no `runtime` pointer yet:
# detection checks the table by the runtime's `main` interpreter being on the list `head` starts
PY38 = replace(PY39, version=(3, 8), interp_runtime=NO_FIELD, runtime_interpreters_main=40)

# 3.7: 3.8's thread states and frames; its runtime state has no `preinitializing`/`preinitialized` flags (head and
# main 8 bytes earlier) and its code object no co_posonlyargcount (every field after co_argcount 4 or 8 earlier)
PY37 = replace(PY38, version=(3, 7), runtime_interpreters_head=24, runtime_interpreters_main=32, code_size=120,
               code_name=104, code_filename=96, code_firstlineno=36, code_linetable=112)

# 3.6: no _PyRuntime. pystate.c's static `interp_head` (in .symtab) is the list head itself, so detection gives its
# address as the "runtime" with the head at offset 0; no main interpreter to check against. Its thread state
# still has its own exc_* fields (thread_id 24 earlier) and its frames f_exc_* (f_lasti 16 later).
PY36 = replace(PY37, version=(3, 6), runtime_interpreters_head=0, runtime_interpreters_main=NO_FIELD,
               tstate_thread_id=152, frame_instr=120)

# 2.7: 3.6's lists (static interp_head, no main interpreter), but PyThreadState and PyInterpreterState start
# with `next` (no prev), PyCodeObject has no kwonlyargcount, and names are PyStringObjects (ob_sval at 36)
PY27 = replace(PY36, version=(2, 7), tstate_next=0, tstate_interp=8, tstate_frame=16, tstate_thread_id=144,
               code_size=112, code_name=88, code_filename=80, code_firstlineno=96, code_linetable=104,
               linetable_format=LNOTAB_27, codeunit_size=NO_FIELD, bytes_sval=36, unicode_length=NO_FIELD,
               unicode_state=NO_FIELD, unicode_ascii_size=NO_FIELD, unicode_compact_size=NO_FIELD,
               unicode_kind_shift=NO_FIELD, unicode_compact_bit=NO_FIELD, unicode_ascii_bit=NO_FIELD,
               names_are_bytes=True)

PY310 = replace(PY39, version=(3, 10), frame_instr=96, frame_instr_kind=LASTI_UNITS, linetable_format=LINETABLE_310)

PY311 = PyOffsets(
    version=(3, 11), runtime_interpreters_head=40, interp_next=0, interp_threads_head=16, interp_runtime=40,
    tstate_next=8, tstate_interp=16, tstate_thread_id=152, tstate_native_thread_id=160,
    tstate_frame=56, cframe_current_frame=8,
    frame_previous=48, frame_code=32, frame_instr=56, frame_instr_kind=PREV_INSTR,
    frame_is_entry=68, frame_owner=69, owner_cstack=NO_FIELD,
    code_size=192, code_name=120, code_qualname=128, code_filename=112, code_firstlineno=72,
    code_linetable=136, linetable_format=LOCATIONS, code_code_adaptive=184, codeunit_size=2,
    unicode_ascii_size=48, unicode_compact_size=72, **_OBJECTS)

PY312 = PyOffsets(
    version=(3, 12), runtime_interpreters_head=40, interp_next=0, interp_threads_head=72, interp_runtime=96,
    tstate_next=8, tstate_interp=16, tstate_thread_id=136, tstate_native_thread_id=144,
    tstate_frame=56, cframe_current_frame=0,
    frame_previous=8, frame_code=0, frame_instr=56, frame_instr_kind=PREV_INSTR,
    frame_is_entry=NO_FIELD, frame_owner=70, owner_cstack=FRAME_OWNED_BY_CSTACK,
    code_size=200, code_name=120, code_qualname=128, code_filename=112, code_firstlineno=68,
    code_linetable=136, linetable_format=LOCATIONS, code_code_adaptive=192, codeunit_size=2,
    unicode_ascii_size=40, unicode_compact_size=56, **_OBJECTS)

TABLES: dict[tuple[int, int], PyOffsets] = {o.version: o for o in (PY27, PY36, PY37, PY38, PY39, PY310, PY311, PY312)}
DEBUG_OFFSETS_VERSIONS = {(3, 13)}  # _Py_DebugOffsets layouts this module knows (3.14 changed it)
SUPPORTED = frozenset(TABLES) | DEBUG_OFFSETS_VERSIONS


class DebugOffsetsError(BinaryFormatError):
    """`_PyRuntime` does not start with a `_Py_DebugOffsets` this reader understands."""


DEBUG_COOKIE = b"xdebugpy"
# 3.13's _Py_DebugOffsets: cookie[8], then u64 fields, struct by struct, each starting with its size.
DEBUG_313_FIELDS = (
    "version", "free_threaded",
    "runtime.size", "runtime.finalizing", "runtime.interpreters_head",
    "interp.size", "interp.id", "interp.next", "interp.threads_head", "interp.gc", "interp.imports_modules",
    "interp.sysdict", "interp.builtins", "interp.ceval_gil", "interp.gil_runtime_state",
    "interp.gil_enabled", "interp.gil_locked", "interp.gil_holder",
    "tstate.size", "tstate.prev", "tstate.next", "tstate.interp", "tstate.current_frame", "tstate.thread_id",
    "tstate.native_thread_id", "tstate.datastack_chunk", "tstate.status",
    "frame.size", "frame.previous", "frame.executable", "frame.instr_ptr", "frame.localsplus", "frame.owner",
    "code.size", "code.filename", "code.name", "code.qualname", "code.linetable", "code.firstlineno",
    "code.argcount", "code.localsplusnames", "code.localspluskinds", "code.co_code_adaptive",
    "pyobject.size", "pyobject.ob_type",
    "type.size", "type.tp_name", "type.tp_repr", "type.tp_flags",
    "tuple.size", "tuple.ob_item", "tuple.ob_size",
    "list.size", "list.ob_item", "list.ob_size",
    "dict.size", "dict.ma_keys", "dict.ma_values",
    "float.size", "float.ob_fval",
    "long.size", "long.lv_tag", "long.ob_digit",
    "bytes.size", "bytes.ob_size", "bytes.ob_sval",
    "unicode.size", "unicode.state", "unicode.length", "unicode.asciiobject_size",
    "gc.size", "gc.collecting",
)
DEBUG_OFFSETS_SIZE = len(DEBUG_COOKIE) + 8 * len(DEBUG_313_FIELDS)


def debug_offsets_version(raw: bytes) -> int:
    """PY_VERSION_HEX from the start of a 3.13+ `_PyRuntime` (raises when the cookie is not there)."""
    if len(raw) < 16 or raw[:8] != DEBUG_COOKIE:
        raise DebugOffsetsError("_PyRuntime does not start with the _Py_DebugOffsets cookie 'xdebugpy'")
    return int(struct.unpack_from("<Q", raw, 8)[0])


def from_debug_offsets(raw: bytes) -> PyOffsets:
    """PyOffsets from the `_Py_DebugOffsets` bytes at the start of a 3.13 `_PyRuntime`.

    Only the 3.13 layout is decoded; every size and offset is range-checked, so bytes that are not
    this struct (another version, a free-threaded build whose objects differ) raise instead of
    producing offsets that would misread memory.
    """
    hexversion = debug_offsets_version(raw)
    version = (hexversion >> 24, (hexversion >> 16) & 0xFF)
    if version not in DEBUG_OFFSETS_VERSIONS:
        raise DebugOffsetsError(f"_Py_DebugOffsets of {version[0]}.{version[1]}: layout not known")
    if len(raw) < DEBUG_OFFSETS_SIZE:
        raise DebugOffsetsError(f"_Py_DebugOffsets: {len(raw)} bytes, need {DEBUG_OFFSETS_SIZE}")
    values = struct.unpack_from(f"<{len(DEBUG_313_FIELDS)}Q", raw, 8)
    f = dict(zip(DEBUG_313_FIELDS, values, strict=True))
    if f["free_threaded"]:
        raise DebugOffsetsError("free-threaded (no-GIL) build: its object layout is not supported")
    for struct_name in ("runtime", "interp", "tstate", "frame", "code", "pyobject", "type", "bytes", "unicode"):
        size = f[f"{struct_name}.size"]
        if not 0 < size < 1 << 20:
            raise DebugOffsetsError(f"_Py_DebugOffsets: implausible sizeof {struct_name} {size}")
        for key, value in f.items():
            if key.startswith(struct_name + ".") and key != f"{struct_name}.size" and value >= size:
                raise DebugOffsetsError(f"_Py_DebugOffsets: {key}={value} outside its struct ({size} bytes)")
    ascii_size = f["unicode.asciiobject_size"]
    return PyOffsets(
        version=version,
        runtime_interpreters_head=f["runtime.interpreters_head"], interp_next=f["interp.next"],
        interp_threads_head=f["interp.threads_head"], interp_runtime=NO_FIELD,  # not published
        tstate_next=f["tstate.next"], tstate_interp=f["tstate.interp"], tstate_thread_id=f["tstate.thread_id"],
        tstate_native_thread_id=f["tstate.native_thread_id"], tstate_frame=f["tstate.current_frame"],
        cframe_current_frame=NO_FIELD,
        frame_previous=f["frame.previous"], frame_code=f["frame.executable"], frame_instr=f["frame.instr_ptr"],
        frame_instr_kind=INSTR_PTR, frame_is_entry=NO_FIELD, frame_owner=f["frame.owner"],
        owner_cstack=FRAME_OWNED_BY_CSTACK,
        code_size=f["code.co_code_adaptive"], code_name=f["code.name"], code_qualname=f["code.qualname"],
        code_filename=f["code.filename"], code_firstlineno=f["code.firstlineno"],
        code_linetable=f["code.linetable"], linetable_format=LOCATIONS,
        code_code_adaptive=f["code.co_code_adaptive"], codeunit_size=2,
        object_type=f["pyobject.ob_type"], type_name=f["type.tp_name"],
        bytes_size=f["bytes.ob_size"], bytes_sval=f["bytes.ob_sval"],
        unicode_length=f["unicode.length"], unicode_state=f["unicode.state"],
        # PyCompactUnicodeObject adds utf8_length and utf8 (two words) to PyASCIIObject
        unicode_ascii_size=ascii_size, unicode_compact_size=ascii_size + 16,
    )


def instr_offset(offsets: PyOffsets, code_addr: int, instr: int) -> int:
    """Byte offset into the code's instructions of the instruction a frame is at.

    `instr` is the frame_instr field as read: an int (3.8-3.10) or a pointer (3.11+). 3.11/3.12's
    prev_instr points at the code unit before the next instruction, so the executing one is there;
    a frame that has not started points one unit before the code (-2 here), which the line tables
    map to the first line.
    """
    kind = offsets.frame_instr_kind
    if kind == LASTI_BYTES:
        return _signed32(instr)
    if kind == LASTI_UNITS:
        return _signed32(instr) * offsets.codeunit_size
    return instr - (code_addr + offsets.code_code_adaptive)


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v
