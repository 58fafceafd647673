"""Operations endpoints: /metrics, liveness (/healthz), readiness (/readyz), the OpenAPI document.

Liveness answers "would a restart help?": 503 when the store is closed or the maintenance thread
died (retention would stop and the disk fill), never because the store is merely busy, so a long
compaction does not get the pod killed. Readiness answers "can an ingest succeed now?": the store is
open, its index takes a write lock within 2 s and its folder takes a file.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from podflame.errors import Unavailable
from web.server.openapi import document
from web.store.base import Store
from web.store.retention import Maintenance

ops = Blueprint("ops", __name__)


def _store() -> Store:
    return current_app.extensions["podflame.store"]


@ops.get("/metrics")
def metrics() -> Response:
    """The process's Prometheus registry: the server's metrics, and the agent's under `podflame up`."""
    return Response(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


@ops.get("/healthz")
def healthz() -> tuple[Response, int]:
    maintenance: Maintenance = current_app.extensions["podflame.maintenance"]
    if _store().closed:
        return jsonify(status="failed", reason="the store is closed"), 503
    if maintenance.interval > 0 and not maintenance.is_alive():
        return jsonify(status="failed", reason="the maintenance thread (retention, compaction) stopped"), 503
    return jsonify(status="ok"), 200


@ops.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        _store().check_ready()
    except Unavailable as e:
        return jsonify(status="unavailable", reason=str(e)), 503
    return jsonify(status="ok"), 200


@ops.get("/api/v1/openapi.json")
def openapi() -> Response:
    return jsonify(document())
