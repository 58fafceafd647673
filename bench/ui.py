"""UI benchmark in headless Chromium (Playwright) against a real server: how long until a graph is on screen.

Cases, each through the whole path (HTTP API with gzip, JSON parse, layout, canvas draw):
- `profile_100k`: navigation to a drawn flame graph of one profile of ~100k nodes (4 levels, 100k leaves).
- `node_day`: navigation to a drawn graph of a whole node over `--hours` (default 24) of bench/store.py's
  synthetic day (100 pods, a drain every 10 s, through the real ingest path and compaction), the API included.
- `profile_100k_cold`: the same view as the first request of a server process just started on the same data
  (nothing translated or kept yet: a restart, or the first person after a deploy), one fresh server per run.
- `zoom_redraw` / `search_redraw`: one zoom (click path: render + URL + search stats) and one regex search
  redraw of the 100k graph, best and median of several.
Each navigation also reports where its time went, from the page's `pf:*` performance marks (medians):
`html_ms` when the page's HTML is in, `boot_ms` when boot.js asks for the graph, `app_ms` when app.js starts (its
modules loaded), `answer_ms` when the graph's answer is read, `drawn` after (the draw's script done), and
`painted_ms` when the frame showing it was produced (the canvas rastered: a task after the next animation frame).
The first picture comes from a preview answer (web/query/treebin.py: the frames wide enough to be drawn on their
own at the screen's width, the same pixels as the whole tree's); `whole_ms` is when the whole tree is in too
(the function table filled, search and zoom on every frame); `transfer_bytes`/`decoded_bytes` are the first
answer's, `whole_*` the whole tree's.
The peer, measured in the same page: Chromium's own `JSON.parse` of the same payload (the floor of any
page fed JSON), so `ratio_to_json_parse` says what drawing adds on top of merely reading the answer.
The server runs in a process of its own (as deployed; in this one the driver's polling took its GIL), fresh
browser context per run: `ms_first` is the server's first sight of the data, later runs may be answered from
its kept trees (web/query/treecache.py), as a reload or a shared link is.
Targets (issue 16): 100k nodes < 300 ms, node-day < 1 s, redraws < 30 ms.

    .venv/bin/python bench/ui.py --hours 2      # a quicker node "day"
Progress goes to stderr; the last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podflame import pprof
from podflame.model import Frame, Line, Profile

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
TARGETS_MS = {"profile_100k": 300, "node_day": 1000, "zoom_redraw": 30, "search_redraw": 30}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def big_profile(now_ns: int) -> Profile:
    """main -> 50 modules -> 40 functions each -> 50 leaves each: 1 + 50 + 2,000 + 100,000 nodes."""
    p = Profile(labels={"cgroup": "/system.slice/big.service", "comm": "big"}, start_ns=now_ns - 60 * 10**9,
                duration_ns=10**10, period_ns=10**7)
    addr = iter(range(0x400000, 1 << 40, 16))
    main = Frame(next(addr), lines=(Line("main"),))
    for m in range(50):
        mod = Frame(next(addr), lines=(Line(f"module_{m:02d}::dispatch"),))
        for f in range(40):
            fn = Frame(next(addr), lines=(Line(f"module_{m:02d}::handler_{f:02d}"),))
            for k in range(50):
                leaf = Frame(next(addr), lines=(Line(f"module_{m:02d}::handler_{f:02d}::step_{k:02d}"),))
                p.add((main, mod, fn, leaf), 1 + (m * 7 + f * 3 + k) % 13)
    return p


def serve_forever(data: Path) -> None:
    """The server alone in this process (`--serve DIR`): prints its port, serves until SIGTERM."""
    import signal

    from werkzeug.serving import make_server

    from web.server.app import create_app

    # No background compaction: a pass in the middle of the runs would change what they read.
    app = create_app({"DATA_DIR": str(data), "MAINTENANCE_SECONDS": 0})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on stderr
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown, daemon=True).start())
    print(httpd.server_port, flush=True)
    httpd.serve_forever()
    app.extensions["podflame.store"].close()


class Server:
    """`podflame`'s server in a process of its own, as deployed: the browser driver's polling in this process
    must not take the server's GIL (in one process it added hundreds of ms to every answer)."""

    def __init__(self, data: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(data)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def wait(page, expression: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        time.sleep(0.005)


def navigate(browser, url: str, runs: int) -> dict[str, Any]:
    """Fresh page per run (nothing cached but the server's own caches): ms from navigation start to the
    first drawn graph, the node count, and the peer (JSON.parse of the same flame-graph payload).
    The first run is the server's first sight of the data (`ms_first`: names translated, tree built);
    later runs may be served from its kept answers (web/query/treecache.py), as a reload or a link is."""
    times, parse, api_ms, client_ms, app_ms, answer_ms, whole_ms = [], [], [], [], [], [], []
    html_ms, boot_ms, painted_ms = [], [], []
    nodes = 0
    for _ in range(runs):
        ctx = browser.new_context(viewport={"width": 1920, "height": 1080}, screen={"width": 1920, "height": 1080})
        page = ctx.new_page()
        page.goto(url)
        wait(page, "window.podflame && window.podflame.drawnAt !== null")
        times.append(page.evaluate("window.podflame.drawnAt"))
        # The whole tree in (table filled; search and zoom on every frame): after the first picture when
        # that was a preview (web/query/treebin.py), else the same moment.
        wait(page, "window.podflame.wholeAt !== null || window.podflame.status !== 'loading'")
        whole_ms.append(page.evaluate("window.podflame.wholeAt") or times[-1])
        nodes = page.evaluate("window.podflame.flame.data.levels.reduce((a, l) => a + l.n, 0)")
        api = page.evaluate("performance.getEntriesByType('resource')"
                            ".filter(e => e.name.includes('/api/v1/flamegraph'))"
                            ".map(e => [e.name, e.startTime, e.responseEnd, e.transferSize, e.decodedBodySize])")
        _, started, ended, transfer, decoded = api[0]  # the first picture's answer (a preview, or the whole tree)
        api_ms.append(ended - started)
        client_ms.append(times[-1] - ended)
        name, _, _, whole_transfer, whole_decoded = api[-1]  # the whole tree's
        marks = page.evaluate("Object.fromEntries(performance.getEntriesByType('mark')"
                              ".map(m => [m.name, m.startTime]))")
        app_ms.append(marks.get("pf:app", 0))
        boot_ms.append(marks.get("pf:boot", 0))
        html_ms.append(page.evaluate("performance.getEntriesByType('navigation')[0].responseEnd"))
        wait(page, "window.podflame.paintedAt !== null")
        painted_ms.append(page.evaluate("window.podflame.paintedAt"))
        answer_ms.append(marks.get("pf:flame-json", 0))
        json_url = name.replace("format=binary", "format=json")  # the peer parses the JSON form of the answer
        parse.append(page.evaluate("""async (u) => {
            const text = await (await fetch(u)).text();
            const t = performance.now(); JSON.parse(text); return performance.now() - t; }""", json_url))
        ctx.close()
    best = min(times)
    return {"ms_best": round(best, 1), "ms_median": round(statistics.median(times), 1), "ms_first": round(times[0], 1),
            "runs": [round(t) for t in times], "api_ms_median": round(statistics.median(api_ms), 1),
            "page_ms_median": round(statistics.median(client_ms), 1),
            "html_ms_median": round(statistics.median(html_ms), 1),
            "boot_ms_median": round(statistics.median(boot_ms), 1),
            "app_ms_median": round(statistics.median(app_ms), 1),
            "answer_ms_median": round(statistics.median(answer_ms), 1),
            "painted_ms_median": round(statistics.median(painted_ms), 1),
            "whole_ms_median": round(statistics.median(whole_ms), 1),
            "nodes": nodes, "transfer_bytes": transfer, "decoded_bytes": decoded,
            "whole_transfer_bytes": whole_transfer, "whole_decoded_bytes": whole_decoded,
            "json_parse_ms": round(min(parse), 1),
            "ratio_to_json_parse": round(best / max(min(parse), 0.1), 1)}


def redraws(browser, url: str) -> dict[str, Any]:
    ctx = browser.new_context(viewport={"width": 1920, "height": 1080}, screen={"width": 1920, "height": 1080})
    page = ctx.new_page()
    page.goto(url)
    wait(page, "window.podflame && window.podflame.status === 'ready'")  # the whole tree in, not a preview
    zoom = page.evaluate("""() => {
        const f = window.podflame.flame, out = [];
        for (let k = 0; k < 12; k++) {
            const t = performance.now(); f.zoomTo(2, (k * 37) % f.data.levels[2].n); out.push(performance.now() - t);
            const u = performance.now(); f.resetZoom(); out.push(performance.now() - u);
        }
        return out; }""")
    search = page.evaluate("""() => {
        const box = document.getElementById('search'), out = [];
        const terms = ['handler_1[0-9]', 'step_0[0-4]$', 'module_4', 'dispatch|step_33', 'handler_0', ''];
        for (let k = 0; k < 12; k++) {
            box.value = terms[k % terms.length];
            const t = performance.now(); box.dispatchEvent(new Event('input')); out.push(performance.now() - t);
        }
        return out; }""")
    ctx.close()
    return {"zoom_redraw": {"ms_best": round(min(zoom), 2), "ms_median": round(statistics.median(zoom), 2)},
            "search_redraw": {"ms_best": round(min(search), 2), "ms_median": round(statistics.median(search), 2)}}


def node_day(hours: float, data: Path) -> tuple[str, int, int]:
    """bench/store.py's synthetic node over `hours`, ingested through the real path into `data`."""
    from bench import store as store_bench
    from bench.synthetic import make_node

    args = argparse.Namespace(hours=hours, pods=100, stacks=300, interval=10, distinct=min(90, int(hours * 360)),
                              runs=1, data=str(data), socket_drains=0, skip_raw_check=True)
    _, start, end = store_bench.ingest_day(args, data, make_node(pods=100, stacks_per_pod=300))
    return store_bench.NODE, start, end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24, help="length of the node's synthetic day")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=3, help="servers started for the cold first view")
    ap.add_argument("--day-data", help="a data directory already holding bench/store.py's day (skips ingest)")
    ap.add_argument("--skip-day", action="store_true", help="only the 100k-node profile and the redraws")
    ap.add_argument("--skip-100k", action="store_true", help="only the node's day")
    ap.add_argument("--serve", help=argparse.SUPPRESS)  # internal: the server process
    args = ap.parse_args()
    if args.serve:
        serve_forever(Path(args.serve))
        return
    from playwright.sync_api import sync_playwright

    result: dict[str, Any] = {"targets_ms": TARGETS_MS}
    with tempfile.TemporaryDirectory(prefix="podflame-bench-ui-") as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        if not args.skip_100k:
            profile_case(browser, Path(tmp) / "big", args, result)

        if args.skip_day:
            pass
        elif args.day_data:
            day_dir = Path(args.day_data)
            meta = json.loads((day_dir / "bench-store.json").read_text())
            start, end = meta["_start"], meta["_end"]
            from bench import store as store_bench
            node = store_bench.NODE
        else:
            day_dir = Path(tmp) / "day"
            log(f"ingesting {args.hours} h of a synthetic node (bench/store.py) ...")
            node, start, end = node_day(args.hours, day_dir)
        if not args.skip_day:
            node_case(browser, day_dir, node, start, end, args, result)
        browser.close()
    for case, target in TARGETS_MS.items():
        if case in result:
            result[case]["target_ms"] = target
            result[case]["meets_target"] = result[case]["ms_best"] < target
    print(json.dumps(result))


