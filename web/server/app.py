"""The Flask app factory: one app per store, blueprints for the API, operations and the page; and
`serve`, the production HTTP server it runs under.

`create_app(config)` is all the CLI, tests and embedders need:

    app = create_app({"DATA_DIR": "/var/lib/podflame", "READ_TOKEN_FILE": "/etc/podflame/read"})
    server = serve(app, "127.0.0.1", 7070)   # waitress, a bounded thread pool, in a daemon thread

Why a thread pool in our process and not gunicorn: the store is one in-process SQLite writer with
in-memory caches and a maintenance thread, and `podflame up` runs the agent in the same process.
gunicorn's model is forked workers; with more than one, each would open the store, run its own
compaction and retention and keep its own caches, and with one it adds a master process and a fork
for nothing a thread pool does not give.

Why waitress and not cheroot: cheroot hands a connection to a request thread as soon as its first bytes
arrive, and the thread then reads the rest; eight clients trickling headers or a body held all eight
threads until the timeout, and every other request waited (tests/test_serve.py). waitress reads each
request whole in its event loop (headers bounded, body bounded and spooled to disk past 512 KiB) and
only then gives it to a thread, and buffers answers for clients that read slowly. It has no TLS, so
with a certificate a small asyncio front (web/server/tlsfront.py) ends TLS and relays bytes to it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from podflame.errors import InvalidInput, Unavailable
from podflame.limits import DecodeLimits, positive_int
from web.server import auth, gate
from web.server.api import api
from web.server.connlimits import DEFAULT_PER_CLIENT, DEFAULT_REQUEST_DEADLINE, limit
from web.server.ops import ops
from web.server.tlsfront import TlsFront
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
    "INGEST_TOKEN_FILE": None,  # tokens (one per line) that may POST /api/v1/ingest; None: no token needed
    "READ_TOKEN_FILE": None,  # tokens that may read (API, /metrics); None: no token needed
    "METRICS_PUBLIC": False,  # /metrics without the read token (a scraper on a trusted network)
    "ALLOWED_HOSTS": None,  # Host names served (DNS rebinding); None: any. The CLI sets loopback's on loopback
    "ALLOWED_ORIGINS": (),  # other browser origins that may POST (besides the server's own)
    "INGEST_CONCURRENCY": 2,  # ingests in the handler at once (one store writer): the rest of the threads serve reads
    "INGEST_WAIT_SECONDS": 20,  # an ingest waits this long for a slot, then gets 503 + Retry-After (the agent retries)
}

_ENV = {"RETENTION_SECONDS": float, "RETENTION_BYTES": int, "MAINTENANCE_SECONDS": float, "MAX_BODY_BYTES": int,
        "INGEST_TOKEN_FILE": str, "READ_TOKEN_FILE": str}
DEFAULT_THREADS = 8  # request threads: the GIL and 2-core pods make more cost memory, not throughput
DEFAULT_TIMEOUT = 30  # seconds a connection may idle before it is closed (it holds a socket, never a thread)
# A byte every few seconds is not idle: a whole request has its own deadline, and one address a share of the
# connections (web/server/connlimits.py).
CONNECTION_LIMIT = 512  # open connections; past it waitress stops accepting until some close
MAX_REQUEST_HEADER_BYTES = 128 << 10  # request line + headers read before the app's own 32/64 KiB checks


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; its store lives in `app.extensions["podflame.store"]` (close it when done).

    A daemon thread (`app.extensions["podflame.maintenance"]`) enforces retention and compacts aged
    data every MAINTENANCE_SECONDS; it stops by itself once the store is closed.
    """
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    for key, kind in _ENV.items():  # operators set limits without CLI flags (e.g. in a Deployment)
        if os.environ.get(f"PODFLAME_{key}"):
            try:
                app.config[key] = kind(os.environ[f"PODFLAME_{key}"])
            except ValueError:
                raise InvalidInput(f"PODFLAME_{key}={os.environ[f'PODFLAME_{key}']!r}: expected a number") from None
    if config:
        app.config.update(config)
    app.config["MAX_BODY_BYTES"] = positive_int("MAX_BODY_BYTES", app.config["MAX_BODY_BYTES"])
    DecodeLimits.from_config(app.config)  # a bad limit fails the start, not every ingest with a 500
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_BODY_BYTES"]
    auth.install(app)  # before the store opens: a bad token file fails the start, not the first request
    gate.install(app)  # ingest turns; auth runs first, so a request without a token never takes one

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
    app.register_blueprint(auth.session)
    _register_ui(app)

    @app.after_request
    def _no_sniffing(resp: Response) -> Response:
        """Every answer is read as the type it says: a JSON or text answer holding a pushed profile's names
        (markup, script) is never rendered as HTML by a browser that opens it."""
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

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


