"""Short-lived processes make a series each (`pid`): label lists stay exact and retention forgets them.

The store decides most series' activity in a range from each series's first and last row in memory
(web/store/sqlite.py `_active`); these tests hold that to the answer of reading the rows themselves,
before and after compaction, on both the probe path and the range-scan path, and check that a cut
leaves no series without rows behind (memory, label lists and matchers would otherwise grow forever).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import put
from web.store.selector import MATCH_ALL, parse_selector
from web.store.sqlite import SqliteStore

S = 1_000_000_000
H = 3600 * S
T0 = 1_795_000_000 * S - (1_795_000_000 * S) % H
EXE = Mapping(0x1000, 0x90000, 0, "/usr/bin/sh", "5e11")
STACK = (Frame(0x1010, EXE, FrameKind.NATIVE, (Line("main"),)), Frame(0x1020, EXE, FrameKind.NATIVE, (Line("run"),)))


def _profile(labels: dict[str, str], start: int) -> Profile:
    p = Profile(labels=labels, start_ns=start, duration_ns=10 * S, period_ns=10**7)
    p.add(STACK, 3)
    return p


def _node(store: SqliteStore, long_lived: int) -> dict[str, list[int]]:
    """`long_lived` processes sampled at the first and the last of 4 h (nothing between), and one
    short-lived process per minute in between; returns pid -> its profiles' starts."""
    starts: dict[str, list[int]] = {}
    for i in range(long_lived):
        starts[str(i + 1)] = [T0 + 5 * S, T0 + 4 * H - 20 * S]
    for m in range(1, 239):
        starts[str(10_000 + m)] = [T0 + m * 60 * S + (m % 7) * S]
    profiles = [_profile({"pod": f"pod{int(pid) % 3}", "pid": pid}, t) for pid, ts in starts.items() for t in ts]
    profiles.sort(key=lambda p: p.start_ns)
    for i in range(0, len(profiles), 40):
        put(store, profiles[i:i + 40])
    return starts


def _expected(starts: dict[str, list[int]], t0: int, t1: int, pod: str | None = None) -> list[str]:
    return sorted(pid for pid, ts in starts.items()
                  if any(t0 <= t < t1 for t in ts) and (pod is None or f"pod{int(pid) % 3}" == pod))


@pytest.mark.parametrize("long_lived", [5, 300])  # few straddling series are probed; many take the range scan
def test_label_lists_match_the_rows_before_and_after_compaction(tmp_path: Path, long_lived: int) -> None:
    store = SqliteStore(tmp_path)
    starts = _node(store, long_lived)
    rng = random.Random(long_lived)
    ranges = [(T0, T0 + 4 * H), (T0 + H, T0 + 2 * H), (T0 + 30 * S, T0 + 4 * H - 30 * S),
              (T0 + 4 * H - 30 * S, T0 + 5 * H), (T0 - H, T0)]
    ranges += [tuple(sorted(rng.randrange(T0 - H, T0 + 5 * H) for _ in range(2))) for _ in range(20)]
    for compacted in (False, True):
        if compacted:
            assert store.compact(now_ns=T0 + 6 * H, max_buckets=1000) > 0
        for t0, t1 in ranges:
            assert store.label_values("pid", t0, t1) == sorted(_expected(starts, t0, t1)), (compacted, t0, t1)
            assert store.label_values("pid", t0, t1, parse_selector('{pod="pod1"}')) == \
                _expected(starts, t0, t1, "pod1")
            assert store.label_names(t0, t1) == (["pid", "pod"] if _expected(starts, t0, t1) else [])
            assert store.types(t0, t1) == ([("samples", "count")] if _expected(starts, t0, t1) else [])
            # the store's own rows agree: the series of what select() reads in the range
            refs = store.select(MATCH_ALL, t0, t1, "samples")
            assert sorted({r.series.labels["pid"] for r in refs}) == _expected(starts, t0, t1)
    store.close()


