"""The CPU chart and compare mode in real Chromium against the real server.

Profiles are ingested at known times with known counts, so what a drag over the chart selects and
what a diff lists are exact: the flame graph's total must equal the samples of the profiles whose
time lies in the range the drag chose (snapped outwards to whole chart steps).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from podflame.model import Frame, Line, Profile
from tests.builders import ingest_url
from tests.realsys import live_server
from tests.test_ui_browser import ROW, Watched, _get, _screenshot_dir, wait_js

pytestmark = pytest.mark.browser

PERIOD_NS = 10_000_000  # 100 Hz: 100 samples = 1 s of CPU
HOSTILE = '<img src=x onerror="window.__pwned=1">'
CHART_CGROUP = "/system.slice/chart.service"
CMP_CGROUP = f"/system.slice/{HOSTILE}.service"
# An hour ago, on a whole minute: the chart's steps then fall on whole seconds of this range.
T0 = (int(time.time()) // 60) * 60 - 3600
CHART_PROFILES = [(T0 + 60 * k + 5, 10 * (k + 1)) for k in range(6)]  # (start, samples of main;work)
C0 = T0 - 1800  # comparison [C0, C0 + 60); its "previous period" [C0 - 60, C0) holds the baseline
BASE_STACKS = {("main", "steady"): 180, ("main", "hot_fn"): 20}
COMP_STACKS = {("main", "steady"): 50, ("main", "hot_fn"): 150, ("main", HOSTILE): 100}
MANY_CGROUP = "/system.slice/many.service"  # six regressions and six improvements: more rows than fit at 720 px
C1 = T0 - 5400
MANY_BASE = {**{("main", f"grows_{k}"): 50 for k in range(6)}, **{("main", f"shrinks_{k}"): 300 for k in range(6)}}
MANY_COMP = {**{("main", f"grows_{k}"): 300 for k in range(6)}, **{("main", f"shrinks_{k}"): 50 for k in range(6)}}

_addresses: dict[str, int] = {}


def _profile(labels: dict[str, str], start_s: float, stacks: dict[tuple[str, ...], int]) -> Profile:
    p = Profile(labels=labels, start_ns=int(start_s * 1e9), duration_ns=10**9, period_ns=PERIOD_NS)
    for names, count in stacks.items():
        p.add(tuple(Frame(_addresses.setdefault(n, 0x500000 + 0x40 * len(_addresses)), lines=(Line(n),))
                    for n in names), count)
    return p


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("ui-compare-data")) as url:
        chart = [_profile({"cgroup": CHART_CGROUP, "comm": "chart"}, t, {("main", "work"): n})
                 for t, n in CHART_PROFILES]
        cmp_labels = {"cgroup": CMP_CGROUP, "comm": HOSTILE}
        # One request per time: an ingest's profiles share the request's time (docs/api.md).
        many = {"cgroup": MANY_CGROUP, "comm": "many"}
        for p in [*chart, _profile(cmp_labels, C0 - 30, BASE_STACKS), _profile(cmp_labels, C0 + 30, COMP_STACKS),
                  _profile(many, C1 - 30, MANY_BASE), _profile(many, C1 + 30, MANY_COMP)]:
            ingest_url(url, [p])
        yield url


@pytest.fixture
def watched(browser) -> Iterator[Watched]:
    w = Watched(browser)
    yield w
    w.context.close()


def _open(w: Watched, server: str, **params: object) -> None:
    frag = urllib.parse.urlencode({k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in params.items()})
    w.page.goto(f"{server}/#{frag}")
    w.settle(1)
    wait_js(w.page, "window.podflame.chart !== null && window.podflame.status === 'ready'")


def _hash(w: Watched) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(w.page.evaluate("location.hash").lstrip("#")))


def _chart_x(w: Watched, t: float) -> tuple[float, float]:
    """Viewport point over the chart at time t (mid-height of the plot)."""
    c = w.page.evaluate("window.podflame.chart")
    box = w.page.locator("#cpu-chart").bounding_box()
    p = c["plot"]
    x = p["left"] + (t - c["from"]) / (c["to"] - c["from"]) * p["width"]
    return box["x"] + x, box["y"] + p["top"] + p["height"] / 2


def _flame_total(w: Watched) -> int:
    return w.page.evaluate("window.podflame.lastRender.nodes.find(n => n.name === 'total').total")


def _wait_ready(w: Watched) -> None:
    wait_js(w.page, "window.podflame.status !== 'loading'")
    assert w.page.evaluate("window.podflame.status") == "ready", w.page.locator("#message").inner_text()


def test_drag_on_the_cpu_chart_chooses_the_flame_graphs_range(server: str, watched: Watched, tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open(w, server, **{"from": T0, "to": T0 + 360, "sel": {"cgroup": CHART_CGROUP}})
    chart = page.evaluate("window.podflame.chart")
    assert (chart["from"], chart["to"]) == (T0, T0 + 360)
    assert chart["cpu"] and chart["total"] == sum(n for _, n in CHART_PROFILES)
    assert _flame_total(w) == chart["total"]
    assert "chart.service" in page.locator("#chart-title").inner_text()
    step = chart["step"]
    assert 60 % step == 0, step  # one profile per bar at most, so the hover below sees one profile

    # Hover: the bar holding the profile at T0+185 (40 samples = 0.4 s of CPU in `step` seconds).
    page.mouse.move(*_chart_x(w, T0 + 185))
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible", timeout=5_000)
    pct = 0.4 / step * 100  # as the page writes it: one decimal from 10%, else two significant digits
    digits = 1 if pct >= 10 else max(0, 1 - math.floor(math.log10(pct)))
    assert f"{pct:.{digits}f}% of a core" in tip.inner_text()
    assert "40 samples" in tip.inner_text()

    # Drag from T0+125 to T0+245: the steps touched are [T0+125 floored, T0+245 ceiled) to the step.
    page.mouse.move(*_chart_x(w, T0 + 125))
    page.mouse.down()
    page.mouse.move(*_chart_x(w, T0 + 245), steps=8)
    page.mouse.up()
    lo, hi = T0 + (125 // step) * step, T0 + -(-245 // step) * step
    wait_js(page, f"location.hash.includes('from={lo}&to={hi}')")
    _wait_ready(w)
    expected = sum(n for t, n in CHART_PROFILES if lo <= t < hi)
    assert 0 < expected < chart["total"]
    assert _flame_total(w) == expected
    h = _hash(w)
    assert (h["from"], h["to"], h["vfrom"], h["vto"]) == (str(lo), str(hi), str(T0), str(T0 + 360))
    # The chart still shows its whole range, with the choice marked; the list follows the sub-range.
    assert page.evaluate("window.podflame.chart.selection") == [lo, hi]
    assert page.evaluate("window.podflame.chart.from") == T0
    assert page.evaluate("window.podflame.targets.map(t => t.value)") == [expected]
    # The way back sits on the chart's title line (its summary wraps beside it rather than pushing it down a line).
    title, back = page.locator("#chart-title").bounding_box(), page.locator("#range-reset").bounding_box()
    assert back["y"] < title["y"] + title["height"], (title, back)
    # Downloads follow the sub-range.
    body = _get(page.locator("#dl-folded").evaluate("a => a.href"))[1].decode()
    assert body.splitlines() == [f"main;work {expected}"]
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-chart-drag.png"), full_page=True)

    # A link reproduces the sub-range and the chart range.
    other = Watched(page.context.browser)
    try:
        other.page.goto(page.url)
        other.settle(1)
        wait_js(other.page, "window.podflame.chart !== null && window.podflame.status === 'ready'")
        assert _flame_total(other) == expected
        assert other.page.evaluate("window.podflame.chart.selection") == [lo, hi]
        other.assert_clean()
    finally:
        other.context.close()

    # Back to the whole chart range, from the keyboard.
    reset = page.locator("#range-reset")
    assert reset.is_visible() and reset.inner_text() == "Back to the whole chart"
    reset.focus()
    page.keyboard.press("Enter")
    wait_js(page, f"location.hash.includes('from={T0}&to={T0 + 360}')")
    _wait_ready(w)
    assert _flame_total(w) == chart["total"]
    assert "vfrom" not in _hash(w) and reset.is_hidden()
    assert page.evaluate("window.podflame.chart.selection") is None

    # A preset, from the keyboard too, drops the chart range (nothing in the last 5 minutes here).
    page.locator('button.preset[data-range="5m"]').focus()
    page.keyboard.press("Enter")
    wait_js(page, "location.hash.includes('from=now-5m')")
    _wait_ready(w)
    assert page.locator("#chart-empty").inner_text() == "No samples in the chart's range for this selection."
    w.assert_clean()


def _open_compare(w: Watched, server: str, mode: str) -> None:
    _open(w, server, **{"from": C0, "to": C0 + 60, "sel": {"cgroup": CMP_CGROUP}})
    w.page.locator("#compare").select_option(mode)


def test_compare_with_the_previous_period_lists_the_hotter_function(server: str, watched: Watched,
                                                                   tmp_path: Path) -> None:
    w, page = watched, watched.page
    _open_compare(w, server, "prev")
    _wait_ready(w)
    diff = page.evaluate("window.podflame.diff")
    assert (diff["base_total"], diff["comp_total"]) == (200, 300)
    assert diff["regressions"][0] == "hot_fn" and HOSTILE in diff["regressions"]
    assert diff["improvements"] == ["steady"]
    h = _hash(w)
    assert h["cmp"] == "prev" and (h["from"], h["to"]) == (str(C0), str(C0 + 60))
    assert page.evaluate("window.podflame.chart.baseline") == [C0 - 60, C0]

    # The regression table: names as text (the hostile one too), changes in percentage points.
    rows = page.locator("#diff-tables table").first.locator("tbody tr")
    assert rows.first.locator("td.fn").inner_text() == "hot_fn"
    assert rows.first.locator("td.change").inner_text() == "+40.0 pp"  # 20/200 -> 150/300
    # (a long name shows cut in the middle; the full one is the button's name and tooltip, as text)
    assert HOSTILE in rows.locator("td.fn button").evaluate_all("bs => bs.map(b => b.dataset.name)")
    shown = [t for t in rows.locator("td.fn").all_inner_texts() if t.startswith("<img")]
    assert len(shown) == 1 and HOSTILE.startswith(shown[0].partition("\u2026")[0])
    assert page.locator("#diff-tables img, #flame-title img, #chart-title img").count() == 0
    assert HOSTILE in page.locator("#chart-title").inner_text()
    assert page.evaluate("window.__pwned") is None

    # The diff flame graph: width = mean of the two shares; red for more, blue for less.
    r = w.render()
    assert r["diff"]
    by_name = {n["name"]: n for n in r["nodes"] if not n["context"]}
    assert by_name["hot_fn"]["width"] / r["width"] == pytest.approx((0.1 + 0.5) / 2, rel=0.01)
    assert by_name["hot_fn"]["change"] == pytest.approx(0.4)
    assert by_name["steady"]["change"] == pytest.approx(50 / 300 - 0.9)

    def pixel(node: dict) -> list[int]:
        x, y = node["x"] + 2, node["depth"] * ROW + 2
        return page.evaluate(f"Array.from(document.getElementById('flame').getContext('2d')"
                             f".getImageData({x}, {y}, 1, 1).data)")

    red, blue = pixel(by_name["hot_fn"]), pixel(by_name["steady"])
    assert red[0] > red[2] + 40, red
    assert blue[2] > blue[0] + 40, blue

    # The tooltip shows both sides and the change.
    node = by_name["hot_fn"]
    box = page.locator("#flame").bounding_box()
    page.mouse.move(box["x"] + node["x"] + node["width"] / 2, box["y"] + node["depth"] * ROW + ROW / 2)
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible", timeout=5_000)
    text = tip.inner_text()
    assert "baseline: 20 samples (10.0%)" in text and "comparison: 150 samples (50.0%)" in text
    assert "change: +40.0 pp of total" in text
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-diff.png"), full_page=True)

    # Clicking a function in the table selects it: its frames are outlined and the diff colours stay
    # red/blue (it used to search, which repainted the whole graph in search colours).
    rows.first.locator("td.fn button").click()
    wait_js(page, "window.podflame.lastRender.nodes.some(n => n.highlighted)")
    assert page.locator("#search").input_value() == ""
    r = w.render()
    assert [n["name"] for n in r["nodes"] if n["highlighted"]] == ["hot_fn"]
    assert "fn=hot_fn" in page.evaluate("location.hash")
    by_name = {n["name"]: n for n in r["nodes"] if not n["context"]}
    red, blue = pixel(by_name["hot_fn"]), pixel(by_name["steady"])
    assert red[0] > red[2] + 40, red
    assert blue[2] > blue[0] + 40, blue
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-diff-selected.png"))
    # At 1280x720 the tables fold into their summary line, which names the top regression and improvement, and
    # the diff graph gets the room; opened, everything is on screen without scrolling anything: the two tables
    # side by side (no scroll box of their own), every row of them, and the diff graph below them.
    page.set_viewport_size({"width": 1280, "height": 720})
    wait_js(page, "window.innerWidth === 1280 && !document.getElementById('diff-details').open")
    peek = page.locator("#diff-peek")
    assert peek.is_visible()
    assert peek.locator("span").all_inner_texts() == ["hot_fn", "+40.0 pp", "steady", "\u221273.3 pp"]
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-diff-1280x720-folded.png"))
    page.locator("#diff-details summary").click()
    wait_js(page, "document.getElementById('diff-details').open")
    page.evaluate("window.podflame.rerender()")
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-diff-1280x720.png"))
    assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight + 1")
    for box in ("#diff-details", ".flame-pane"):
        assert page.evaluate(f"(e => e.scrollHeight <= e.clientHeight + 1)(document.querySelector('{box}'))"), box
    tables = page.locator("#diff-tables table")
    assert tables.count() == 2
    first, second = tables.nth(0).bounding_box(), tables.nth(1).bounding_box()
    assert abs(first["y"] - second["y"]) < 2 and second["x"] >= first["x"] + first["width"]  # side by side
    for row in page.locator("#diff-tables tbody tr").all():
        b = row.bounding_box()
        assert b is not None and b["y"] + b["height"] <= 720, b
    graph = page.locator("#flame").bounding_box()
    assert graph["y"] + 3 * ROW <= 720, graph
    page.set_viewport_size({"width": 1400, "height": 900})

    # Downloads: the two-column folded diff and speedscope.
    folded = _get(page.locator("#dl-folded-diff").evaluate("a => a.href"))[1].decode().splitlines()
    assert sorted(folded) == sorted([f"main;{HOSTILE} 0 100", "main;hot_fn 20 150", "main;steady 180 50"])
    scope = json.loads(_get(page.locator("#dl-speedscope").evaluate("a => a.href"))[1])
    assert {f["name"] for f in scope["shared"]["frames"]} == {"main", "steady", "hot_fn", HOSTILE}

    # Custom: the fields are prefilled and focused, nothing runs until Compare; the same baseline typed
    # in then gives the same diff.
    renders = w.renders()
    page.locator("#compare").select_option("custom")
    _wait_ready(w)
    time.sleep(0.3)
    assert w.renders() == renders and page.evaluate("document.activeElement.id") == "base-from"
    # The prefilled times read as times (local RFC 3339), not raw unix seconds.
    for field in ("#base-from", "#base-to"):
        value = page.locator(field).input_value()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", value), value
    page.locator("#base-from").fill(str(C0 - 60))
    page.locator("#base-to").fill(str(C0))
    page.locator("#base-apply").click()
    wait_js(page, f"location.hash.includes('bfrom={C0 - 60}')")
    _wait_ready(w)
    assert page.evaluate("window.podflame.diff.regressions[0]") == "hot_fn"
    assert page.evaluate("window.podflame.diff.base_total") == 200
    # Typed as unix seconds, they are shown as times too, and applied as shown they mean the same instants.
    shown = page.locator("#base-from").input_value()
    assert not re.fullmatch(r"[\d.]+", shown) and re.fullmatch(r"\d{4}-.*", shown), shown
    page.locator("#base-apply").click()
    wait_js(page, "location.hash.includes('bfrom=' + encodeURIComponent(document.getElementById('base-from').value))")
    _wait_ready(w)
    assert page.evaluate("window.podflame.diff.base_total") == 200
    assert page.evaluate("window.podflame.chart.baseline") == [C0 - 60, C0]

    # Back to no comparison: the plain flame graph and no diff extras.
    page.locator("#compare").select_option("")
    _wait_ready(w)
    assert page.evaluate("window.podflame.diff") is None
    assert page.locator("#diff-details").is_hidden() and page.locator("#dl-folded-diff").is_hidden()
    assert _flame_total(w) == 300
    assert page.evaluate("window.__pwned") is None
    w.assert_clean()


def test_compare_states_an_empty_baseline_and_a_bad_one(server: str, watched: Watched) -> None:
    w, page = watched, watched.page
    # Nothing selected: the chart shows everything the (empty) selector matches.
    _open(w, server, **{"from": C0 - 60, "to": C0 + 60})
    assert page.evaluate("window.podflame.chart.total") == 200 + 300
    assert page.locator("#chart-title").inner_text() == "CPU: all matching the selector"

    _open_compare(w, server, "yday")
    _wait_ready(w)
    assert page.evaluate("window.podflame.diff.base_total") == 0
    note = page.locator("#diff-note")
    assert note.is_visible() and "No samples in the baseline range" in note.inner_text()
    assert page.locator("#diff-tables").inner_text() == "Nothing to compare: one of the ranges has no samples."
    assert "baseline:" in page.locator("#base-text").inner_text()

    # A baseline the server refuses: its message is shown, not swallowed.
    page.locator("#compare").select_option("custom")
    _wait_ready(w)
    page.locator("#base-from").fill("yesterday-ish")
    page.locator("#base-apply").click()
    wait_js(page, "window.podflame.status === 'error'")
    assert "bad base_from" in page.locator("#message").inner_text()
    w.errors = [e for e in w.errors if "400" not in e]  # the browser logs the failed fetch itself
    w.assert_clean()


def test_time_expressions_shift_as_the_server_reads_them(server: str, watched: Watched) -> None:
    """The page's range arithmetic (web/static/timeexpr.js): relative ranges stay relative, others become
    unix seconds, and what it writes parses on the server to the intended instants."""
    w, page = watched, watched.page
    page.goto(server + "/")
    w.settle(1)
    got = page.evaluate("""async () => {
        const t = await import('/ui/static/timeexpr.js');
        return {
            prev: t.shiftRange('now-15m', 'now', -t.rangeSeconds('now-15m', 'now')),
            yday: t.shiftRange('-1h30m', 'now-1h', -86400),
            abs: t.shiftRange('1795000000', '1795000060.5', -86400),
            rfc: t.shiftRange('2026-11-24T12:00:00Z', '2026-11-24T12:15:00+01:00', -60),
            ms: t.formatTime({rel: -0.25}),
            bad: t.shiftRange('yesterday', 'now', -60),
            dur: [t.parseDuration('1h30m'), t.parseDuration('1.5h'), t.parseDuration('15'), t.parseDuration('2d5s')],
        };
    }""")
    assert got["prev"] == {"from": "now-1800s", "to": "now-900s"}
    assert got["yday"] == {"from": "now-91800s", "to": "now-90000s"}
    assert got["abs"] == {"from": "1794913600", "to": "1794913660.5"}
    noon_utc = 1795521600  # 2026-11-24T12:00:00Z
    assert got["rfc"] == {"from": str(noon_utc - 60), "to": str(noon_utc - 3600 + 900 - 60)}
    assert got["ms"] == "now-250ms" and got["bad"] is None
    assert got["dur"] == [5400, 5400, None, 172805]
    # The server reads what the page writes, and reads the RFC 3339 input as the page did.
    for expr in ("now-1800s", "now-250ms"):
        assert _get(f"{server}/api/v1/cpu?from={expr}&to=now%2B1s")[0] == 200, expr
    resp = json.loads(_get(f"{server}/api/v1/cpu?from=1794913660.5&to=2026-11-24T12:15:00%2B01:00&step=1d")[1])
    assert (resp["from"], resp["to"]) == (1794913660.5, noon_utc - 3600 + 900)
    w.assert_clean()


def test_long_diff_tables_show_a_few_rows_and_all_on_request_at_1280x720(server: str, watched: Watched,
                                                                         tmp_path: Path) -> None:
    w, page = watched, watched.page
    page.set_viewport_size({"width": 1280, "height": 720})
    _open(w, server, **{"from": C1, "to": C1 + 60, "sel": {"cgroup": MANY_CGROUP}})
    page.locator("#compare").select_option("prev")
    _wait_ready(w)
    diff = page.evaluate("window.podflame.diff")
    assert sorted(diff["regressions"]) == [f"grows_{k}" for k in range(6)]
    assert sorted(diff["improvements"]) == [f"shrinks_{k}" for k in range(6)]
    tables = page.locator("#diff-tables table")
    # Folded at first (a short window); opened: three rows each and a button for the rest, everything on screen
    # with nothing scrolling.
    assert not page.evaluate("document.getElementById('diff-details').open")
    page.locator("#diff-details summary").click()
    wait_js(page, "document.getElementById('diff-details').open")
    for k in range(2):
        assert tables.nth(k).locator("tbody tr:not(.more-rows)").count() == 3
        assert tables.nth(k).locator("tr.more-rows button").inner_text() == "show all 6"
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-diff-many-1280x720.png"))
    page.evaluate("window.podflame.chart.drawnBefore = true")
    page.emulate_media(color_scheme="dark")
    wait_js(page, "!window.podflame.chart.drawnBefore")  # the chart drew again in the dark theme's colours
    page.screenshot(path=str(_screenshot_dir(tmp_path) / "podflame-diff-many-1280x720-dark.png"))
    page.emulate_media(color_scheme="light")
    assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight + 1")
    assert page.evaluate("(e => e.scrollHeight <= e.clientHeight + 1)(document.querySelector('.flame-pane'))")
    for row in page.locator("#diff-tables tbody tr").all():
        b = row.bounding_box()
        assert b is not None and b["y"] + b["height"] <= 720, b
    # "show all": every row listed (the pane may scroll now: the user asked for the long list).
    tables.nth(0).locator("tr.more-rows button").click()
    wait_js(page, "document.querySelectorAll('#diff-tables tr.more-rows').length === 0")
    for k in range(2):
        assert tables.nth(k).locator("tbody tr").count() == 6
    names = tables.nth(0).locator("td.fn").all_inner_texts()
    assert sorted(names) == [f"grows_{k}" for k in range(6)]
    w.assert_clean()
