"""The views a profiling team works in, in real Chromium against the real server with known data:
the function table (sort, filter, linked both ways with the graph), the sandwich of one function,
the inverted and root-at-bottom graphs, regular-expression search with next/previous, colour by
frame kind and by module with a legend, the loading state under a slow API, keyboard use, export,
and downloads of the absolute range on screen.

Every expected figure follows from the stacks below (800 samples), not from what the page printed.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.test_ui_browser import ROW, Watched, _center, _get, _screenshot_dir, selector_hint_fits, wait_js
from web.normalize import batch_of

pytestmark = pytest.mark.browser

PERIOD_NS = 10_000_000
APP = Mapping(0x400000, 0x500000, 0, "/usr/bin/app", "ab" * 20)
PYTHON = Mapping(0, 0, 0, "[python]")  # how Python frames travel in pprof (COORD.md, interface 2)
KERNEL = {"entry_SYSCALL_64", "ksys_write"}
HOSTILE = '<svg onload="window.__pwned=1">'
STACKS = {
    ("main", "parse", "hash"): 300,
    ("main", "parse", "sort"): 100,
    ("main", "serve", "hash"): 200,
    ("main", "serve", "write", "entry_SYSCALL_64", "ksys_write"): 100,
    ("main", "hash"): 50,
    ("main", "recurse", "recurse", "hash"): 50,
}
TOTAL = 800
PY_STACKS = {("main", "run_app", "handler.py:handle", HOSTILE): 30, ("main", "run_app", "json.dumps"): 10}
POD = {"cgroup": "/kubepods.slice/pod-a.slice/cri-a.scope", "pod_uid": "uid-a", "container_id": "ca",
       "namespace": "shop", "pod": "checkout-1", "container": "app", "comm": "app"}
PY_POD = {"cgroup": "/kubepods.slice/pod-b.slice/cri-b.scope", "pod_uid": "uid-b", "container_id": "cb",
          "namespace": "shop", "pod": "pyworker-1", "container": "py", "comm": "python3"}

SLOW, GATE = threading.Event(), threading.Event()
SLOW_ONLY = [""]  # while SLOW: only flame-graph requests whose query string holds this wait for the gate
_addr: dict[str, int] = {}


def _frame(name: str) -> Frame:
    address = _addr.setdefault(name, 0x401000 + 0x40 * len(_addr))
    if name in KERNEL:
        return Frame(0xFFFFFFFF81000000 + address, None, FrameKind.KERNEL, (Line(name),))
    if name in ("run_app", HOSTILE) or name.endswith(".py:handle") or name == "json.dumps":
        file = "/usr/lib/python3/dist-packages/flask/app.py" if name == "run_app" else "/srv/shop/handler.py"
        return Frame(address, PYTHON, FrameKind.NATIVE, (Line(name, file, 7),))
    return Frame(address, APP, FrameKind.NATIVE, (Line(name, f"src/{name}.c", 3),))


def _profile(labels: dict[str, str], stacks: dict[tuple[str, ...], int]) -> Profile:
    p = Profile(labels=labels, start_ns=time.time_ns() - 90 * 10**9, duration_ns=10**10, period_ns=PERIOD_NS)
    for names, count in stacks.items():
        p.add(tuple(_frame(n) for n in names), count)
    return p


def _put_with_python_kind(store, profile: Profile) -> None:
    """Store a profile whose "[python]"-mapped locations are Python frames, as the decoder will mark them
    once the pyframes branch lands (until then it reads them as native): the store keeps each frame's kind."""
    decoded = pprof.decode_ids(pprof.encode([profile]), numeric_labels=False)
    python_ids = {mid for mid, m in decoded.mappings.items() if m is not None and m.path == "[python]"}
    for lid, (address, mid, _kind, lines) in list(decoded.locations.items()):
        if mid in python_ids:
            decoded.locations[lid] = (address, mid, FrameKind.PYTHON, lines)
    store.put([batch_of(decoded)])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from werkzeug.serving import make_server

    from tests.builders import ingest_url
    from web.server.app import create_app

    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("ui-views"))})
    inner = app.wsgi_app

    def gated(environ, start_response):  # a slow API on demand: flame-graph requests wait for the gate
        if (SLOW.is_set() and environ.get("PATH_INFO", "").endswith("/flamegraph")
                and SLOW_ONLY[0] in environ.get("QUERY_STRING", "")):
            GATE.wait(15)
        return inner(environ, start_response)

    app.wsgi_app = gated  # type: ignore[method-assign]
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    try:
        ingest_url(url, [_profile(POD, STACKS)])
        _put_with_python_kind(app.extensions["podflame.store"], _profile(PY_POD, PY_STACKS))
        yield url
    finally:
        httpd.shutdown()
        thread.join(timeout=5)
        app.extensions["podflame.store"].close()


@pytest.fixture
def watched(browser) -> Iterator[Watched]:
    w = Watched(browser)
    yield w
    w.context.close()


def _open(w: Watched, server: str, **hash_params: str) -> None:
    params = {"sel": json.dumps({"pod_uid": "uid-a", "container_id": "ca"}), **hash_params}
    w.page.goto(server + "/#" + urllib.parse.urlencode(params))
    w.settle(1)


def _rows(page) -> list[list[str]]:
    """Each row as [function, self, self %, total, total %] (value and share share a cell)."""
    return page.evaluate("""Array.from(document.querySelectorAll('#fn-rows tr')).map(tr => [
        tr.children[0].textContent,
        ...Array.from(tr.querySelectorAll('td.num span')).map(s => s.textContent)])""")


def _shot(w: Watched, tmp_path: Path, name: str) -> None:
    """The view at 1440x900 and 1280x720 (the smallest screen everything must fit without scrolling), light and
    dark (the system's setting, prefers-color-scheme)."""
    d = _screenshot_dir(tmp_path)
    for scheme in ("light", "dark"):
        w.page.emulate_media(color_scheme=scheme)
        background = w.page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        assert background == ("rgb(23, 22, 26)" if scheme == "dark" else "rgb(251, 250, 248)"), (scheme, background)
        for width, height in ((1440, 900), (1280, 720)):
            w.page.set_viewport_size({"width": width, "height": height})
            wait_js(w.page, f"window.innerWidth === {width}")
            w.page.evaluate("window.podflame.rerender()")
            # Nothing hangs off the page: the graph and table scroll inside their panes.
            assert w.page.evaluate("document.documentElement.scrollHeight <= window.innerHeight + 1"), (name, width)
            suffix = "-dark" if scheme == "dark" else ""
            w.page.screenshot(path=str(d / f"podflame-{name}-{width}x{height}{suffix}.png"))
    w.page.emulate_media(color_scheme="light")
    w.page.set_viewport_size({"width": 1400, "height": 900})


