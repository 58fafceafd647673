"""Two code objects whose memory the test rewrites on command, to stand for a freed and reused address.

Prints the addresses of alpha's and beta's code objects; on "reuse" copies beta's code object over
alpha's (what the reader sees when alpha's was freed and another code object took its place); on
"clobber" makes alpha's look like an int (a non-code object took the place); on "rename OFFSET" points
the field at OFFSET of gamma's code object (its co_name) at a bytes object. None is used again, and the
test kills the process (its refcounts are now wrong).
"""

import ctypes
import json
import sys


def alpha():
    return 1


def beta():
    return 2


def gamma():
    return 3


# names, a file name and a line table longer than what the reader gets with their headers
SOURCE = "def " + "x" * 300 + "():\n" + "".join(f"    v{i} = {i}\n" for i in range(400)) + \
    "def " + "\U00020000" * 100 + "():\n    pass\n"
space = {}
exec(compile(SOURCE, "/tmp/" + "directory/" * 30 + "long.py", "exec"), space)
long_ascii, long_wide = space["x" * 300].__code__, space["\U00020000" * 100].__code__
table = long_ascii.co_lnotab if sys.version_info < (3, 10) else long_ascii.co_linetable

a, b, c = alpha.__code__, beta.__code__, gamma.__code__
not_a_str = b"gamma"
print(json.dumps({"alpha": id(a), "beta": id(b), "gamma": id(c), "long_ascii": id(long_ascii),
                  "long_wide": id(long_wide), "long_table": table.hex()}), flush=True)
for command in sys.stdin:
    if command.strip() == "reuse":
        ctypes.memmove(id(a), id(b), type(a).__basicsize__)
    elif command.strip() == "clobber":
        ctypes.c_void_p.from_address(id(a) + 8).value = id(int)
    elif command.startswith("rename "):
        ctypes.c_void_p.from_address(id(c) + int(command.split()[1])).value = id(not_a_str)
    print("done", flush=True)
