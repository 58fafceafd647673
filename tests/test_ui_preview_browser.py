"""The first picture from a preview answer (web/query/treebin.py) in real Chromium: the same pixels as the whole
tree's, at 1280x720 and 1920x1080; the table, search and zoom once the whole tree is in; views that need the whole
tree at once ask for it directly."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from podflame.model import Frame, Line, Profile
from tests.builders import ingest_url
from tests.realsys import live_server
from tests.test_ui_browser import _screenshot_dir, wait_js

pytestmark = pytest.mark.browser

CGROUP = "/system.slice/wide.service"


def _profile() -> Profile:
    """100 mids with self time (gaps between runs of leaves) x 100 leaves of 1-9 samples, a deep chain under some."""
    addrs: dict[str, int] = {}

    def frame(name: str) -> Frame:
        return Frame(addrs.setdefault(name, 0x400000 + 0x10 * len(addrs)), lines=(Line(name, "w.c", 3),))

    p = Profile(labels={"node": "n1", "cgroup": CGROUP, "comm": "wide"}, start_ns=time.time_ns() - 120 * 10**9,
                duration_ns=10**10, period_ns=10**7)
    main = frame("main")
    for i in range(100):
        mid = frame(f"mid_{i:03d}")
        p.add((main, mid), 1 + (i % 4) * 90)
        for j in range(100):
            leaf = frame(f"leaf_{i:03d}_{j:03d}")
            p.add((main, mid, leaf), 1 + (i * 7 + j * 3) % 9)
            if j % 30 == 0:
                p.add((main, mid, leaf, frame(f"deep_{i}_{j}")), 3)
    p.add((main, frame("heavy")), 30_000)
    p.add((main, frame("mid_000"), frame("big_leaf")), 3_000)  # a leaf wide enough to keep, beside runs of leaves
    return p


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("preview-data")) as url:
        ingest_url(url, [_profile()])
        yield url


def _view(server: str, **extra: str) -> str:
    return server + "/#" + urllib.parse.urlencode({"sel": json.dumps({"cgroup": CGROUP}), "view": "graph", **extra})


def _canvas(page) -> str:
    return page.evaluate("document.getElementById('flame').toDataURL()")


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (1920, 1080)])
def test_preview_is_drawn_first_and_is_the_whole_trees_picture(browser, server: str, tmp_path: Path,
                                                                width: int, height: int) -> None:
    ctx = browser.new_context(viewport={"width": width, "height": height},
                              screen={"width": width, "height": height})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    held: list = []
    asked: list[str] = []

    def hold_whole(route) -> None:  # the whole tree waits until the preview's picture is read
        asked.append(route.request.url)
        if "preview=" in route.request.url:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/v1/flamegraph?*", hold_whole)
    page.goto(_view(server))
    wait_js(page, "window.podflame && window.podflame.drawnAt !== null")
    deadline = time.monotonic() + 15
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(30)
    assert held, "the whole tree is asked for after the preview is drawn"
    assert f"preview={width}" in asked[0] and "preview=" not in held[0].request.url
    assert page.evaluate("window.podflame.wholeAt") is None
    first, first_render = _canvas(page), page.evaluate("window.podflame.lastRender")
    assert page.evaluate("window.podflame.flame.data.levels.reduce((a, l) => a + l.n, 0)") < 2_000
    assert page.locator("#fn-count").inner_text() == "reading all functions\u2026"
    page.screenshot(path=str(_screenshot_dir(tmp_path) / f"podflame-preview-{width}.png"))
    # The arrow keys move between frames, never onto a run node (frames not sent yet): down to main, heavy, right
    # to mid_000, down to big_leaf, then right: only runs of leaves follow it, so the focus stays.
    page.locator("#flame").focus()
    for key in ["ArrowDown", "ArrowDown", "ArrowRight", "ArrowDown", "ArrowRight", "ArrowRight"]:
        page.keyboard.press(key)
        assert page.evaluate("""(() => { const f = window.podflame.flame, p = f.focus;
            return p && f.data.levels[p.d].name[p.i] >= 0; })()"""), key
    focused = "(() => { const f = window.podflame.flame; return f.nodeName(f.focus.d, f.focus.i); })()"
    assert page.evaluate(focused) == "big_leaf"

    held[0].continue_()
    wait_js(page, "window.podflame.status === 'ready'")
    assert page.evaluate("window.podflame.flame.data.levels.reduce((a, l) => a + l.n, 0)") > 10_000
    whole_render = page.evaluate("window.podflame.lastRender")
    # The same picture: every pixel, and the same frames and runs where the page placed them.
    assert _canvas(page) == first
    assert [(n["name"], n["x"], n["width"]) for n in whole_render["nodes"]] == \
           [(n["name"], n["x"], n["width"]) for n in first_render["nodes"]]
    assert [(r["depth"], round(r["x"], 6), round(r["width"], 6)) for r in whole_render["runs"]] == \
           [(r["depth"], round(r["x"], 6), round(r["width"], 6)) for r in first_render["runs"]]
    assert len(first_render["runs"]) > 20  # the mids' self time splits the leaves into runs
    # The whole tree is in: the table lists every function, a search finds a leaf the preview did not have.
    assert "10,10" in page.locator("#fn-count").inner_text() or int(
        page.locator("#fn-count").inner_text().split()[0].replace(",", "")) > 10_000
    page.fill("#search", "leaf_042_00[0-4]$")
    wait_js(page, "window.podflame.search && window.podflame.search.matches === 5")
    page.screenshot(path=str(_screenshot_dir(tmp_path) / f"podflame-preview-whole-{width}.png"))
    assert errors == []
    ctx.close()


@pytest.mark.parametrize("extra", [{"zoom": json.dumps(["main", "mid_003"])}, {"search": "leaf_00"},
                                   {"view": "table"}, {"color": "module"}])
def test_views_that_need_the_whole_tree_ask_for_it_at_once(browser, server: str, extra: dict[str, str]) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    page = ctx.new_page()
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/v1/flamegraph" in r.url else None)
    page.goto(_view(server, **extra))
    wait_js(page, "window.podflame && window.podflame.status === 'ready'")
    assert len(asked) == 1 and "preview=" not in asked[0], asked
    ctx.close()
