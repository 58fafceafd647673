"""HTTP API (docs/api.md): ingest, labels, types, series, flame graph, pprof, folded; plus /metrics, /healthz.

Handlers only translate HTTP to `web.query` calls and back; every client mistake (bad time,
selector, label or body) is a 4xx with `{"error": ...}` naming the bad part.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from werkzeug.exceptions import RequestEntityTooLarge

from podflame import pprof
from web.export import to_folded, to_pprof
from web.flamegraph import to_flamegraph
from web.query import Query, merged_profile, profiles_by_series, series_summary
from web.selector import LABEL_NAME, SelectorError, parse_selector
from web.store import Store
from web.timeparse import TimeError, parse_time

INGESTED_PROFILES = Counter("podflame_server_ingested_profiles_total", "Profiles stored (one per series per request)")
INGESTED_SAMPLES = Counter("podflame_server_ingested_samples_total", "Stack rows stored (distinct stacks per profile)")
INGESTED_BYTES = Counter("podflame_server_ingested_bytes_total", "Request bytes of accepted ingests")
REJECTED = Counter("podflame_server_rejected_requests_total", "Ingests refused, by reason", ["reason"])
QUERY_SECONDS = Histogram("podflame_server_query_seconds", "Query latency by endpoint", ["endpoint"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

api = Blueprint("api", __name__, url_prefix="/api/v1")
ops = Blueprint("ops", __name__)

DEFAULT_FROM, DEFAULT_TO = "now-15m", "now"
RESERVED_INGEST_PARAMS = {"time"}

F = TypeVar("F", bound=Callable[..., Any])


class ApiError(Exception):
    """A client error: answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


@api.errorhandler(ApiError)
def _api_error(e: ApiError) -> tuple[Response, int]:
    if e.reason:
        REJECTED.labels(e.reason).inc()
    return jsonify(error=e.message), e.status


def store() -> Store:
    return current_app.extensions["podflame.store"]


def _time(name: str, default: str, now_ns: int) -> int:
    text = request.args.get(name) or default
    try:
        return parse_time(text, now_ns)
    except TimeError as e:
        raise ApiError(400, f"bad {name}: {e}") from None


def parse_query() -> Query:
    """`query`, `from`, `to`, `type` from the URL; one `now` for the whole request."""
    now = time.time_ns()
    t0, t1 = _time("from", DEFAULT_FROM, now), _time("to", DEFAULT_TO, now)
    if t1 <= t0:
        raise ApiError(400, f"bad range: from ({request.args.get('from') or DEFAULT_FROM}) must be before "
                            f"to ({request.args.get('to') or DEFAULT_TO})")
    try:
        selector = parse_selector(request.args.get("query"))
    except SelectorError as e:
        raise ApiError(400, f"bad query: {e}") from None
    return Query(selector, t0, t1, request.args.get("type") or None)


def timed(endpoint: str) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with QUERY_SECONDS.labels(endpoint).time():
                return fn(*args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap


# -- ingest ----------------------------------------------------------------------------------


def _ingest_labels(received_ns: int) -> tuple[dict[str, str], int | None]:
    labels: dict[str, str] = {}
    override = None
    for name, values in request.args.lists():
        if len(values) > 1:
            raise ApiError(400, f"parameter {name!r} given {len(values)} times", "bad_labels")
        if name == "time":
            try:
                override = parse_time(values[0], received_ns)
            except TimeError as e:
                raise ApiError(400, f"bad time: {e}", "bad_time") from None
        elif not LABEL_NAME.fullmatch(name):
            raise ApiError(400, f"bad label name {name!r}: use [a-zA-Z_][a-zA-Z0-9_]*", "bad_labels")
        elif values[0]:
            labels[name] = values[0]
    return labels, override


@api.post("/ingest")
def ingest() -> Response:
    """Decode fully, then store atomically: a bad body stores nothing, a 200 means durable."""
    received = time.time_ns()
    labels, override = _ingest_labels(received)
    limit = current_app.config["MAX_BODY_BYTES"]
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise ApiError(413, f"body is over the {limit} byte limit", "too_large") from None
    if len(body) > limit:  # a server without MAX_CONTENT_LENGTH (or a chunked body read in full)
        raise ApiError(413, f"body is over the {limit} byte limit", "too_large")
    if not body:
        raise ApiError(400, "empty body: POST a pprof profile (gzip or plain)", "invalid")
    try:
        profiles = pprof.decode(body, labels, limit=current_app.config["MAX_INFLATED_BYTES"])
    except pprof.PprofTooLarge as e:
        raise ApiError(413, str(e), "too_large") from None
    except pprof.PprofError as e:
        raise ApiError(400, f"invalid pprof: {e}", "invalid") from None
    for p in profiles:
        if override is not None:
            p.start_ns = override
        elif p.start_ns <= 0:
            p.start_ns = received
    result = store().put(profiles)
    INGESTED_PROFILES.inc(result.profiles)
    INGESTED_SAMPLES.inc(result.samples)
    INGESTED_BYTES.inc(len(body))
    return jsonify(profiles=result.profiles, samples=result.samples)


# -- metadata --------------------------------------------------------------------------------


@api.get("/labels")
@timed("labels")
def labels() -> Response:
    q = parse_query()
    return jsonify(labels=store().label_names(q.t0, q.t1, q.selector))


@api.get("/label/<name>/values")
@timed("label_values")
def label_values(name: str) -> Response:
    q = parse_query()
    return jsonify(values=store().label_values(name, q.t0, q.t1, q.selector))


@api.get("/types")
@timed("types")
def types() -> Response:
    q = parse_query()
    return jsonify(types=[{"type": t, "unit": u} for t, u in store().types(q.t0, q.t1, q.selector)])


_BY = re.compile(r"\s*,\s*")


@api.get("/series")
@timed("series")
def series() -> Response:
    q = parse_query()
    by_text = (request.args.get("by") or "").strip()
    by = [b for b in _BY.split(by_text) if b] or None
    for b in by or ():
        if not LABEL_NAME.fullmatch(b):
            raise ApiError(400, f"bad by: {b!r} is not a label name")
    return jsonify(series_summary(store(), q, by))


# -- profiles --------------------------------------------------------------------------------


@api.get("/flamegraph")
@timed("flamegraph")
def flamegraph() -> Response:
    return jsonify(to_flamegraph(merged_profile(store(), parse_query())))


@api.get("/pprof")
@timed("pprof")
def pprof_download() -> Response:
    sample_type, unit, profiles = profiles_by_series(store(), parse_query())
    return Response(to_pprof(profiles, sample_type, unit), mimetype="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="podflame-{sample_type}.pb.gz"'})


@api.get("/folded")
@timed("folded")
def folded() -> Response:
    return Response(to_folded(merged_profile(store(), parse_query())), mimetype="text/plain")


# -- operations ------------------------------------------------------------------------------


@ops.get("/metrics")
def metrics() -> Response:
    """The process's Prometheus registry: the server's metrics, and the agent's under `podflame up`."""
    return Response(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


@ops.get("/healthz")
def healthz() -> Response:
    store().types(0, 1)  # touches the index: raises (500) if the store is unusable
    return jsonify(status="ok")