def profile_case(browser, data: Path, args: argparse.Namespace, result: dict[str, Any]) -> None:
    server = Server(data)
    body = pprof.encode([big_profile(time.time_ns())])
    req = urllib.request.Request(f"{server.url}/api/v1/ingest", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=300) as r:
        assert r.status == 200
    view = server.url + "/#" + urllib.parse.urlencode({"sel": json.dumps({"cgroup": "/system.slice/big.service"}),
                                                       "view": "graph"})
    log("100k-node profile ...")
    result["profile_100k"] = navigate(browser, view, args.runs)
    result.update(redraws(browser, view))
    server.close()
    log("100k-node profile, first view of a just-started server ...")
    cold = []
    for _ in range(max(1, args.cold_runs)):
        server = Server(data)
        cold.append(navigate(browser, view.replace(view.split("/#")[0], server.url), 1))
        server.close()
    times = [c["ms_first"] for c in cold]
    result["profile_100k_cold"] = {"ms_best": min(times), "ms_median": round(statistics.median(times), 1),
                                   "runs": [round(t) for t in times],
                                   "api_ms_median": round(statistics.median(c["api_ms_median"] for c in cold), 1)}


def node_case(browser, day_dir: Path, node: str, start: int, end: int, args: argparse.Namespace,
              result: dict[str, Any]) -> None:
    server = Server(day_dir)
    day = server.url + "/#" + urllib.parse.urlencode({"q": f'{{node="{node}"}}', "from": str(start // 10**9),
                                               "to": str(end // 10**9), "view": "graph"})
    log("node day ...")
    result["node_day"] = {"hours": args.hours, **navigate(browser, day, args.runs)}
    server.close()


if __name__ == "__main__":
    main()
