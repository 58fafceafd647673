"""waitress's own refusals as the API's JSON errors.

waitress answers some requests before the app sees them: a body declared or grown past the limit (413, before
it is read: the point of reading requests in its event loop), a header block too large (431), a malformed
request line, length or chunk (400). Its answers are text; every error a client of the API gets is
`{"error": ...}` (docs/api.md), so the channel's error task writes that instead, in the app's words.
"""

from __future__ import annotations

import json
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


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask
