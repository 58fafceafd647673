"""Unwind tables built in the agent when small, else in a child process, so the agent never holds a
big build's memory.

A build (profiler/unwind/build.py) parses a binary's CFI with numpy and Python lists: node's table
peaks at ~80 MB, and what the allocator took for it stayed in the agent for its whole life (a first
start's peak RSS was 239 MB against 110 MB on a restart with the tables on disk). Here the agent
reads finished tables from the on-disk TableCache itself (plain bytes: the agent never imports numpy)
and asks a child for the big ones. The child builds, stores each table in the cache, sends it back
over a pipe, and exits when idle for `idle_s` or when it holds more than `recycle_mb`: its memory goes
back to the system, and the next miss starts a new one.

A child start costs 90-150 ms of CPU (an interpreter, more with numpy's import): a binary new to the host
whose CFI is up to `agent_cfi_bytes` (640 KiB: coreutils, ld.so, bash, libc, libstdc++, and the mid-size ones,
Debian's python3, libpython, libcrypto, libbcc, numpy's core) is built in the agent instead, without numpy, in
1-115 ms and a few MB of transient heap, where it used to cost a child start on top of the same build
(docs/benchmarks.md, branches tables6 and steady10).

Protocol, over a Unix socket pair: a request is one kind byte (b"p": a file; b"i": an ELF image, the
vDSO) and a u32-length payload (the file's name, for messages; or the image). A file goes as an open
descriptor (SCM_RIGHTS) the agent opened: a short-lived process's /proc/PID/map_files entry is gone
by the time a child could open it, the descriptor is not. A reply is a status byte (0: a table, 1: an
error message), the child's CPU nanoseconds for it (u64), and a u32-length payload (cache.encode's
bytes, or the message).

    python -m profiler.unwind.builder --fd N [CACHE_ROOT]
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from podflame.errors import PodflameError, Unavailable
from profiler.unwind.build import UnwindFormatError, build_small_table
from profiler.unwind.cache import TableCache, decode, encode
from profiler.unwind.table import UnwindTable

# A child with nothing to build this long exits. Builds come in bursts (a first start, a new workload's
# processes, their on-demand asks over the next seconds): with 3 s a busy node's first minute started a
# child (0.15-0.4 s of CPU, more than most builds) every few seconds; an idle child costs memory, no CPU.
IDLE_S = 20.0
# CFI (.eh_frame, .eh_frame_hdr, .debug_frame) up to this size is built in the agent, in plain Python: libc
# 36 ms and 1.6 MB of heap at its peak; Debian's python3 (480 KiB) 96-101 ms, libcrypto (527 KiB) 111 ms,
# libbcc 57 ms, pyenv's libpython3.12 85-89 ms, +1-4 MB of peak RSS each. Through a child the same binaries
# cost 152-227 ms (its start, 90-150 ms, then the same build): docs/benchmarks.md "Stop 20 steady10".
# node (3.3 MB), libjvm (1.8 MB), OpenBLAS (1.6 MB) go to the child: their builds peak at tens of MB (80 for
# node with numpy), which the agent's allocator would keep
AGENT_CFI_BYTES = 640 << 10
RECYCLE_MB = 64  # a child holding more than this after a build exits (node's build leaves ~80 MB)
BUILD_TIMEOUT_S = 120.0  # libLLVM (1.4M rows) builds in ~1-3 s; a wedged child must not stall the loader
MAX_PAYLOAD = 256 << 20
_ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
log = logging.getLogger("podflame.unwind")
_REQUEST = struct.Struct("<cI")
_REPLY = struct.Struct("<BQI")


class TableBuildError(Unavailable):
    """The build child failed (crashed, timed out, or said why): no table for this binary now."""


class TableSource:
    """`source(path)` or `source(image)`: the table, from the disk cache, built here when its CFI is at
    most `agent_cfi_bytes` (0: never), else built by the child.

    Thread-safe; `reap()` (once per drain) collects a child that exited on its own, `close()` ends it.
    `child_cpu_s` is the CPU the children spent, also charged to the build budget by the loader
    through the table's stats["cpu_ns"]; a table built here has stats["agent_cpu_ns"] instead (the
    caller's thread spent it)."""

    def __init__(self, root: str | None = None, *, idle_s: float = IDLE_S, recycle_mb: int = RECYCLE_MB,
                 timeout_s: float = BUILD_TIMEOUT_S, agent_cfi_bytes: int = AGENT_CFI_BYTES) -> None:
        self.cache = TableCache(root, builder=_refuse)
        self.root = root if root is not None else os.environ.get("PODFLAME_SYMBOL_CACHE")
        self.idle_s, self.recycle_mb, self.timeout_s = idle_s, recycle_mb, timeout_s
        self.agent_cfi_bytes = agent_cfi_bytes
        self._child: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.stats = {"cache_hits": 0, "agent_builds": 0, "child_builds": 0, "child_starts": 0, "child_errors": 0}
        self.child_cpu_s = 0.0

    def __call__(self, source: str | bytes) -> UnwindTable:
        if isinstance(source, str):
            table = self.cache.lookup(source)
            if table is not None:
                self.stats["cache_hits"] += 1
                return table
        if isinstance(source, bytes):
            table = self.cache.lookup_image(source)  # the vDSO: the same image on every start of a kernel
            if table is not None:
                self.stats["cache_hits"] += 1
                return table
            table = self._build_here(source)
            if table is not None:
                self.cache.store_image(source, table)
                return table
            with self._lock:
                return self._ask(b"i", source, None)
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)  # OSError: the file (or its process) is gone
        try:
            opened = f"/proc/self/fd/{fd}"  # what was opened, even once a short-lived process is gone
            try:
                table = self._build_here(opened)
            except UnwindFormatError as e:
                raise UnwindFormatError(str(e).replace(opened, source)) from None
            if table is not None:
                self.cache.store(opened, table)
                return table
            with self._lock:
                return self._ask(b"p", source.encode(), fd)
        finally:
            os.close(fd)

    def _build_here(self, source: str | bytes) -> UnwindTable | None:
        """The table built in this process when the binary's CFI is small, else None (the child builds it).
        Raises UnwindFormatError (a PodflameError) for a file that is no ELF or whose CFI is malformed."""
        if self.agent_cfi_bytes <= 0:
            return None
        started = time.thread_time_ns()
        table = build_small_table(source, self.agent_cfi_bytes)  # no numpy: see build.PYTHON_COMPACT_ROWS
        if table is not None:
            self.stats["agent_builds"] += 1
            table.stats["agent_cpu_ns"] = time.thread_time_ns() - started
        return table

    def warm(self) -> None:
        """Start the child now when the disk cache holds no table yet (a first start on this node, or no
        cache): the first processes' tables then need no interpreter start (~0.2-0.5 s) before them."""
        root = self.cache.root
        if root is not None and os.path.isdir(root) and any(os.scandir(root)):
            return
        with self._lock:
            self._start()

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
            if self._sock is not None:
                self._sock.close()  # the child reads EOF and exits
                self._sock = None
            if child is not None:
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    # -- the child, from the agent's side ----------------------------------------------------------

    def _ask(self, kind: bytes, payload: bytes, fd: int | None) -> UnwindTable:
        for attempt in (0, 1):  # the child may have exited (idle) between two asks: start another once
            child, sock = self._start()
            try:
                socket.send_fds(sock, [_REQUEST.pack(kind, len(payload))], [fd] if fd is not None else [])
                sock.sendall(payload)
                head = self._read(sock, _REPLY.size)
            except (BrokenPipeError, ConnectionResetError, EOFError):
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
            body = self._read(sock, size)
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

    def _start(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        if self._child is not None and self._sock is not None and self._child.poll() is None:
            return self._child, self._sock
        self._forget()
        root = str(Path(__file__).resolve().parent.parent.parent)
        # numpy's OpenBLAS starts a thread per CPU at import (a build uses no BLAS): on a 2-CPU node that was
        # a third of a child's start-up CPU, on a 64-CPU node 63 threads; the operator's own setting wins
        env = {**_ONE_BLAS_THREAD, **os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [sys.executable, "-m", "profiler.unwind.builder", f"--fd={theirs.fileno()}", f"--idle={self.idle_s}",
               f"--recycle-mb={self.recycle_mb}", self.root or ""]
        try:
            self._child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, pass_fds=[theirs.fileno()])
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self.stats["child_starts"] += 1
        # an interpreter start (65-140 ms of CPU, more with numpy) on top of the builds: said, so that a
        # reader of the log (bench/agent_overhead.py) can tell what a window's child CPU went to
        log.info("started the unwind table builder (pid %d)", self._child.pid)
        return self._child, ours

    def _forget(self) -> None:
        child, self._child = self._child, None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if child is not None:
            if child.poll() is None:
                child.kill()
            child.wait()

    def _read(self, sock: socket.socket, n: int) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + self.timeout_s
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not _readable(sock, left):
                raise TimeoutError
            chunk = sock.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise EOFError
            out += chunk
        return bytes(out)


def _readable(sock: socket.socket, timeout: float) -> bool:
    """poll, not select: an agent (or a test run) with over 1024 descriptors open is out of select's range."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _refuse(path: str) -> UnwindTable:
    raise AssertionError("the agent's TableCache only reads")  # pragma: no cover - lookup() never builds


# -- the child -------------------------------------------------------------------------------------

def _read_exactly(sock: socket.socket, n: int, first: bytes = b"") -> bytes | None:
    out = bytearray(first)
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def serve(sock: socket.socket, root: str | None, idle_s: float, recycle_mb: float) -> None:
    """Answer requests on `sock` until EOF, `idle_s` without one, or more than `recycle_mb` resident."""
    from profiler.unwind.build import build_table

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C reaches the agent, which closes us
    cache = TableCache(root or None, builder=build_table)
    while _readable(sock, idle_s):
        first, fds, _, _ = socket.recv_fds(sock, _REQUEST.size, 1)
        head = _read_exactly(sock, _REQUEST.size, first) if first else None
        if head is None:
            return
        kind, size = _REQUEST.unpack(head)
        payload = _read_exactly(sock, size)
        if payload is None:
            return
        started = time.process_time_ns()
        opened = f"/proc/self/fd/{fds[0]}" if fds else ""  # the agent's open file: stat and reads see it
        try:
            if kind == b"p" and not fds:
                raise TableBuildError("a file to build came without its descriptor")
            if kind == b"p":
                table = cache.get(opened)
            else:
                table = build_table(payload)
                cache.store_image(payload, table)
            status, body = 0, encode(table)
        except (OSError, PodflameError) as e:
            message = str(e).replace(opened, payload.decode(errors="replace")) if opened else str(e)
            status, body = 1, message.encode()[:4096]
        finally:
            for fd in fds:
                os.close(fd)
        del payload
        sock.sendall(_REPLY.pack(status, time.process_time_ns() - started, len(body)) + body)
        del body
        if _rss_mb() > recycle_mb:
            return


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="podflame's unwind table builder (started by the agent)")
    ap.add_argument("root", nargs="?", default="")
    ap.add_argument("--fd", type=int, required=True, help="our end of the agent's socket pair")
    ap.add_argument("--idle", type=float, default=IDLE_S)
    ap.add_argument("--recycle-mb", type=float, default=RECYCLE_MB)
    args = ap.parse_args(argv)
    serve(socket.socket(fileno=args.fd), args.root or None, args.idle, args.recycle_mb)


if __name__ == "__main__":
    main()
