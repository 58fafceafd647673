"""A Python program that sits in a known call chain, for the Python frame reader's tests.

The main thread spins in Worker.f3 under <module> -> f1 -> café -> 函数 -> 𠀀 -> f2 (names of each
str kind: ASCII, latin-1, UCS-2, UCS-4); a second thread blocks in an Event under g1 -> g2. The
spinning loop is one line, so a walk and py-spy agree on its line wherever they catch it. Prints a
JSON line of facts only the interpreter itself knows (the oracle for detection), then spins.
Runs on CPython 3.6+ (no syntax newer than that).
"""

import ctypes
import json
import sys
import threading


def me():
    """This thread as the kernel and libc know it: pthread_self(), the tid, and the fs base, which is
    what an in-kernel walker reads to match a thread state's thread_id."""
    fs = ctypes.c_ulong()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(158, 0x1003, ctypes.byref(fs))  # arch_prctl(ARCH_GET_FS, &fs)
    native = threading.get_native_id() if hasattr(threading, "get_native_id") else libc.syscall(186)  # gettid, <3.8
    return {"ident": threading.get_ident(), "native": native, "fs_base": fs.value}


def g2(ev):
    threads.append(me())
    started.set()
    ev.wait()


def g1(ev):
    g2(ev)


class Worker:
    def f3(self):
        n = 0
        while True: n += 1  # noqa: E701  (one line: the same line wherever it is caught)


def f2():
    Worker().f3()


def 𠀀():
    f2()


def 函数():
    𠀀()


def café():
    函数()


def f1():
    café()


def facts():
    try:
        runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
    except ValueError:  # 3.6: no runtime state (its list of interpreters is a static variable)
        runtime = None
    head = ctypes.pythonapi.PyInterpreterState_Head
    head.restype = ctypes.c_void_p
    return {"version": list(sys.version_info[:3]), "runtime": runtime, "interp_head": head(),
            "code_type": id(type(f1.__code__)),
            "str_type": id(str), "bytes_type": id(bytes),
            "threads": threads}


ev, started = threading.Event(), threading.Event()
threads = [me()]
threading.Thread(target=g1, args=(ev,), name="second", daemon=True).start()
started.wait()
print(json.dumps(facts()), flush=True)
f1()
