"""A per-request deadline that long store work checks as it goes.

A query runs under the store's lock, so a query that runs long makes ingest and /healthz wait too.
The server sets a deadline around each query (`within`); loops over label values and profile rows call
`check()` every so often, and past the deadline the query stops with `QueryTimeout` (HTTP 503) instead
of holding the lock. A context variable, so each request thread sees only its own deadline and code
run outside a request (tests, compaction) has none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from podflame.errors import Unavailable

_deadline: ContextVar[tuple[float, float] | None] = ContextVar("podflame_deadline", default=None)


class QueryTimeout(Unavailable):
    """The query ran past its deadline (QUERY_TIMEOUT_SECONDS); a narrower selector or range is cheaper."""


@contextmanager
def within(seconds: float | None) -> Iterator[None]:
    """Run the block under a deadline `seconds` from now (None or <= 0: no deadline)."""
    if seconds is None or seconds <= 0:
        yield
        return
    token = _deadline.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before this context's deadline (None: no deadline), for work a database runs itself:
    the ClickHouse store hands it to the engine as max_execution_time."""
    d = _deadline.get()
    return None if d is None else d[0] - time.monotonic()


def expired() -> QueryTimeout:
    """The error a query past this context's deadline raises (also when the database stopped it)."""
    d = _deadline.get()
    limit = f"{d[1]:g} s" if d is not None else "its time limit"
    return QueryTimeout(f"query took longer than {limit} (limit QUERY_TIMEOUT_SECONDS): "
                        "narrow the selector or the time range")


def check() -> None:
    """Raise QueryTimeout if this context's deadline has passed."""
    d = _deadline.get()
    if d is not None and time.monotonic() > d[0]:
        raise expired()
