"""Ship batches to the server without losing them to a slow or restarting server."""

from __future__ import annotations

import logging
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path

from podflame import pprof
from podflame.errors import InvalidInput
from podflame.model import Profile
from podflame.threads import daemon_thread
from profiler import metrics

log = logging.getLogger("podflame.upload")


class Uploader:
    """A bounded queue of encoded batches, POSTed in order by one thread, retried with backoff.

    Encoding happens at enqueue time so the backlog holds compact gzip bytes, not objects.
    When the backlog is full the oldest batch is dropped and counted.
    """

    def __init__(self, server: str, *, node: str, max_backlog: int = 60, timeout: float = 30.0,
                 token_file: str | None = None, ca_file: str | None = None) -> None:
        self.url = server.rstrip("/") + "/api/v1/ingest?" + urllib.parse.urlencode({"node": node})
        self.token_file = Path(token_file) if token_file else None
        if self.token_file is not None:
            read_token(self.token_file)  # fail at start, not at the first upload
        self.ssl_context: ssl.SSLContext | None = None
        if ca_file is not None:  # verify the server against this CA only (a private one, e.g. cert-manager's)
            try:
                self.ssl_context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ValueError) as e:
                raise InvalidInput(f"cannot use CA file {ca_file}: {e}") from None
        self.node = node
        self.timeout = timeout
        self.backlog: deque[bytes] = deque()
        self.max_backlog = max_backlog
        self._cond = threading.Condition()
        self._stop = False
        self._thread = daemon_thread(self._run, "podflame-upload")
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
        headers = {"Content-Type": "application/octet-stream"}
        if self.token_file is not None:  # read per upload: a rotated Secret is picked up without a restart
            headers["Authorization"] = f"Bearer {read_token(self.token_file)}"
        req = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout, context=self.ssl_context) as resp:
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
                if e.code in (401, 403):
                    # Our credentials, not the batch: keep it and retry (a rotated token or Secret may fix it).
                    self._retry_wait(f"HTTP {e.code}: {e.read()[:200]!r}", delay)
                    delay = min(delay * 2, 30)
                    continue
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    # The server rejected the batch itself; retrying would block every later batch.
                    log.error("server rejected a batch (%s): %s", e.code, e.read()[:300])
                    metrics.UPLOADS.labels("rejected").inc()
                    self._pop()
                    continue
                self._retry_wait(f"HTTP {e.code}", delay)
                delay = min(delay * 2, 30)
                continue
            except (OSError, InvalidInput) as e:  # network, TLS verification, an unreadable token file
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


def read_token(path: Path) -> str:
    """The first token line of a token file (blank lines and # comments skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read token file {path}: {e.strerror or e}") from None
    for line in text.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()
    raise InvalidInput(f"token file {path} holds no token")
