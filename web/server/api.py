"""HTTP API (docs/api.md): ingest, labels, types, series, cpu, flame graph, diff, pprof, folded, speedscope.

/metrics, /healthz, /readyz and the OpenAPI document are in web/server/ops.py.

Handlers only translate HTTP to `web.query.merge` calls and back; every client mistake (bad time,
selector, label or body) is a 4xx with `{"error": ...}` naming the bad part.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote_to_bytes

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import Counter, Histogram
from werkzeug.exceptions import RequestEntityTooLarge

from podflame import pprof
from podflame.errors import Forbidden, InvalidInput, NotFound, PodflameError, TooLarge, Unauthorized, Unavailable
from podflame.limits import DecodeLimits
from web.normalize import batch_of
from web.query import merge as queries
from web.query.export import to_pprof
from web.query.merge import Query, profiles_by_series, series_summary
from web.query.treebin import MEDIA_TYPE as TREE_MEDIA_TYPE
from web.query.treecache import DEFAULT_MAX_BYTES as DEFAULT_TREE_CACHE_BYTES
from web.query.treecache import Answer, BinaryAnswer, TreeCache, payload_json_head
from web.server import gate
from web.server.gzipjoin import accepts_gzip, gzip_join
from web.server.timeparse import TimeError, parse_step, parse_time
from web.store import deadline
from web.store.base import Store
from web.store.selector import LABEL_NAME, SelectorError, parse_selector

INGESTED_PROFILES = Counter("podflame_server_ingested_profiles_total", "Profiles stored (one per series per request)")
INGESTED_SAMPLES = Counter("podflame_server_ingested_samples_total", "Stack rows stored (distinct stacks per profile)")
INGESTED_BYTES = Counter("podflame_server_ingested_bytes_total", "Request bytes of accepted ingests")
REJECTED = Counter("podflame_server_rejected_requests_total", "Ingests refused, by reason", ["reason"])
QUERY_SECONDS = Histogram("podflame_server_query_seconds", "Query latency by endpoint", ["endpoint"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

api = Blueprint("api", __name__, url_prefix="/api/v1")

DEFAULT_FROM, DEFAULT_TO = "now-15m", "now"
RESERVED_INGEST_PARAMS = frozenset({"time"})  # ingest parameters that are not labels, nor may a sample name one

P = ParamSpec("P")
R = TypeVar("R")


class ApiError(PodflameError):
    """A client error: answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


# The one place errors become HTTP statuses: first match wins (an ApiError says its own).
HTTP_STATUS: tuple[tuple[type[PodflameError], int], ...] = (
    (TooLarge, 413), (InvalidInput, 400), (Unauthorized, 401), (Forbidden, 403), (NotFound, 404), (Unavailable, 503),
    (PodflameError, 500))


def http_status(e: PodflameError) -> int:
    if isinstance(e, ApiError):
        return e.status
    return next(status for kind, status in HTTP_STATUS if isinstance(e, kind))


@api.app_errorhandler(PodflameError)
def _podflame_error(e: PodflameError) -> tuple[Response, int]:
    """Every PodflameError a request raises, on any blueprint, as `{"error": message}`."""
    if isinstance(e, ApiError) and e.reason:
        REJECTED.labels(e.reason).inc()
    return jsonify(error=e.message if isinstance(e, ApiError) else str(e)), http_status(e)


MAX_URL_BYTES = 32 << 10  # path + query string (a selector is at most 16 KiB of text)
MAX_HEADER_BYTES = 64 << 10  # all request headers together


