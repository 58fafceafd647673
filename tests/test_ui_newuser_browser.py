"""What a new user met in the page (stop 25, ux25), in real Chromium against the real server.

- The list is "sorted by CPU" (README): a pushed 1 kHz profile with more samples but less CPU than the
  agent's 100 Hz one is listed below it, and its bar is the shorter.
- A cgroup the agent could not name (`cgroup-id:N`: removed before its path was read) and the root
  cgroup `/` are described as such, not with a parent cut from the name ("c", "/").
- Downloads are saved under the name the page gives (selection and range), also where the server
  answers with a Content-Disposition name (pprof, speedscope), which browsers prefer to `download`.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podflame import pprof
from podflame.model import Frame, Line, Profile
from tests import test_ui_browser
from tests.builders import ingest_url
from tests.realsys import live_server
from tests.test_ui_browser import Watched, wait_js

pytestmark = pytest.mark.browser
watched = test_ui_browser.watched  # the fixture: a page whose console errors and dialogs are recorded

HEAVY = "/system.slice/heavy.service"  # 100 samples at 100 Hz: 1 s of CPU
DENSE = "/system.slice/dense.service"  # 300 samples at 1 kHz: 0.3 s of CPU, but more samples
GONE = "cgroup-id:158"  # as profiler/agent.py names a cgroup whose path it could not read
ROOT = "/"


def _profile(cgroup: str, comm: str, count: int, period_ns: int) -> Profile:
    p = Profile(labels={"node": "n1", "cgroup": cgroup, "comm": comm}, start_ns=time.time_ns() - 120 * 10**9,
                duration_ns=10**10, period_ns=period_ns)
    p.add((Frame(0x401000, lines=(Line("main", "app.c", 3),)),
           Frame(0x401100 + len(comm), lines=(Line(f"{comm}_work", "app.c", 9),))), count)
    return p


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("ui-newuser")) as url:
        # one pprof holds one period: one push per period
        ingest_url(url, [_profile(HEAVY, "heavy", 100, 10_000_000), _profile(GONE, "gone", 40, 10_000_000),
                         _profile(ROOT, "bash", 20, 10_000_000)])
        ingest_url(url, [_profile(DENSE, "dense", 300, 1_000_000)])
        yield url


def _open_heavy(w: Watched, server: str):
    """The page with heavy.service selected and its graph drawn."""
    w.page.goto(server + "/")
    w.settle(1)
    before = w.page.evaluate("window.podflame.renders")
    w.page.locator("button.target", has_text="heavy.service").click()
    w.settle(before + 1)
    return w.page


def _rows(w: Watched) -> list[dict]:
    return w.page.evaluate("""[...document.querySelectorAll('button.target:not(.target-all)')].map(b => ({
        name: b.querySelector('.t-name').textContent,
        details: [...b.querySelectorAll('.t-detail')].map(s => s.textContent),
        fill: parseFloat(b.querySelector('.t-fill').style.width)}))""")


def test_the_list_is_sorted_by_cpu_and_names_unnamed_cgroups(server: str, watched: Watched) -> None:
    w = watched
    w.page.goto(server + "/")
    w.settle(1)
    rows = _rows(w)
    names = [r["name"] for r in rows]
    # 1 s, 0.4 s, 0.3 s (300 samples), 0.2 s of CPU
    assert names == ["heavy.service", GONE, "dense.service", ROOT], names
    by_name = {r["name"]: r for r in rows}
    assert by_name["heavy.service"]["fill"] == pytest.approx(100)
    assert by_name["dense.service"]["fill"] == pytest.approx(30, abs=0.5)  # its CPU, not its 3x samples
    assert by_name[GONE]["details"][0] == "cgroup removed before its path was read"
    assert by_name[ROOT]["details"][0].startswith("root cgroup")
    assert by_name["heavy.service"]["details"][0] == "/system.slice"
    w.assert_clean()


@pytest.mark.parametrize(("link", "ext"), [("dl-pprof", ".pb.gz"), ("dl-speedscope", ".speedscope.json"),
                                           ("dl-folded", ".folded.txt")])
def test_downloads_are_saved_under_the_pages_name(server: str, watched: Watched, tmp_path: Path,
                                                  link: str, ext: str) -> None:
    w, page = watched, _open_heavy(watched, server)
    named = page.locator(f"#{link}").get_attribute("download")
    assert named.startswith("podflame-heavy.service-"), named
    assert named.endswith(ext)
    with page.expect_download() as dl:
        page.locator(f"#{link}").click()
    assert dl.value.suggested_filename == named
    saved = tmp_path / named
    dl.value.save_as(saved)
    if ext == ".pb.gz":  # the file is the selection's profile
        totals = [p.total() for p in pprof.decode(gzip.decompress(saved.read_bytes()))]
        assert 100 in totals, totals  # the samples (beside cpu nanoseconds)
    w.assert_clean()


def test_a_search_kept_through_a_refused_then_empty_baseline_throws_nothing(server: str, watched: Watched) -> None:
    """Search stepped to a match (Enter), then "Compare with: custom" with a bad time (400), then a baseline
    with no samples: the page threw "Cannot read properties of undefined (reading 'start')" (searchStats
    read the zoomed node of a tree that was not there)."""
    w, page = watched, _open_heavy(watched, server)
    page.keyboard.press("/")
    page.keyboard.type("heavy_work")
    page.keyboard.press("Enter")
    page.select_option("#compare", label="custom")
    page.fill("#base-from", "now-10m")
    page.fill("#base-to", "banana")
    page.click("#base-apply")
    wait_js(page, "document.getElementById('message').textContent.includes(\"bad time 'banana'\")")
    # the bad field is the compare form's, not the selector above
    assert "Fix it in the \u201cCompare with\u201d form" in page.locator("#message").inner_text()
    w.errors = [e for e in w.errors if "status of 400" not in e]  # the refused request, logged by Chromium
    page.fill("#base-from", "now-50m")
    page.fill("#base-to", "now-40m")
    page.fill("#base-query", '{cgroup="/no/such.service"}')
    page.click("#base-apply")
    wait_js(page, "document.getElementById('diff-note').textContent.includes('No samples in the baseline')")
    w.settle()
    time.sleep(0.5)  # a rejected promise is reported after the answer is drawn
    result = page.locator("#search-result").inner_text()
    assert result.startswith("100% of total"), result
    w.assert_clean()
