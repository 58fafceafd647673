/* offsetof() of every field profiler/python/offsets.py tabulates, compiled by tests/test_python_reader.py
   against one CPython version's headers (Py_BUILD_CORE for the internal ones); prints "name value" lines. */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include <frameobject.h>
#if PY_VERSION_HEX >= 0x03090000
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#elif PY_VERSION_HEX >= 0x03080000
#include "internal/pycore_pystate.h" /* 3.8: the runtime and interpreter states live here */
#elif PY_VERSION_HEX >= 0x03070000
#include "internal/pystate.h" /* 3.7: the runtime state before the pycore_ names */
#endif
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#endif
#define P(name, expr) printf("%s %ld\n", name, (long)(expr))
int main(void) {
    P("version_hex", PY_VERSION_HEX);
#if PY_VERSION_HEX >= 0x030D0000
    P("debug_offsets_size", sizeof(_Py_DebugOffsets));
#endif
#if PY_VERSION_HEX >= 0x03070000
    P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#else
    P("runtime_interpreters_head", 0); /* 2.7/3.6: no runtime state; pystate.c's `interp_head` is the head itself */
#endif
    P("interp_next", offsetof(PyInterpreterState, next));
#if PY_VERSION_HEX >= 0x030B0000
    P("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#else
    P("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
#if PY_VERSION_HEX >= 0x03090000
    P("interp_runtime", offsetof(PyInterpreterState, runtime));
#elif PY_VERSION_HEX >= 0x03070000
    P("runtime_interpreters_main", offsetof(_PyRuntimeState, interpreters.main));
#endif
    P("tstate_next", offsetof(PyThreadState, next));
    P("tstate_interp", offsetof(PyThreadState, interp));
    P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030B0000
    P("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#endif
#if PY_VERSION_HEX >= 0x030D0000
    P("tstate_frame", offsetof(PyThreadState, current_frame));
#elif PY_VERSION_HEX >= 0x030B0000
    P("tstate_frame", offsetof(PyThreadState, cframe));
    P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
    P("tstate_frame", offsetof(PyThreadState, frame));
#endif
#if PY_VERSION_HEX >= 0x030B0000
    P("frame_previous", offsetof(_PyInterpreterFrame, previous));
#if PY_VERSION_HEX >= 0x030D0000
    P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
    P("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
#else
    P("frame_code", offsetof(_PyInterpreterFrame, f_code));
    P("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
#endif
    P("frame_owner", offsetof(_PyInterpreterFrame, owner));
#if PY_VERSION_HEX < 0x030C0000
    P("frame_is_entry", offsetof(_PyInterpreterFrame, is_entry));
#else
    P("owner_cstack", FRAME_OWNED_BY_CSTACK);
#endif
    P("code_qualname", offsetof(PyCodeObject, co_qualname));
    P("code_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
    P("codeunit_size", sizeof(_Py_CODEUNIT));
#else
    P("frame_previous", offsetof(PyFrameObject, f_back));
    P("frame_code", offsetof(PyFrameObject, f_code));
    P("frame_instr", offsetof(PyFrameObject, f_lasti));
#if PY_VERSION_HEX >= 0x030A0000
    P("code_linetable", offsetof(PyCodeObject, co_linetable));
#else
    P("code_linetable", offsetof(PyCodeObject, co_lnotab));
#endif
#if PY_MAJOR_VERSION >= 3
    P("codeunit_size", sizeof(_Py_CODEUNIT));
#endif
#endif
    P("code_name", offsetof(PyCodeObject, co_name));
    P("code_filename", offsetof(PyCodeObject, co_filename));
    P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
    P("code_sizeof", sizeof(PyCodeObject));
    P("object_type", offsetof(PyObject, ob_type));
    P("type_name", offsetof(PyTypeObject, tp_name));
    P("bytes_size", offsetof(PyVarObject, ob_size));
    P("bytes_sval", offsetof(PyBytesObject, ob_sval)); /* 2.7: PyStringObject's (bytesobject.h's alias) */
#if PY_MAJOR_VERSION >= 3
    P("unicode_length", offsetof(PyASCIIObject, length));
    P("unicode_state", offsetof(PyASCIIObject, state));
    P("unicode_ascii_size", sizeof(PyASCIIObject));
    P("unicode_compact_size", sizeof(PyCompactUnicodeObject));
    { PyASCIIObject o; memset(&o, 0, sizeof o); o.state.kind = 7; unsigned int w; memcpy(&w, &o.state, 4); int s = 0; while (!(w & 1)) { w >>= 1; s++; } P("unicode_kind_shift", s); }
    { PyASCIIObject o; memset(&o, 0, sizeof o); o.state.compact = 1; unsigned int w; memcpy(&w, &o.state, 4); P("unicode_compact_bit", __builtin_ctz(w)); }
    { PyASCIIObject o; memset(&o, 0, sizeof o); o.state.ascii = 1; unsigned int w; memcpy(&w, &o.state, 4); P("unicode_ascii_bit", __builtin_ctz(w)); }
#endif
    return 0;
}
