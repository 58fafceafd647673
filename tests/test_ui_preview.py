"""The first picture's answer (`/api/v1/flamegraph?format=binary&preview=<px>`, web/query/treebin.py's `preview`):
every frame a view that wide can draw on its own is there, unchanged, with its parent; every frame left out is
under exactly one run node, and no run node covers a kept frame; small trees and bad requests are answered plainly.
The same pixels as the whole tree's are checked in Chromium (tests/test_ui_preview_browser.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from podflame.model import Frame, Line, Profile
from tests.builders import ingest, served
from web.query import treebin

WIDTH = 1280


def _frame(name: str, addrs: dict[str, int]) -> Frame:
    return Frame(addrs.setdefault(name, 0x400000 + 0x10 * len(addrs)), lines=(Line(name, f"{name[:6]}.c", 7),))


def _profile() -> Profile:
    """Wide and uneven: 60 mids with self time (so runs of leaves have gaps), 120 leaves each of 1-9 samples,
    one mid much heavier than the rest, a few deep chains under narrow leaves."""
    p = Profile(labels={"cgroup": "/wide.slice"}, start_ns=0, duration_ns=10**10, period_ns=10**7)
    a: dict[str, int] = {}
    main = _frame("main", a)
    for i in range(60):
        mid = _frame(f"mid_{i:02d}", a)
        p.add((main, mid), 1 + (i % 3) * 150)  # self time: a gap after the mid's children, 0-3 px at 1280
        for j in range(120):
            leaf = _frame(f"leaf_{i:02d}_{j:03d}", a)
            p.add((main, mid, leaf), 1 + (i * 7 + j * 3) % 9)
            if j % 40 == 0:
                p.add((main, mid, leaf, _frame(f"deep_{i}_{j}", a), _frame(f"deeper_{i}_{j}", a)), 2)
    p.add((main, _frame("heavy", a)), 40_000)
    return p


@pytest.fixture
def client(tmp_path: Path):
    with served(tmp_path / "data", [_profile()], time="1000") as client:
        yield client


def _get(client, **params: str):
    return client.get("/api/v1/flamegraph", query_string={"from": "900", "to": "1100", "format": "binary", **params})


def _levels(fg: dict) -> list[np.ndarray]:
    return [np.asarray(lv, dtype=np.float64).reshape(-1, 4) for lv in fg["levels"]]


def test_preview_keeps_every_drawable_frame_and_runs_cover_the_rest(client) -> None:
    whole = _get(client)
    pv = _get(client, preview=str(WIDTH))
    assert whole.status_code == pv.status_code == 200
    full, prev = treebin.decode(whole.data), treebin.decode(pv.data)
    full_levels, prev_levels = _levels(full), _levels(prev)
    root = full["total"]
    limit = treebin.MIN_WIDTH_PX * root / WIDTH
    assert prev["total"] == root and prev["from"] == 900 and prev["to"] == 1100
    assert prev["preview"] == {"width": WIDTH, "nodes": sum(len(lv) for lv in full_levels),
                               "pruned": sum(int((lv[:, 1] < limit).sum()) for lv in full_levels)}
    assert prev["preview"]["pruned"] > 7_000
    assert sum(len(lv) for lv in prev_levels) < 0.1 * prev["preview"]["nodes"]
    assert len(prev_levels) == len(full_levels)
    fmeta = {k: dict(zip(full["names"], full[k], strict=True)) for k in ("kinds", "modules", "locations")}
    for d, (f, p) in enumerate(zip(full_levels, prev_levels, strict=True)):
        kept_full = f[f[:, 1] >= limit]
        runs, kept = p[p[:, 3] < 0], p[p[:, 3] >= 0]
        # Every frame wide enough to be drawn on its own: same place, values and name (by text).
        assert [(s, t, sf, full["names"][int(n)]) for s, t, sf, n in kept_full] == \
               [(s, t, sf, prev["names"][int(n)]) for s, t, sf, n in kept]
        # Every narrow frame lies under exactly one run node; a run node covers no kept frame.
        narrow = f[f[:, 1] < limit]
        for s, t, _, _ in narrow:
            assert ((runs[:, 0] <= s) & (s + t <= runs[:, 0] + runs[:, 1])).sum() == 1, (d, s, t)
        for s, t, sf, _ in runs:
            assert sf == 0 and t > 0
            assert not ((kept_full[:, 0] < s + t) & (kept_full[:, 0] + kept_full[:, 1] > s)).any()
        # Runs are no wider than what they stand for: each starts and ends at a narrow frame's edge, and bridges
        # no gap the page would not (one wider than MIN_WIDTH_PX at this width splits a run).
        for s, t, _, _ in runs:
            assert s in set(narrow[:, 0]) and s + t in set(narrow[:, 0] + narrow[:, 1])
            inside = narrow[(narrow[:, 0] >= s) & (narrow[:, 0] < s + t)]
            gaps = inside[1:, 0] - (inside[:-1, 0] + inside[:-1, 1])
            assert (gaps <= limit).all()
        if d == 3:  # the leaves (under the root and main): the mids' self time splits them into many runs
            assert len(runs) > 20
    # Kept frames keep their metadata; their parents are the same frames as in the whole tree.
    for k in ("kinds", "modules", "locations"):
        assert all(fmeta[k][n] == v for n, v in zip(prev["names"], prev[k], strict=True))
    pv_bin = treebin._sections(pv.data)[3]
    for d in range(1, len(pv_bin)):
        up_start, name, parent = pv_bin[d - 1][0], pv_bin[d][3], pv_bin[d][4]
        start = pv_bin[d][0]
        for i in np.flatnonzero(name >= 0):
            assert parent[i] >= 0 and up_start[parent[i]] <= start[i]
        assert (parent[name < 0] == -1).all()


def test_preview_of_a_small_tree_is_the_tree_and_kept(client) -> None:
    """Nothing to leave out at a wide view (or too little): the whole answer, no `preview` key, no second fetch."""
    a: dict[str, int] = {}
    ingest(client, [Profile(labels={"cgroup": "/small.slice"}, start_ns=0, duration_ns=10**10, period_ns=10**7,
                            samples={(_frame("a", a), _frame("b", a)): 5, (_frame("a", a),): 3})], time="1000")
    q = {"query": '{cgroup="/small.slice"}'}
    whole, pv = _get(client, **q), _get(client, preview="1920", **q)
    assert pv.data == whole.data and "preview" not in treebin.decode(pv.data)
    # A preview answer is kept and gzipped like the whole one (its kept deflate stream and this request's tail).
    again = client.get("/api/v1/flamegraph", query_string={"from": "900", "to": "1100", "format": "binary",
                                                           "preview": str(WIDTH)}, headers={"Accept-Encoding": "gzip"})
    assert again.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(again.data) == _get(client, preview=str(WIDTH)).data


@pytest.mark.parametrize(("params", "why"), [({"preview": "1920", "format": "json"}, "preview needs format=binary"),
                                             ({"preview": "5"}, "bad preview"), ({"preview": "x"}, "bad preview")])
def test_bad_preview_is_a_clear_400(client, params: dict[str, str], why: str) -> None:
    r = _get(client, **params)
    assert r.status_code == 400 and why in r.json["error"]
