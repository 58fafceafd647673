"""The agent's own HTTP endpoints: /healthz (for the kubelet's probes) and /metrics (Prometheus).

The standard library's threading HTTP server, not Flask: the agent imports no web framework.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from podflame.errors import Unavailable
from podflame.threads import daemon_thread


class _Drains(Protocol):
    @property
    def last_drain_at(self) -> float | None: ...


class _Synced(Protocol):
    @property
    def synced(self) -> bool: ...


class _Selecting(Protocol):
    @property
    def selected(self) -> int | None: ...


class AgentHealth:
    """The agent's /healthz: 200 while drains succeed, 503 while starting (compiling the sampler) or when
    no drain succeeded for `stale_after` seconds (3 intervals, at least 30 s) or the drain loop died.

    Uploads failing do not make the agent unhealthy: it keeps a backlog and retries, and restarting it
    would lose that backlog. The body says what was checked; with a pod selection, also how many pod
    cgroups the kernel's filter holds (`selected_pod_cgroups`: null before the first pod list, 0 while no
    selected pod is on the node), so "healthy but sampling nothing" can be told apart.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = max(3 * interval, 30.0)
        self.clock = clock
        self.agent: _Drains | None = None
        self.thread: threading.Thread | None = None
        self.attached_at: float | None = None
        self.kube: _Synced | None = None
        self.selection: _Selecting | None = None

    def attach(self, agent: _Drains, thread: threading.Thread, kube: _Synced | None = None,
               selection: _Selecting | None = None) -> None:
        self.agent, self.thread, self.kube, self.selection = agent, thread, kube, selection
        self.attached_at = self.clock()

    def check(self) -> tuple[int, dict[str, Any]]:
        now = self.clock()
        body: dict[str, Any] = {"status": "starting", "last_drain_seconds_ago": None,
                                "stale_after_seconds": self.stale_after}
        if self.kube is not None:
            body["pods_synced"] = self.kube.synced
        if self.selection is not None:
            body["selected_pod_cgroups"] = self.selection.selected
        if self.agent is None or self.thread is None or self.attached_at is None:
            return 503, body  # the sampler is still compiling
        last = self.agent.last_drain_at
        if last is not None:
            body["last_drain_seconds_ago"] = round(now - last, 3)
        if not self.thread.is_alive():
            body["status"] = "stopped"
            return 503, body
        since = now - (last if last is not None else self.attached_at)
        if since > self.stale_after:
            body["status"] = "stale"
            return 503, body
        body["status"] = "ok"
        return 200, body


def serve_agent_http(host: str, port: int, health: AgentHealth) -> ThreadingHTTPServer:
    """/metrics (Prometheus) and /healthz on the agent's --metrics address, in a daemon thread."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    import profiler.metrics  # noqa: F401  (the agent's metrics exist, at zero, from the first scrape)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: log real events only
            pass

        def _send(self, code: int, ctype: str, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            elif path == "/healthz":
                code, body = health.check()
                self._send(code, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "application/json", b'{"error": "not found: /metrics and /healthz are served here"}')

        do_HEAD = do_GET

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise Unavailable(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
    server.daemon_threads = True
    daemon_thread(server.serve_forever, "podflame-metrics").start()
    return server