def test_function_table_sorts_filters_and_links_with_the_graph(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open(w, server)
    rows = _rows(page)
    # Default sort: self, largest first. hash is the leaf of 600 samples (75%); main is on every stack.
    assert rows[0] == ["hash", "600", "75.0%", "600", "75.0%"], rows[0]
    assert page.locator("#fn-count").inner_text() == "9 functions \u00b7 samples"
    # The graph's summary says each thing once ("800 samples · 8.00 s CPU", not "... · samples" again).
    assert page.locator("#flame-summary").inner_text() == "800 samples \u00b7 8.00 s CPU"
    # At 1280x720 the page's bar is one line (with the range on screen in it) and the downloads sit on the
    # graph's title line: lines the graph gets.
    page.set_viewport_size({"width": 1280, "height": 720})
    wait_js(page, "window.innerWidth === 1280")
    top = page.evaluate("Array.from(document.querySelectorAll('.topbar > *')).filter(e => !e.hidden)"
                        ".map(e => Math.round(e.getBoundingClientRect().top + e.getBoundingClientRect().height / 2))")
    assert max(top) - min(top) <= 4, top
    assert page.locator("#range-text").is_visible()
    # ... and the selector field's hint is read whole in it.
    assert selector_hint_fits(page)
    title, links = page.locator("#flame-title").bounding_box(), page.locator(".downloads").bounding_box()
    assert abs((title["y"] + title["height"] / 2) - (links["y"] + links["height"] / 2)) < 8, (title, links)
    page.set_viewport_size({"width": 1400, "height": 900})
    # Times read as the chart's axis does: 24-hour clock everywhere.
    assert re.search(r"\d{1,2}:\d{2}:\d{2}", page.locator("#range-text").inner_text())
    assert not re.search(r"\b[AP]M\b", page.locator("#range-text").inner_text())
    by_name = {r[0]: r for r in rows}
    assert by_name["main"][1:] == ["0", "0.0%", "800", "100%"]
    # recurse calls itself: its total counts each stack once (50), not once per frame (100).
    assert by_name["recurse"][3] == "50"
    assert by_name["ksys_write"][1] == "100"
    page.locator('#fn-table button.sort[data-sort="total"]').click()
    assert [r[0] for r in _rows(page)][:3] == ["main", "hash", "parse"]
    assert page.locator("#fn-table th[aria-sort]").inner_text() == "Total"
    page.locator('#fn-table button.sort[data-sort="name"]').click()
    names = [r[0] for r in _rows(page)]
    assert names == sorted(names)
    # Filter by regular expression.
    page.locator("#fn-filter").fill("^(hash|sort)$")
    assert sorted(r[0] for r in _rows(page)) == ["hash", "sort"]
    assert page.locator("#fn-count").inner_text() == "2 functions"
    page.locator("#fn-filter").fill("")

    # Hovering a row outlines that function's frames in the graph (and only those).
    page.locator("#fn-rows tr", has_text="serve").hover()
    r = w.render()
    assert {n["name"] for n in r["nodes"] if n["highlighted"]} == {"serve"}
    # Clicking a row selects it: every frame of hash outlined, the link remembers it.
    page.locator("#fn-rows tr[data-name='hash']").click()
    page.mouse.move(2, 2)
    r = w.render()
    assert sorted(n["depth"] for n in r["nodes"] if n["highlighted"]) == [2, 3, 3, 4]
    assert "fn=hash" in page.evaluate("location.hash")
    _shot(w, tmp_path, "table")

    # Clicking a frame selects its row (and zooms to it).
    parse = next(n for n in r["nodes"] if n["name"] == "parse")
    page.mouse.click(*_center(w, parse))
    wait_js(page, "document.querySelector('#fn-rows tr.selected')?.dataset.name === 'parse'")
    assert page.locator("#fn-rows tr.selected").get_attribute("aria-selected") == "true"
    assert w.render()["zoom"] == ["main", "parse"]
    w.assert_clean()


def test_sandwich_shows_known_callers_and_callees(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open(w, server, view="sandwich")
    assert page.locator("#sandwich-empty").is_visible()
    page.locator("#view").select_option("table")
    page.locator("#fn-rows tr[data-name='hash']").click()
    page.locator("#view").select_option("sandwich")
    wait_js(page, "window.podflame.sandwich && window.podflame.sandwich.callers.nodes.length > 0")
    sw = page.evaluate("window.podflame.sandwich")

    def widths(render: dict, depth: int) -> dict[str, float]:  # per name, summed over its nodes at that depth
        out: dict[str, float] = {}
        for n in render["nodes"]:
            if n["depth"] == depth:
                out[n["name"]] = out.get(n["name"], 0.0) + n["width"] / render["width"]
        return out

    callers, callees = sw["callers"], sw["callees"]
    assert widths(callers, 1) == {"hash": pytest.approx(1.0)}
    # hash's direct callers, by share of hash's 600 samples: parse 300, serve 200, main 50, recurse 50.
    assert widths(callers, 2) == {"parse": pytest.approx(0.5), "serve": pytest.approx(2 / 6),
                                  "main": pytest.approx(1 / 12), "recurse": pytest.approx(1 / 12)}
    assert widths(callers, 3) == {"main": pytest.approx(5 / 6), "recurse": pytest.approx(1 / 12)}
    assert callers["orientation"] == "flame"  # callers stand above the function
    callee_root = next(n for n in callers["nodes"] if n["name"] == "hash")
    assert callee_root["y"] > next(n for n in callers["nodes"] if n["name"] == "parse")["y"]
    assert [n["name"] for n in callees["nodes"] if n["depth"] >= 1] == ["hash"]  # a leaf: calls nothing
    _shot(w, tmp_path, "sandwich")

    # parse's callees: hash 300 and sort 100 below it; its one caller main above.
    page.locator("#view").select_option("table")
    page.locator("#fn-rows tr[data-name='parse']").click()
    page.locator("#view").select_option("sandwich")
    wait_js(page, "window.podflame.sandwich.callees.nodes.some(n => n.name === 'sort')")
    sw = page.evaluate("window.podflame.sandwich")
    assert widths(sw["callees"], 2) == {"hash": pytest.approx(0.75), "sort": pytest.approx(0.25)}
    assert widths(sw["callers"], 2) == {"main": pytest.approx(1.0)}
    assert "view=sandwich" in page.evaluate("location.hash") and "fn=parse" in page.evaluate("location.hash")
    w.assert_clean()


def test_inverted_and_root_at_bottom(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open(w, server)
    page.locator("#invert").check()
    wait_js(page, "window.podflame.lastRender.nodes.some(n => n.depth === 1 && n.name === 'hash')")
    r = w.render()
    roots = {n["name"]: n["width"] / r["width"] for n in r["nodes"] if n["depth"] == 1}
    # Bottom-up: the leaves become roots, weighted by their self samples.
    assert roots == {"hash": pytest.approx(0.75), "sort": pytest.approx(0.125), "ksys_write": pytest.approx(0.125)}
    under_hash = {n["name"] for n in r["nodes"] if n["depth"] == 2 and n["x"] < roots["hash"] * r["width"]}
    assert under_hash == {"parse", "serve", "main", "recurse"}
    assert page.locator("#flame-title").inner_text().startswith("Bottom-up")
    _shot(w, tmp_path, "inverted")
    page.locator("#invert").uncheck()
    wait_js(page, "window.podflame.lastRender.nodes.some(n => n.depth === 1 && n.name === 'main')")

    page.locator("#orient").click()
    wait_js(page, "window.podflame.lastRender.orientation === 'flame'")
    r = w.render()
    root = next(n for n in r["nodes"] if n["name"] == "total")
    assert root["y"] == r["height"] - ROW  # the root at the bottom
    ksys = next(n for n in r["nodes"] if n["name"] == "ksys_write")
    assert ksys["y"] == 0
    assert "orient=flame" in page.evaluate("location.hash")
    # Hover and click still find the frame under the pointer.
    page.mouse.click(*_center(w, next(n for n in r["nodes"] if n["name"] == "serve")))
    wait_js(page, "window.podflame.lastRender.zoom.length === 2")
    assert w.render()["zoom"] == ["main", "serve"]
    _shot(w, tmp_path, "flame-orientation")
    w.assert_clean()


def test_regex_search_share_errors_and_next_match(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open(w, server)
    result = page.locator("#search-result")
    page.locator("#search").fill("^(hash|sort)$")
    wait_js(page, "document.getElementById('search-result').textContent.includes('of total')")
    assert result.inner_text() == f"{100 * 700 / TOTAL:.1f}% of total"
    page.locator("#search").fill("ha.h|wr[i]te")  # write covers its kernel frames: 600 + 100
    assert result.inner_text() == "87.5% of total"
    # A malformed expression says what is wrong; nothing is matched.
    page.locator("#search").fill("hash(")
    assert "not a regular expression" in result.inner_text()
    assert page.evaluate("window.podflame.search.error") != ""
    assert page.locator("#search-next").is_disabled()
    page.locator("#search").fill("x" * 300)
    assert "longer than 256" in result.inner_text()
    # Next / previous step through the outermost matches (depth, then position), zooming to each.
    page.locator("#search").fill("^hash$")
    assert page.evaluate("window.podflame.search.matches") == 4
    page.locator("#search-next").click()
    wait_js(page, "window.podflame.lastRender.zoom.length === 2")
    assert w.render()["zoom"] == ["main", "hash"]
    # Within the zoomed frame, all of it matches.
    assert result.inner_text() == "75.0% of total, 100% of zoomed"
    page.locator("#search-next").click()
    wait_js(page, "window.podflame.lastRender.zoom.join(';') === 'main;parse;hash'")
    page.locator("#search-prev").click()
    wait_js(page, "window.podflame.lastRender.zoom.join(';') === 'main;hash'")
    page.locator("#search").press("Enter")
    wait_js(page, "window.podflame.lastRender.zoom.join(';') === 'main;parse;hash'")
    page.locator("#search").fill("ha.h|wr[i]te")  # matches in colour, the zoomed frame's share beside the total
    wait_js(page, "document.getElementById('search-result').textContent.includes('of zoomed')")
    _shot(w, tmp_path, "search-zoomed")
    w.assert_clean()


def _pixel(page, node: dict) -> list[int]:
    return page.evaluate(f"""(() => {{
        const c = document.getElementById('flame'), k = c.width / c.clientWidth;
        return Array.from(c.getContext('2d').getImageData(Math.floor(({node['x']} + 2) * k),
            Math.floor(({node['y']} + 3) * k), 1, 1).data);
    }})()""")


def test_colour_by_frame_kind_and_module_with_legend(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open(w, server, color="kind")
    r = w.render()
    kinds = {n["name"]: n["kind"] for n in r["nodes"] if not n["context"] and n["depth"] > 0}
    assert kinds["ksys_write"] == kinds["entry_SYSCALL_64"] == "kernel"
    assert kinds["main"] == kinds["hash"] == "native"
    legend = page.locator("#legend .legend-item").all_inner_texts()
    assert legend == ["kernel", "native"]
    kernel_px = _pixel(page, next(n for n in r["nodes"] if n["name"] == "ksys_write"))
    native_px = _pixel(page, next(n for n in r["nodes"] if n["name"] == "write"))
    assert kernel_px[2] > kernel_px[0] + 30, kernel_px  # kernel: blue
    assert native_px[0] > native_px[2] + 30, native_px  # native: orange
    _shot(w, tmp_path, "kind")

    # The Python pod: its "[python]" frames are Python (the store's kind), named by package as modules.
    page.goto(server + "/#" + urllib.parse.urlencode({"sel": json.dumps({"pod_uid": "uid-b", "container_id": "cb"}),
                                                       "color": "kind"}))
    w.settle(1)
    r = w.render()
    kinds = {n["name"]: n["kind"] for n in r["nodes"] if n["depth"] > 0}
    assert kinds["run_app"] == kinds[HOSTILE] == "python" and kinds["main"] == "native"
    assert page.locator("#legend .legend-item").all_inner_texts() == ["native", "python"]
    py_px = _pixel(page, next(n for n in r["nodes"] if n["name"] == "run_app"))
    assert py_px[1] > py_px[0] + 20 and py_px[1] > py_px[2] + 20, py_px  # python: green
    page.locator("#color-by").select_option("module")
    wait_js(page, "window.podflame.lastRender.colorBy === 'module'")
    modules = {n["name"]: n["module"] for n in w.render()["nodes"] if n["depth"] > 0}
    assert modules == {"main": "app", "run_app": "flask", "handler.py:handle": "shop", "json.dumps": "shop",
                       HOSTILE: "shop"}
    legend = page.locator("#legend .legend-item").all_inner_texts()
    assert set(legend) == {"app", "flask", "shop"}
    assert page.locator("#legend svg, #legend img, #fn-rows svg").count() == 0  # names are text
    assert page.evaluate("window.__pwned") is None
    _shot(w, tmp_path, "module")
    w.assert_clean()


def test_loading_state_under_a_slow_api(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open(w, server)
    GATE.clear()
    SLOW.set()
    page.locator('button.preset[data-range="1h"]').click()
    wait_js(page, "window.podflame.status === 'loading'")
    assert page.locator("#busy").is_visible()
    assert "stale" in page.locator("#flame-body").get_attribute("class")
    assert page.locator(".flame-pane").get_attribute("aria-busy") == "true"
    # The old graph stays, dimmed, while the new one loads. The dimming starts after 0.1 s (a quick answer
    # never flickers) and fades in over 0.15 s: the screenshot waits for it, as a person would see the page
    # under a slow API, and the parts are really drawn faded (their computed opacity, not just the class).
    # Only what is still loading is dimmed: the list and the chart of the new range answered (only the graph
    # is slow here) and are shown as they are, fresh.
    assert w.render()["nodes"]
    opacity = "(s => Number(getComputedStyle(document.querySelector(s)).opacity))"
    stale_parts = ["#flame-body", ".flame-head", ".toolbar"]
    fresh_parts = [".targets-pane", "#chart-wrap", ".chart-head"]
    wait_js(page, " && ".join(f"{opacity}('{s}') <= 0.56" for s in stale_parts))
    wait_js(page, "!window.podflame.loading.includes('series') && !window.podflame.loading.includes('chart')")
    page.wait_for_timeout(300)  # past the dimming's delay and fade
    for s in fresh_parts:
        assert page.evaluate(f"{opacity}('{s}')") == 1, s
    for s in stale_parts:
        assert page.evaluate(f"{opacity}('{s}')") <= 0.56, s
    assert "1h" in page.locator("#chart-summary").inner_text() or page.evaluate("window.podflame.chart.to - "
                                                                                 "window.podflame.chart.from") == 3600
    assert page.locator("#busy").bounding_box()["y"] >= 0
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-loading.png"))
    SLOW.clear()
    GATE.set()
    w.settle()
    assert page.locator("#busy").is_hidden()
    assert "stale" not in (page.locator("#flame-body").get_attribute("class") or "")
    wait_js(page, " && ".join(f"{opacity}('{s}') === 1" for s in stale_parts))
    w.assert_clean()


def test_a_superseded_request_is_aborted_and_never_painted(server: str, watched: Watched) -> None:
    """Pod A's graph is slow; B is clicked before it lands: A's request is aborted (the browser reports it
    failed with ERR_ABORTED) and, when the server answers it after all, nothing of A is drawn."""
    w, page = watched, watched.page
    sent: list[str] = []
    failed: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append(r.url))
    page.on("requestfailed", lambda r: failed.append((r.url, r.failure)))
    page.goto(server + "/#" + urllib.parse.urlencode({"view": "graph"}))
    w.settle(1)
    SLOW_ONLY[0] = "uid-a"
    GATE.clear()
    SLOW.set()
    try:
        page.locator("button.target", has_text="checkout-1").click()
        deadline = time.monotonic() + 15
        while not any("/flamegraph" in u and "uid-a" in u for u in sent):
            assert time.monotonic() < deadline, "pod A's flame graph was never asked for"
            page.wait_for_timeout(20)
        a_url = next(u for u in sent if "/flamegraph" in u and "uid-a" in u)
        before = w.renders()
        page.locator("button.target", has_text="pyworker-1").click()
        w.settle(before + 1)
        assert w.render()["nodes"][0]["total"] == 40  # B's graph
        assert (a_url, "net::ERR_ABORTED") in failed
        renders = w.renders()
    finally:
        SLOW.clear()
        SLOW_ONLY[0] = ""
        GATE.set()
    page.wait_for_timeout(1000)  # the server answers A's request now: the page must not take it
    assert w.renders() == renders and w.render()["nodes"][0]["total"] == 40
    assert "pyworker" in page.locator("#flame-title").inner_text()
    assert json.loads(urllib.parse.parse_qs(page.evaluate("location.hash")[1:])["sel"][0])["pod_uid"] == "uid-b"
    w.assert_clean()


def test_keyboard_export_and_absolute_downloads(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open(w, server)
    assert page.locator("#flame").get_attribute("aria-label").startswith("Flame graph")
    page.mouse.click(5, 5)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search"
    page.keyboard.press("Escape")
    page.locator("#flame").focus()
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("ArrowDown")  # from the root to its widest child
    assert page.evaluate("window.podflame.focus") == {"depth": 1, "name": "main"}
    page.keyboard.press("ArrowDown")
    assert page.evaluate("window.podflame.focus") == {"depth": 2, "name": "parse"}
    page.keyboard.press("ArrowRight")
    assert page.evaluate("window.podflame.focus")["name"] == "recurse"
    page.keyboard.press("ArrowUp")
    assert page.evaluate("window.podflame.focus") == {"depth": 1, "name": "main"}

    # Export: SVG with every drawn frame as a rect and names as text; PNG is a PNG.
    with page.expect_download() as dl:
        page.locator("#export-svg").click()
    svg = Path(dl.value.path()).read_text()
    assert dl.value.suggested_filename.endswith(".svg") and "uid-a" in dl.value.suggested_filename
    assert svg.count("<rect") == len(w.render()["nodes"])
    # Labels as the canvas cuts them to their frame's width; every frame's whole name in its <title>.
    assert ">parse<" in svg and "<title>ksys_write (100)</title>" in svg
    assert re.search(r">ksys_w[a-z_]*\u2026?<", svg)
    with page.expect_download() as dl:
        page.locator("#export-png").click()
    assert Path(dl.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Downloads: the absolute range the graph shows, and names that say selection and range.
    href = page.locator("#dl-folded").evaluate("a => a.href")
    q = urllib.parse.parse_qs(urllib.parse.urlparse(href).query)
    shown = page.evaluate("[window.podflame.shown.from, window.podflame.shown.to]")
    assert q["from"] == [shown[0]] and q["to"] == [shown[1]]
    assert float(q["to"][0]) - float(q["from"][0]) == pytest.approx(900, abs=0.01)  # the default 15 minutes
    assert abs(float(q["to"][0]) - time.time()) < 120
    name = page.locator("#dl-pprof").get_attribute("download")
    assert re.fullmatch(r"podflame-uid-a_ca-\d{8}T\d{6}Z-\d{8}T\d{6}Z\.pb\.gz", name), name
    time.sleep(1.1)  # the link still means what was on screen, not "now-15m" when it is followed
    body = _get(href)[1].decode().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in body) == TOTAL
    w.assert_clean()


def _fmt_bytes(v: float) -> str:
    """As the page writes bytes (flamegraph.js formatValue)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.{0 if v >= 100 else 1 if v >= 10 else 2}f} {units[i]}"


def test_heap_profile_shows_bytes_and_objects_never_cpu(server: str, watched: Watched, tmp_path: Path) -> None:
    from tests.conftest import CORPUS
    from tests.test_corpus import _go, raw_totals

    heap = CORPUS / "pprof" / "parca-testdata-alloc_objects.pb.gz"
    assert heap.exists(), "the real Go heap profile of ../shared/corpus is this test's input"
    expected = raw_totals([heap])  # go tool pprof's own totals per sample type
    at = int(time.time()) - 120
    req = urllib.request.Request(f"{server}/api/v1/ingest?service=heapy&time={at}", data=heap.read_bytes(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    w, page = watched, watched.page
    page.goto(server + "/#" + urllib.parse.urlencode({"q": '{service="heapy"}', "type": "alloc_space"}))
    w.settle(1)
    options = page.locator("#type option").all_inner_texts()
    assert "alloc_space (bytes)" in options and "alloc_objects (objects)" in options
    assert len(options) == 4  # the types this selector has in range (/api/v1/types): no CPU among them
    assert page.locator("#type").input_value() == "alloc_space"
    summary = page.locator("#flame-summary").inner_text()
    assert summary.startswith(_fmt_bytes(expected["alloc_space"])), (summary, expected)
    assert page.locator("#chart-title").inner_text().startswith("alloc_space:")
    assert page.locator("#targets-note").inner_text() == "alloc_space in bytes, summed over the range"
    text = page.locator("body").inner_text()
    assert not re.search(r"\bCPU\b", text), "a heap profile has no CPU wording (function names may say CPU)"
    assert page.locator("#fn-count").inner_text().endswith("\u00b7 bytes")
    # The chart's y axis is in bytes, and its labels fit their margin.
    chart = page.evaluate("window.podflame.chart")
    assert chart["plot"]["left"] >= 56 and chart["total"] == expected["alloc_space"]
    # Round steps of a binary unit (50 GiB, not the 46.6 GiB a power-of-ten step in bytes reads as).
    labels = chart["yLabels"]
    assert labels[0] == "0 B" and len(labels) >= 3, labels
    assert all(re.fullmatch(r"\d+(\.5)? (B|KiB|MiB|GiB|TiB)", t) for t in labels), labels
    # The list's row for profiles without pod or cgroup labels is read whole at 1280 px, not cut.
    page.set_viewport_size({"width": 1280, "height": 720})
    wait_js(page, "window.innerWidth === 1280")
    cut = page.evaluate("Array.from(document.querySelectorAll('#targets .t-name, #targets .t-detail'))"
                        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
    assert cut == [], cut
    _shot(w, tmp_path, "heap-bytes")

    page.locator("#type").select_option("alloc_objects")
    wait_js(page, "location.hash.includes('type=alloc_objects') && window.podflame.status === 'ready'")
    wait_js(page, "document.getElementById('flame-summary').textContent.includes('objects')")
    assert page.locator("#flame-summary").inner_text().startswith(f"{expected['alloc_objects']:,} objects")
    assert not re.search(r"\bCPU\b", page.locator(".flame-pane").inner_text())
    # The pprof download: exactly this type over the absolute range on screen, read back by go tool pprof.
    href = page.locator("#dl-pprof").evaluate("a => a.href")
    q = urllib.parse.parse_qs(urllib.parse.urlparse(href).query)
    assert q["type"] == ["alloc_objects"] and float(q["from"][0]) <= at < float(q["to"][0])
    out = tmp_path / "heap.pb.gz"
    out.write_bytes(_get(href)[1])
    assert raw_totals([out])["alloc_objects"] == expected["alloc_objects"]
    assert "alloc_objects" in _go("-raw", out)
    w.assert_clean()


def test_group_by_a_pushed_label_one_series_per_value(server: str, watched: Watched, tmp_path: Path) -> None:
    from tests.builders import ingest_url

    counts = {"checkout": 300, "search": 200, "cart": 100}
    ingest_url(server, [_profile({"job": "svc", "service": s, "region": "eu" if s != "cart" else "us"},
                                 {("main", f"serve_{s}"): n}) for s, n in counts.items()])
    w, page = watched, watched.page
    page.goto(server + "/#" + urllib.parse.urlencode({"q": '{job="svc"}', "group": "service"}))
    w.settle(1)
    wait_js(page, "window.podflame.chartSeries !== null && window.podflame.chartSeries !== undefined")
    names = page.locator("button.target .t-name").all_inner_texts()
    assert names == ["All matching the selector", "checkout", "search", "cart"]
    assert page.locator("#targets-title").inner_text().startswith("By service")
    assert page.locator("#group-by").input_value() == "service"
    series = page.evaluate("window.podflame.chartSeries")
    assert [(s["name"], s["total"]) for s in series] == list(counts.items())
    assert page.evaluate("window.podflame.chart.stack") == list(counts)
    _shot(w, tmp_path, "group-by")
    # A value is a selection: the graph is that service's.
    before = w.renders()
    page.locator("button.target", has_text="search").click()
    w.settle(before + 1)
    assert w.render()["nodes"][0]["total"] == 200
    assert json.loads(urllib.parse.parse_qs(page.evaluate("location.hash")[1:])["sel"][0]) == {"service": "search"}

    # The label explorer: names and values offered from the API, a matcher added to the selector.
    assert "region" in page.evaluate("window.podflame.labels")
    page.locator("#label-name").fill("region")
    page.locator("#label-name").dispatch_event("change")
    wait_js(page, "(window.podflame.labelValues || []).includes('eu')")
    assert page.evaluate("Array.from(document.querySelectorAll('#label-values option')).map(o => o.value)") == [
        "eu", "us"]
    # Typing asks the server for the values starting with the text (prefix + limit), not the whole list.
    with page.expect_request(lambda r: "/label/region/values" in r.url and "prefix=e" in r.url):
        page.locator("#label-value").fill("e")
    wait_js(page, "JSON.stringify(window.podflame.labelValues) === '[\"eu\"]'")
    assert page.evaluate("Array.from(document.querySelectorAll('#label-values option')).map(o => o.value)") == ["eu"]
    page.locator("#label-value").fill("eu")
    page.locator("#label-form button").click()
    wait_js(page, "window.podflame.status === 'ready' && window.podflame.targets.length === 2")
    assert page.locator("#selector").input_value() == '{job="svc", region="eu"}'
    w.assert_clean()


def test_a_shared_link_shows_the_same_data_after_more_arrives(server: str, watched: Watched, browser) -> None:
    """The page's link carries the absolute range on screen (not "now-15m"): opened later, after new samples
    were ingested, it draws the same totals, where the relative view has moved on."""
    from tests.builders import ingest_url

    ingest_url(server, [_profile({"job": "share", "service": "a"}, {("main", "serve"): 70, ("main", "idle"): 30})])
    w, page = watched, watched.page
    page.goto(server + "/#" + urllib.parse.urlencode({"q": '{job="share"}', "view": "graph"}))
    w.settle(1)
    assert w.render()["nodes"][0]["total"] == 100
    link = page.locator("#share-link").evaluate("a => a.href")
    h = urllib.parse.parse_qs(urllib.parse.urlparse(link).fragment)
    shown = page.evaluate("window.podflame.shown")
    assert (h["from"], h["to"]) == ([shown["from"]], [shown["to"]]) and h["q"] == ['{job="share"}']
    assert float(h["to"][0]) - float(h["from"][0]) == pytest.approx(900, abs=0.01)
    time.sleep(1.5)
    late = Profile(labels={"job": "share", "service": "a"}, start_ns=time.time_ns() - 5 * 10**8, duration_ns=10**8,
                   period_ns=PERIOD_NS)
    late.add((_frame("main"), _frame("serve")), 50)
    ingest_url(server, [late])

    later = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        p2 = later.new_page()
        p2.goto(link)
        wait_js(p2, "window.podflame && window.podflame.status === 'ready' && window.podflame.renders >= 1")
        again = p2.evaluate("window.podflame.lastRender")
        assert again["nodes"][0]["total"] == 100  # the same data as when the link was made
        assert {n["name"]: n["total"] for n in again["nodes"] if n["depth"] == 2} == {"serve": 70, "idle": 30}
        p2.goto(server + "/#" + urllib.parse.urlencode({"q": '{job="share"}', "view": "graph"}))
        p2.reload()
        wait_js(p2, "window.podflame && window.podflame.status === 'ready' && window.podflame.renders >= 1")
        assert p2.evaluate("window.podflame.lastRender.nodes[0].total") == 150  # the relative range moved on
    finally:
        later.close()
    w.assert_clean()


def test_group_by_folds_values_past_the_top_into_one_other_on_list_and_chart(server: str, watched: Watched,
                                                                             tmp_path: Path) -> None:
    """Eight values of a label: the chart and the list show the top five each and one "other" summing the
    other three (the same three on both), and a click on "other" lists every value."""
    from tests.builders import ingest_url

    counts = {f"team-{k}": 100 * (9 - k) for k in range(1, 9)}  # team-1: 800 ... team-8: 100
    ingest_url(server, [_profile({"job": "fold", "team": t}, {("main", f"work_{t}"): n}) for t, n in counts.items()])
    w, page = watched, watched.page
    page.goto(server + "/#" + urllib.parse.urlencode({"q": '{job="fold"}', "group": "team"}))
    w.settle(1)
    wait_js(page, "window.podflame.chartSeries !== null && window.podflame.chartSeries !== undefined")
    top = list(counts)[:5]
    names = page.locator("button.target .t-name").all_inner_texts()
    assert names == ["All matching the selector", *top, "other (3 values)"]
    rows = page.evaluate("window.podflame.targetRows")
    assert [r["value"] for r in rows] == [3600, 800, 700, 600, 500, 400, 600]  # other: 300 + 200 + 100
    series = page.evaluate("window.podflame.chartSeries")
    assert [(s["name"], s["total"]) for s in series] == [*((t, counts[t]) for t in top), ("other", 600)]
    _shot(w, tmp_path, "group-by-other")
    page.locator("button.target-other").click()
    wait_js(page, "document.querySelectorAll('button.target').length === 9")
    assert page.locator("button.target .t-name").all_inner_texts() == ["All matching the selector", *counts]
    assert page.evaluate("window.podflame.targets.length") == 8
    w.assert_clean()


def test_hostile_names_stay_text_in_table_legend_list_and_explorer(server: str, watched: Watched,
                                                                   tmp_path: Path) -> None:
    """Names and label values reach the new table, legend, grouped list and label explorer as text only."""
    from tests.builders import ingest_url

    evil_fn = '<img src=x onerror="window.__pwned=3">'
    evil_value = '"><svg onload="window.__pwned=4">'
    evil_lib = Mapping(0x7F0000000000, 0x7F0000100000, 0, '/lib/<img src=x onerror=window.__pwned=5>.so')
    p = Profile(labels={"job": "evil", "service": evil_value}, start_ns=time.time_ns() - 60 * 10**9,
                duration_ns=10**10, period_ns=PERIOD_NS)
    p.add((Frame(0x7F0000000100, evil_lib, FrameKind.NATIVE, (Line(evil_fn),)),), 50)
    ingest_url(server, [p])
    w, page = watched, watched.page
    page.goto(server + "/#" + urllib.parse.urlencode({"q": '{job="evil"}', "group": "service", "color": "module"}))
    w.settle(1)
    names = page.locator("button.target .t-name").evaluate_all("es => es.map(e => [e.dataset.name, e.textContent])")
    assert [full for full, _ in names] == ["All matching the selector", evil_value]
    for full, shown in names:  # a long one is cut in its middle, as text
        head, _, tail = shown.partition("\u2026")
        assert full.startswith(head) and full.endswith(tail), (full, shown)
    # The name as text: whole in the cell's tooltip, and what shows (cut in the middle if long) is its text.
    assert page.locator("#fn-rows td.fn").evaluate_all("tds => tds.map(td => td.title)") == [evil_fn]
    shown = page.locator("#fn-rows td.fn").inner_text()
    head, _, tail = shown.partition("\u2026")
    assert shown == evil_fn or (evil_fn.startswith(head) and evil_fn.endswith(tail))
    assert page.locator("#legend .legend-item").all_inner_texts() == ["<img src=x onerror=window.__pwned=5>.so"]
    page.locator("#label-name").fill("service")
    page.locator("#label-name").dispatch_event("change")
    wait_js(page, "(window.podflame.labelValues || []).length > 0")
    assert page.evaluate("Array.from(document.querySelectorAll('#label-values option')).map(o => o.value)") == [
        evil_value]
    found = page.evaluate("document.querySelectorAll('#targets img, #targets svg, #fn-rows img, #legend script, "
                          "#legend img, #label-values svg, .flame-pane img, .flame-pane script').length")
    assert found == 0
    assert page.evaluate("window.__pwned") is None
    # The chart's legend draws the value on the canvas, as text.
    assert page.evaluate("window.podflame.chart.stack") == [evil_value]
    w.assert_clean()


def test_a_selector_without_braces_keeps_the_selection(server: str, watched: Watched) -> None:
    """`namespace="shop"` (the server takes matchers without braces) plus a selected pod is that pod only."""
    w, page = watched, watched.page
    _open(w, server, q='namespace="shop"')
    assert w.render()["nodes"][0]["total"] == TOTAL  # checkout-1 alone, not the namespace's 840
    href = page.locator("#dl-folded").evaluate("a => a.href")
    query = urllib.parse.parse_qs(urllib.parse.urlparse(href).query)["query"]
    assert query == ['{namespace="shop", pod_uid="uid-a", container_id="ca"}']
    w.assert_clean()


def _push(server: str, body: bytes, service: str, at: int) -> None:
    req = urllib.request.Request(f"{server}/api/v1/ingest?service={service}&time={at}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def _heap_profile() -> Path:
    from tests.conftest import CORPUS

    heap = CORPUS / "pprof" / "parca-testdata-alloc_objects.pb.gz"
    assert heap.exists(), "the real Go heap profile of ../shared/corpus is this test's input"
    return heap


def test_function_names_are_readable_beside_their_numbers(server: str, watched: Watched, tmp_path: Path) -> None:
    """Go's package-qualified names (compress/flate.(*compressor).deflate) fit the table's name column at
    1280x720 and 1440x900: one number per column (share or value, the other on hover), the name cut in its
    middle so its package and its own name both show, the full name on hover and as the accessible name."""
    _push(server, _heap_profile().read_bytes(), "heapnames", int(time.time()) - 100)
    w, page = watched, watched.page
    page.goto(server + "/#" + urllib.parse.urlencode({"q": '{service="heapnames"}', "type": "alloc_space"}))
    w.settle(1)

    def cells() -> list[dict]:
        return page.evaluate("""Array.from(document.querySelectorAll('#fn-rows tr')).slice(0, 40).map(tr => {
            const fn = tr.children[0], nums = Array.from(tr.querySelectorAll('td.num'));
            return {name: tr.dataset.name, text: fn.textContent, title: fn.title, label: fn.getAttribute('aria-label'),
                    cut: fn.scrollWidth > fn.clientWidth + 1, width: fn.clientWidth,
                    nums: nums.map(c => ({shown: Array.from(c.children).filter(s => s.offsetParent)
                                            .map(s => s.textContent), title: c.title,
                                          cut: c.scrollWidth > c.clientWidth + 1}))};
        })""")

    for width, height in ((1280, 720), (1440, 900)):
        page.set_viewport_size({"width": width, "height": height})
        wait_js(page, f"window.innerWidth === {width}")
        for mode in ("pct", "value"):
            page.locator(f"#fn-show-{mode}").click()
            assert page.locator(f"#fn-show-{mode}").get_attribute("aria-pressed") == "true"
            rows = cells()
            assert len(rows) >= 20
            table_w = page.locator("#fn-table").bounding_box()["width"]
            share = 0.65 if mode == "pct" else 0.55  # the name column takes most of the table
            assert rows[0]["width"] >= share * table_w, (width, mode, rows[0]["width"], table_w)
            for r in rows:
                name, text = r["name"], r["text"]
                assert not r["cut"], (width, mode, r)  # nothing hidden by the column's edge
                assert r["title"] == name
                if text != name:  # cut in the middle: both ends of the real name, the full one for readers
                    head, tail = text.split("\u2026")
                    assert name.startswith(head) and name.endswith(tail) and len(head) >= 4, (text, name)
                    own = re.split(r"[./]", name)[-1]  # the function's own name after package and type
                    assert tail.endswith(own[-min(len(own), len(tail)):]), (text, name)
                    assert r["label"] == name
                for n in r["nums"]:
                    assert len(n["shown"]) == 1 and not n["cut"], (width, mode, n)
                    assert n["shown"][0].endswith("%") == (mode == "pct"), n
                    assert n["title"].endswith("%")  # value and share on hover, whichever is shown
            readable = sum(r["text"] == r["name"] for r in rows)
            assert readable >= len(rows) // (2 if mode == "pct" else 3), [r["text"] for r in rows]
        # The list's title and its count on one line (not broken after "Pods and"), the group-by picker whole.
        title = page.evaluate("(h => ({h: h.getBoundingClientRect().height, cut: h.scrollWidth > h.clientWidth + 1,"
                              " lh: parseFloat(getComputedStyle(h).lineHeight) || 20}))"
                              "(document.getElementById('targets-title'))")
        assert title["h"] < 1.5 * title["lh"] and not title["cut"], title
        pick, pane = page.locator("#group-by").bounding_box(), page.locator(".targets-pane").bounding_box()
        assert pick["x"] + pick["width"] <= pane["x"] + pane["width"]
        # The filter's placeholder is whole beside the count and the toggle.
        assert page.evaluate("""(() => {
            const f = document.getElementById('fn-filter'), st = getComputedStyle(f);
            const ctx = document.createElement('canvas').getContext('2d');
            ctx.font = st.font;
            return ctx.measureText(f.placeholder).width <= f.clientWidth - parseFloat(st.paddingLeft)
                - parseFloat(st.paddingRight) - 16;  // 16: the search field's clear button
        })()""")
        _shot_one = _screenshot_dir(tmp_path) / f"podflame-table-names-{width}x{height}.png"
        page.screenshot(path=str(_shot_one))
    # Values in the profile's unit, compact: bytes as the summary writes them.
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB)", cells()[0]["nums"][0]["shown"][0])
    w.assert_clean()


def test_heap_profile_diff_keeps_bytes_and_red_blue(server: str, watched: Watched, tmp_path: Path) -> None:
    """Compare mode on a pushed Go heap profile: the baseline is the real profile, the comparison adds
    `go tool pprof -focus=compress/flate`'s cut of it, so compress/flate's share grows (red) and the rest
    shrinks (blue). Totals, tables and tooltips are in bytes (then objects), never CPU wording."""
    from tests.test_corpus import _go, raw_totals

    heap = _heap_profile()
    focused = tmp_path / "flate.pb.gz"
    focused.write_bytes(subprocess_out(["go", "tool", "pprof", "-proto", "-focus=compress/flate", str(heap)]))
    full, flate = raw_totals([heap]), raw_totals([focused])
    assert 0 < flate["alloc_space"] < full["alloc_space"]
    assert "compress/flate" in _go("-top", focused)
    now = int(time.time())
    _push(server, heap.read_bytes(), "heapdiff", now - 20 * 60)  # the previous 15 minutes
    _push(server, heap.read_bytes(), "heapdiff", now - 120)
    _push(server, focused.read_bytes(), "heapdiff", now - 110)
    w, page = watched, watched.page
    page.goto(server + "/#" + urllib.parse.urlencode({"q": '{service="heapdiff"}', "type": "alloc_space",
                                                       "cmp": "prev"}))
    wait_js(page, "window.podflame && window.podflame.diff && window.podflame.status === 'ready'")
    diff = page.evaluate("window.podflame.diff")
    assert (diff["base_total"], diff["comp_total"]) == (full["alloc_space"], full["alloc_space"] + flate["alloc_space"])
    assert diff["regressions"] and all(n.startswith("compress/flate") for n in diff["regressions"][:3])
    summary = page.locator("#flame-summary").inner_text()
    assert summary.startswith(f"baseline {_fmt_bytes(full['alloc_space'])} \u00b7 comparison "
                              f"{_fmt_bytes(full['alloc_space'] + flate['alloc_space'])}"), summary
    assert not re.search(r"\bCPU\b|\bsamples\b", page.locator("body").inner_text())
    # The view picker names what a comparison shows (its graph), not the table + graph it cannot show.
    assert page.locator("#view").is_disabled() and page.locator("#view").input_value() == "graph"
    assert "comparison" in page.locator("#view").get_attribute("title")
    # The regression table's values are bytes too.
    cells = page.locator("#diff-tables table").first.locator("tbody tr").first.locator("td.num").all_inner_texts()
    assert any(re.search(r"\d (B|KiB|MiB|GiB)\b", c) for c in cells), cells

    r = w.render()
    assert r["diff"]
    nodes = [n for n in r["nodes"] if not n["context"] and n["depth"] > 0 and n["width"] > 6]
    hot = next(n for n in nodes if n["name"].startswith("compress/flate") and n["change"] > 0.01)
    cold = next(n for n in nodes if n["change"] < -0.01)

    def colours() -> tuple[list[int], list[int]]:
        return _pixel(page, hot), _pixel(page, cold)

    red, blue = colours()
    assert red[0] > red[2] + 40 and blue[2] > blue[0] + 40, (red, blue)
    # The tooltip: both sides in bytes.
    x, y = _center(w, hot)
    page.mouse.move(x, y)
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible", timeout=5_000)
    text = tip.inner_text()
    assert re.search(r"baseline: [\d.]+ (B|KiB|MiB|GiB) \(", text) and "comparison: " in text, text
    assert "samples" not in text and "CPU" not in text
    # At 1280x720 (the window made smaller after loading): the tables fold into their summary line; opened,
    # they list a few rows, their values fit their cells (no p column: bytes are not tested) and the diff graph
    # is on screen below them.
    page.set_viewport_size({"width": 1280, "height": 720})
    wait_js(page, "window.innerWidth === 1280 && !document.getElementById('diff-details').open")
    page.locator("#diff-details summary").click()
    wait_js(page, "document.getElementById('diff-details').open && document.querySelectorAll('#diff-tables "
                  "tbody tr.more, #diff-tables tbody tr.less').length <= 6")
    assert page.locator("#diff-tables th", has_text=re.compile(r"^p$")).count() == 0
    cut = page.evaluate("Array.from(document.querySelectorAll('#diff-tables td.num'))"
                        ".filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent)")
    assert cut == []
    graph = page.locator("#flame").bounding_box()
    assert graph["y"] + 3 * ROW <= 720, graph
    assert "no significance test" in page.locator("#diff-rule").inner_text()
    # Go's qualified names in the tables: cut in the middle (package and own name show, so rows differ), none
    # hidden by the column's edge, the full name as the accessible name.
    names = page.evaluate("Array.from(document.querySelectorAll('#diff-tables td.fn button')).map(b => "
                          "({name: b.dataset.name, text: b.textContent, label: b.getAttribute('aria-label'), "
                          "cut: b.scrollWidth > b.clientWidth + 1}))")
    assert names and not [n for n in names if n["cut"]], names
    assert len({n["text"] for n in names}) == len(names), [n["text"] for n in names]
    for n in names:
        if n["text"] != n["name"]:
            head, _, tail = n["text"].partition("\u2026")
            assert n["name"].startswith(head) and n["name"].endswith(tail) and n["label"] == n["name"], n
    _shot(w, tmp_path, "heap-diff")
    # Selecting a regression keeps red and blue.
    page.locator("#diff-tables td.fn button").first.click()
    wait_js(page, "window.podflame.lastRender.nodes.some(n => n.highlighted)")
    red, blue = colours()
    assert red[0] > red[2] + 40 and blue[2] > blue[0] + 40, (red, blue)

    page.locator("#type").select_option("alloc_objects")
    wait_js(page, "location.hash.includes('type=alloc_objects') && window.podflame.status === 'ready'")
    wait_js(page, "document.getElementById('flame-summary').textContent.includes('objects')")
    assert page.locator("#flame-summary").inner_text().startswith(
        f"baseline {full['alloc_objects']:,} objects \u00b7 comparison "
        f"{full['alloc_objects'] + flate['alloc_objects']:,} objects")
    assert not re.search(r"\bCPU\b|\bsamples\b", page.locator(".flame-pane").inner_text())
    w.assert_clean()


def subprocess_out(argv: list[str]) -> bytes:
    import subprocess

    return subprocess.run(argv, capture_output=True, check=True).stdout


_GRAPH_ROWS_SEEN = """(() => {
    const wrap = document.getElementById('flame-wrap').getBoundingClientRect();
    const c = document.getElementById('flame').getBoundingClientRect();
    const top = Math.max(wrap.top, c.top, 0), bottom = Math.min(wrap.bottom, c.bottom, window.innerHeight);
    return Math.floor(Math.max(0, bottom - top) / ROW);
})()""".replace("ROW", str(ROW))


def test_the_diff_graph_gets_the_screen_beside_its_tables(server: str, watched: Watched, tmp_path: Path) -> None:
    """A comparison of a deep profile (the real Go heap profile against itself plus its compress/flate cut) at
    1280x720 and 1440x900: the diff graph shows a useful number of rows on screen, with no page scroll. At 720 px
    the regression tables start folded into one line naming the top regression and improvement (click to list
    them); at 900 px they start open with a few rows each. (The tables used to leave the graph 4 rows at 720, 11
    at 900.)"""
    heap = _heap_profile()
    focused = tmp_path / "flate.pb.gz"
    focused.write_bytes(subprocess_out(["go", "tool", "pprof", "-proto", "-focus=compress/flate", str(heap)]))
    now = int(time.time())
    _push(server, heap.read_bytes(), "diffroom", now - 20 * 60)
    _push(server, heap.read_bytes(), "diffroom", now - 120)
    _push(server, focused.read_bytes(), "diffroom", now - 110)
    w, page = watched, watched.page
    url = server + "/#" + urllib.parse.urlencode({"q": '{service="diffroom"}', "type": "alloc_space", "cmp": "prev"})
    d = _screenshot_dir(tmp_path)
    for (width, height), least in (((1280, 720), 14), ((1440, 900), 16)):
        page.set_viewport_size({"width": width, "height": height})
        page.goto("about:blank")
        page.goto(url)
        wait_js(page, "window.podflame && window.podflame.diff && window.podflame.status === 'ready'")
        diff = page.evaluate("window.podflame.diff")
        assert max(n["depth"] for n in w.render()["nodes"]) > 30  # deeper than any screen: rows are the limit
        page.screenshot(path=str(d / f"podflame-diff-room-{width}x{height}.png"))
        rows = page.evaluate(_GRAPH_ROWS_SEEN)
        assert rows >= least, (width, height, rows)
        assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight + 1")
        summary = page.locator("#diff-details summary")
        if height < 800:
            # Folded: one line (no wrap), naming the top regression and improvement with their change.
            assert not page.evaluate("document.getElementById('diff-details').open")
            peek = page.locator("#diff-peek").inner_text()
            top_reg = diff["regressions"][0].rsplit(".", 1)[-1]
            assert top_reg in peek and re.search(r"\+\d+\.\d+ pp", peek), peek
            assert re.search("\u2212\\d+\\.\\d+ pp", peek), peek
            assert summary.bounding_box()["height"] < 26
            assert page.evaluate("(s => s.scrollWidth <= s.clientWidth + 1)"
                                 "(document.querySelector('#diff-details summary'))")
            page.emulate_media(color_scheme="dark")
            page.screenshot(path=str(d / f"podflame-diff-room-{width}x{height}-dark.png"))
            page.emulate_media(color_scheme="light")
            # A click lists them (and the choice holds for the next comparison drawn).
            summary.click()
            wait_js(page, "document.getElementById('diff-details').open")
            assert page.locator("#diff-tables tbody tr.more").count() >= 3
            assert page.locator("#diff-peek").is_hidden()
            page.screenshot(path=str(d / f"podflame-diff-room-{width}x{height}-open.png"))
            page.locator("#type").select_option("alloc_objects")
            wait_js(page, "location.hash.includes('type=alloc_objects') && window.podflame.status === 'ready'")
            assert page.evaluate("document.getElementById('diff-details').open")
        else:
            assert page.evaluate("document.getElementById('diff-details').open")
            assert 1 <= page.locator("#diff-tables table").first.locator("tbody tr.more").count() <= 4
    w.assert_clean()


def test_the_graph_asks_for_what_the_screen_can_show_compressed(server: str, browser) -> None:
    """The page asks for max_nodes from the screen's width (64 per px, so a frame a pixel wide is kept and
    nothing narrower is sent), and the server's answer comes compressed as the browser accepts it."""
    for screen_width, expected in ((1280, 1280 * 64), (2560, 2560 * 64)):
        context = browser.new_context(viewport={"width": 1280, "height": 720},
                                      screen={"width": screen_width, "height": 1440})
        try:
            page = context.new_page()
            answers: list = []
            page.on("response", lambda r, got=answers: got.append(r) if "/api/v1/flamegraph?" in r.url else None)
            page.goto(server + "/")
            wait_js(page, "window.podflame && window.podflame.status === 'ready'")
            assert answers, "no flame-graph request"
            query = urllib.parse.parse_qs(urllib.parse.urlparse(answers[0].url).query)
            assert query["max_nodes"] == [str(expected)], query
            headers = answers[0].all_headers()
            assert headers.get("content-encoding") in ("gzip", "zstd", "br"), headers
        finally:
            context.close()


def test_replica_names_in_the_list_keep_their_distinct_ends(server: str, watched: Watched, tmp_path: Path) -> None:
    """Two replicas of one deployment differ only at the end of their names: at 1280 px, where the list's name
    column is narrower than the names, each is cut in its middle (its start and the replica suffix both show), so the
    rows stay tellable apart; the full name is the row's tooltip."""
    from tests.builders import ingest_url

    names = ["checkout-service-7d9f8b5c6d-x2x4q", "checkout-service-7d9f8b5c6d-k8m2p"]
    for k, pod in enumerate(names):
        labels = {"cgroup": f"/kubepods.slice/pod-r{k}.slice/cri-r{k}.scope", "pod_uid": f"uid-r{k}",
                  "container_id": f"cr{k}", "namespace": "payments", "pod": pod, "container": "app", "comm": "app"}
        ingest_url(server, [_profile(labels, {("main", "hash"): 10 * (k + 1)})])
    w, page = watched, watched.page
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(server + "/#" + urllib.parse.urlencode({"q": '{namespace="payments"}'}))
    w.settle(1)
    rows = page.evaluate("Array.from(document.querySelectorAll('#targets button.target:not(.target-all)')).map(b => "
                         "({text: b.querySelector('.t-name').textContent, title: b.title, "
                         "cut: (e => e.scrollWidth > e.clientWidth + 1)(b.querySelector('.t-name'))}))")
    assert len(rows) == 2, rows
    assert not [r for r in rows if r["cut"]], rows
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == 2, texts
    for r in rows:
        full = next(f"payments/{n}" for n in names if n[-5:] in r["text"])
        assert r["text"].startswith("pay") and r["text"].endswith(full[-5:]) and full in r["title"], r
        head, _, tail = r["text"].partition("\u2026")
        assert full.startswith(head) and full.endswith(tail)
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-replicas-1280x720.png"))
    w.assert_clean()
