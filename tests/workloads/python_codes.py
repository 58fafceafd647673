"""Two code objects whose memory the test rewrites on command, to stand for a freed and reused address.

Prints the addresses of alpha's and beta's code objects; on "reuse" copies beta's code object over
alpha's (what the reader sees when alpha's was freed and another code object took its place); on
"clobber" makes alpha's look like an int (a non-code object took the place). Neither is used again,
and the test kills the process (its refcounts are now wrong).
"""

import ctypes
import json
import sys


def alpha():
    return 1


def beta():
    return 2


a, b = alpha.__code__, beta.__code__
print(json.dumps({"alpha": id(a), "beta": id(b)}), flush=True)
for command in sys.stdin:
    if command.strip() == "reuse":
        ctypes.memmove(id(a), id(b), type(a).__basicsize__)
    elif command.strip() == "clobber":
        ctypes.c_void_p.from_address(id(a) + 8).value = id(int)
    print("done", flush=True)
