"""Unwind tables built in a child process, so the agent never holds a build's memory.

A build (profiler/unwind/build.py) parses a binary's CFI with numpy and Python lists: node's table
peaks at ~80 MB, and what the allocator took for it stayed in the agent for its whole life (a first
start's peak RSS was 239 MB against 110 MB on a restart with the tables on disk). Here the agent
reads finished tables from the on-disk TableCache itself (plain bytes: the agent never imports numpy)
and asks a child for the rest. The child builds, stores each table in the cache, sends it back over
a pipe, and exits when idle for `idle_s` or when it holds more than `recycle_mb`: its memory goes
back to the system, and the next miss starts a new one (~0.2 s of CPU, once per burst of builds).

Protocol (the child's stdin/stdout): a request is one kind byte (b"p": a path; b"i": an ELF image,
the vDSO) and a u32-length payload; a reply is a status byte (0: a table, 1: an error message), the
child's CPU nanoseconds for it (u64), and a u32-length payload (cache.encode's bytes, or the message).

    python -m profiler.unwind.builder [CACHE_ROOT]
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from podflame.errors import PodflameError, Unavailable
from profiler.unwind.cache import TableCache, decode, encode
from profiler.unwind.table import UnwindTable

IDLE_S = 3.0  # a child with nothing to build this long exits (a first start's builds come in one burst)
RECYCLE_MB = 64  # a child holding more than this after a build exits (node's build leaves ~80 MB)
BUILD_TIMEOUT_S = 120.0  # libLLVM (1.4M rows) builds in ~1-3 s; a wedged child must not stall the loader
MAX_PAYLOAD = 256 << 20
_REQUEST = struct.Struct("<cI")
_REPLY = struct.Struct("<BQI")


class TableBuildError(Unavailable):
    """The build child failed (crashed, timed out, or said why): no table for this binary now."""


class TableSource:
    """`source(path)` or `source(image)`: the table, from the disk cache or built by the child.

    Thread-safe; `reap()` (once per drain) collects a child that exited on its own, `close()` ends it.
    `child_cpu_s` is the CPU the children spent, also charged to the build budget by the loader
    through the table's stats["cpu_ns"]."""

    def __init__(self, root: str | None = None, *, idle_s: float = IDLE_S, recycle_mb: int = RECYCLE_MB,
                 timeout_s: float = BUILD_TIMEOUT_S) -> None:
        self.cache = TableCache(root, builder=_refuse)
        self.root = root if root is not None else os.environ.get("PODFLAME_SYMBOL_CACHE")
        self.idle_s, self.recycle_mb, self.timeout_s = idle_s, recycle_mb, timeout_s
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.stats = {"cache_hits": 0, "child_builds": 0, "child_starts": 0, "child_errors": 0}
        self.child_cpu_s = 0.0

    def __call__(self, source: str | bytes) -> UnwindTable:
        if isinstance(source, str):
            table = self.cache.lookup(source)
            if table is not None:
                self.stats["cache_hits"] += 1
                return table
        with self._lock:
            return self._ask(b"p" if isinstance(source, str) else b"i",
                             source.encode() if isinstance(source, str) else source)

    def reap(self) -> None:
        """Collect a child that exited (idle, recycled): never waits for one that is building."""
        if self._lock.acquire(blocking=False):
            try:
                if self._child is not None and self._child.poll() is not None:
                    self._forget()
            finally:
                self._lock.release()

    def close(self) -> None:
        with self._lock:
            child, self._child = self._child, None
            if child is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()  # type: ignore[union-attr]
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                child.stdout.close()  # type: ignore[union-attr]

    # -- the child, from the agent's side ----------------------------------------------------------

    def _ask(self, kind: bytes, payload: bytes) -> UnwindTable:
        for attempt in (0, 1):  # the child may have exited (idle) between two asks: start another once
            child = self._start()
            try:
                child.stdin.write(_REQUEST.pack(kind, len(payload)) + payload)  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
                head = self._read(child, _REPLY.size)
            except (BrokenPipeError, EOFError):
                self._forget()
                if attempt:
                    self.stats["child_errors"] += 1
                    raise TableBuildError("the unwind table builder exited without answering") from None
                continue
            except TimeoutError:
                child.kill()
                self._forget()
                self.stats["child_errors"] += 1
                raise TableBuildError(f"building an unwind table took over {self.timeout_s:.0f} s") from None
            status, cpu_ns, size = _REPLY.unpack(head)
            if size > MAX_PAYLOAD:
                child.kill()
                self._forget()
                raise TableBuildError(f"the unwind table builder sent {size} bytes")
            body = self._read(child, size)
            self.child_cpu_s += cpu_ns / 1e9
            if status != 0:
                raise TableBuildError(body.decode("utf-8", "replace"))
            table = decode(body, None, None)
            if table is None:
                raise TableBuildError("the unwind table builder sent a damaged table")
            self.stats["child_builds"] += 1
            table.stats["cpu_ns"] = cpu_ns
            return table
        raise AssertionError("unreachable")

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._forget()
        root = str(Path(__file__).resolve().parent.parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        cmd = [sys.executable, "-m", "profiler.unwind.builder", self.root or "", f"--idle={self.idle_s}",
               f"--recycle-mb={self.recycle_mb}"]
        self._child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.stats["child_starts"] += 1
        return self._child

    def _forget(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            if child.poll() is None:
                child.kill()
            child.wait()
            for pipe in (child.stdin, child.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()  # type: ignore[union-attr]

    def _read(self, child: subprocess.Popen[bytes], n: int) -> bytes:
        out = bytearray()
        fd = child.stdout.fileno()  # type: ignore[union-attr]
        deadline = time.monotonic() + self.timeout_s
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, min(n - len(out), 1 << 20))
            if not chunk:
                raise EOFError
            out += chunk
        return bytes(out)


def _refuse(path: str) -> UnwindTable:
    raise AssertionError("the agent's TableCache only reads")  # pragma: no cover - lookup() never builds


# -- the child -------------------------------------------------------------------------------------

def _read_exactly(fd: int, n: int) -> bytes | None:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def serve(root: str | None, idle_s: float, recycle_mb: float) -> None:
    """Answer requests on stdin until EOF, `idle_s` without one, or more than `recycle_mb` resident."""
    from profiler.unwind.build import build_table

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C reaches the agent, which closes us
    cache = TableCache(root or None, builder=build_table)
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    while select.select([fd_in], [], [], idle_s)[0]:
        head = _read_exactly(fd_in, _REQUEST.size)
        if head is None:
            return
        kind, size = _REQUEST.unpack(head)
        payload = _read_exactly(fd_in, size)
        if payload is None:
            return
        started = time.process_time_ns()
        try:
            table = cache.get(payload.decode()) if kind == b"p" else build_table(payload)
            status, body = 0, encode(table)
        except (OSError, PodflameError, UnicodeDecodeError) as e:
            status, body = 1, str(e).encode()[:4096]
        del payload
        reply = _REPLY.pack(status, time.process_time_ns() - started, len(body)) + body
        view = memoryview(reply)
        while view:
            view = view[os.write(fd_out, view):]
        del reply, view, body
        if _rss_mb() > recycle_mb:
            return


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="podflame's unwind table builder (started by the agent)")
    ap.add_argument("root", nargs="?", default="")
    ap.add_argument("--idle", type=float, default=IDLE_S)
    ap.add_argument("--recycle-mb", type=float, default=RECYCLE_MB)
    args = ap.parse_args(argv)
    serve(args.root or None, args.idle, args.recycle_mb)


if __name__ == "__main__":
    main()
