"""The web page in real Chromium against the real server: list, flame graph, tooltip, zoom, search,
downloads, URL state, error and empty states, and hostile names rendered as plain text.

What the canvas drew is read back through the page's `window.podflame.lastRender` hook (node
names, x and widths in CSS pixels) and by hovering real pixels and reading the tooltip.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from podflame import pprof
from podflame.model import Frame, Line, Profile
from tests.builders import ingest_url
from tests.realsys import live_server

pytestmark = pytest.mark.browser

ROW = 18  # px per level, as web/static/flamegraph.js draws

HOSTILE_COMM = "<img src=x onerror=alert(1)>"
HOSTILE_FRAME = '"><script>alert(2)</script><b onmouseover=alert(3)>x'
POD_UID = "3f2a1c4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
CONTAINER_ID = "c0ffee" + "0123456789abcdef" * 3 + "ba5eba11de"
POD_CGROUP = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
              f"{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER_ID}.scope")
SVC_CGROUP = "/system.slice/worker.service"
POD_NAME = "cart-7d9f8b-x2x4q"
PERIOD_NS = 10_000_000  # 100 Hz

_addresses: dict[str, int] = {}


def _stack(*names: str) -> tuple[Frame, ...]:
    return tuple(Frame(_addresses.setdefault(n, 0x400000 + 0x40 * len(_addresses)),
                       lines=(Line(n, f"src/{n}.c", 10 + len(n)),))
                 for n in names)


def _profile(labels: dict[str, str], stacks: dict[tuple[str, ...], int]) -> Profile:
    start = time.time_ns() - 120 * 10**9
    p = Profile(labels=labels, start_ns=start, duration_ns=10 * 10**9, period_ns=PERIOD_NS)
    for names, count in stacks.items():
        p.add(_stack(*names), count)
    return p


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("ui-data")) as url:
        pod = _profile({"node": "n1", "cgroup": POD_CGROUP, "pod_uid": POD_UID, "container_id": CONTAINER_ID,
                        "qos": "burstable", "runtime": "containerd", "comm": HOSTILE_COMM, "pid": "4242",
                        "namespace": "shop", "pod": POD_NAME, "container": "app"},
                       {("main", "hot_a"): 300, ("main", "hot_b"): 100})
        svc = _profile({"node": "n1", "cgroup": SVC_CGROUP, "comm": "worker", "pid": "77"},
                       {("main", "hot_b"): 60, ("main", HOSTILE_FRAME): 40})
        assert ingest_url(url, [pod, svc])["profiles"] >= 2
        yield url


class Watched:
    """A page whose dialogs, console errors and page errors are recorded (and must stay empty)."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def settle(self, min_renders: int | None = None) -> None:
        """Wait until both API calls answered (and the flame graph was drawn `min_renders` times)."""
        cond = "window.podflame && window.podflame.status !== 'loading'"
        if min_renders is not None:
            cond += f" && window.podflame.renders >= {min_renders}"
        wait_js(self.page, cond)

    def render(self) -> dict:
        return self.page.evaluate("window.podflame.lastRender")

    def renders(self) -> int:
        return self.page.evaluate("window.podflame.renders")

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a dialog fired: {self.dialogs}"
        assert self.errors == [], self.errors


@pytest.fixture
def watched(browser) -> Iterator[Watched]:
    w = Watched(browser)
    yield w
    w.context.close()


def wait_js(page, expression: str, timeout: float = 15.0) -> None:
    """Poll a JS expression until truthy. (page.wait_for_function evaluates its predicate with eval,
    which the page's Content-Security-Policy rightly refuses; page.evaluate goes through the debugger.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.03)


def selector_hint_fits(page) -> bool:
    """Whether the selector field's placeholder (its hint) is read whole in the field as laid out."""
    return bool(page.evaluate("""(() => {
        const i = document.getElementById('selector'), s = getComputedStyle(i);
        const c = document.createElement('canvas').getContext('2d');
        c.font = s.font;
        const room = i.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
        return c.measureText(i.placeholder).width <= room;
    })()"""))


def _nodes(render: dict, name: str) -> list[dict]:
    return [n for n in render["nodes"] if n["name"] == name and not n["context"]]


def _one(render: dict, name: str) -> dict:
    found = _nodes(render, name)
    assert len(found) == 1, (name, [n["name"] for n in render["nodes"]])
    return found[0]


