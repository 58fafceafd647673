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
from podflame.model import Frame, FrameKind, Line, Profile
from tests.builders import batches, ingest_url
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


def wait_js(page, expression: str, timeout: float = 15.0) -> None:
    """Poll a JS expression (page.wait_for_function uses eval, which the page's CSP refuses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}: {page.evaluate(DEBUG)}"
        time.sleep(0.05)


DEBUG = "[document.getElementById('message').textContent, window.podflame && window.podflame.targets.length]"


def _profile() -> Profile:
    frame = Frame(0x1000, None, FrameKind.NATIVE, (Line("main", "main.c", 3),))
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


def test_the_page_asks_for_the_read_token_once_and_then_shows_data(browser, tmp_path: Path) -> None:
    """A server with tokens: the page prompts on the first 401, the login sets the cookie, the list and
    a download link work; a wrong token leaves the page showing the 401 and nothing else."""
    (tmp_path / "ingest").write_text("ingest-token-0123456789abcdef\n")
    (tmp_path / "read").write_text("read-token-0123456789abcdef01\n")
    app = create_app({**serving_config(str(tmp_path / "data"), "127.0.0.1",
                                       ingest_token_file=str(tmp_path / "ingest"),
                                       read_token_file=str(tmp_path / "read")), "MAINTENANCE_SECONDS": 0})
    target = serve(app, "127.0.0.1", 0, threads=4)
    store = app.extensions["podflame.store"]
    store.put(batches([_profile()]))
    prompts: list[str] = []
    answers = ["wrong-token-0123456789abcdef", "read-token-0123456789abcdef01"]

    def on_dialog(dialog) -> None:
        prompts.append(dialog.message)
        dialog.accept(answers[min(len(prompts), len(answers)) - 1])

    context = browser.new_context(accept_downloads=True)
    try:
        page = context.new_page()
        page.on("dialog", on_dialog)
        page.goto(target.url + "/")
        wait_js(page, "document.getElementById('message').textContent.includes('token')")
        assert len(prompts) >= 1 and "read token" in prompts[0] and "--read-token-file" in prompts[0]
        # a refused token is the reader's to fix (reload and enter it again), not a failed server
        message = page.locator("#message").inner_text()
        assert "Reload the page to enter the read token again" in message and "server failed" not in message
        assert not [c for c in context.cookies() if c["name"] == "podflame_read"]
        page.reload()  # the second answer is the right token
        wait_js(page, "window.podflame && window.podflame.targets.length === 1")
        (cookie,) = [c for c in context.cookies() if c["name"] == "podflame_read"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # scripts cannot read the token
        n = len(prompts)
        page.reload()
        wait_js(page, "window.podflame && window.podflame.targets.length === 1")
        assert len(prompts) == n  # asked once per session, not per page load
        status = page.evaluate("fetch('/api/v1/pprof?from=now-1h').then(r => r.status)")
        assert status == 200  # plain links and downloads carry the cookie too
    finally:
        context.close()
        target.shutdown()
        store.close()