@api.before_app_request
def _bounded_request_line() -> tuple[Response, int] | None:
    """Over-long URLs and headers get the API's JSON error (414, 431), not the WSGI server's HTML page:
    the app refuses them below the servers' own limits (Werkzeug's 64 KiB line, waitress's 128 KiB of headers)."""
    env = request.environ
    url = len(env.get("PATH_INFO", "")) + len(env.get("QUERY_STRING", ""))
    if url > MAX_URL_BYTES:
        return jsonify(error=f"URL is {url} bytes, over the {MAX_URL_BYTES} byte limit: send fewer or shorter "
                       "parameters"), 414
    headers = sum(len(k) + len(v) for k, v in env.items() if k.startswith("HTTP_") and isinstance(v, str))
    if headers > MAX_HEADER_BYTES:
        return jsonify(error=f"request headers hold {headers} bytes, over the {MAX_HEADER_BYTES} byte limit"), 431
    if request.path.startswith("/api/"):
        return _utf8_query(env.get("QUERY_STRING", ""))
    return None


def _utf8_query(query: str) -> tuple[Response, int] | None:
    """A 400 for a query string whose bytes are not UTF-8: Werkzeug would turn each bad byte into the text
    `%FF`, and an ingest would then store a label value the client never sent (or a query match nothing)."""
    try:  # WSGI gives the raw bytes as latin-1 text; percent escapes and raw bytes alike must be UTF-8
        raw = query.encode("latin-1")
    except UnicodeEncodeError:  # not from a WSGI server: already text
        raw = query.encode("utf-8")
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        return jsonify(error=f"the query string is not UTF-8 ({e.reason} at byte {e.start} once unescaped): "
                       "percent-encode UTF-8 text"), 400
    return None


def store() -> Store:
    return current_app.extensions["podflame.store"]


def parse_query(prefix: str = "", now: int | None = None) -> Query:
    """`query`, `from`, `to`, `type` from the URL; one `now` for the whole request.

    With a prefix (`base_`), missing parameters default to the unprefixed ones (a diff of one
    selector over two ranges, or of two selectors over one range).
    """
    now = time.time_ns() if now is None else now
    args = request.args
    frm = args.get(prefix + "from") or args.get("from") or DEFAULT_FROM
    to = args.get(prefix + "to") or args.get("to") or DEFAULT_TO
    t0, t1 = _time_text(prefix + "from", frm, now), _time_text(prefix + "to", to, now)
    if t1 <= t0:
        raise ApiError(400, f"bad range: {prefix}from ({frm}) must be before {prefix}to ({to})")
    text = args.get(prefix + "query") if prefix + "query" in args else args.get("query")
    try:
        selector = parse_selector(text)
    except SelectorError as e:
        raise ApiError(400, f"bad {prefix}query: {e}") from None
    return Query(selector, t0, t1, args.get("type") or None)


def _time_text(name: str, text: str, now_ns: int) -> int:
    try:
        return parse_time(text, now_ns)
    except TimeError as e:
        raise ApiError(400, f"bad {name}: {e}") from None


def _int_arg(name: str, default: int | None, lo: int, hi: int) -> int | None:
    text = request.args.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"bad {name}: {text!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"bad {name}: {value} is outside [{lo}, {hi}]")
    return value


_DIFF_PARAMS = ("base_query", "base_from", "base_to")


DEFAULT_QUERY_TIMEOUT_SECONDS = 30.0


