"""The web page: one screen with the cgroup/pod list, a CPU-over-time chart (drag to choose a range)
and a canvas flame graph, or a diff flame graph with regression tables in compare mode.

The page is a Jinja template plus our own static JS modules and CSS (no build step, no CDN:
clusters are often offline). Everything it shows comes from the JSON API in docs/api.md.

Process and symbol names are untrusted input. The template autoescapes, the initial config
travels as a `<script type="application/json">` block through `|tojson` (which escapes `<`, `>`,
`&` and `'`), the JS writes data only through `textContent`, DOM attribute setters and canvas
`fillText`, and a strict Content-Security-Policy backs that up: no inline script or style but our own fixed
files, each allowed by its SHA-256.

Those files are inlined so the page needs no further request before it can work: static/boot.js first in
the head, so the first graph's request starts before anything else is read; then the stylesheet and app.js
with its modules joined (web/server/jsbundle.py). They are our code, never data: their text goes into the page
verbatim and the policy names exactly their hashes, so nothing else inline runs.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from pathlib import Path

from flask import Blueprint, Response, current_app, render_template, request
from markupsafe import Markup

from web.server.gzipjoin import accepts_gzip
from web.server.jsbundle import bundle

bp = Blueprint("ui", __name__, template_folder="templates", static_folder="static",
               static_url_path="/ui/static")

RANGE_PRESETS = ("5m", "15m", "1h", "6h", "24h")
DEFAULT_RANGE = "15m"
REFRESH_SECONDS = 10  # auto-refresh period; app.config["UI_REFRESH_SECONDS"] overrides it


STATIC = Path(__file__).parent / "static"


def _inline(text: str) -> tuple[Markup, str]:
    """Our own static text for a `<script>` or `<style>` element of the page, and its CSP source expression."""
    if "</" in text or "<!--" in text:  # would end the element early or change how it is parsed
        raise ValueError("static text to inline holds '</' or '<!--'")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
    return Markup(text), f"'sha256-{digest}'"


# The page carries its code and style (no request for them, no server time while the graph is sent): boot.js
# as it is, app.js with its modules joined (web/server/jsbundle.py), the stylesheet. The files stay served.
BOOT_JS, BOOT_JS_SOURCE = _inline(STATIC.joinpath("boot.js").read_text(encoding="utf-8"))
APP_JS, APP_JS_SOURCE = _inline(bundle(STATIC, "app.js"))
CSS, CSS_SOURCE = _inline(STATIC.joinpath("podflame.css").read_text(encoding="utf-8"))

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    f"script-src 'self' {BOOT_JS_SOURCE} {APP_JS_SOURCE}",
    f"style-src 'self' {CSS_SOURCE}",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@bp.get("/")
def index() -> str:
    # A plain GET form (the page without JS, or a hand-written link) can set the first view;
    # the URL hash, written by the page itself, takes precedence in the browser.
    query = request.args.get("query", "")
    initial = {
        "query": query,
        "from": request.args.get("from", f"now-{DEFAULT_RANGE}"),
        "to": request.args.get("to", "now"),
    }
    refresh = current_app.config.get("UI_REFRESH_SECONDS") or REFRESH_SECONDS
    config = {
        "api": request.script_root + "/api/v1",
        "presets": list(RANGE_PRESETS),
        "refresh_seconds": refresh,
        "initial": initial,
    }
    return render_template("podflame_ui.html", config=config, query=query, presets=RANGE_PRESETS,
                           refresh_seconds=refresh, boot_js=BOOT_JS, app_js=APP_JS, css=CSS)


COMPRESS_MIN_BYTES = 1024  # smaller answers gain less than the headers and CPU cost
_COMPRESSED_TYPES = ("application/json", "text/html", "text/plain", "text/javascript", "text/css", "image/svg+xml")


_PAGE_TYPES = ("text/html", "text/javascript", "text/css", "image/svg+xml")
_page_gzip: dict[bytes, bytes] = {}  # digest of a page or static body -> its gzip (a few distinct bodies)
_PAGE_GZIP_KEEP = 16


def _gzipped(body: bytes, mimetype: str) -> bytes:
    """gzip of `body`; the page and static files are the same bytes for every visit (the page differs only by
    its query), so their compression is kept: level 6 of the 160 KB page was ~12-18 ms before every first byte
    of a navigation, ahead of the graph's request it starts."""
    level = 1 if len(body) > 1 << 20 else 6
    if mimetype not in _PAGE_TYPES:
        return gzip.compress(body, compresslevel=level, mtime=0)
    key = hashlib.blake2b(body, digest_size=16).digest()
    out = _page_gzip.get(key)
    if out is None:
        out = gzip.compress(body, compresslevel=level, mtime=0)
        if len(_page_gzip) >= _PAGE_GZIP_KEEP:
            _page_gzip.pop(next(iter(_page_gzip)))
        _page_gzip[key] = out
    return out


@bp.after_app_request
def _compress(response: Response) -> Response:
    """gzip JSON and text answers when the client accepts it: a node's day of flame graph is megabytes of
    integer lists, which gzip shrinks several times, so the page waits on the network far less. Level 1
    for big bodies (their compression must not cost more than it saves), 6 for the rest."""
    if (response.direct_passthrough or response.is_streamed or "Content-Encoding" in response.headers
            or response.status_code < 200 or response.status_code in (204, 304)
            or response.mimetype not in _COMPRESSED_TYPES
            or not accepts_gzip(request.headers.get("Accept-Encoding", ""))):
        return response
    body = response.get_data()
    if len(body) < COMPRESS_MIN_BYTES:
        return response
    response.set_data(_gzipped(body, response.mimetype))
    response.headers["Content-Encoding"] = "gzip"
    response.vary.add("Accept-Encoding")
    return response


@bp.after_request
def _security_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
