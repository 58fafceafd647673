"""Time-bucket pre-aggregation: the planner's rule, and answers identical to raw-only reads."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import put
from web.query.merge import Query, cpu_series
from web.store.columns import group_sum
from web.store.compaction import plan
from web.store.selector import MATCH_ALL, parse_selector
from web.store.sqlite import SqliteStore

S = 1_000_000_000
M = 60 * S
H = 3600 * S
T0 = 1_795_000_000 * S - (1_795_000_000 * S) % H  # an hour boundary
EXE = Mapping(0x1000, 0x90000, 0, "/usr/bin/app", "b1d")
FRAMES = [Frame(0x1000 + i * 16, EXE, FrameKind.NATIVE, (Line(f"fn{i}"),)) for i in range(12)]


# -- the planner ----------------------------------------------------------------------------------


def test_plan_uses_whole_buckets_inside_the_range_and_fills_edges_finer() -> None:
    widths = [10 * M, H]
    done = [[T0 + i * 10 * M for i in range(18)], [T0, T0 + H]]  # 3 h of 10-min buckets, 2 hourly
    assert plan(T0 + 5 * M, T0 + 2 * H + 25 * M, widths, done) == [
        (0, T0 + 5 * M, T0 + 10 * M), (1, T0 + 10 * M, T0 + H), (2, T0 + H, T0 + 2 * H),
        (1, T0 + 2 * H, T0 + 2 * H + 20 * M), (0, T0 + 2 * H + 20 * M, T0 + 2 * H + 25 * M)]
    # Nothing compacted: one raw range.
    assert plan(T0, T0 + 5 * H, widths, [[], []]) == [(0, T0, T0 + 5 * H)]
    # max_level=0 reads raw only; a gap in the 10-min buckets falls back to raw.
    assert plan(T0, T0 + H, widths, done, max_level=0) == [(0, T0, T0 + H)]
    gap = [[b for b in done[0] if b != T0 + 20 * M], []]
    assert plan(T0, T0 + 40 * M, widths, gap) == [(1, T0, T0 + 20 * M), (0, T0 + 20 * M, T0 + 30 * M),
                                                 (1, T0 + 30 * M, T0 + 40 * M)]


def test_plan_respects_the_retention_floor_and_step_alignment() -> None:
    widths = [10 * M, H]
    done = [[T0 + i * 10 * M for i in range(12)], [T0, T0 + H]]
    # The cut at T0 + 15m makes the first hour partial: it is not used, nor the 10-min bucket at T0 + 10m.
    assert plan(T0, T0 + 2 * H, widths, done, floor=T0 + 15 * M) == [
        (0, T0, T0 + 20 * M), (1, T0 + 20 * M, T0 + H), (2, T0 + H, T0 + 2 * H)]
    # Steps of 15 minutes from T0 + 5m: no 10-min bucket crosses a step boundary.
    pieces = plan(T0 + 5 * M, T0 + 65 * M, widths, done, align=15 * M)
    for level, a, b in pieces:
        for k in range(a, b, widths[0]) if level else ():
            assert (k - (T0 + 5 * M)) // (15 * M) == (k + widths[0] - 1 - (T0 + 5 * M)) // (15 * M)
    assert [p for p in pieces if p[0]] == [(1, T0 + 10 * M, T0 + 30 * M), (1, T0 + 40 * M, T0 + 60 * M)]
    assert pieces[0][1] == T0 + 5 * M and pieces[-1][2] == T0 + 65 * M
    assert all(p[2] == q[1] for p, q in itertools.pairwise(pieces))  # contiguous, no overlap


# -- the store ------------------------------------------------------------------------------------


def _profile(rng: random.Random, pod: str, start: int) -> Profile:
    p = Profile(labels={"pod": pod, "ns": "shop"}, start_ns=start, duration_ns=10 * S,
                period_ns=rng.choice([10_000_000, 10_000_000, 52_631_578]))
    for _ in range(rng.randint(1, 30)):
        p.add(tuple(rng.sample(FRAMES, rng.randint(1, 5))), rng.randint(1, 9))
    return p


def _fill(store: SqliteStore, hours: float, pods: int = 3, seed: int = 0, every: int = 30 * S) -> None:
    rng = random.Random(seed)
    for i in range(int(hours * H // every)):
        put(store, [_profile(rng, f"p{j}", T0 + i * every + j) for j in range(pods)])


def _merged(store: SqliteStore, selector: str, t0: int, t1: int, **kw: int) -> tuple[dict[int, int], int]:
    refs = store.select(parse_selector(selector), t0, t1, "samples", **kw)
    cols = store.read(refs)
    ids, values = group_sum(cols.stack, cols.value)
    return dict(zip(ids.tolist(), values.tolist(), strict=True)), len(refs)


@pytest.fixture(scope="module")
def compacted(tmp_path_factory: pytest.TempPathFactory) -> SqliteStore:
    store = SqliteStore(tmp_path_factory.mktemp("compacted"))
    _fill(store, 3.2)
    # Every ended bucket with data: 20 x 10 min (the last one partly filled) and 4 x 1 h.
    assert store.compact(now_ns=T0 + 5 * H, max_buckets=1000) == 20 + 4
    return store


def test_compacted_answers_equal_raw_answers_and_read_fewer_blocks(compacted: SqliteStore) -> None:
    rng = random.Random(1)
    ranges = [(T0, T0 + 3 * H), (T0 - H, T0 + 4 * H), (T0 + 7 * M + 3 * S, T0 + 2 * H + 31 * M)]
    ranges += [tuple(sorted(rng.randrange(T0 - M, T0 + 4 * H) for _ in range(2))) for _ in range(6)]
    for t0, t1 in ranges:
        for sel in ("{}", '{pod="p1"}', '{pod!="p0"}'):
            fast, blocks = _merged(compacted, sel, t0, t1)
            raw, profiles = _merged(compacted, sel, t0, t1, max_level=0)
            assert fast == raw, (sel, t0, t1)
            assert blocks <= profiles
    _, blocks = _merged(compacted, "{}", T0, T0 + 3 * H)
    assert blocks == 3 * 3  # three hourly blocks per pod instead of 3 x 360 profiles


def test_cpu_series_is_exact_with_blocks_aligned_to_steps(compacted: SqliteStore) -> None:
    for step, t0 in [(10 * M, T0), (15 * M, T0 + 5 * M), (H, T0), (7 * M, T0 + 3 * S)]:
        q = Query(MATCH_ALL, t0, T0 + 3 * H, "samples")
        series = cpu_series(compacted, q, step)
        refs = compacted.select(MATCH_ALL, t0, T0 + 3 * H, "samples", max_level=0)
        want = [0] * len(series["values"])
        for r in refs:
            want[(r.start_ns - t0) // step] += r.total
        assert series["values"] == want, step
        assert series["timestamps"][1] - series["timestamps"][0] == step / S


def _raw_steps(store: SqliteStore, t0: int, t1: int, step: int) -> tuple[list[int], list[float]]:
    refs = store.select(MATCH_ALL, t0, t1, "samples", max_level=0)
    n = -(-(t1 - t0) // step)
    values, cpu_ns = [0] * n, [0] * n
    for r in refs:
        values[(r.start_ns - t0) // step] += r.total
        cpu_ns[(r.start_ns - t0) // step] += r.total * r.period_ns
    return values, [v / 1e9 / (step / 1e9) for v in cpu_ns]


def test_cpu_series_splits_blocks_across_steps_by_their_timelines(compacted: SqliteStore) -> None:
    """Steps that no block fits (odd widths, a range starting mid-bucket) still read only the coarsest blocks."""
    for step, t0 in [(7 * M, T0 + 3 * S), (5 * M, T0 + 17 * S), (25 * M, T0 - 4 * M), (13 * S, T0 + H + 1)]:
        t1 = T0 + 3 * H + 7 * M
        series = cpu_series(compacted, Query(MATCH_ALL, t0, t1, "samples"), step)
        values, cores = _raw_steps(compacted, t0, t1, step)
        assert series["values"] == values, (step, t0)
        assert series["cores"] == pytest.approx(cores, rel=1e-12), (step, t0)  # periods differ: exact per period


def test_step_totals_read_blocks_not_the_raw_rows_under_them(tmp_path: Path) -> None:
    """Odd steps and a range starting mid-bucket are answered from the blocks (split by their timelines): with
    the raw rows under the buckets inside the ranges deleted, every step still sums the same."""
    store = SqliteStore(tmp_path)
    _fill(store, 2.2, pods=2)
    store.compact(now_ns=T0 + 4 * H, max_buckets=1000)
    ranges = [(7 * M, T0 + 3 * S), (5 * M, T0 + 17 * S), (25 * M, T0 - 4 * M), (13 * S, T0 + H + 1)]
    t1 = T0 + 2 * H + 7 * M
    want = [_raw_steps(store, t0, t1, step) for step, t0 in ranges]
    # The buckets that lie inside every range (at its edges a range reads raw rows: no block fits there).
    inner = (T0 + H + 10 * M, T0 + 2 * H)
    assert store._db.execute("DELETE FROM profiles WHERE level=0 AND start_ns >= ? AND start_ns < ?",
                             inner).rowcount > 0
    for (step, t0), (values, cores) in zip(ranges, want, strict=True):
        series = cpu_series(store, Query(MATCH_ALL, t0, t1, "samples"), step)
        assert series["values"] == values, (step, t0)
        assert series["cores"] == pytest.approx(cores, rel=1e-12), (step, t0)
    store.close()


def test_blocks_without_timelines_fall_back_to_aligned_blocks(tmp_path: Path) -> None:
    """A store from before timelines (schema 2) answers time series exactly, from blocks that fit steps."""
    store = SqliteStore(tmp_path)
    _fill(store, 1.5, pods=2)
    store.compact(now_ns=T0 + 3 * H, max_buckets=1000)
    store._db.execute("DELETE FROM timelines")
    for step, t0 in [(7 * M, T0 + 3 * S), (10 * M, T0)]:
        series = cpu_series(store, Query(MATCH_ALL, t0, T0 + 2 * H, "samples"), step)
        assert series["values"] == _raw_steps(store, t0, T0 + 2 * H, step)[0]
    # Compaction over blocks without timelines writes none either (it cannot know the profiles' times).
    store._db.execute("UPDATE compactions SET state=2 WHERE level=2")  # dirty: hours are redone from 10-min blocks
    store.close()
    store = SqliteStore(tmp_path)
    assert store.compact(now_ns=T0 + 3 * H, max_buckets=1000) == 2  # both hours
    assert store._db.execute("SELECT count(*) FROM timelines").fetchone() == (0,)
    series = cpu_series(store, Query(MATCH_ALL, T0 + 3 * S, T0 + 2 * H, "samples"), 7 * M)
    assert series["values"] == _raw_steps(store, T0 + 3 * S, T0 + 2 * H, 7 * M)[0]
    store.close()


def test_late_data_marks_a_bucket_dirty_until_recompacted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    _fill(store, 1.2, pods=2)
    store.compact(now_ns=T0 + 3 * H, max_buckets=1000)
    before, _ = _merged(store, "{}", T0, T0 + H)
    late = Profile(labels={"pod": "p0", "ns": "shop"}, start_ns=T0 + 25 * M, duration_ns=10 * S, period_ns=10**7)
    late.add((FRAMES[0],), 1000)
    put(store, [late])
    after, blocks = _merged(store, "{}", T0, T0 + H)
    assert sum(after.values()) == sum(before.values()) + 1000
    assert after == _merged(store, "{}", T0, T0 + H, max_level=0)[0]
    assert blocks > 2  # the hour and its 10-min bucket are dirty: raw profiles fill in
    assert store.compact(now_ns=T0 + 3 * H) == 2  # the dirty 10-min bucket and hour
    again, blocks = _merged(store, "{}", T0, T0 + H)
    assert again == after and blocks == 2
    # Reopening keeps the compaction state.
    store.close()
    store = SqliteStore(tmp_path)
    assert _merged(store, "{}", T0, T0 + H) == (after, 2)
    store.close()


def test_compaction_skips_recent_buckets_and_empty_time(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    _fill(store, 0.5, pods=1)
    # At T0+30m (+ a late-drain delay) only the first two 10-min buckets are over.
    assert store.compact(now_ns=T0 + 30 * M) == 2
    assert store.compact(now_ns=T0 + 30 * M) == 0
    assert store.compact(now_ns=T0 + 100 * H) == 2  # the third 10-min bucket and the hour
    assert store.compact(now_ns=T0 + 200 * H) == 0  # nothing new: empty time is not scanned bucket by bucket
    store.close()


def test_blocks_keep_the_raw_totals_per_series(compacted: SqliteStore) -> None:
    for pod in ("p0", "p1", "p2"):
        refs = compacted.select(parse_selector(f'{{pod="{pod}"}}'), T0, T0 + 3 * H, "samples")
        raw = compacted.select(parse_selector(f'{{pod="{pod}"}}'), T0, T0 + 3 * H, "samples", max_level=0)
        assert sum(r.total for r in refs) == sum(r.total for r in raw)
        assert min(r.start_ns for r in refs) == min(r.start_ns for r in raw)
        assert max(r.start_ns + r.duration_ns for r in refs) == max(r.start_ns + r.duration_ns for r in raw)
        cols = compacted.read(refs)
        assert np.all(np.diff(cols.stack[cols.profile == 0]) > 0)  # one row per stack per block


def test_timelines_go_with_their_blocks(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    _fill(store, 2.2, pods=2)
    store.compact(now_ns=T0 + 4 * H, max_buckets=1000)
    count = "SELECT count(*) FROM timelines"
    blocks = "SELECT count(*) FROM profiles WHERE level>0"
    assert store._db.execute(count).fetchone() == store._db.execute(blocks).fetchone() != (0,)
    store.enforce_retention(max_age_ns=H, max_bytes=None, now_ns=T0 + 2 * H + 30 * M, grace_ns=0)
    assert store._db.execute(count).fetchone() == store._db.execute(blocks).fetchone()
    store.enforce_retention(max_age_ns=1, max_bytes=None, now_ns=T0 + 9 * H, grace_ns=0)
    assert store._db.execute(count).fetchone() == (0,)
    store.close()
