"""The page's lines at the sizes people use (1280x720 and 1440x900, light and dark), measured on element boxes in
real Chromium: the graph's toolbar is one line even with a zoom and a search result in it; the graph's title line
keeps "Link · Download" at its right under a long title, in compare mode too (a diff's title names the selection of
both sides), with the title and summary in full on hover. Screenshots of each are saved (PODFLAME_SCREENSHOT_DIR)."""

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
from tests.test_ui_browser import _screenshot_dir, selector_hint_fits, wait_js

pytestmark = pytest.mark.browser

UID = "9b2f4c1e-7a3d-4e5f-8a9b-0c1d2e3f4a5b"
LONG_CGROUP = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + UID.replace("-", "_") +
               ".slice/cri-containerd-" + "0123456789abcdef" * 4 + ".scope")
T0 = (int(time.time()) // 60) * 60 - 1800  # comparison [T0, T0 + 60); the previous period [T0 - 60, T0)
SIZES = [(1280, 720, "light"), (1280, 720, "dark"), (1440, 900, "light"), (1440, 900, "dark")]


def _profile(start_s: float, stacks: dict[tuple[str, ...], int], addrs: dict[str, int]) -> Profile:
    p = Profile(labels={"cgroup": LONG_CGROUP, "comm": "checkout-server"}, start_ns=int(start_s * 1e9),
                duration_ns=10**9, period_ns=10**7)
    for names, n in stacks.items():
        p.add(tuple(Frame(addrs.setdefault(x, 0x600000 + 0x40 * len(addrs)), lines=(Line(x),)) for x in names), n)
    return p


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    addrs: dict[str, int] = {}
    base = {("main", "serve", f"handler_{k}"): 40 + 10 * k for k in range(12)}
    comp = {("main", "serve", f"handler_{k}"): 40 + 25 * (k % 5) for k in range(12)}
    with live_server(tmp_path_factory.mktemp("layout-data")) as url:
        now = time.time() - 60
        for p in (_profile(T0 - 30, base, addrs), _profile(T0 + 30, comp, addrs), _profile(now, comp, addrs)):
            ingest_url(url, [p])  # one request per time
        yield url


def _page(browser, width: int, height: int, scheme: str, url: str):
    ctx = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    wait_js(page, "window.podflame && window.podflame.status === 'ready' && window.podflame.chart !== null")
    return ctx, page, errors


def _boxes(page, selector: str) -> list[dict]:
    """Visible boxes of `selector`'s matches: left, right, top, bottom, middle (CSS px)."""
    return page.evaluate("""(sel) => Array.from(document.querySelectorAll(sel))
        .filter((e) => e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden')
        .map((e) => { const b = e.getBoundingClientRect();
                      return {id: e.id || e.className, left: b.left, right: b.right, top: b.top, bottom: b.bottom,
                              mid: b.top + b.height / 2}; })""", selector)


def _one_line(boxes: list[dict]) -> None:
    mids = [b["mid"] for b in boxes]
    assert max(mids) - min(mids) <= 4, boxes


@pytest.mark.parametrize(("width", "height", "scheme"), SIZES)
def test_graph_toolbar_is_one_line_with_zoom_and_search(browser, server: str, tmp_path: Path, width: int,
                                                        height: int, scheme: str) -> None:
    view = urllib.parse.urlencode({"sel": json.dumps({"cgroup": LONG_CGROUP}), "search": "handler_(1|3)$",
                                   "zoom": json.dumps(["main", "serve"])})
    ctx, page, errors = _page(browser, width, height, scheme, f"{server}/#{view}")
    # The longest result the toolbar shows: a share of the total and one of the zoomed frame.
    assert "of zoomed" in page.locator("#search-result").inner_text()
    controls = _boxes(page, ".toolbar > *:not(.view-controls), .view-controls > *")
    assert len(controls) >= 10
    _one_line(controls)
    pane = _boxes(page, ".flame-pane")[0]
    assert all(pane["left"] <= b["left"] and b["right"] <= pane["right"] for b in controls), (pane, controls)
    # The result is cut to the room it has, never over the controls after it; in full on hover.
    result = _boxes(page, "#search-result")[0]
    picker = _boxes(page, "#view")[0]
    assert result["right"] <= picker["left"]
    assert page.locator("#search-result").get_attribute("title").endswith(page.locator("#search-result").inner_text())
    # The page's bar is one line too; so are the chart's and the graph's titles, cut to the room they have (in
    # full on hover), with some of their summaries beside them.
    _one_line(_boxes(page, ".topbar > *"))
    for title, summary in (("#chart-title", "#chart-summary"), ("#flame-title", "#flame-summary")):
        t, s = _boxes(page, title)[0], _boxes(page, summary)[0]
        assert t["bottom"] - t["top"] < 24 and s["right"] - s["left"] >= 90, (t, s)
        assert LONG_CGROUP in page.locator(title).get_attribute("title")
        assert page.locator(summary).get_attribute("title") == page.locator(summary).inner_text()
    page.screenshot(path=str(_screenshot_dir(tmp_path) / f"podflame-toolbar-{width}x{height}-{scheme}.png"))
    assert errors == []
    ctx.close()


@pytest.mark.parametrize(("width", "height", "scheme"), SIZES)
def test_download_links_stay_on_the_title_line_in_compare_mode(browser, server: str, tmp_path: Path, width: int,
                                                               height: int, scheme: str) -> None:
    view = urllib.parse.urlencode({"sel": json.dumps({"cgroup": LONG_CGROUP}), "from": str(T0), "to": str(T0 + 60),
                                   "cmp": "prev"})
    ctx, page, errors = _page(browser, width, height, scheme, f"{server}/#{view}")
    title = page.locator("#flame-title")
    assert title.inner_text().startswith("Diff: ")
    # The title names the long cgroup: the line cannot hold it whole, so it is cut (and in full on hover).
    assert title.get_attribute("title") == title.inner_text() and LONG_CGROUP in title.inner_text()
    head = _boxes(page, "#flame-title, #flame-summary, .downloads, .downloads > a:not([hidden])")
    _one_line(head)
    links = _boxes(page, ".downloads > a:not([hidden])")
    assert {b["id"] for b in links} >= {"share-link", "dl-pprof", "dl-folded", "dl-speedscope", "dl-folded-diff"}
    pane = _boxes(page, ".flame-pane")[0]
    t = _boxes(page, "#flame-title")[0]
    # The summary (both sides' totals) is read whole beside them: the long title is cut first.
    summary = page.locator("#flame-summary")
    assert summary.inner_text().startswith("baseline ") and " \u00b7 comparison " in summary.inner_text()
    whole = page.evaluate("(() => { const e = document.getElementById('flame-summary'); "
                          "return e.scrollWidth <= e.clientWidth + 1; })()")
    assert whole
    for b in links:  # whole, inside the pane, right of the title
        assert pane["left"] <= b["left"] and b["right"] <= pane["right"] - 4 and b["left"] >= t["right"], b
    page.screenshot(path=str(_screenshot_dir(tmp_path) / f"podflame-compare-links-{width}x{height}-{scheme}.png"))
    assert errors == []
    ctx.close()


@pytest.mark.parametrize(("width", "height", "scheme"), [(1280, 720, "light"), (1440, 900, "dark")])
def test_page_bar_is_one_line_when_the_range_spans_two_days(browser, server: str, tmp_path: Path, width: int,
                                                            height: int, scheme: str) -> None:
    view = urllib.parse.urlencode({"sel": json.dumps({"cgroup": LONG_CGROUP}), "from": "now-24h"})
    ctx, page, errors = _page(browser, width, height, scheme, f"{server}/#{view}")
    text = page.locator("#range-text").inner_text()
    assert text.count("/") == 4, text  # both ends' dates
    bar = _boxes(page, ".topbar > *")
    _one_line(bar)
    assert max(b["right"] for b in bar) <= width
    # The selector field's hint still reads whole.
    assert selector_hint_fits(page)
    page.screenshot(path=str(_screenshot_dir(tmp_path) / f"podflame-bar-24h-{width}x{height}-{scheme}.png"))
    assert errors == []
    ctx.close()


def _label_contrast(page, name: str) -> float:
    """Spread of luminance (0-255) over the label area of the drawn frame `name`: text against its frame."""
    node = next(n for n in page.evaluate("window.podflame.lastRender")["nodes"] if n["name"] == name)
    return page.evaluate("""([x, y, w]) => {
        const c = document.getElementById('flame'), r = window.devicePixelRatio || 1;
        const d = c.getContext('2d').getImageData(Math.round((x + 3) * r), Math.round((y + 3) * r),
                                                  Math.round(Math.min(50, w - 6) * r), Math.round(11 * r)).data;
        // As seen: the canvas's pixels over the pane's background (a faded frame is translucent).
        const bg = getComputedStyle(document.querySelector('.flame-pane')).backgroundColor.match(/[0-9]+/g).map(Number);
        let lo = 255, hi = 0;
        for (let k = 0; k < d.length; k += 4) {
            const a = d[k + 3] / 255, px = [0, 1, 2].map((j) => a * d[k + j] + (1 - a) * bg[j]);
            const l = 0.2126 * px[0] + 0.7152 * px[1] + 0.0722 * px[2];
            lo = Math.min(lo, l); hi = Math.max(hi, l);
        }
        return hi - lo; }""", [node["x"], node["y"], node["width"]])


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_faded_frames_labels_stay_readable(browser, server: str, tmp_path: Path, scheme: str) -> None:
    """A selected function's frames stand out, the others fade; their labels must stay readable in both themes
    (in the dark theme dark text on a faded frame was near invisible)."""
    view = urllib.parse.urlencode({"sel": json.dumps({"cgroup": LONG_CGROUP}), "fn": "handler_3", "view": "graph"})
    ctx, page, errors = _page(browser, 1280, 720, scheme, f"{server}/#{view}")
    render = page.evaluate("window.podflame.lastRender")
    assert [n["name"] for n in render["nodes"] if n["highlighted"]] == ["handler_3"]
    contrast = _label_contrast(page, "main")
    print(f"\n{scheme}: faded label contrast {contrast:.0f}, selected {_label_contrast(page, 'handler_3'):.0f}")
    assert contrast >= 60, contrast
    page.screenshot(path=str(_screenshot_dir(tmp_path) / f"podflame-faded-1280x720-{scheme}.png"))
    assert errors == []
    ctx.close()


@pytest.mark.parametrize(("width", "height", "scheme"), [(1280, 720, "dark"), (1440, 900, "light")])
def test_page_bar_keeps_one_line_while_loading(browser, server: str, tmp_path: Path, width: int, height: int,
                                               scheme: str) -> None:
    """The busy mark joins the bar while a request runs: with a two-day range (the widest range text) the bar
    still keeps one line inside the window."""
    view = urllib.parse.urlencode({"sel": json.dumps({"cgroup": LONG_CGROUP}), "from": "now-24h"})
    ctx, page, errors = _page(browser, width, height, scheme, f"{server}/#{view}")
    assert page.locator("#type").input_value()  # the type picker filled: the bar at its widest
    held: list = []
    page.route("**/api/v1/flamegraph?*", lambda route: held.append(route))  # the next graph's answer waits
    page.locator("#query-form button[type=submit]").click()
    wait_js(page, "window.podflame.status === 'loading' && !window.podflame.loading.includes('chart')")
    assert page.locator("#busy").is_visible()
    bar = _boxes(page, ".topbar > *")
    _one_line(bar)
    assert max(b["right"] for b in bar) <= width and any(b["id"] == "busy" for b in bar)
    page.screenshot(path=str(_screenshot_dir(tmp_path) / f"podflame-bar-loading-{width}x{height}-{scheme}.png"))
    for route in held:
        route.continue_()
    assert errors == []
    ctx.close()
