"""The Flask app factory: one app per store, blueprints for the API, operations and the page.

`create_app(config)` is all the CLI, tests and embedders need:

    app = create_app({"DATA_DIR": "/var/lib/podflame"})
    app.run("127.0.0.1", 7070, threaded=True)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from podflame.errors import Unavailable
from web.server.api import api, ops
from web.store.base import Store
from web.store.retention import Maintenance
from web.store.sqlite import SqliteStore

log = logging.getLogger("podflame.web")

DEFAULTS: dict[str, Any] = {
    "DATA_DIR": "./podflame-data",
    "MAX_BODY_BYTES": 64 << 20,  # compressed request body
    "MAX_INFLATED_BYTES": 256 << 20,  # after gunzip: decompression bombs stop here
    "SQLITE_SYNCHRONOUS": "FULL",  # an acknowledged ingest survives power loss, not only a crash
    "RETENTION_SECONDS": None,  # delete profiles older than this (env PODFLAME_RETENTION_SECONDS)
    "RETENTION_BYTES": None,  # keep blobs + index under this many bytes (env PODFLAME_RETENTION_BYTES)
    "MAINTENANCE_SECONDS": 30,  # retention + compaction pass interval; 0 disables the background thread
    "COMPACTION": True,  # pre-aggregate aged data into 10 min and 1 h buckets
    "KEEP_NUMERIC_LABELS": False,  # numeric pprof labels (heap `bytes`) would explode series cardinality
    "STORE": None,  # a ready `web.store.Store` instance, to use another backend
}

_ENV = {"RETENTION_SECONDS": float, "RETENTION_BYTES": int, "MAINTENANCE_SECONDS": float}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; its store lives in `app.extensions["podflame.store"]` (close it when done).

    A daemon thread (`app.extensions["podflame.maintenance"]`) enforces retention and compacts aged
    data every MAINTENANCE_SECONDS; it stops by itself once the store is closed.
    """
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    for key, kind in _ENV.items():  # operators set limits without CLI flags (e.g. in a Deployment)
        if os.environ.get(f"PODFLAME_{key}"):
            app.config[key] = kind(os.environ[f"PODFLAME_{key}"])
    if config:
        app.config.update(config)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_BODY_BYTES"]

    store: Store | None = app.config["STORE"]
    if store is None:
        store = SqliteStore(Path(app.config["DATA_DIR"]), synchronous=app.config["SQLITE_SYNCHRONOUS"])
    app.extensions["podflame.store"] = store
    maintenance = Maintenance(store, interval=float(app.config["MAINTENANCE_SECONDS"] or 0),
                              max_age_seconds=app.config["RETENTION_SECONDS"],
                              max_bytes=app.config["RETENTION_BYTES"], compact=bool(app.config["COMPACTION"]))
    app.extensions["podflame.maintenance"] = maintenance
    if maintenance.interval > 0:
        maintenance.start()

    app.register_blueprint(api)
    app.register_blueprint(ops)
    _register_ui(app)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response | HTTPException:
        """API clients get JSON errors (404, 405, 413...) like every other API answer."""
        if request.path.startswith("/api/"):
            resp = jsonify(error=e.description or e.name)
            resp.status_code = e.code or 500
            return resp
        return e

    return app


def _register_ui(app: Flask) -> None:
    """The page lives in web/server/ui.py; without it the server still serves the API."""
    try:
        from web.server import ui
    except ModuleNotFoundError as e:
        if e.name != "web.server.ui":
            raise  # web.server.ui exists but one of its imports is missing: a real error
        log.warning("web/server/ui.py is missing: serving the API only (no web page at /)")

        @app.get("/")
        def _no_ui() -> tuple[str, int, dict[str, str]]:
            return ("podflame: the web page (web/server/ui.py) is not installed; the API is at /api/v1/\n", 503,
                    {"Content-Type": "text/plain; charset=utf-8"})
        return
    app.register_blueprint(ui.bp)


def serve(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """`app` on HOST:PORT (threaded) in a daemon thread; the caller shuts it down."""
    import threading

    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as e:
        hint = " (is another podflame running? pick another with --listen)" if e.errno == 98 else ""
        raise Unavailable(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    threading.Thread(target=server.serve_forever, name="podflame-http", daemon=True).start()
    return server
