"""Python shapes a service runs that the other Python workloads do not, each spinning for ever under a
known chain of Python functions (the fidelity tests and bench/unwind.py --matrix check them):

  threads N: N idle threads started before the main thread spins in <module> -> spin_threads -> middle
             -> leaf (CPython puts each new thread state at the head of its list: the main thread's is
             last, behind all N)
  sorted:    sorted(key=keyf) calls keyf from C (list.sort): <module> -> sorter -> keyf -> leaf
  gen:       a generator: <module> -> use_gen -> gen -> leaf
  deep N:    N frames of recurse, then middle -> leaf
  cext:      threads in C extensions: the main thread in <module> -> json_loop -> encode (json.dumps), one
             thread in zlib_loop -> squeeze (zlib.compress), one in re_loop -> scan (re.findall)
  ctypes:    libc's qsort calls a Python comparator through a ctypes (libffi closure) callback:
             <module> -> c_sorter -> (ffi_call, qsort, the closure) -> c_compare -> leaf
  fork N:    the parent spins in Python for a second (a profiler finds it), then forks N workers that spin
             in <module> -> prefork -> worker_loop -> middle -> leaf (gunicorn's and multiprocessing's
             fork without exec) and sleeps

Prints "ready" when the shape is set up. Runs on CPython 2.7 and 3.6+ (no f-strings, print() keywords
or Thread(daemon=) for 2.7).
"""

import json
import re
import sys
import threading
import zlib


def ready():
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def daemon(target, *args):
    t = threading.Thread(target=target, args=args)
    t.daemon = True
    return t


def leaf(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def middle(n):
    return leaf(n) + 1


def spin_threads(n):
    ev = threading.Event()
    threads = [daemon(ev.wait) for _ in range(n)]
    for t in threads:
        t.start()
    ready()
    while True:
        middle(1000)


def keyf(x):
    return leaf(50) + x


def sorter():
    ready()
    while True:
        sorted(range(200), key=keyf)


def gen():
    while True:
        yield leaf(1000)


def use_gen():
    ready()
    for _ in gen():
        pass


def recurse(depth):
    if depth == 0:
        ready()
        while True:
            middle(1000)
    return recurse(depth - 1)


def encode(obj):
    return json.dumps(obj)


def json_loop():
    obj = {"k" + str(i): [i, str(i), {"x": i * 0.5}] for i in range(300)}
    ready()
    while True:
        encode(obj)


def squeeze(data):
    return zlib.compress(data, 9)


def zlib_loop():
    data = bytes(bytearray(range(256))) * 64 + b"podflame" * 512
    while True:
        squeeze(data)


def scan(text):
    return re.findall(r"(\w+)@(\w+)\.com", text)


def re_loop():
    text = " ".join("user" + str(i) + "@host" + str(i % 7) + ".com x" + str(i) for i in range(400))
    while True:
        scan(text)


def cext():
    for target in (zlib_loop, re_loop):
        daemon(target).start()
    json_loop()


def c_compare(a, b):
    leaf(100)
    return 0


def c_sorter():
    import ctypes

    libc = ctypes.CDLL(None)
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(c_compare)
    items = (ctypes.c_long * 64)()
    ready()
    while True:
        libc.qsort(items, 64, ctypes.sizeof(ctypes.c_long), compare)


def worker_loop():
    while True:
        middle(1000)


def prefork(n):
    import os
    import time

    until = time.time() + 1.0
    while time.time() < until:  # the parent runs Python first, as an arbiter importing the app does
        middle(1000)
    for _ in range(n):
        if os.fork() == 0:
            worker_loop()
    ready()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "threads":
        spin_threads(int(sys.argv[2]))
    elif mode == "sorted":
        sorter()
    elif mode == "gen":
        use_gen()
    elif mode == "cext":
        cext()
    elif mode == "ctypes":
        c_sorter()
    elif mode == "fork":
        prefork(int(sys.argv[2]))
    elif mode == "deep":
        sys.setrecursionlimit(10000)
        recurse(int(sys.argv[2]))
    else:
        raise SystemExit("unknown mode " + mode)
