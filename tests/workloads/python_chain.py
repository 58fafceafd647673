"""A Python program that sits in a known call chain, for the Python frame reader's tests.

The main thread spins in Worker.f3 under <module> -> f1 -> café -> 函数 -> 𠀀 -> f2 (names of each
str kind: ASCII, latin-1, UCS-2, UCS-4); a second thread blocks in an Event under g1 -> g2. The
spinning loop is one line, so a walk and py-spy agree on its line wherever they catch it. Prints a
JSON line of facts only the interpreter itself knows (the oracle for detection), then spins.
Runs on CPython 3.9+ (no syntax newer than that).
"""

import ctypes
import json
import sys
import threading


def g2(ev):
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
    runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
    return {"version": list(sys.version_info[:3]), "runtime": runtime, "code_type": id(type(f1.__code__)),
            "pid": __import__("os").getpid()}


ev = threading.Event()
threading.Thread(target=g1, args=(ev,), name="second", daemon=True).start()
print(json.dumps(facts()), flush=True)
f1()
