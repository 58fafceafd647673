"""tests/workloads/python_chain.py for CPython 2.7, whose identifiers are ASCII only (its names are bytes).

The main thread spins in Worker.f3 under <module> -> f1 -> cafe -> f2; a second thread blocks in an
Event under g1 -> g2. Prints the same JSON line of facts (2.7 has no _PyRuntime: "runtime" is null, and
str is its bytes type), then spins.
"""

import ctypes
import json
import sys
import threading

import thread  # 2.7: get_ident() is pthread_self()


def me():
    """This thread as the kernel and libc know it: pthread_self() (2.7's thread ident), the tid, and the
    fs base, which is what an in-kernel walker reads to match a thread state's thread_id."""
    fs = ctypes.c_ulong()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(158, 0x1003, ctypes.byref(fs))  # arch_prctl(ARCH_GET_FS, &fs)
    return {"ident": thread.get_ident(), "native": libc.syscall(186), "fs_base": fs.value}  # 186: gettid


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


def cafe():
    f2()


def f1():
    cafe()


def facts():
    head = ctypes.pythonapi.PyInterpreterState_Head
    head.restype = ctypes.c_void_p
    return {"version": list(sys.version_info[:3]), "runtime": None, "interp_head": head(),
            "code_type": id(type(f1.__code__)), "str_type": id(str), "bytes_type": id(bytes),
            "threads": threads}


ev, started = threading.Event(), threading.Event()
threads = [me()]
second = threading.Thread(target=g1, args=(ev,), name="second")
second.daemon = True
second.start()
started.wait()
sys.stdout.write(json.dumps(facts()) + "\n")
sys.stdout.flush()
f1()
