"""Ship batches to the server without losing them to a slow or restarting server."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque

from podflame import pprof
from podflame.model import Profile
from profiler import metrics

log = logging.getLogger("podflame.upload")


class Uploader:
    """A bounded queue of encoded batches, POSTed in order by one thread, retried with backoff.

    Encoding happens at enqueue time so the backlog holds compact gzip bytes, not objects.
    When the backlog is full the oldest batch is dropped and counted.
    """

    def __init__(self, server: str, *, node: str, max_backlog: int = 60, timeout: float = 30.0) -> None:
        self.url = server.rstrip("/") + "/api/v1/ingest?" + urllib.parse.urlencode({"node": node})
        self.node = node
        self.timeout = timeout
        self.backlog: deque[bytes] = deque()
        self.max_backlog = max_backlog
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="podflame-upload", daemon=True)
        self._thread.start()

    def __call__(self, profiles: list[Profile]) -> None:
        # gzip level 1: half the CPU of level 6 for 10-15% more bytes; the server stores its own encoding
        body = pprof.encode(profiles, common_labels={"node": self.node}, compresslevel=1)
        with self._cond:
            if len(self.backlog) >= self.max_backlog:
                self.backlog.popleft()
                metrics.DROPPED_BATCHES.inc()
                log.warning("upload backlog full (%d batches): dropped the oldest", self.max_backlog)
            self.backlog.append(body)
            metrics.BACKLOG.set(len(self.backlog))
            self._cond.notify()

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()

    def _run(self) -> None:
        delay = 0.5
        while True:
            with self._cond:
                while not self.backlog and not self._stop:
                    self._cond.wait()
                if not self.backlog:
                    return
                body = self.backlog[0]
            try:
                self._post(body)
            except urllib.error.HTTPError as e:
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    # The server rejected the batch itself; retrying would block every later batch.
                    log.error("server rejected a batch (%s): %s", e.code, e.read()[:300])
                    metrics.UPLOADS.labels("rejected").inc()
                    self._pop()
                    continue
                self._retry_wait(f"HTTP {e.code}", delay)
                delay = min(delay * 2, 30)
                continue
            except OSError as e:
                self._retry_wait(str(e), delay)
                delay = min(delay * 2, 30)
                continue
            metrics.UPLOADS.labels("ok").inc()
            delay = 0.5
            self._pop()

    def _pop(self) -> None:
        with self._cond:
            self.backlog.popleft()
            metrics.BACKLOG.set(len(self.backlog))
            self._cond.notify_all()

    def _retry_wait(self, why: str, delay: float) -> None:
        metrics.UPLOADS.labels("retry").inc()
        log.warning("upload to %s failed (%s); retrying in %.1fs", self.url, why, delay)
        with self._cond:
            self._cond.wait(timeout=delay)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the backlog is empty (or timeout); True if everything landed."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.backlog, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
