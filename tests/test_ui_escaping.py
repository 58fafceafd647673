"""The page's HTML stays inert whatever reaches it, and the browser is told so (CSP).

Untrusted text reaches the template through the URL (`/?query=...` prefills the selector) and
through the JSON config block; process and symbol names reach the page only through the API
and our JS, which must never hand data to an HTML parser. These tests pin all three.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import markupsafe
import pytest
from flask import Flask, render_template

from web.server.app import create_app

STATIC = Path(__file__).resolve().parent.parent / "web" / "server" / "static"

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    '"><script>alert(1)</script>',
    "</script><script>alert(1)</script>",
    "'><svg onload=alert(1)>",
    "{{ 7*7 }}",
    "<!--",
    "\u2028\u2029",
]


def _hash(text: str) -> str:
    """A CSP hash source expression, computed here (not taken from ui.py)."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "TESTING": True})
    yield app
    app.extensions["podflame.store"].close()


class _Page(HTMLParser):
    """Collects the elements and attributes the browser would build from the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: dict[str, str] = {}
        self._in_script: str | None = None
        self._in_style = False
        self.style_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        self._in_style = tag == "style"
        if tag == "script":
            self._in_script = a.get("id") or ""
            self.script_text[self._in_script] = ""

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False
        if tag == "script":
            self._in_script = None

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style_text += data
        if self._in_script is not None:
            self.script_text[self._in_script] += data


def _parse(body: str) -> _Page:
    page = _Page()
    page.feed(body)
    page.close()
    return page


def _config(page: _Page) -> dict:
    return json.loads(page.script_text["podflame-config"])


def test_csp_and_security_headers_on_the_page_and_its_static_files(app: Flask) -> None:
    client = app.test_client()
    for path in ("/", "/ui/static/app.js", "/ui/static/flamegraph.js", "/ui/static/podflame.css"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        csp = resp.headers["Content-Security-Policy"]
        directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
        assert directives["default-src"] == ["'none'"]
        # No 'unsafe-inline', no 'unsafe-eval', no hosts: our files, and two inline scripts and one inline
        # style by their hashes (the page's own, checked against the files below).
        assert directives["script-src"][0] == "'self'" and len(directives["script-src"]) == 3
        assert directives["script-src"][1] == _hash((STATIC / "boot.js").read_text())
        assert directives["style-src"] == ["'self'", _hash((STATIC / "podflame.css").read_text())]
        assert all(d.startswith("'sha256-") for d in directives["script-src"][1:])
        assert directives["connect-src"] == ["'self'"]
        assert directives["frame-ancestors"] == ["'none'"]
        assert directives["base-uri"] == ["'none'"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        resp.close()
    assert client.get("/ui/static/app.js").mimetype == "text/javascript"


def test_page_has_no_inline_script_handlers_or_styles(app: Flask) -> None:
    body = app.test_client().get("/").get_data(as_text=True)
    page = _parse(body)
    scripts = [a for tag, a in page.tags if tag == "script"]
    assert scripts, "the page loads its JS"
    inline = [a for a in scripts if not a.get("src") and a.get("type") != "application/json"]
    csp = app.test_client().get("/").headers["Content-Security-Policy"]
    allowed = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    # The inline scripts: boot.js byte for byte, then app.js with its modules joined; each allowed by its hash
    # and nothing else inline is. The joined script holds every module's code as the files have it.
    assert [a.get("id") for a in inline] == ["podflame-boot", "podflame-app"]
    boot, app_js = page.script_text["podflame-boot"], page.script_text["podflame-app"]
    assert boot == (STATIC / "boot.js").read_text()
    assert allowed["script-src"][1:] == [_hash(boot), _hash(app_js)]
    for module in STATIC.glob("*.js"):
        if module.name == "boot.js":
            continue
        text = re.sub(r'import\s*\{[^}]*\}\s*from\s*"[^"]+";', "", module.read_text())
        body = [re.sub(r"^export ", "", line) for line in text.splitlines() if line.strip()]
        missing = [line for line in body if line not in app_js]
        assert not missing, (module.name, missing[:3])
    assert page.style_text == (STATIC / "podflame.css").read_text()
    assert allowed["style-src"][1:] == [_hash(page.style_text)]
    assert "podflame-boot" not in json.dumps(_config(page))  # the config stays a data block of its own
    for a in scripts:
        if a in inline:
            continue
        # Either our own module from a static URL, or a data block the browser never executes.
        assert (a.get("src") or "").startswith("/ui/static/") or a.get("type") == "application/json", a
        if a.get("src"):
            assert page.script_text[a.get("id") or ""].strip() == ""
    for tag, a in page.tags:
        assert not [k for k in a if k.startswith("on")], (tag, a)
        assert "style" not in a, (tag, a)
        for k in ("src", "href"):
            v = a.get(k)
            assert v is None or not re.match(r"(?i)\s*(https?:)?//", v), f"external resource {tag} {k}={v}"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_query_parameters_stay_text(app: Flask, hostile: str) -> None:
    resp = app.test_client().get("/", query_string={"query": hostile, "from": hostile, "to": "now"})
    assert resp.status_code == 200
    body = resp.get_data(as_text=True)
    if any(c in hostile for c in "<>\"'"):
        assert hostile not in body  # never verbatim
    page = _parse(body)
    # The selector box shows exactly the text, via an escaped attribute...
    (selector,) = [a for tag, a in page.tags if tag == "input" and a.get("id") == "selector"]
    assert selector["value"] == hostile
    # ...and the config block carries it as JSON data that cannot end the <script> element early.
    raw = page.script_text["podflame-config"]
    assert "<" not in raw and ">" not in raw and "&" not in raw and "'" not in raw
    config = _config(page)
    assert config["initial"]["query"] == hostile and config["initial"]["from"] == hostile
    # Nothing the string tried to create exists in the document.
    assert [tag for tag, _ in page.tags].count("script") == 3  # config, boot.js, app.js
    assert not [tag for tag, _ in page.tags if tag in ("img", "svg")]
    assert "49" not in body  # Jinja syntax in data is not evaluated


def test_template_renders_hostile_values_escaped(app: Flask) -> None:
    """The template itself, given hostile values in every variable, stays escaped (autoescape on)."""
    evil = "</script><script>alert(1)</script>\"'><img src=x onerror=alert(1)>"
    with app.test_request_context("/"):
        body = render_template("podflame_ui.html", config={"api": evil, "initial": {"query": evil}},
                               query=evil, presets=[evil], refresh_seconds=evil)
    assert evil not in body
    page = _parse(body)
    assert not [tag for tag, _ in page.tags if tag == "img"]
    assert [tag for tag, _ in page.tags].count("script") == 3  # config, boot.js, app.js
    assert _config(page)["api"] == evil
    preset_buttons = [a for tag, a in page.tags if tag == "button" and "data-range" in a]
    assert [b["data-range"] for b in preset_buttons] == [evil]
    assert str(markupsafe.escape(evil)) in body  # in the value attribute and the button label


# Sinks that parse strings as HTML or code. Our JS writes data with textContent, DOM setters
# and canvas fillText only; this keeps a later edit from quietly adding one.
_SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\s*\(|new\s+Function\b"
                    r"|setTimeout\s*\(\s*['\"`]|setInterval\s*\(\s*['\"`]|createContextualFragment|srcdoc")


@pytest.mark.parametrize("path", sorted(STATIC.glob("*.js")), ids=lambda p: p.name)
def test_static_js_has_no_html_sinks_and_no_remote_urls(path: Path) -> None:
    text = path.read_text()
    assert not _SINKS.findall(text), f"{path.name} uses an HTML/code sink"
    # The SVG namespace is a name the DOM compares, never fetched: the one URL-shaped string allowed.
    text = text.replace('"http://www.w3.org/2000/svg"', '"svg-namespace"')
    assert not re.findall(r"https?://", text), f"{path.name} references a remote URL (clusters are offline)"


@pytest.mark.parametrize("path", sorted(STATIC.glob("*.css")), ids=lambda p: p.name)
def test_static_css_loads_nothing_remote(path: Path) -> None:
    text = path.read_text()
    assert "@import" not in text and not re.findall(r"url\(\s*['\"]?(https?:)?//", text)
