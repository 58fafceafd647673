"""waitress's own refusals as the API's JSON errors.

waitress answers some requests before the app sees them: a body declared or grown past the limit (413, before
it is read: the point of reading requests in its event loop), a header block too large (431), a malformed
request line, length or chunk (400). Its answers are text; every error a client of the API gets is
`{"error": ...}` (docs/api.md), so the channel's error task writes that instead, in the app's words.

Such an answer comes before the client has sent its whole body. Closing the socket then, with the rest of the
body unread, makes the kernel reset the connection, and a client still writing gets EPIPE or ECONNRESET instead
of the answer (an agent would retry the batch for ever). So after such an answer the channel closes only its
sending side and reads and discards what is still coming, for a bounded time and bytes (nginx's lingering
close), then closes.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask


class JsonErrorTask(ErrorTask):
    def execute(self) -> None:
        e: Any = getattr(self.request, "error")  # noqa: B009 - the stubs call the request an Error; it is the parser
        if e.code == 413:  # waitress refuses at >= its limit, which serve() sets one past MAX_BODY_BYTES
            limit = self.channel.server.adj.max_request_body_size - 1
            message = f"body is over the {limit} byte limit (MAX_BODY_BYTES)"
        else:
            message = f"{e.reason}: {e.body}"
        body = json.dumps({"error": message}).encode() + b"\n"
        self.status = f"{e.code} {e.reason}"
        headers: Any = self.response_headers
        headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        setattr(self.channel, "linger_on_close", True)  # noqa: B010 - read by the event loop's thread


LINGER_SECONDS = 5.0  # at most this long spent discarding a refused body before the connection is closed
LINGER_EXTRA_BYTES = 16 << 20  # discarded past the body limit (a client's socket buffers hold a few MiB)


class JsonErrorChannel(HTTPChannel):
    """A waitress channel whose own refusals are JSON and reach the client (see the module doc)."""

    error_task_class = JsonErrorTask
    linger_on_close = False  # set by an error task: the request's body may be partly unread
    _linger_until: float | None = None
    _linger_left = 0

    def handle_close(self) -> None:
        sock = self.socket
        if (not self.lingering and self.linger_on_close and self.connected and sock is not None
                and not self.total_outbufs_len):
            try:
                sock.shutdown(socket.SHUT_WR)  # the answer is flushed: the client reads it, then EOF
            except OSError:
                super().handle_close()
                return
            self._linger_until = time.monotonic() + LINGER_SECONDS
            # about what a valid request's body would have cost to read
            self._linger_left = int(self.adj.max_request_body_size) + LINGER_EXTRA_BYTES
            self.will_close = self.close_when_flushed = False
            return
        super().handle_close()

    @property
    def lingering(self) -> bool:
        return self._linger_until is not None

    def readable(self) -> bool:
        if self._linger_until is None:
            return bool(super().readable())
        if time.monotonic() > self._linger_until:
            super().handle_close()
            return False
        return True

    def writable(self) -> bool:
        return not self.lingering and bool(super().writable())

    def handle_read(self) -> None:
        if not self.lingering:
            super().handle_read()
            return
        try:
            data = self.recv(65536)  # calls handle_close itself at the client's EOF
        except OSError:
            data = b""
        self._linger_left -= len(data)
        if self.connected and (not data or self._linger_left <= 0):
            super().handle_close()
