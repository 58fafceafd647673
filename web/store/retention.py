"""Background upkeep of a store: retention (time limit, disk budget) and time-bucket compaction.

One daemon thread per app, so ingest requests never do this work themselves: the store deletes
in small transactions and compacts outside its write lock, so a put waits for one short batch
at most. A failing pass is logged and retried at the next interval; closing the store ends it.
"""

from __future__ import annotations

import logging
import threading
import time

from web.store.base import RetentionResult, Store, StoreClosed

log = logging.getLogger("podflame.web.store.retention")
S = 1_000_000_000


class Maintenance:
    """Every `interval` seconds: enforce retention, then compact aged buckets."""

    def __init__(self, store: Store, *, interval: float, max_age_seconds: float | None = None,
                 max_bytes: int | None = None, compact: bool = True) -> None:
        self.store = store
        self.interval = interval
        self.max_age_ns = int(max_age_seconds * S) if max_age_seconds else None
        self.max_bytes = max_bytes
        self.compact = compact
        self.last: RetentionResult | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podflame-maintenance", daemon=True)

    def start(self) -> Maintenance:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        """The background thread runs (False when never started: interval 0)."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def run_once(self, now_ns: int | None = None) -> tuple[RetentionResult, int]:
        """One pass (also what tests and the bench call): retention first, so nothing is compacted to be cut."""
        result = self.store.enforce_retention(self.max_age_ns, self.max_bytes, now_ns)
        self.last = result
        compacted = 0
        if self.compact:
            while not self._stop.is_set():
                n = self.store.compact(now_ns)
                compacted += n
                if n == 0:
                    break
        return result, compacted

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except StoreClosed:
                return
            except Exception:
                log.exception("store maintenance failed; retrying in %ss", self.interval)
            time.sleep(0)
