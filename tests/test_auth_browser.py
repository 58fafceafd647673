"""A real Chromium page on another origin tries to write to a token-less podflame on loopback (what
`make run` starts) and stores nothing: a no-cors `fetch` POST of a valid pprof, one with a simple
content type, a cross-origin form POST, and a CORS fetch with a non-simple header (stopped by the
browser's preflight). The same bytes POSTed without an Origin (as the agent and curl do) are stored,
so the refusals are the server's checks and not a bad body.
"""

from __future__ import annotations

import base64
import functools
import http.server
import threading
import time
from pathlib import Path

import pytest
from flask import Response, request

from podflame import pprof
from podflame.model import Frame, Line, Profile
from tests.builders import ingest_url
from web.server.app import create_app, serve, serving_config

pytestmark = pytest.mark.browser

ATTACK = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="f" method="post" enctype="text/plain" target="sink" action="TARGET/api/v1/ingest?comm=form">
  <input name="x" value="y"></form>
<script>
const bytes = Uint8Array.from(atob("BODY"), c => c.charCodeAt(0));
window.results = [];
async function attack() {
  for (const init of [
      {method: "POST", mode: "no-cors", body: bytes},
      {method: "POST", mode: "no-cors", body: new Blob([bytes], {type: "text/plain"})},
      {method: "POST", mode: "cors", body: bytes, headers: {"Content-Type": "application/octet-stream"}}]) {
    try { const r = await fetch("TARGET/api/v1/ingest?comm=fetch", init); window.results.push(r.type); }
    catch (e) { window.results.push("error:" + e.name); }
  }
  document.getElementById("f").submit();
  window.done = true;
}
attack();
</script></body></html>"""


def _profile() -> Profile:
    frame = Frame(0x1000, None, "native", (Line("main", "main.c", 3),))
    return Profile({"comm": "victim"}, time.time_ns() - 60 * 10**9, 10**9, 10_000_000, {(frame,): 7})


def test_a_page_on_another_origin_cannot_write(browser, tmp_path: Path) -> None:
    app = create_app({**serving_config(str(tmp_path / "data"), "127.0.0.1"), "MAINTENANCE_SECONDS": 0})
    seen: list[tuple[str, str, int, str | None, str | None]] = []

    @app.after_request
    def _record(response: Response) -> Response:
        seen.append((request.method, request.path, response.status_code, request.headers.get("Origin"),
                     request.headers.get("Sec-Fetch-Site")))
        return response

    target = serve(app, "127.0.0.1", 0, threads=4)
    body = pprof.encode([_profile()])
    site = tmp_path / "site"
    site.mkdir()
    (site / "attack.html").write_text(ATTACK.replace("TARGET", target.url)
                                      .replace("BODY", base64.b64encode(body).decode()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{attacker.server_port}/attack.html")
        page.wait_for_function("window.done === true", timeout=15_000)
        deadline = time.monotonic() + 15
        while sum(1 for m, p, *_ in seen if m == "POST") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # the form's navigation lands after the script ends
        posts = [s for s in seen if s[0] == "POST"]
        # the two no-cors fetches and the form reached the server and were refused; the CORS fetch
        # with a non-simple type never got past its preflight
        assert len(posts) == 3, seen
        for _method, path, status, origin, fetch_site in posts:
            assert path == "/api/v1/ingest" and status == 403, posts
            assert origin == f"http://127.0.0.1:{attacker.server_port}" and fetch_site == "same-site"
        results = page.evaluate("window.results")
        assert results[:2] == ["opaque", "opaque"] and results[2].startswith("error:"), results
        store = app.extensions["podflame.store"]
        assert store.types(0, 2**62) == []
        # the same bytes from a non-browser client are valid and stored
        assert ingest_url(target.url, [_profile()])["profiles"] >= 1
        assert store.label_values("comm", 0, 2**62) == ["victim"]
    finally:
        context.close()
        attacker.shutdown()
        target.shutdown()
        app.extensions["podflame.store"].close()
