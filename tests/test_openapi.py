"""The OpenAPI document (web/server/openapi.py) stays true: every Flask route is in it and every path
in it is a route, with the same methods; it is a valid OpenAPI 3.0 document; and the API, fuzzed from
it with schemathesis (a bounded number of cases per operation), never answers 5xx, answers what the
document says it answers, and a rejected request leaves the store as it was.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Profile
from web.server.app import create_app
from web.server.openapi import document
from web.store.selector import parse_selector

FUZZ_EXAMPLES = 30  # per operation: ~500 requests in all, a few seconds


def _routes(app: Flask) -> dict[str, set[str]]:
    """Flask's routes as OpenAPI paths (`<name>` -> `{name}`), with their methods (no HEAD/OPTIONS)."""
    out: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        out.setdefault(path, set()).update(m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("openapi")), "MAINTENANCE_SECONDS": 0})
    frame = Frame(0x1000, None, FrameKind.NATIVE, (Line("main", "main.c", 3),))
    body = pprof.encode([Profile({"comm": "app", "pod": "cart"}, time.time_ns() - 60 * 10**9, 10**9, 10_000_000,
                                 {(frame,): 7})])
    assert app.test_client().post("/api/v1/ingest", data=body).status_code == 200
    yield app
    app.extensions["podflame.store"].close()


def test_every_route_is_documented_and_every_documented_path_is_a_route(app: Flask) -> None:
    documented = {path: {m for m in ops if m in ("get", "post", "put", "delete", "patch")}
                  for path, ops in document()["paths"].items()}
    routes = _routes(app)
    routes.pop("/", None)  # the web page, not the API
    assert routes == documented


def test_the_server_serves_the_document_and_it_is_valid_openapi(app: Flask) -> None:
    r = app.test_client().get("/api/v1/openapi.json")
    assert r.status_code == 200 and r.json == document()
    schema = schemathesis.openapi.from_dict(r.json)  # validates against the OpenAPI 3.0 meta-schema
    assert len(list(schema.get_all_operations())) == sum(
        len(ops) for ops in document()["paths"].values())


def _fingerprint(app: Flask) -> tuple[object, ...]:
    store = app.extensions["podflame.store"]
    everything = parse_selector("")
    return (len(store.select(everything, 0, 2**62)), store.types(0, 2**62), store.label_names(0, 2**62))


schema = schemathesis.openapi.from_dict(document())


@pytest.fixture
def fuzz_app(app: Flask) -> Flask:
    return app


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_fuzzed_requests_get_no_5xx_and_rejected_ones_change_nothing(case, fuzz_app: Flask) -> None:
    before = _fingerprint(fuzz_app)
    response = case.call(app=fuzz_app)
    assert response.status_code < 500, (case.method, case.formatted_path, case.query, response.text[:300])
    if case.path == "/api/v1/openapi.json" or response.status_code >= 400:
        assert _fingerprint(fuzz_app) == before, (case.method, case.path, response.status_code)
    if response.headers.get("Content-Type", [""])[0].startswith("application/json") and response.status_code >= 400:
        assert "error" in response.json() or "reason" in response.json()
    if case.method.upper() != case.operation.method.upper():
        # schemathesis also sends undocumented methods on purpose: refused, or Flask's automatic OPTIONS/HEAD
        assert response.status_code == 405 or case.method.upper() in ("OPTIONS", "HEAD"), (case.method, case.path)
        return
    documented = document()["paths"][case.operation.path][case.operation.method.lower()]["responses"]
    assert str(response.status_code) in documented or response.status_code == 404, (  # 404: a malformed path
        case.method, case.path, response.status_code, response.text[:200])