class HttpServer:
    """A running server: `url`, `server_port`, `shutdown()`."""

    def __init__(self, server: Any, scheme: str, host: str, port: int, front: TlsFront | None = None,
                 private_dir: str | None = None) -> None:
        self._server, self._front, self._private_dir = server, front, private_dir
        self.server_port = port
        self.url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{self.server_port}"
        self._thread = threading.Thread(target=server.run, name="podflame-http", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        if self._front is not None:
            self._front.stop()
        self._server.close()
        self._thread.join(timeout=10)
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)


def serve(app: Flask, host: str, port: int, *, threads: int = DEFAULT_THREADS, timeout: int = DEFAULT_TIMEOUT,
          tls: tuple[str, str] | None = None, request_deadline: float = DEFAULT_REQUEST_DEADLINE,
          per_client: int = DEFAULT_PER_CLIENT) -> HttpServer:
    """`app` on HOST:PORT under waitress (`threads` request threads, each given only requests already read
    whole), HTTPS with `tls` = (certificate file, key file) through a TlsFront; in daemon threads, the
    caller shuts it down. A request must arrive whole within `request_deadline` seconds of its first byte,
    and one client address may hold at most `per_client` connections (web/server/connlimits.py)."""
    from waitress.server import create_server

    # "Task queue depth is N" on every request that waits for a thread: a burst of agents is normal, not a warning
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    limits: dict[str, Any] = {
        "threads": threads, "channel_timeout": timeout, "connection_limit": CONNECTION_LIMIT,
        "max_request_header_size": MAX_REQUEST_HEADER_BYTES,
        # Flask's MAX_CONTENT_LENGTH, as waitress counts it (it refuses at >=): a declared oversize body is
        # refused (413) before it is read, a chunked one as soon as it passes the limit
        "max_request_body_size": int(app.config.get("MAX_BODY_BYTES", DEFAULTS["MAX_BODY_BYTES"])) + 1,
        "asyncore_use_poll": True,  # select() stops at file descriptor 1024
        "ident": "podflame", "expose_tracebacks": False}
    if tls is None:
        try:
            server: Any = create_server(app, host=host, port=port, **limits)  # one listener: a TcpWSGIServer
        except OSError as e:
            raise _listen_error(host, port, e) from None
        limit(server, deadline=request_deadline, per_client=per_client)
        return HttpServer(server, "http", host, int(server.effective_port))
    cert, key = tls
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        raise InvalidInput(f"cannot use TLS certificate {cert} / key {key}: {e}") from None
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=128)
    except OSError as e:
        raise _listen_error(host, port, e) from None
    private_dir = tempfile.mkdtemp(prefix="podflame-http-")  # 0700: only this user reaches the plain side
    upstream = os.path.join(private_dir, "http.sock")
    server = create_server(app, unix_socket=upstream, unix_socket_perms="600", url_scheme="https", **limits)
    limit(server, deadline=request_deadline, per_client=per_client)  # the deadline; the front caps addresses
    front = TlsFront(sock, context, upstream, handshake_timeout=timeout, per_client=per_client)
    return HttpServer(server, "https", host, int(sock.getsockname()[1]), front, private_dir)


def _listen_error(host: str, port: int, e: OSError) -> Unavailable:
    hint = " (is another podflame running? pick another with --listen)" if e.errno == errno.EADDRINUSE else ""
    return Unavailable(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}")


def serving_config(data_dir: str, host: str, *, ingest_token_file: str | None = None,
                   read_token_file: str | None = None, allowed_hosts: str | None = None,
                   allowed_origins: str | None = None, metrics_public: bool = False,
                   insecure: bool = False) -> dict[str, Any]:
    """The app config `podflame server` and `podflame up` build from their options; refuses (InvalidInput)
    a non-loopback listen without both token files unless `insecure`."""
    config: dict[str, Any] = {"DATA_DIR": data_dir, "METRICS_PUBLIC": metrics_public,
                              "ALLOWED_HOSTS": auth.allowed_hosts_for(host, allowed_hosts),
                              "ALLOWED_ORIGINS": [o.strip() for o in (allowed_origins or "").split(",") if o.strip()]}
    for key, value in (("INGEST_TOKEN_FILE", ingest_token_file), ("READ_TOKEN_FILE", read_token_file)):
        value = value or os.environ.get(f"PODFLAME_{key}")
        if value:
            config[key] = value
    auth.check_exposure(host, config, insecure)
    return config
