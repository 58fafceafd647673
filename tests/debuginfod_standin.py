"""A local debuginfod stand-in on a real socket: serves debug files by build id, counts requests, and
can hang a request until released (for tests of the client's timeouts and of `podflame record`)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Server:
    """What the stand-in debuginfod serves: build id -> (mode, body); every request is counted."""

    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    entered: threading.Event = field(default_factory=threading.Event)  # a "hang" request arrived
    release: threading.Event = field(default_factory=threading.Event)  # lets "hang" requests answer
    url: str = ""


@contextmanager
def debuginfod_standin() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests[self.path] += 1
            parts = self.path.strip("/").split("/")  # [prefix, "buildid", hex, "debuginfo"]
            mode, body = ("404", b"")
            if len(parts) == 4 and parts[0] == "full" and parts[1:4:2] == ["buildid", "debuginfo"]:
                mode, body = state.files.get(parts[2], ("404", b""))
            if mode == "hang":
                state.entered.set()
                state.release.wait()
            if mode == "404":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_port}"
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