def timed(endpoint: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Times a query endpoint, and runs it under the QUERY_TIMEOUT_SECONDS deadline (web/store/deadline.py)."""
    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            timeout = current_app.config.get("QUERY_TIMEOUT_SECONDS", DEFAULT_QUERY_TIMEOUT_SECONDS)
            with QUERY_SECONDS.labels(endpoint).time(), deadline.within(timeout):
                return fn(*args, **kwargs)
        return inner
    return wrap


# -- ingest ----------------------------------------------------------------------------------


def _ingest_labels(received_ns: int, limits: DecodeLimits) -> tuple[dict[str, str], int | None]:
    labels: dict[str, str] = {}
    override = None
    for name, values in request.args.lists():
        if len(values) > 1:
            raise ApiError(400, f"parameter {name!r} given {len(values)} times", "bad_labels")
        if name == "time":
            try:
                override = parse_time(values[0], received_ns)
            except TimeError as e:
                raise ApiError(400, str(e), "bad_time") from None  # "bad time 'x': expected ..."
            continue
        try:
            pprof.check_label_name(name)
        except pprof.PprofError as e:
            raise ApiError(400, str(e), "bad_labels") from None
        if len(values[0]) > limits.label_value_bytes:
            raise ApiError(400, f"label {name} is longer than {limits.label_value_bytes} characters "
                           "(limit MAX_LABEL_VALUE_BYTES)", "bad_labels")
        if values[0]:
            labels[name] = values[0]
    return labels, override


_READ_CHUNK = 1 << 20


def _read_body(limit: int) -> bytes:
    """The request body, refused (413) past `limit` bytes whether it has a Content-Length or is chunked.

    Werkzeug caps a chunked body at MAX_CONTENT_LENGTH by returning its first MAX_CONTENT_LENGTH bytes as if
    that were all of it: a cut profile would be stored. Reading the terminated input ourselves, one byte
    past the limit tells a body of exactly `limit` bytes from a longer one.
    """
    too_large = ApiError(413, f"body is over the {limit} byte limit (MAX_BODY_BYTES)", "too_large")
    length = request.content_length
    if length is not None:
        if length > limit:
            raise too_large
        try:
            return request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise too_large from None
    env = request.environ
    if not env.get("wsgi.input_terminated"):
        return b""  # neither a length nor a server that ends the stream: nothing can be read safely
    stream = env["wsgi.input"]
    parts: list[bytes] = []
    size = 0
    while True:
        part = stream.read(min(_READ_CHUNK, limit + 1 - size))
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
        if size > limit:
            raise too_large


@api.post("/ingest")
def ingest() -> Response:
    """Decode fully, then store atomically: a bad body stores nothing, a 200 means durable."""
    received = time.time_ns()
    limits = current_app.extensions.get("podflame.limits")
    if limits is None:  # the app's config and environment, read once (docs/api.md "Limits")
        limits = current_app.extensions["podflame.limits"] = DecodeLimits.from_config(current_app.config)
    labels, override = _ingest_labels(received, limits)
    if request.mimetype == "multipart/form-data":
        raise ApiError(415, "the profile must be the request body itself (curl --data-binary @cpu.pb.gz), not a "
                       "form upload (curl -F)", "invalid")
    body = _read_body(current_app.config["MAX_BODY_BYTES"])
    if not body:
        raise ApiError(400, "empty body: POST a pprof profile (gzip or plain)", "invalid")
    _check_content_encoding(body)
    with gate.ingest_turn():  # taken once the body is here: a slow sender holds no other agent's turn
        return _decode_and_store(body, labels, override, received, limits)


def _check_content_encoding(body: bytes) -> None:
    """The body is decoded by its bytes (gzip's magic or plain pprof); a declared encoding must agree, else a
    zlib (`deflate`) or zstd body, or a plain one labelled gzip, would be read as whatever it looks like."""
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise ApiError(415, f"Content-Encoding {encoding[:40]!r} is not supported: send the profile gzip-compressed "
                       "(Content-Encoding: gzip, or none) or plain", "invalid")
    if encoding != "identity" and not body.startswith(b"\x1f\x8b"):
        raise ApiError(400, "Content-Encoding says gzip, but the body is not gzip (no 1f 8b magic)", "invalid")


def _decode_and_store(body: bytes, labels: dict[str, str], override: int | None, received: int,
                      limits: DecodeLimits) -> Response:
    try:
        # Numeric pprof labels (heap `bytes`, `object count`...) as series labels would make one series
        # per distinct number: dropped unless asked for. Totals are unchanged; string labels stay.
        decoded = pprof.decode_ids(body, labels, limits=limits, refused_names=RESERVED_INGEST_PARAMS,
                                   numeric_labels=bool(current_app.config.get("KEEP_NUMERIC_LABELS")))
    except pprof.PprofTooLarge as e:
        raise ApiError(413, str(e), "too_large") from None
    except pprof.PprofError as e:
        hint = ""
        if request.mimetype == "application/x-www-form-urlencoded":  # curl -d's, and --data-binary's default type
            hint = " (curl -d / --data drops a file's newline bytes: send it with --data-binary @FILE)"
        raise ApiError(400, f"invalid pprof: {e}{hint}", "invalid") from None
    if override is not None:
        if not 0 <= override <= limits.time_ns - decoded.duration_ns:
            raise ApiError(400, f"bad time: outside [0, {limits.time_ns}] (limit MAX_TIME_NS)", "bad_time")
        decoded.start_ns = override
    elif decoded.start_ns <= 0:
        decoded.start_ns = received
    result = store().put([batch_of(decoded)])
    INGESTED_PROFILES.inc(result.profiles)
    INGESTED_SAMPLES.inc(result.samples)
    INGESTED_BYTES.inc(len(body))
    # `time`: where the profile was filed (its own time_nanos, unless `time=`): a pushed profile from last
    # week is not in the page's default last 15 minutes, and this says where to look.
    return jsonify(profiles=result.profiles, samples=result.samples, time=decoded.start_ns / 1e9)


# -- metadata --------------------------------------------------------------------------------


@api.get("/labels")
@timed("labels")
def labels() -> Response:
    q = parse_query()
    return jsonify(labels=store().label_names(q.t0, q.t1, q.selector))


@api.get("/label/<name>/values")
@timed("label_values")
def label_values(name: str) -> Response:
    if not LABEL_NAME.fullmatch(name):  # no stored label has such a name: say so rather than answer []
        raise ApiError(400, f"bad label name {name[:100]!r}: label names are [a-zA-Z_][a-zA-Z0-9_]* "
                       "(GET /api/v1/labels lists them)")
    q = parse_query()
    prefix = request.args.get("prefix") or ""
    limit = _int_arg("limit", None, 1, 10_000_000)
    if not prefix and limit is None:
        return jsonify(values=store().label_values(name, q.t0, q.t1, q.selector))
    values, truncated = store().label_values_page(name, q.t0, q.t1, q.selector, prefix, limit)
    return jsonify(values=values, truncated=truncated)


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


_STEP_CHOICES_S = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_POINTS = 11_000  # as Prometheus: a range over step must stay a plottable series


@api.get("/cpu")
@timed("cpu")
def cpu() -> Response:
    """Value (and cores, for CPU types) per time step; `step` in seconds or as a duration (`1m`)."""
    q = parse_query()
    text = (request.args.get("step") or "").strip()
    if text:
        try:
            step_ns = parse_step(text)
        except TimeError as e:
            raise ApiError(400, f"bad step: {e}") from None
    else:  # about 240 points, at a round step
        want = (q.t1 - q.t0) / 240 / 1e9
        step_ns = next((c for c in _STEP_CHOICES_S if c >= want), -(-int(want) // 86400) * 86400) * 1_000_000_000
    if (q.t1 - q.t0) / step_ns > MAX_POINTS:
        raise ApiError(400, f"bad step: more than {MAX_POINTS} points; use a larger step")
    return jsonify(queries.cpu_series(store(), q, step_ns))


@api.get("/flamegraph")
@timed("flamegraph")
def flamegraph() -> Response:
    max_nodes = _int_arg("max_nodes", None, 2, 10_000_000)
    cache = current_app.extensions.get("podflame.tree_cache")
    if cache is None:
        cache = current_app.extensions["podflame.tree_cache"] = TreeCache(
            int(current_app.config.get("TREE_CACHE_BYTES", DEFAULT_TREE_CACHE_BYTES)))
    absolute = all(_absolute(request.args.get(k) or d) for k, d in (("from", DEFAULT_FROM), ("to", DEFAULT_TO)))
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "binary"):
        raise InvalidInput(f"format must be json or binary, not {fmt[:40]!r}")
    # `preview`: the page's first picture, pruned to what a view that many px wide draws (web/query/treebin.py).
    preview = _int_arg("preview", None, 100, 100_000)
    if preview is not None and fmt != "binary":
        raise InvalidInput("preview needs format=binary")
    answer, tail = queries.flamegraph_answer(store(), parse_query(), max_nodes, cache, absolute, fmt == "binary")
    if preview is not None and isinstance(answer, BinaryAnswer):
        answer = answer.preview(preview)
    return _answer_response(answer, tail, TREE_MEDIA_TYPE if fmt == "binary" else "application/json")


def _absolute(text: str) -> bool:
    """True when a time means the same whatever the clock says (not `now`-based)."""
    try:
        return parse_time(text, 4 * 10**18) == parse_time(text, 5 * 10**18)
    except TimeError:
        return False


def _answer_response(answer: Answer, tail: dict[str, Any], mimetype: str) -> Response:
    """A kept answer with this request's tail, gzipped by joining its kept deflate stream (no recompression)."""
    rest = answer.tail_bytes(tail)
    resp = current_app.response_class(mimetype=mimetype)
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        resp.set_data(gzip_join(answer.deflated(), rest))
        resp.headers["Content-Encoding"] = "gzip"
        resp.vary.add("Accept-Encoding")
    else:
        resp.set_data(answer.head + rest)
    return resp


@api.get("/diff")
@timed("diff")
def diff() -> Response:
    """Comparison (`query`, `from`, `to`) against baseline (`base_query`, `base_from`, `base_to`)."""
    now = time.time_ns()
    comp, base = parse_query(now=now), parse_query("base_", now)
    max_nodes = _int_arg("max_nodes", None, 2, 10_000_000)
    limit = _int_arg("limit", 50, 1, 1_000_000)
    assert limit is not None
    return _tree_json(queries.diff(store(), comp, base, max_nodes, limit))


def _tree_json(payload: dict[str, Any]) -> Response:
    """`jsonify(payload)`, with its `levels` written fast (`payload_json_head`)."""
    return current_app.response_class(payload_json_head(payload) + b"}", mimetype="application/json")


@api.get("/speedscope")
@timed("speedscope")
def speedscope() -> Response:
    q = parse_query()
    name = f"podflame {request.args.get('query') or '{}'}"
    resp = jsonify(queries.speedscope(store(), q, name))
    resp.headers["Content-Disposition"] = _attachment("podflame.speedscope.json")
    return resp


def _attachment(default: str) -> str:
    """`Content-Disposition` of a download: the `filename` the page asks for (its selection and range), else
    `default`. A browser prefers this header's name to the link's `download` attribute, so the page's name must
    come through here; only a safe file name goes into the header (a CR/LF made it a 500, a quote ended it)."""
    asked = re.sub(r"[^A-Za-z0-9._=-]+", "_", request.args.get("filename") or "").strip("._")[:200]
    return f'attachment; filename="{asked or default}"'


@api.get("/pprof")
@timed("pprof")
def pprof_download() -> Response:
    sample_type, unit, profiles = profiles_by_series(store(), parse_query())
    # The type is the client's or a pushed profile's text: made a safe file name by _attachment
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_type)[:64] or "profile"
    return Response(to_pprof(profiles, sample_type, unit), mimetype="application/octet-stream",
                    headers={"Content-Disposition": _attachment(f"podflame-{name}.pb.gz")})


@api.get("/folded")
@timed("folded")
def folded() -> Response:
    """Folded stacks; with any base_* parameter, the two-column diff (`stack base comp`)."""
    if any(p in request.args for p in _DIFF_PARAMS):
        now = time.time_ns()
        comp, base = parse_query(now=now), parse_query("base_", now)
        normalize = (request.args.get("normalize") or "").lower() in ("1", "true", "yes")
        return Response(queries.folded_diff(store(), comp, base, normalize), mimetype="text/plain")
    return Response(queries.folded(store(), parse_query()), mimetype="text/plain")
