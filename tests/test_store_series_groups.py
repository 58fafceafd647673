"""Group blocks (web/store/sqlite_groups.py): a query that needs no split by process reads one block per group
of series differing only in `pid`, and its answers equal the raw rows' exactly.

A node of long-lived processes, short-lived ones (a pid each) and the agent's young-process rows (no pid),
two sample types and mixed periods. Per random range and selector: the merged samples, the totals per pod and
per pid, and the CPU steps from `select_summed` against raw rows only; before and after compaction, after a
late write into a compacted bucket, after recompaction, after a retention cut, after reopening, and on
buckets an older podflame compacted (no group blocks until recompacted).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import put
from web.store.base import Store
from web.store.selector import parse_selector
from web.store.sqlite import SqliteStore

S = 1_000_000_000
M = 60 * S
H = 3600 * S
T0 = 1_795_000_000 * S - (1_795_000_000 * S) % H
EXE = Mapping(0x1000, 0x90000, 0, "/usr/bin/app", "9a0b")
FRAMES = [Frame(0x1000 + i * 16, EXE, FrameKind.NATIVE, (Line(f"fn{i}"),)) for i in range(10)]
NO_PID = ["{}", '{pod="p1"}', '{pod!~"p[12]"}', '{comm=~"sh|app"}', '{ns="shop", comm!="curl"}', '{tier!=""}']
BY_PID = ['{pid="s7"}', '{pid=~"s1.*"}', '{pid!~"L.*"}', '{pid=""}', '{pod="p0", pid!=""}']


def _profile(rng: random.Random, labels: dict[str, str], start: int, cpu: bool = False) -> Profile:
    p = Profile(labels=labels, start_ns=start, duration_ns=10 * S, period_ns=rng.choice([10**7, 10**7, 52_631_578]))
    if cpu:
        p.sample_type, p.unit = "cpu", "nanoseconds"
    for _ in range(rng.randint(1, 4)):
        p.add(tuple(rng.sample(FRAMES, rng.randint(1, 4))), rng.randint(1, 9))
    return p


def _node(rng: random.Random, t0: int, hours: float) -> list[Profile]:
    out: list[Profile] = []
    for k in range(int(hours * H // (30 * S))):
        t = t0 + k * 30 * S
        for i in range(4):
            labels = {"pod": f"p{i}", "ns": "shop" if i % 2 else "infra", "pid": f"L{i}", "comm": "app"}
            if i == 3:
                labels["tier"] = "batch"
            out.append(_profile(rng, labels, t + i * S))
            if i % 2:
                out.append(_profile(rng, labels, t + i * S, cpu=True))
        for j in range(3):  # short-lived processes: a pid each
            pod = rng.randrange(4)
            out.append(_profile(rng, {"pod": f"p{pod}", "ns": "shop" if pod % 2 else "infra", "pid": f"s{k * 3 + j}",
                                      "comm": rng.choice(["sh", "curl"])}, t + rng.randrange(30) * S))
        if k % 5 == 0:  # the agent's young processes of a pod, summed per comm without a pid
            out.append(_profile(rng, {"pod": "p1", "ns": "shop", "comm": "sh"}, t + 5 * S))
    return out


def _truth(profiles: list[Profile], text: str, t0: int, t1: int, sample_type: str
           ) -> tuple[dict, dict, dict, dict, dict]:
    """Brute force over what was written: stack sums (by frame tuple), totals per pod and per pid, per pod the
    sum of value x period (CPU time), per whole label set."""
    sel = parse_selector(text)
    stacks: dict = defaultdict(int)
    per_pod: dict = defaultdict(int)
    per_pid: dict = defaultdict(int)
    pod_cpu: dict = defaultdict(int)
    per_labels: dict = defaultdict(int)
    for p in profiles:
        if t0 <= p.start_ns < t1 and p.sample_type == sample_type and sel.matches(p.labels):
            for stack, v in p.samples.items():
                stacks[tuple(stack)] += v
                per_pod[p.labels.get("pod", "")] += v
                per_pid[p.labels.get("pid", "")] += v
                pod_cpu[p.labels.get("pod", "")] += v * p.period_ns
                per_labels[tuple(sorted(p.labels.items()))] += v
    return dict(stacks), dict(per_pod), dict(per_pid), dict(pod_cpu), dict(per_labels)


def _check(store: SqliteStore, profiles: list[Profile], rng: random.Random, hours: float,
           expect_fewer: bool = False) -> None:
    fewer = 0
    for _ in range(6):
        t0, t1 = sorted(rng.randrange(T0 - 10 * M, T0 + int(hours * H) + 10 * M, 7 * S) for _ in range(2))
        for text in [*rng.sample(NO_PID, 3), *rng.sample(BY_PID, 2), "{}"]:
            sel = parse_selector(text)
            for sample_type in ("samples", "cpu"):
                stacks, per_pod, per_pid, pod_cpu, per_labels = _truth(profiles, text, t0, t1, sample_type)
                where = (text, sample_type, (t0 - T0) / S, (t1 - T0) / S)
                summed = store.select_summed(sel, t0, t1, sample_type, keep=())
                plain = store.select(sel, t0, t1, sample_type)
                if "pid" in text:  # a per-process selector is answered per series
                    assert summed == plain, where
                fewer += len(summed) < len(plain)
                ids, values = store.read_merged(summed)
                got = store.stacks(ids.tolist())
                assert {got[i]: v for i, v in zip(ids.tolist(), values.tolist(), strict=True)} == stacks, where
                pods: dict = defaultdict(int)
                for r in store.select_summed(sel, t0, t1, sample_type, keep=["pod"]):
                    pods[r.series.labels.get("pod", "")] += r.total
                assert {k: v for k, v in pods.items() if v} == {k: v for k, v in per_pod.items() if v}, where
                pids: dict = defaultdict(int)
                for r in store.select_summed(sel, t0, t1, sample_type, keep=["pod", "pid"]):
                    assert r.series.id > 0, where  # keeping pid: series refs only
                    pids[r.series.labels.get("pid", "")] += r.total
                assert {k: v for k, v in pids.items() if v} == {k: v for k, v in per_pid.items() if v}, where
                # The same sums as the store makes them (the pod list): per pod with CPU time, per pid, per series.
                by_pod = store.totals_by(sel, t0, t1, ["pod"], sample_type)
                assert {g.labels.get("pod", ""): g.value for g in by_pod if g.value} == \
                    {k: v for k, v in per_pod.items() if v}, where
                # CPU time: exact on raw rows; a block counts at its dominant period, as the refs always did
                cpu = {g.labels.get("pod", ""): g.value_period_ns for g in by_pod if g.value}
                assert cpu == {g.labels.get("pod", ""): g.value_period_ns
                               for g in Store.totals_by(store, sel, t0, t1, ["pod"], sample_type) if g.value}, where
                if plain == store.select(sel, t0, t1, sample_type, max_level=0):  # no block in the range
                    assert cpu == {k: v for k, v in pod_cpu.items() if v}, where
                assert all(g.has_period for g in by_pod), where
                assert len({tuple(g.labels.items()) for g in by_pod}) == len(by_pod), where  # one row per pod
                pids = defaultdict(int)
                for g in store.totals_by(sel, t0, t1, ["pod", "pid"], sample_type):
                    pids[g.labels.get("pid", "")] += g.value
                assert {k: v for k, v in pids.items() if v} == {k: v for k, v in per_pid.items() if v}, where
                assert {tuple(sorted(g.labels.items())): g.value
                        for g in store.totals_by(sel, t0, t1, None, sample_type) if g.value} == \
                    {k: v for k, v in per_labels.items() if v}, where
                step = rng.choice([5 * M, 10 * M, 25 * M])
                got_steps = store.step_totals(sel, t0, t1, step, sample_type)
                raw = [r for r in store.select(sel, t0, t1, sample_type, max_level=0)]
                want_steps: dict[int, np.ndarray] = {}
                for r in raw:
                    sums = want_steps.setdefault(r.period_ns, np.zeros(-(-(t1 - t0) // step), dtype=np.int64))
                    sums[(r.start_ns - t0) // step] += r.total
                # Summed over periods: a block inside one step counts at its dominant period (as before groups).
                n = -(-(t1 - t0) // step)
                assert sum(got_steps.by_period.values(), np.zeros(n, np.int64)).tolist() == \
                    sum(want_steps.values(), np.zeros(n, np.int64)).tolist(), where
    if expect_fewer:
        assert fewer, "no query read a group block"


def test_summed_selects_equal_the_raw_rows_through_compaction_late_writes_retention_and_reopen(tmp_path: Path
                                                                                               ) -> None:
    rng = random.Random(5)
    profiles = _node(rng, T0, 3)
    store = SqliteStore(tmp_path)
    for i in range(0, len(profiles), 40):
        put(store, profiles[i:i + 40])
    _check(store, profiles, rng, 3)
    assert store.compact(now_ns=T0 + 5 * H, max_buckets=1000) > 0
    assert store.stats()["groups"] > 0
    _check(store, profiles, rng, 3, expect_fewer=True)
    # A late drain into a compacted bucket: its blocks are stale until recompacted, the answers stay exact.
    late = [_profile(rng, {"pod": "p2", "ns": "infra", "pid": f"late{i}", "comm": "sh"}, T0 + 25 * M + i * S)
            for i in range(3)]
    put(store, late)
    profiles += late
    _check(store, profiles, rng, 3)
    assert store.compact(now_ns=T0 + 5 * H, max_buckets=1000) > 0
    _check(store, profiles, rng, 3, expect_fewer=True)
    # A retention cut inside the second hour: partial buckets are not used, groups left without rows go.
    cutoff = T0 + H + 15 * M
    store.enforce_retention(max_age_ns=H, max_bytes=None, now_ns=cutoff + H, grace_ns=0)
    kept = [p for p in profiles if p.start_ns >= cutoff]
    _check(store, kept, rng, 3)
    db = store._db
    assert db.execute("SELECT count(*) FROM groups WHERE NOT EXISTS "
                      "(SELECT 1 FROM profiles WHERE series = -groups.id)").fetchone() == (0,)
    store.close()
    reopened = SqliteStore(tmp_path)
    _check(reopened, kept, rng, 3, expect_fewer=True)
    reopened.close()


def test_buckets_compacted_without_group_blocks_are_read_per_series_then_recompacted(tmp_path: Path) -> None:
    """A store an older podflame compacted (compactions.state 1, no groups): exact at once, grouped after a pass."""
    rng = random.Random(11)
    profiles = _node(rng, T0, 2)
    store = SqliteStore(tmp_path)
    put(store, profiles)
    store.compact(now_ns=T0 + 4 * H, max_buckets=1000)
    with store._db:
        store._db.execute("DELETE FROM timelines WHERE profile IN (SELECT id FROM profiles WHERE series < 0)")
        store._db.execute("DELETE FROM profiles WHERE series < 0")
        store._db.execute("DELETE FROM groups")
        store._db.execute("UPDATE compactions SET state = 1")
    store.close()
    old = SqliteStore(tmp_path)
    assert old.stats()["groups"] == 0
    _check(old, profiles, rng, 2)
    sel = parse_selector("{}")
    assert old.select_summed(sel, T0, T0 + 2 * H, "samples") == old.select(sel, T0, T0 + 2 * H, "samples")
    assert old.compact(now_ns=T0 + 4 * H, max_buckets=1000) == 12 + 2  # every 10-min and hourly bucket, once
    assert old.compact(now_ns=T0 + 4 * H, max_buckets=1000) == 0
    assert len(old.select_summed(sel, T0, T0 + 2 * H, "samples")) < len(old.select(sel, T0, T0 + 2 * H, "samples"))
    _check(old, profiles, rng, 2, expect_fewer=True)
    old.close()


def test_a_steady_nodes_groups_share_their_series_blocks(tmp_path: Path) -> None:
    """A group of one series points at that series's block: no second copy of the samples."""
    rng = random.Random(3)
    store = SqliteStore(tmp_path)
    put(store, [_profile(rng, {"pod": f"p{i}", "pid": str(100 + i)}, T0 + k * 30 * S) for k in range(240)
                for i in range(3)])
    store.compact(now_ns=T0 + 3 * H, max_buckets=1000)
    rows = store._db.execute("SELECT series > 0, blob, off, len FROM profiles WHERE level > 0").fetchall()
    series_frames = {r[1:] for r in rows if r[0]}
    group_frames = [r[1:] for r in rows if not r[0]]
    assert group_frames and set(group_frames) == series_frames and len(group_frames) == len(series_frames)
    live = dict(store._db.execute("SELECT id, live FROM blobs").fetchall())
    counts: dict = defaultdict(int)
    for _, blob, _, _ in rows:
        counts[blob] += 1
    for blob, n in counts.items():
        assert live[blob] == n  # each row holds its blob: retention frees the file once both rows are gone
    store.enforce_retention(max_age_ns=H, max_bytes=None, now_ns=T0 + 10 * H, grace_ns=0)
    assert store._db.execute("SELECT count(*) FROM blobs").fetchone() == (0,)
    assert store.stats()["groups"] == 0
    store.close()


