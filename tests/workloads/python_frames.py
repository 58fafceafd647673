"""A Python program whose on-CPU stacks are known, for the in-kernel Python frame walker's tests.

The main thread spins for ever in spin() under <module> -> main -> handler -> Parser.parse; a second
thread compresses a buffer with zlib (C code) under worker -> compress_block. Lines the tests check end
in a `# at: NAME` marker; the tests read them from this file. Prints "ready" once both threads run.
Runs on CPython 2.7 and 3.6+.
"""

import sys
import threading
import zlib

BLOCK = bytes(bytearray(range(256))) * 4096  # 1 MiB: zlib.compress of it takes ~20 ms, so most samples are in zlib


def spin():
    n = 0
    while True: n += 1  # noqa: E701  at: spin


class Parser:
    def parse(self):
        spin()  # at: parse


def handler():
    Parser().parse()  # at: handler


def compress_block():
    return zlib.compress(BLOCK, 6)  # at: compress_block


def worker():
    while True:
        compress_block()  # at: worker


def main():
    compressor = threading.Thread(target=worker, name="compressor")
    compressor.daemon = True  # 2.7's Thread() has no daemon=
    compressor.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    handler()  # at: main


if __name__ == "__main__":
    if hasattr(sys, "setswitchinterval"):
        sys.setswitchinterval(0.001)  # both threads get the GIL often; neither starves the other
    else:  # 2.7: the GIL is passed on every N bytecodes (zlib.compress releases it)
        sys.setcheckinterval(10)
    main()  # at: module
