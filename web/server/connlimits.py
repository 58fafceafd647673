"""Per-connection limits waitress lacks: a deadline for a whole request, and a cap on connections per client address.

waitress closes a connection only after `channel_timeout` seconds without a byte, so a client that trickles a
byte every few seconds keeps its request open for ever; 512 such connections (waitress's `connection_limit`)
and it accepts no other client. Here, a request must be read whole (line, headers and body) within a deadline
from its first byte, else it is answered 408 and the connection closed; and one client address may hold only
part of the connection limit, so one host trickling cannot fill it (over the cap a connection is answered 503
and closed at once). Both answers are `{"error": ...}` like every API error. Connections relayed from the TLS
front arrive on a Unix socket without an address: the front caps addresses itself (web/server/tlsfront.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from web.server.jsonerrors import JsonErrorChannel

DEFAULT_REQUEST_DEADLINE = 60  # seconds from a request's first byte to its last (a 64 MiB body at ~1 MB/s)
DEFAULT_PER_CLIENT = 128  # connections one address may hold (a quarter of waitress's 512)


def refusal(status: str, message: str) -> bytes:
    """A whole HTTP answer that closes the connection: `{"error": message}`."""
    body = json.dumps({"error": message}).encode() + b"\n"
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class LimitedChannel(JsonErrorChannel):
    """A waitress channel that enforces the server's `podflame_deadline` and `podflame_per_client` (set by
    `limit`). The deadline is checked each time the event loop asks whether the channel is readable (at least
    once a second: waitress's loop timeout)."""

    started: float | None = None  # when the first byte of the request being read arrived
    _counted: object = None  # the address counted for this channel (released when it closes)

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map)
        srv: Any = self.server
        counts: dict[object, int] | None = getattr(srv, "podflame_clients", None)
        host = self.addr[0] if isinstance(self.addr, tuple) and self.addr else None
        if counts is None or not host:
            return
        self._counted = host
        counts[host] = counts.get(host, 0) + 1
        if counts[host] > srv.podflame_per_client:
            self._refuse("503 Service Unavailable", f"too many connections from {host} "
                         f"(at most {srv.podflame_per_client} at once)")

    def del_channel(self, map: Any = None) -> None:
        host, self._counted = self._counted, None
        if host is not None:
            counts: dict[object, int] = getattr(self.server, "podflame_clients")  # noqa: B009 - not in the stubs
            counts[host] -= 1
            if not counts[host]:
                del counts[host]
        super().del_channel(map)

    def received(self, data: bytes) -> bool:
        reading = self.request is not None
        out: bool = super().received(data)
        if self.request is None:
            self.started = None
        elif not reading or self.started is None:
            self.started = time.monotonic()
        return out

    def readable(self) -> bool:
        deadline = getattr(self.server, "podflame_deadline", None)
        if (self.started is not None and deadline and not self.requests and not self.will_close and not self.lingering
                and not self.close_when_flushed and time.monotonic() - self.started > deadline):
            with getattr(self, "requests_lock"):  # noqa: B009 - not in the stubs
                self.request = None
            self.started = None
            self._refuse("408 Request Timeout", f"the request was not read whole within {deadline:g} s")
            return False
        return bool(super().readable())

    def _refuse(self, status: str, message: str) -> None:
        """Answer and close: nothing more is read from this connection."""
        data = refusal(status, message)
        with self.outbuf_lock:
            self.outbufs[-1].append(data)
            self.current_outbuf_count += len(data)
            self.total_outbufs_len += len(data)
        self.close_when_flushed = True


def limit(server: Any, *, deadline: float, per_client: int) -> None:
    """Install LimitedChannel on a waitress server (before it runs) with these limits."""
    server.podflame_deadline = deadline
    server.podflame_per_client = per_client
    server.podflame_clients = {}
    server.channel_class = LimitedChannel
