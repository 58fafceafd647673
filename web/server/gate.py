"""At most INGEST_CONCURRENCY ingests in the handler at once; the rest wait briefly, then get a 503.

The store has one writer: puts run one after another under its lock, and decoding is bound by the
GIL, so more than a couple of ingests at once only add waiting threads. Without a limit, a burst
of agents takes every request thread and every turn at the store's lock, and a query (or the
page) waits behind all of them (bench/load.py measured a 10 s query p99 that way). With it,
queries keep the remaining threads and wait behind at most INGEST_CONCURRENCY puts; an agent
that gets the 503 keeps its batch and retries (profiler/upload.py), as after any outage.
"""

from __future__ import annotations

import threading

from flask import Flask, Response, current_app, g, request
from prometheus_client import Counter

from podflame.errors import Unavailable

INGEST_PATH = "/api/v1/ingest"
SATURATED = Counter("podflame_server_ingest_saturated_total",
                    "Ingests answered 503 because INGEST_CONCURRENCY ingests were running for INGEST_WAIT_SECONDS")


class IngestSaturated(Unavailable):
    """Every ingest slot stayed busy for the wait: retry later (HTTP 503 with Retry-After)."""


def _enter() -> None:
    if request.path != INGEST_PATH or request.method != "POST":
        return
    slots: threading.BoundedSemaphore = current_app.extensions["podflame.ingest_slots"]
    wait = float(current_app.config["INGEST_WAIT_SECONDS"])
    if not slots.acquire(timeout=wait):
        SATURATED.inc()
        raise IngestSaturated(f"the server is busy storing other ingests ({current_app.config['INGEST_CONCURRENCY']} "
                              f"at a time, none finished in {wait:g}s): retry later")
    g.podflame_ingest_slot = slots


def _leave(_: BaseException | None) -> None:
    slots = g.pop("podflame_ingest_slot", None)
    if slots is not None:
        slots.release()


def _retry_after(response: Response) -> Response:
    if response.status_code == 503 and request.path == INGEST_PATH:
        response.headers.setdefault("Retry-After", "5")
    return response


def install(app: Flask) -> None:
    app.extensions["podflame.ingest_slots"] = threading.BoundedSemaphore(int(app.config["INGEST_CONCURRENCY"]))
    app.before_request(_enter)
    app.teardown_request(_leave)
    app.after_request(_retry_after)