def test_a_pid_regex_stays_exact_as_values_come_and_go(tmp_path: Path) -> None:
    """The regex answer kept per value id is extended to new pids and voided when a value id is reused."""
    rng = random.Random(1)
    store = SqliteStore(tmp_path)
    sel = parse_selector('{pid=~"1.*"}')

    def pids(t0: int, t1: int) -> list[str]:
        return sorted({r.series.labels["pid"] for r in store.select(sel, t0, t1)})

    put(store, [_profile(rng, {"pod": "p", "pid": str(10 + i)}, T0 + i * S) for i in range(20)])
    assert pids(T0, T0 + H) == [str(10 + i) for i in range(10)]
    put(store, [_profile(rng, {"pod": "p", "pid": str(100 + i)}, T0 + M + i * S) for i in range(5)])
    assert pids(T0, T0 + H) == sorted([str(10 + i) for i in range(10)] + [str(100 + i) for i in range(5)])
    store.enforce_retention(max_age_ns=H, max_bytes=None, now_ns=T0 + H + 30 * S, grace_ns=0)  # the first 20 go
    assert pids(T0, 2 * H + T0) == [str(100 + i) for i in range(5)]
    # Freed value ids come back with other values: "2..." must not inherit "1..." answers.
    put(store, [_profile(rng, {"pod": "p", "pid": str(200 + i)}, T0 + 2 * M + i * S) for i in range(30)])
    assert pids(T0, 2 * H + T0) == [str(100 + i) for i in range(5)]
    put(store, [_profile(rng, {"pod": "p", "pid": str(1000 + i)}, T0 + 3 * M + i * S) for i in range(3)])
    assert pids(T0, 2 * H + T0) == sorted([str(100 + i) for i in range(5)] + ["1000", "1001", "1002"])
    store.close()