def _hover(w: Watched, node: dict) -> str:
    w.page.mouse.move(*_center(w, node))
    tip = w.page.locator("#tooltip")
    tip.wait_for(state="visible", timeout=5_000)
    return tip.inner_text()


def _select(w: Watched, row_text: str) -> None:
    before = w.renders()
    w.page.locator("button.target", has_text=row_text).click()
    w.settle(before + 1)


def test_page_list_flame_graph_tooltip_zoom_search_downloads(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    resp = page.goto(server + "/")
    assert resp.status == 200
    csp = resp.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    w.settle(1)

    # The list: "all" first, then the pod (400 samples) above the service (100), with CPU shares 4:1.
    names = page.locator("button.target .t-name").all_inner_texts()
    assert names[0] == "All matching the selector"
    assert names[1] == f"shop/{POD_NAME}" and names[2] == "worker.service", names
    targets = page.evaluate("window.podflame.targets")
    assert [t["value"] for t in targets] == [400, 100]
    assert targets[0]["cpuShare"] == pytest.approx(4 * targets[1]["cpuShare"])
    # 400 samples x 10 ms over the default 15 minutes: 4 s / 900 s of one core.
    assert targets[0]["cpuShare"] == pytest.approx(4.0 / 900, rel=0.01)
    shares = page.locator("button.target .t-share").all_inner_texts()
    assert shares[1] == "0.44%" and shares[2] == "0.11%", shares
    pod_row = page.locator("button.target", has_text=f"shop/{POD_NAME}")
    assert "container app \u00b7 burstable \u00b7 containerd" in pod_row.inner_text()
    assert POD_UID in pod_row.get_attribute("title") and CONTAINER_ID in pod_row.get_attribute("title")
    # The hostile process name is plain text in the list, not an element.
    assert HOSTILE_COMM in pod_row.inner_text()
    assert page.locator("#targets img").count() == 0
    # The default range preset is pressed.
    assert page.locator('button.preset[data-range="15m"]').get_attribute("aria-pressed") == "true"

    # Select the pod: main spans the width; hot_a and hot_b split it 3:1.
    _select(w, f"shop/{POD_NAME}")
    assert page.locator("#flame-title").inner_text() == f"Flame graph: shop/{POD_NAME}, container app"
    assert pod_row.get_attribute("aria-pressed") == "true"
    r = w.render()
    main, hot_a, hot_b = _one(r, "main"), _one(r, "hot_a"), _one(r, "hot_b")
    assert main["width"] == pytest.approx(r["width"], rel=0.01)
    assert hot_a["width"] / hot_b["width"] == pytest.approx(3.0, rel=0.01)
    assert hot_a["width"] + hot_b["width"] == pytest.approx(main["width"], rel=0.01)
    assert hot_a["depth"] == hot_b["depth"] == main["depth"] + 1 == 2  # total, main, hot_*
    assert not _nodes(r, HOSTILE_FRAME)
    assert "sel=" in page.evaluate("location.hash")

    # Hover shows the name, samples and percentages.
    tip = _hover(w, hot_a)
    assert "hot_a" in tip and "300 samples" in tip and "3.00 s CPU" in tip
    assert "src/hot_a.c:15" in tip  # where the function's samples are, from the payload's locations
    assert "75.0% of total" in tip and "75.0% of parent" in tip
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-tooltip.png"))

    # Click zooms: hot_a fills the width; its ancestors stay above it as context rows.
    before = w.renders()
    page.mouse.click(*_center(w, hot_a))
    wait_js(page, f"window.podflame.renders > {before}")
    r = w.render()
    assert r["zoom"] == ["main", "hot_a"]
    assert _one(r, "hot_a")["width"] == pytest.approx(r["width"], rel=0.001)
    assert not _nodes(r, "hot_b")
    assert [n["name"] for n in r["nodes"] if n["context"]] == ["main", "total"]
    assert page.locator("#zoom-out").is_enabled()
    assert "zoom=" in page.evaluate("location.hash")
    # Escape goes back to the whole graph.
    page.mouse.move(2, 2)
    page.keyboard.press("Escape")
    wait_js(page, "window.podflame.lastRender.zoom.length === 0")
    assert page.locator("#zoom-out").is_disabled()
    # ...and so does the reset button.
    page.mouse.click(*_center(w, _one(w.render(), "hot_b")))
    wait_js(page, "window.podflame.lastRender.zoom.length === 2")
    page.locator("#zoom-out").click()
    wait_js(page, "window.podflame.lastRender.zoom.length === 0")

    # Search highlights and reports the matched share.
    page.locator("#search").fill("hot_b")
    wait_js(page, "document.getElementById('search-result').textContent.includes('of total')")
    assert page.locator("#search-result").inner_text() == "25.0% of total"
    page.locator("#search").fill("HOT")
    assert page.locator("#search-result").inner_text() == "100% of total"
    page.locator("#search").fill("")
    assert page.locator("#search-result").inner_text() == ""

    # Downloads for the current selection and range.
    pprof_href = page.locator("#dl-pprof").evaluate("a => a.href")
    folded_href = page.locator("#dl-folded").evaluate("a => a.href")
    assert "pod_uid" in urllib.parse.unquote(pprof_href)
    status, body = _get(pprof_href)
    assert status == 200
    decoded = pprof.decode(body)
    assert sum(p.total() for p in decoded if p.sample_type == "samples") == 400
    status, body = _get(folded_href)
    assert status == 200
    assert body.decode().splitlines() == ["main;hot_a 300", "main;hot_b 100"]

    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-pod.png"), full_page=True)
    w.assert_clean()


def _center(w: Watched, node: dict) -> tuple[float, float]:
    """Viewport coordinates of a drawn node's middle, scrolling the page to it first."""
    y = node.get("y", node["depth"] * ROW) + ROW / 2
    # The graph scrolls inside its pane (the page itself fits the window): bring the row into view there.
    w.page.evaluate(f"""() => {{
        const wrap = document.getElementById('flame-wrap');
        const box = wrap.getBoundingClientRect();
        const top = document.getElementById('flame').getBoundingClientRect().top + {y};
        if (top < box.top + 10 || top > box.bottom - 20) wrap.scrollTop += top - (box.top + box.bottom) / 2;
    }}""")
    box = w.page.locator("#flame").bounding_box()
    return box["x"] + node["x"] + node["width"] / 2, box["y"] + y


def _screenshot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("PODFLAME_SCREENSHOT_DIR") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_hostile_frame_name_is_text_and_a_link_reproduces_the_view(server: str, watched: Watched,
                                                                     tmp_path: Path) -> None:
    w, page = watched, watched.page
    page.goto(server + "/")
    w.settle(1)
    _select(w, "worker.service")
    r = w.render()
    hostile = _one(r, HOSTILE_FRAME)
    assert hostile["width"] / _one(r, "hot_b")["width"] == pytest.approx(40 / 60, rel=0.01)
    tip = _hover(w, hostile)
    assert HOSTILE_FRAME in tip
    assert page.locator("#tooltip").evaluate("t => t.querySelectorAll('script, b, img').length") == 0
    page.locator("#search").fill("<script>")
    assert page.locator("#search-result").inner_text() == "40.0% of total"
    page.mouse.click(*_center(w, hostile))
    wait_js(page, "window.podflame.lastRender.zoom.length === 2")
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-hostile.png"), full_page=True)
    link = page.url
    assert "#" in link

    # A fresh page from the link: same selection, range, search and zoom.
    other = Watched(page.context.browser)
    try:
        asked: list[str] = []
        other.page.on("request", lambda req: asked.append(req.url))
        other.page.goto(link)
        other.settle(1)
        # The graph was asked for once, by the page's head (boot.js) before app.js ran, in the binary form;
        # app.js took that answer rather than asking again.
        graphs = [u for u in asked if "/api/v1/flamegraph" in u]
        assert len(graphs) == 1 and "format=binary" in graphs[0], graphs
        assert other.page.evaluate("performance.getEntriesByName('pf:boot')[0].startTime"
                                   " < performance.getEntriesByName('pf:app')[0].startTime")
        assert not [u for u in asked if "/ui/static/" in u and u.endswith((".js", ".css"))]  # all inlined
        r2 = other.render()
        assert r2["zoom"] == ["main", HOSTILE_FRAME]
        assert _one(r2, HOSTILE_FRAME)["width"] == pytest.approx(r2["width"], rel=0.001)
        assert other.page.locator("#search").input_value() == "<script>"
        assert "worker.service" in other.page.locator("#flame-title").inner_text()
        assert other.page.locator("button.target", has_text="worker.service").get_attribute("aria-pressed") == "true"
        other.assert_clean()
    finally:
        other.context.close()
    w.assert_clean()


def test_api_errors_are_shown_and_empty_ranges_say_so(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    page.goto(server + "/")
    w.settle(1)
    message = page.locator("#message")
    assert message.is_hidden()

    # A bad selector: the server's 400 {"error": ...} is shown, not swallowed.
    page.locator("#selector").fill('{cgroup="unterminated')
    page.locator("#query-form button[type=submit]").click()
    wait_js(page, "window.podflame.status === 'error'")
    assert message.is_visible()
    text = message.inner_text()
    assert "bad query" in text, text
    assert page.locator("button.target").count() == 0
    # Said once (list, chart and graph all failed on it), as a sentence, with what to do; each part says why
    # it is empty instead of going blank under its old title and count; a button goes back to the last view.
    assert message.locator("p").count() == 1 and ". Fix it in the field above" in text, text
    for empty in ("#targets-empty", "#chart-empty", "#flame-empty"):
        assert page.locator(empty).is_visible() and "message above" in page.locator(empty).inner_text(), empty
    assert page.locator("#targets-count").inner_text() == ""
    assert page.locator(".downloads").is_hidden()
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-bad-selector.png"))
    w.errors = [e for e in w.errors if "400" not in e]  # the browser logs the failed fetch itself
    back = message.locator("button", has_text="Back")
    back.click()
    wait_js(page, "window.podflame.status === 'ready' && window.podflame.targets.length === 2")
    assert message.is_hidden() and page.locator("#selector").input_value() == ""
    assert page.locator(".downloads").is_visible() and page.locator("#flame-empty").is_hidden()
    page.locator("#selector").fill('{cgroup="unterminated')
    page.locator("#query-form button[type=submit]").click()
    wait_js(page, "window.podflame.status === 'error'")
    w.errors = [e for e in w.errors if "400" not in e]

    # A selector that matches nothing: explicit empty states, and the message goes away.
    page.locator("#selector").fill('{cgroup="/nothing.slice"}')
    page.locator("#query-form button[type=submit]").click()
    wait_js(page, "window.podflame.status === 'ready'")
    assert message.is_hidden()
    assert page.locator("#targets-empty").inner_text() == "No samples in this range for this selector."
    assert page.locator("#flame-empty").inner_text() == "No samples in this range for this selection."
    assert page.locator("#flame-wrap").is_hidden()

    # Presets: the data is two minutes old, so it is still in the last 5 minutes.
    page.locator("#selector").fill("")
    page.locator("#query-form button[type=submit]").click()
    wait_js(page, "window.podflame.status === 'ready' && window.podflame.targets.length === 2")
    page.locator('button.preset[data-range="5m"]').click()
    wait_js(page, "window.podflame.status === 'ready'")
    assert "from=now-5m" in page.evaluate("location.hash")
    assert page.locator('button.preset[data-range="5m"]').get_attribute("aria-pressed") == "true"
    assert page.locator("button.target").count() == 3
    w.errors = [e for e in w.errors if "400" not in e]  # the bad selector's failed fetches, logged late
    w.assert_clean()


def _best_render_ms(page) -> tuple[float, list[float]]:
    """Re-render a few times and keep the best time (the first includes JIT warm-up)."""
    times = page.evaluate("() => Array.from({length: 5}, () => window.podflame.rerender().ms)")
    return min(times), times


def _open_cgroup(w: Watched, server: str, cgroup: str) -> dict:
    w.page.goto(server + "/#" + urllib.parse.urlencode({"sel": json.dumps({"cgroup": cgroup})}))
    w.settle(1)
    query = urllib.parse.urlencode({"query": f'{{cgroup="{cgroup}"}}'})
    return json.loads(_get(f"{server}/api/v1/flamegraph?{query}")[1])


def _node_count(fg: dict) -> int:
    return sum(len(level) // 4 for level in fg["levels"])


def test_ten_thousand_nodes_render(server: str, watched: Watched, tmp_path: Path) -> None:
    """10k+ nodes, wide (narrow leaves drawn merged) and deep (every node drawn): no errors, right shapes.

    The render time is printed, not asserted (timing belongs in bench/, not in test verdicts).
    """
    wide = {("main", f"mid_{i:03d}", f"leaf_{i:03d}_{j:03d}"): 1 + (i * j) % 7 for i in range(100) for j in range(100)}
    deep = {("main", *(f"c{i:02d}_f{k:02d}" for k in range(100))): 5 + i % 3 for i in range(100)}
    ingest_url(server, [_profile({"node": "n2", "cgroup": "/system.slice/wide.service", "comm": "wide"}, wide),
                     _profile({"node": "n2", "cgroup": "/system.slice/deep.service", "comm": "deep"}, deep)])
    w, page = watched, watched.page

    fg = _open_cgroup(w, server, "/system.slice/deep.service")
    assert _node_count(fg) > 10_000
    r = w.render()
    assert len(r["nodes"]) == _node_count(fg) and not r["runs"], "every node of the deep graph is wide enough"
    assert r["height"] == len(fg["levels"]) * ROW
    best, times = _best_render_ms(page)
    print(f"\ndeep: {_node_count(fg)} nodes drawn in {best:.1f} ms (best of {[round(t, 1) for t in times]})")
    tip = _hover(w, next(n for n in r["nodes"] if n["name"] == "c42_f99"))
    assert "c42_f99" in tip
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-deep.png"))

    fg = _open_cgroup(w, server, "/system.slice/wide.service")
    assert _node_count(fg) > 10_000
    r = w.render()
    assert len(_nodes(r, "main")) == 1 and sum(n["name"].startswith("mid_") for n in r["nodes"]) == 100
    # The 10,000 leaves are far below a pixel each: drawn as merged runs that cover main's width.
    leaf_depth = 3
    assert r["merged"] >= 9_000
    covered = sum(x["width"] for x in r["runs"] if x["depth"] == leaf_depth)
    covered += sum(n["width"] for n in r["nodes"] if n["depth"] == leaf_depth)
    assert covered == pytest.approx(r["width"], rel=0.02)
    best, times = _best_render_ms(page)
    print(f"wide: {_node_count(fg)} nodes in {best:.1f} ms (best of {[round(t, 1) for t in times]})")
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-wide.png"))
    # Zoom into one mid frame: its 100 leaves now get real widths.
    mid = next(n for n in r["nodes"] if n["name"] == "mid_050")
    page.mouse.click(*_center(w, mid))
    wait_js(page, "window.podflame.lastRender.zoom.length === 2")
    r = w.render()
    leaves = [n for n in r["nodes"] if n["name"].startswith("leaf_050_")]
    assert len(leaves) == 100
    assert sum(n["width"] for n in leaves) == pytest.approx(r["width"], rel=0.01)
    w.assert_clean()


def test_auto_refresh_picks_up_new_data(browser, tmp_path: Path) -> None:
    from werkzeug.serving import make_server

    from web.server.app import create_app

    app = create_app({"DATA_DIR": str(tmp_path / "data"), "UI_REFRESH_SECONDS": 0.5})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    w = Watched(browser)
    try:
        ingest_url(url, [_profile({"cgroup": "/first.slice"}, {("main", "one"): 10})])
        w.page.goto(url + "/")
        w.settle(1)
        assert w.page.evaluate("window.podflame.targets.length") == 1
        w.page.locator("#auto-refresh").check()
        assert "refresh=1" in w.page.evaluate("location.hash")
        # A pod the agent could not name yet (no pod/namespace labels): shown by its uid.
        ingest_url(url, [_profile({"cgroup": "/kubepods.slice/x.scope", "pod_uid": "u-1", "container_id": "abc"},
                               {("main", "two"): 30})])
        wait_js(w.page, "window.podflame.targets.length === 2", timeout=10)
        assert w.page.locator("button.target .t-name").all_inner_texts()[1:] == ["pod u-1", "first.slice"]
        wait_js(w.page, "window.podflame.lastRender.nodes.some(n => n.name === 'two')", timeout=10)
        w.page.locator("#auto-refresh").uncheck()
        assert "refresh" not in w.page.evaluate("location.hash")
        w.assert_clean()
    finally:
        w.context.close()
        httpd.shutdown()
        thread.join(timeout=5)
        app.extensions["podflame.store"].close()
