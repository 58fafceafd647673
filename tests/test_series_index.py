"""The SQLite store's series index (web/store/sqlite_series.py) against brute force over the rows written.

A node with many short-lived processes (a series each, by `pid`), long-lived ones sampled steadily, and
long-lived ones sampled only now and then (their rows straddle most ranges with nothing inside: the index
cannot decide them from their spans and must look them up). Label names, label values, types and the series
select() reads are compared, for random ranges and every matcher kind, with what the written profiles say:
before and after compaction, after a retention cut, and after reopening the store (the index rebuilt).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import put
from web.store.selector import Selector, parse_selector
from web.store.sqlite import SqliteStore

S = 1_000_000_000
H = 3600 * S
T0 = 1_795_000_000 * S - (1_795_000_000 * S) % H
EXE = Mapping(0x1000, 0x90000, 0, "/usr/bin/app", "5e11")
STACK = (Frame(0x1010, EXE, FrameKind.NATIVE, (Line("main"),)),)
SELECTORS = ["{}", '{pod="p1"}', '{pod!="p1"}', '{pod=~"p[12]"}', '{pod!~"p[12]"}', '{tier=""}', '{tier!=""}',
             '{tier=~"b.*"}', '{pid=~"s1.*"}', '{ns="shop", comm!~"sh|curl"}', '{missing=~".*"}', '{missing="x"}',
             '{comm=~"sh|curl", pod!="p0"}', '{pid="s7"}', '{pid!~".+"}', '{ns=~""}']
Row = tuple[dict[str, str], str, int]  # labels, sample type, start


def _profile(labels: dict[str, str], sample_type: str, start: int) -> Profile:
    p = Profile(labels=labels, start_ns=start, duration_ns=10 * S, period_ns=10**7)
    if sample_type == "cpu":
        p.sample_type, p.unit = "cpu", "nanoseconds"
    p.add(STACK, 2)
    return p


def _node(store: SqliteStore, long_lived: int, short_lived: int, seed: int) -> list[Row]:
    """Writes 4 h of a node and returns every row written (the truth)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(long_lived):
        labels = {"pod": f"p{i % 5}", "ns": "shop" if i % 2 else "infra", "pid": f"L{i}", "comm": "app"}
        if i % 3 == 0:  # now and then: rows at the ends of the 4 h and a few between, far apart
            labels["tier"] = f"batch{i % 4}"
            starts = sorted({T0 + 5 * S, T0 + 4 * H - 20 * S, *(T0 + rng.randrange(4 * H // S) * S for _ in range(2))})
        else:
            starts = [T0 + k * 600 * S + i * S for k in range(24)]
        rows += [(labels, "samples", t) for t in starts]
        rows += [(labels, "cpu", t) for t in starts if i % 2]
    for k in range(short_lived):
        labels = {"pod": f"p{rng.randrange(5)}", "ns": rng.choice(["shop", "infra"]), "pid": f"s{k}",
                  "comm": rng.choice(["sh", "curl", "probe"])}
        t = T0 + rng.randrange(4 * H // S) * S
        rows += [(labels, "samples", t)] + ([(labels, "samples", t + 10 * S)] if k % 4 == 0 else [])
    order = sorted(range(len(rows)), key=lambda j: rows[j][2])
    for i in range(0, len(order), 60):
        put(store, [_profile(*rows[j]) for j in order[i:i + 60]])
    return rows


def _active(rows: Iterable[Row], selector: Selector, t0: int, t1: int, sample_type: str | None = None) -> list[Row]:
    return [r for r in rows if t0 <= r[2] < t1 and selector.matches(r[0]) and sample_type in (None, r[1])]


def _check(store: SqliteStore, rows: list[Row], ranges: list[tuple[int, int]], rng: random.Random) -> None:
    for t0, t1 in ranges:
        for text in rng.sample(SELECTORS, 6):
            sel = parse_selector(text)
            active = _active(rows, sel, t0, t1)
            where = (text, t0 - T0, t1 - T0)
            assert store.label_names(t0, t1, sel) == sorted({k for r in active for k in r[0]}), where
            for name in ("pid", "pod", "tier", "comm", "missing"):
                assert store.label_values(name, t0, t1, sel) == sorted({r[0][name] for r in active if name in r[0]}), \
                    (name, *where)
            for prefix, limit in (("s1", 5), ("L", None), ("", 3), ("zz", 1)):  # autocomplete
                want = sorted({r[0]["pid"] for r in active if r[0]["pid"].startswith(prefix)})
                page = (want[:limit], len(want) > limit) if limit else (want, False)
                assert store.label_values_page("pid", t0, t1, sel, prefix, limit) == page, (prefix, limit, *where)
            units = {"samples": "count", "cpu": "nanoseconds"}
            assert store.types(t0, t1, sel) == sorted({(r[1], units[r[1]]) for r in active}), where
            refs = store.select(sel, t0, t1, "samples")
            assert sorted({tuple(sorted(r.series.labels.items())) for r in refs}) == \
                sorted({tuple(sorted(r[0].items())) for r in _active(rows, sel, t0, t1, "samples")}), where


@pytest.mark.parametrize("long_lived", [12, 390])  # few straddlers are probed one by one; many take a range scan
def test_label_lists_types_and_matchers_equal_brute_force_over_the_rows(tmp_path: Path, long_lived: int) -> None:
    store = SqliteStore(tmp_path)
    rows = _node(store, long_lived, 1500, seed=long_lived)
    rng = random.Random(long_lived)
    ranges = [(T0, T0 + 4 * H), (T0 + H, T0 + 2 * H), (T0 + 30 * S, T0 + 4 * H - 30 * S), (T0 - H, T0),
              (T0 + 4 * H - 30 * S, T0 + 5 * H), (T0 + 7 * S, T0 + 8 * S)]
    ranges += [tuple(sorted(rng.randrange(T0 - H // 2, T0 + 5 * H) for _ in range(2))) for _ in range(8)]
    _check(store, rows, ranges, rng)
    assert store.compact(now_ns=T0 + 6 * H, max_buckets=1000) > 0
    _check(store, rows, ranges, rng)
    cutoff = T0 + 90 * 60 * S
    store.enforce_retention(max_age_ns=H, max_bytes=None, now_ns=cutoff + H, grace_ns=0)
    kept = [r for r in rows if r[2] >= cutoff]
    _check(store, kept, ranges, rng)
    # no series without rows is left, and no label value only they had
    assert store.stats()["series"] == len({(tuple(sorted(r[0].items())), r[1]) for r in kept})
    assert store.label_values("pid", 0, 2 * T0) == sorted({r[0]["pid"] for r in kept})
    store.close()
    reopened = SqliteStore(tmp_path)  # the index is rebuilt from the series table and the rows
    _check(reopened, kept, ranges, rng)
    reopened.close()


def test_label_values_prefix_and_limit_over_http(tmp_path: Path) -> None:
    """`prefix` and `limit` on /label/<name>/values; without them the answer keeps its old shape."""
    from web.server.app import create_app

    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0})
    store = app.extensions["podflame.store"]
    put(store, [_profile({"pod": "p0", "pid": str(1000 + i)}, "samples", T0 + i * S) for i in range(300)])
    client = app.test_client()
    day = {"from": str(T0 // S), "to": str((T0 + H) // S)}
    assert client.get("/api/v1/label/pid/values", query_string=day).json == \
        {"values": sorted(str(1000 + i) for i in range(300))}
    got = client.get("/api/v1/label/pid/values", query_string={**day, "prefix": "11", "limit": "20"}).json
    assert got == {"values": [str(1100 + i) for i in range(20)], "truncated": True}
    got = client.get("/api/v1/label/pid/values", query_string={**day, "prefix": "129", "limit": "20"}).json
    assert got == {"values": [str(1290 + i) for i in range(10)], "truncated": False}
    assert client.get("/api/v1/label/pid/values", query_string={**day, "limit": "0"}).status_code == 400
    store.close()


def test_dropped_series_free_their_slots_and_values_for_new_ones(tmp_path: Path) -> None:
    """Memory follows the live series: a day of churn after a cut reuses what the cut freed."""
    store = SqliteStore(tmp_path)
    first = [_profile({"pod": "p0", "pid": f"a{i}"}, "samples", T0 + i * S) for i in range(3000)]
    put(store, first)
    size = store._index.size
    store.enforce_retention(max_age_ns=H, max_bytes=None, now_ns=T0 + 2 * H, grace_ns=0)
    assert store.stats()["series"] == 0 and store.label_names(0, 2 * T0) == []
    assert "pid" not in store._index.labels  # a name no series has is gone with its values
    put(store, [_profile({"pod": "p0", "pid": f"b{i}"}, "samples", T0 + 2 * H + i * S) for i in range(3000)])
    assert store._index.size == size
    assert len(store._index.labels["pid"].values) == 3000
    assert store.label_values("pid", 0, 2 * T0) == sorted(f"b{i}" for i in range(3000))
    assert store.label_values("pid", T0 + 2 * H + 10 * S, T0 + 2 * H + 12 * S) == ["b10", "b11"]
    store.close()


def test_value_pages_stay_exact_while_values_come_go_and_reuse_ids(tmp_path: Path) -> None:
    """A page of values (prefix, limit) comes from the label's sorted order plus the values added since: pids
    arriving with every put, ids freed by a cut and reused by new values must land in their place."""
    store = SqliteStore(tmp_path)
    rng = random.Random(5)
    live: dict[str, int] = {}  # pid -> its start
    t = T0
    for round_ in range(6):
        batch = {f"{rng.randrange(10**6)}": t + i * S for i in range(rng.choice([5, 40, 700]))}
        put(store, [_profile({"pod": "p0", "pid": pid}, "samples", start) for pid, start in batch.items()])
        live.update(batch)
        t += H
        if round_ in (2, 4):  # a cut frees the oldest values' ids; the next put reuses them
            store.enforce_retention(max_age_ns=H, max_bytes=None, now_ns=t, grace_ns=0)
            live = {pid: start for pid, start in live.items() if start >= t - H}
        for prefix in ("", "1", "5", "99", "x"):
            want = sorted(pid for pid in live if pid.startswith(prefix))
            for limit in (1, 10, 300, None):
                page = (want[:limit], len(want) > limit) if limit else (want, False)
                assert store.label_values_page("pid", 0, 2 * T0, None, prefix, limit) == page, (round_, prefix, limit)
    store.close()


def test_an_hour_looks_at_that_hours_series_only_and_again_after_reopening(tmp_path: Path) -> None:
    """The hour index: a 1 h range's lists consider the slots of series with rows in that hour (plus, at most,
    slots reused since), however many dead pids the other hours hold; rebuilt the same at open."""
    store = SqliteStore(tmp_path)
    per_hour = {h: [f"h{h}-{i}" for i in range(50 + 10 * h)] for h in range(10)}
    for h, pids in per_hour.items():
        put(store, [_profile({"pod": "p0", "pid": pid}, "samples", T0 + h * H + i * S) for i, pid in enumerate(pids)])
    put(store, [_profile({"pod": "p0", "pid": "L"}, "samples", T0 + h * H + 30 * 60 * S) for h in range(10)])
    for reopen in (False, True):
        if reopen:
            store.close()
            store = SqliteStore(tmp_path)
        for h in (0, 4, 9):
            near = store._index.near_slots(T0 + h * H, T0 + (h + 1) * H)
            assert near is not None
            want = np.flatnonzero(store._index.match(parse_selector(f'{{pid=~"h{h}-.*|L"}}')))
            assert sorted(store._index.sids(near)) == sorted(store._index.sids(want))  # that hour's and L, no other
            assert store.label_values("pid", T0 + h * H, T0 + (h + 1) * H) == sorted([*per_hour[h], "L"])
        assert store._index.near_slots(T0, T0 + 10 * H) is None  # most of the hours: one pass over all slots
    store.enforce_retention(max_age_ns=5 * H, max_bytes=None, now_ns=T0 + 10 * H, grace_ns=0)
    assert store._index.near_slots(T0 + 2 * H, T0 + 3 * H) is not None
    assert store._index.near_slots(T0 + 2 * H, T0 + 3 * H).size == 0
    assert store.label_values("pid", T0 + 5 * H, T0 + 6 * H) == sorted([*per_hour[5], "L"])
    store.close()


def test_an_hour_of_many_small_puts_holds_one_array_and_stays_exact(tmp_path: Path) -> None:
    """Every put appends its slots to its hours; an hour nobody asks about is joined every 64 puts (a node's
    drains every 10 s must not pile up a small array each for the week retention keeps)."""
    store = SqliteStore(tmp_path)
    for i in range(200):
        put(store, [_profile({"pod": "p0", "pid": f"q{i}"}, "samples", T0 + 2 * H + i * S),
                    _profile({"pod": "p0", "pid": "L"}, "samples", T0 + 2 * H + i * S)])
    put(store, [_profile({"pod": "p0", "pid": "x"}, "samples", T0 + h * H) for h in (0, 1, 3, 4)])
    assert len(store._index._hours[(T0 + 2 * H) // H]) <= 64
    assert store.label_values("pid", T0 + 2 * H, T0 + 3 * H) == sorted(["L", *(f"q{i}" for i in range(200))])
    late = sorted(["L", *(f"q{i}" for i in range(150, 200))])
    assert store.label_values("pid", T0 + 2 * H + 150 * S, T0 + 3 * H) == late
    store.close()