def test_the_apis_answers_on_group_blocks_equal_those_of_raw_rows(tmp_path: Path) -> None:
    """Through the HTTP API: flame graph (folded), pod list, per-pid list, CPU chart, with and without a pid
    selector, from a compacted store (group blocks) and from the same rows never compacted."""
    from web.server.app import create_app

    profiles = _node(random.Random(9), T0, 3)
    for p in profiles:
        p.period_ns = 10**7  # one period: a block's CPU seconds are then exact whatever it sums
    clients = []
    for name in ("compacted", "raw"):
        app = create_app({"DATA_DIR": str(tmp_path / name), "MAINTENANCE_SECONDS": 0, "TREE_CACHE_BYTES": 0})
        store = app.extensions["podflame.store"]
        for i in range(0, len(profiles), 40):
            put(store, profiles[i:i + 40])
        if name == "compacted":
            assert store.compact(now_ns=T0 + 5 * H, max_buckets=1000) > 0
            assert store.stats()["groups"] > 0
        clients.append((app.test_client(), store))
    ranges = [(T0, T0 + 3 * H), (T0 + 7 * M + 3 * S, T0 + 2 * H + 41 * M)]
    for t0, t1 in ranges:
        for query in ("{}", '{pod="p1"}', '{comm!="curl"}', '{pid=~"s1.*"}', '{pid=""}'):
            base = {"from": str(t0 // S), "to": str(t1 // S), "query": query}
            asks = [("/api/v1/folded", base), ("/api/v1/series", {**base, "by": "pod"}),
                    ("/api/v1/series", {**base, "by": "pod,pid"}), ("/api/v1/series", base),
                    ("/api/v1/cpu", {**base, "step": "600"}), ("/api/v1/cpu", {**base, "step": "420", "type": "cpu"})]
            for path, params in asks:
                got = []
                for client, _ in clients:
                    r = client.get(path, query_string=params)
                    assert r.status_code == 200, (path, params, r.data[:200])
                    got.append(sorted(r.text.splitlines()) if path.endswith("folded") else r.json)
                assert got[0] == got[1], (path, params)
                assert got[0], (path, params)
    for _, store in clients:
        store.close()
