"""An optional debuginfod client: separate debug files fetched by build id, in the background.

Off unless `DEBUGINFOD_URLS` (space separated server URLs, as elfutils reads it) is set. A binary
without DWARF asks for `{url}/buildid/{hex}/debuginfo` (the debuginfod protocol) on each server in
turn; the reply is written to a temporary file, accepted only when it is an ELF with the very build
id asked for (another build's lines would be wrong), and renamed into
`<cache>/.build-id/xx/yyyy.debug`: the layout the symbolizer already searches for debug files,
so the next lookup finds it like a file from a -dbg package.

Sampling never waits on the network: `request` only queues the build id; one worker thread does
the HTTP with timeouts and a size bound, and the symbolizer keeps answering from the symbol table
until `take_arrived` reports the file. Misses (every server said 404) and errors are remembered
for a while, so a binary no server knows does not cost a request per drain.

Environment (elfutils' names): DEBUGINFOD_URLS; DEBUGINFOD_TIMEOUT (seconds without progress,
default 10); DEBUGINFOD_MAXTIME (seconds for one download, default 300); DEBUGINFOD_MAXSIZE (bytes,
default 1 GiB); the cache is DEBUGINFOD_CACHE_PATH, else $PODFLAME_SYMBOL_CACHE/debuginfod, else
~/.cache/podflame/debuginfod.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence

from podflame.threads import daemon_thread
from symbolizer.elf import read_build_id

log = logging.getLogger("podflame.debuginfod")

_HEX = re.compile(r"[0-9a-f]{4,128}")
_CHUNK = 1 << 16


class _Rejected(Exception):
    """The server answered, but not with the file asked for (wrong build id, not ELF, too big)."""


class Debuginfod:
    """Fetches debug files by build id into `cache_dir` (see the module doc); thread-safe.

    `retry_after` seconds before asking again for a build id no server has; `error_retry_after`
    after a timeout, connection error or rejected reply (those may be transient).
    """

    def __init__(self, urls: Sequence[str], cache_dir: str, *, timeout: float = 10.0, max_time: float = 300.0,
                 max_bytes: int = 1 << 30, retry_after: float = 600.0, error_retry_after: float = 60.0,
                 max_pending: int = 256) -> None:
        self.urls = tuple(u.rstrip("/") for u in urls if u)
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.max_time = max_time
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        self.error_retry_after = error_retry_after
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()  # queued or being fetched
        self._not_before: dict[str, float] = {}  # build id -> monotonic time of the next try (negative cache)
        self._arrived: set[str] = set()
        self._stats: Counter[str] = Counter()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Debuginfod | None:
        """A client configured like elfutils' (see the module doc), or None when DEBUGINFOD_URLS is unset."""
        env = os.environ if environ is None else environ
        urls = env.get("DEBUGINFOD_URLS", "").split()
        if not urls:
            return None
        cache = env.get("DEBUGINFOD_CACHE_PATH") or (
            os.path.join(env["PODFLAME_SYMBOL_CACHE"], "debuginfod") if env.get("PODFLAME_SYMBOL_CACHE")
            else os.path.join(os.path.expanduser("~"), ".cache", "podflame", "debuginfod"))
        return cls(urls, cache, timeout=_number(env, "DEBUGINFOD_TIMEOUT", 10.0),
                   max_time=_number(env, "DEBUGINFOD_MAXTIME", 300.0),
                   max_bytes=int(_number(env, "DEBUGINFOD_MAXSIZE", float(1 << 30))))

    # -- what the symbolizer calls -----------------------------------------------------------

    @property
    def debug_dir(self) -> str:
        """A debug directory in the /usr/lib/debug sense: downloads are under its .build-id/."""
        return self.cache_dir

    def path(self, build_id: str) -> str:
        """Where the debug file of `build_id` is (or will be) stored."""
        return os.path.join(self.cache_dir, ".build-id", build_id[:2], build_id[2:] + ".debug")

    def owns(self, path: str) -> bool:
        """Whether `path` is a file this client downloaded (for the `hits` count)."""
        return path.startswith(os.path.join(self.cache_dir, ".build-id") + os.sep)

    def request(self, build_id: str) -> bool:
        """Queue a fetch of `build_id`'s debug file unless it is here, queued, or recently missed.
        Never blocks; True when a fetch was queued."""
        build_id = build_id.lower()
        if not _HEX.fullmatch(build_id):
            return False
        now = time.monotonic()
        with self._lock:
            if self._closed or build_id in self._pending or now < self._not_before.get(build_id, 0.0):
                return False
            if os.path.isfile(self.path(build_id)):
                return False  # the symbolizer finds it in debug_dir
            if len(self._pending) >= self.max_pending:
                self._stats["dropped"] += 1  # retried on a later lookup, once the queue drains
                return False
            self._pending.add(build_id)
            self._stats["requests"] += 1
            if self._thread is None:
                self._thread = daemon_thread(self._run, "podflame-debuginfod")
                self._thread.start()
        self._queue.put(build_id)
        return True

    def take_arrived(self) -> set[str]:
        """Build ids whose debug files were stored since the last call (the symbolizer reloads them)."""
        with self._lock:
            arrived, self._arrived = self._arrived, set()
            return arrived

    def count_hit(self) -> None:
        """The symbolizer opened DWARF from a file this client fetched (now or in an earlier run)."""
        with self._lock:
            self._stats["hits"] += 1

    def stats(self) -> dict[str, int]:
        """fetches (files stored), hits, misses (no server has it), errors (timeouts, failures,
        rejected replies), rejected, requests, dropped (queue full)."""
        with self._lock:
            return {"fetches": 0, "hits": 0, "misses": 0, "errors": 0, "rejected": 0, **self._stats}

    def wait(self, timeout: float | None = None) -> bool:
        """Until no fetch is queued or running (tests, one-shot commands); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def close(self) -> None:
        """Stop the worker after its current fetch; later requests are ignored."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._queue.put(None)
        if thread is not None:
            thread.join(timeout=self.timeout + 1)

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        while (build_id := self._queue.get()) is not None:
            outcome = "errors"
            try:
                outcome = self._fetch(build_id)
            except Exception:  # a bug here must not end the worker: the agent would never fetch again
                log.exception("debuginfod fetch of %s failed", build_id)
            with self._idle:
                self._stats[outcome] += 1
                if outcome == "fetches":
                    self._arrived.add(build_id)
                else:
                    wait = self.retry_after if outcome == "misses" else self.error_retry_after
                    self._not_before[build_id] = time.monotonic() + wait
                    if len(self._not_before) > 65536:
                        self._not_before.clear()
                self._pending.discard(build_id)
                self._idle.notify_all()

    def _fetch(self, build_id: str) -> str:
        """One build id from the first server that has it: 'fetches', 'misses' or 'errors'."""
        failed = False
        for url in self.urls:
            try:
                self._download(f"{url}/buildid/{build_id}/debuginfo", build_id)
                return "fetches"
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    failed = True
                    log.info("debuginfod %s: HTTP %s for %s", url, e.code, build_id)
            except _Rejected as e:
                failed = True
                with self._lock:
                    self._stats["rejected"] += 1
                log.warning("debuginfod %s: rejected reply for %s: %s", url, build_id, e)
            except (OSError, ValueError) as e:  # URLError, timeouts, resets, a bad URL
                failed = True
                log.info("debuginfod %s: %s for %s", url, e, build_id)
        return "errors" if failed else "misses"

    def _download(self, url: str, build_id: str) -> None:
        final = self.path(build_id)
        folder = os.path.dirname(final)
        os.makedirs(folder, mode=0o755, exist_ok=True)
        req = urllib.request.Request(url, headers={"User-Agent": "podflame"})
        deadline = time.monotonic() + self.max_time
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=self.timeout) as reply:
                size = reply.headers.get("Content-Length")
                if size is not None and size.isdigit() and int(size) > self.max_bytes:
                    raise _Rejected(f"{size} bytes is over the {self.max_bytes} byte bound")
                total = 0
                while chunk := reply.read(_CHUNK):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise _Rejected(f"over the {self.max_bytes} byte bound")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not done after {self.max_time} s")
                    out.write(chunk)
            got = read_build_id(tmp)
            if got != build_id:
                raise _Rejected("not an ELF file with a build id" if got is None else f"its build id is {got}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)  # atomic: a reader sees no file or the whole verified one
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default