def test_retention_forgets_series_without_rows_and_takes_their_labels_again(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    starts = _node(store, 5)
    before = store.stats()["series"]
    cutoff = T0 + 2 * H
    store.enforce_retention(max_age_ns=H, max_bytes=None, now_ns=cutoff + H)
    gone = [pid for pid, ts in starts.items() if max(ts) < cutoff]
    assert len(gone) > 100
    assert store.stats()["series"] == before - len(gone)
    assert store.label_values("pid", 0, 2 * T0) == _expected(starts, cutoff, 2 * T0)
    assert not set(gone) & set(store.label_values("pid", 0, 2 * T0, parse_selector('{pid=~".+"}')))
    # a process whose pid comes back later is a new series, stored and found as any other
    again = gone[0]
    put(store, [_profile({"pod": f"pod{int(again) % 3}", "pid": again}, T0 + 5 * H)])
    assert again in store.label_values("pid", T0 + 5 * H, T0 + 6 * H)
    kept = store.stats()["series"]
    store.close()
    reopened = SqliteStore(tmp_path)
    assert reopened.stats()["series"] == kept
    assert reopened.label_values("pid", 0, 2 * T0) == sorted([*_expected(starts, cutoff, 2 * T0), again])
    reopened.close()


def test_refs_name_their_series_whatever_few_series_objects_are_kept(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Series live as key strings; the `Series` objects refs carry are made on demand and only the last few
    are kept (garbage collections walked one object per series): refs still name the right series."""
    import web.store.sqlite as sqlite

    monkeypatch.setattr(sqlite, "_SERIES_KEPT", 8)
    store = SqliteStore(tmp_path)
    starts = _node(store, 5)
    for t0, t1 in ((T0, T0 + 4 * H), (T0 + H, T0 + 2 * H)):
        refs = store.select(MATCH_ALL, t0, t1, "samples")
        got = sorted((r.series.labels["pid"], r.series.labels["pod"], r.start_ns) for r in refs)
        assert got == sorted((pid, f"pod{int(pid) % 3}", t) for pid, ts in starts.items() for t in ts if t0 <= t < t1)
        assert len({r.series.id for r in refs}) > 8 >= len(store._series_objs)
    store.close()


@pytest.mark.parametrize("long_lived", [5, 300])  # the few-series path (IN lists) and the many-series scan
def test_cpu_steps_are_summed_in_the_store_not_per_profile(tmp_path: Path, long_lived: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU chart over a node of short-lived processes: SQLite sums per step and period with the series
    filter in its statements, so no per-row Python object (a ref, a Series) is made however many series
    churn (each made one before), and the sums equal the rows' own, before and after compaction, per pod too."""
    import web.store.sqlite as sqlite_mod

    store = SqliteStore(tmp_path)
    starts = _node(store, long_lived)
    made = {"refs": 0}
    real = sqlite_mod.StoredProfile

    def counting(*args: object, **kw: object) -> object:
        made["refs"] += 1
        return real(*args, **kw)

    for compacted in (False, True):
        if compacted:
            store.compact(now_ns=T0 + 5 * H, max_buckets=1000)
        for sel, pod in ((MATCH_ALL, None), (parse_selector('{pod="pod1"}'), "pod1"),
                         (parse_selector('{pid=~"1000.*|1|2"}'), "pid")):
            for t0, t1, step in ((T0, T0 + 4 * H, 600 * S), (T0 + 7 * S, T0 + 3 * H + 11 * S, 420 * S)):
                n = -(-(t1 - t0) // step)
                want = [0] * n
                for pid, ts in starts.items():
                    if (pod == "pid" and not (pid.startswith("1000") or pid in ("1", "2"))) or \
                            (pod not in (None, "pid") and f"pod{int(pid) % 3}" != pod):
                        continue
                    for t in ts:
                        if t0 <= t < t1:
                            want[(t - t0) // step] += 3
                monkeypatch.setattr(sqlite_mod, "StoredProfile", counting)
                st = store.step_totals(sel, t0, t1, step, "samples")
                monkeypatch.setattr(sqlite_mod, "StoredProfile", real)
                assert made["refs"] == 0, (compacted, pod)
                got = [sum(int(v[k]) for v in st.by_period.values()) for k in range(n)]
                assert got == want, (compacted, pod, t0, step)
    store.close()
