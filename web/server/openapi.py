"""The OpenAPI 3.0 description of the HTTP API, served at /api/v1/openapi.json.

Written by hand beside the routes (docs/api.md has the prose); tests/test_openapi.py checks that
every Flask route is documented and every documented path is a route, and fuzzes the API from it.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _param(name: str, description: str, where: str = "query", required: bool = False,
           schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": schema or {"type": "string"}}


_SELECTOR = _param("query", 'Prometheus selector, e.g. {namespace="shop", pod=~"cart-.*"}; empty matches all')
_FROM = _param("from", "start: RFC 3339, unix seconds, now, now-15m (default now-15m)")
_TO = _param("to", "end, exclusive (default now)")
_TYPE = _param("type", "sample type (default samples when present)")
_RANGE = [_SELECTOR, _FROM, _TO]
_QUERY = [*_RANGE, _TYPE]
_BASE = [_param("base_query", "baseline selector (default: query)"),
         _param("base_from", "baseline start (default: from)"), _param("base_to", "baseline end (default: to)")]
_FILENAME = _param("filename", "the download's file name (Content-Disposition; unsafe characters become _)")
_MAX_NODES = _param("max_nodes", "keep the N largest nodes, the rest folded into [other]",
                    schema={"type": "integer", "minimum": 2, "maximum": 10_000_000})


def _errors(*codes: int) -> dict[str, Any]:
    why = {400: "bad parameter or body", 401: "no valid token", 403: "another origin or Host",
           404: "unknown", 413: "body over its bound", 415: "a form upload, not a profile body",
           503: "store unavailable"}
    return {str(c): {"description": why[c], "content": {JSON: {"schema": _ERROR}}} for c in codes}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _obj(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_STRINGS = {"type": "array", "items": {"type": "string"}}
_TREE = _obj(["names", "levels", "total"], names=_STRINGS,
             levels={"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
             total={"type": "integer"})
_READ: list[dict[str, list[str]]] = [{"readToken": []}, {"readCookie": []}]


def _get(summary: str, params: list[dict[str, Any]], ok: dict[str, Any], tag: str = "query") -> dict[str, Any]:
    return {"get": {"summary": summary, "tags": [tag], "parameters": params, "security": _READ,
                    "responses": {"200": ok, **_errors(400, 401, 403, 503)}}}


def document() -> dict[str, Any]:
    """The document (a fresh dict: callers may change it)."""
    paths: dict[str, Any] = {
        "/api/v1/ingest": {"post": {
            "summary": "Store a pprof profile (gzip or plain); query parameters are labels of every sample",
            "tags": ["ingest"], "security": [{"ingestToken": []}],
            "parameters": [_param("time", "override the profile's time")],
            "requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": _json("stored and durable", _obj(["profiles", "samples", "time"],
                                       profiles={"type": "integer"}, samples={"type": "integer"},
                                       time={"type": "number"})),
                          **_errors(400, 401, 403, 413, 415, 503)}}},
        "/api/v1/labels": _get("label names in the range", _RANGE, _json("names", _obj(["labels"], labels=_STRINGS))),
        "/api/v1/label/{name}/values": _get(
            "values of one label in the range",
            [_param("name", "label name", "path", True, {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}),
             *_RANGE, _param("prefix", "only values starting with this (autocomplete)"),
             _param("limit", "at most this many values, the first in order; `truncated` says if more were cut",
                    schema={"type": "integer", "minimum": 1})],
            _json("values", _obj(["values"], values=_STRINGS, truncated={"type": "boolean"}))),
        "/api/v1/types": _get("sample types in the range", _RANGE, _json("types", _obj(["types"], types={
            "type": "array", "items": _obj(["type", "unit"], type={"type": "string"}, unit={"type": "string"})}))),
        "/api/v1/series": _get("profiles grouped by labels, largest first",
                               [*_QUERY, _param("by", "comma-separated label names")],
                               _json("groups", _obj(["series", "total"], series={"type": "array"}))),
        "/api/v1/cpu": _get("value per time step", [*_QUERY, _param("step", "seconds or a duration (1m)")],
                            _json("series", _obj(["timestamps", "values"], timestamps={"type": "array"},
                                                 values={"type": "array"}))),
        "/api/v1/flamegraph": _get("the merged profile as a flame graph tree", [
            *_QUERY, _MAX_NODES, _param("format", "json (default) or binary (vnd.podflame.tree, docs/api.md)",
                                        schema={"type": "string", "enum": ["json", "binary"]})],
                                   _json("tree", _TREE)),
        "/api/v1/diff": _get("comparison against a baseline", [
            *_QUERY, *_BASE, _MAX_NODES,
            _param("limit", "rows per table", schema={"type": "integer", "minimum": 1, "maximum": 1_000_000})],
            _json("diff tree and tables", _TREE)),
        "/api/v1/speedscope": _get("the merged profile in speedscope's format", [*_QUERY, _FILENAME],
                                   _json("speedscope file", {"type": "object"}), "export"),
        "/api/v1/pprof": _get("the merged profile as gzip pprof", [*_QUERY, _FILENAME], {
            "description": "gzip pprof", "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}}, "export"),
        "/api/v1/folded": _get("folded stacks; with base_* the two-column diff",
                               [*_QUERY, *_BASE, _param("normalize", "scale the baseline (1, true, yes)")],
                               {"description": "folded text",
                                "content": {"text/plain": {"schema": {"type": "string"}}}}, "export"),
        "/api/v1/session": {
            "post": {"summary": "log the page in: sets the read cookie (HttpOnly, SameSite=Strict)",
                     "tags": ["access"], "security": [],
                     "requestBody": {"required": True, "content": {JSON: {"schema": _obj(
                         ["token"], token={"type": "string"})}}},
                     "responses": {"204": {"description": "cookie set"}, **_errors(400, 401, 403, 404)}},
            "delete": {"summary": "log out: clears the read cookie", "tags": ["access"], "security": [],
                       "responses": {"204": {"description": "cookie cleared"}, **_errors(403)}}},
        "/api/v1/openapi.json": {"get": {"summary": "this document", "tags": ["operations"], "security": [],
                                         "responses": {"200": _json("OpenAPI 3.0", {"type": "object"})}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (read token unless METRICS_PUBLIC)",
                             "tags": ["operations"], "security": _READ,
                             "responses": {"200": {"description": "text exposition format", "content": {
                                 "text/plain": {"schema": {"type": "string"}}}}, **_errors(401, 403)}}},
        "/healthz": {"get": {"summary": "liveness: 503 when the store is closed or maintenance stopped",
                             "tags": ["operations"], "security": [],
                             "responses": {"200": _json("alive", _obj(["status"], status={"type": "string"})),
                                           "503": _json("a restart would help", _obj(
                                               ["status", "reason"], status={"type": "string"},
                                               reason={"type": "string"}))}}},
        "/readyz": {"get": {"summary": "readiness: the store is open and can take a write now",
                            "tags": ["operations"], "security": [],
                            "responses": {"200": _json("ready", _obj(["status"], status={"type": "string"})),
                                          "503": _json("not ready", _obj(["status", "reason"],
                                                       status={"type": "string"}, reason={"type": "string"}))}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "podflame", "version": "1", "description": "Continuous profiling: ingest pprof, "
                 "query flame graphs, diffs and exports. Prose reference: docs/api.md."},
        "paths": paths,
        "components": {"securitySchemes": {
            "ingestToken": {"type": "http", "scheme": "bearer", "description": "a line of INGEST_TOKEN_FILE"},
            "readToken": {"type": "http", "scheme": "bearer", "description": "a line of READ_TOKEN_FILE"},
            "readCookie": {"type": "apiKey", "in": "cookie", "name": "podflame_read"}}},
    }
