"""At most INGEST_CONCURRENCY ingests decode and store at once; the rest wait briefly, then get a 503.

The store has one writer: puts run one after another under its lock, and decoding is bound by the
GIL, so more than a couple of ingests at once only add waiting threads. Without a limit, a burst
of agents takes every request thread and every turn at the store's lock, and a query (or the
page) waits behind all of them (bench/load.py measured a 10 s query p99 that way). With it,
queries keep the remaining threads and wait behind at most INGEST_CONCURRENCY puts; an agent
that gets the 503 keeps its batch and retries (profiler/upload.py), as after any outage.

A turn is taken once the request's body has arrived (`ingest_turn`, called by the handler), not when
its headers have: a client that sends its body slowly (a slow link, or on purpose a byte at a time)
holds only its own request thread, never a turn every other agent's ingest waits for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, Response, current_app, request
from prometheus_client import Counter

from podflame.errors import Unavailable

INGEST_PATH = "/api/v1/ingest"
SATURATED = Counter("podflame_server_ingest_saturated_total",
                    "Ingests answered 503 because INGEST_CONCURRENCY ingests were running for INGEST_WAIT_SECONDS")


class IngestSaturated(Unavailable):
    """Every ingest slot stayed busy for the wait: retry later (HTTP 503 with Retry-After)."""


@contextmanager
def ingest_turn() -> Iterator[None]:
    """One of the INGEST_CONCURRENCY turns to decode and store a received body, or IngestSaturated."""
    slots: threading.BoundedSemaphore = current_app.extensions["podflame.ingest_slots"]
    wait = float(current_app.config["INGEST_WAIT_SECONDS"])
    if not slots.acquire(timeout=wait):
        SATURATED.inc()
        raise IngestSaturated(f"the server is busy storing other ingests ({current_app.config['INGEST_CONCURRENCY']} "
                              f"at a time, none finished in {wait:g}s): retry later")
    try:
        yield
    finally:
        slots.release()


def _retry_after(response: Response) -> Response:
    if response.status_code == 503 and request.path == INGEST_PATH:
        response.headers.setdefault("Retry-After", "5")
    return response


def install(app: Flask) -> None:
    app.extensions["podflame.ingest_slots"] = threading.BoundedSemaphore(int(app.config["INGEST_CONCURRENCY"]))
    app.after_request(_retry_after)
