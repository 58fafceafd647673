"""Diffs: the binomial test, per-function tables, and the regressions rule on planted changes vs noise."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from web.query import diff
from web.query.flamegraph import decode_tree
from web.query.stacks import NameStacks
from web.server.app import create_app
from web.store.base import Store

S = 1_000_000_000
T0 = 1_795_000_000 * S
EXE = Mapping(0x1000, 0x90000, 0, "/usr/bin/app", "b1d")
PERIOD = 10_000_000


def _exact_two_sided(b: int, n: int, p: float) -> float:
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
                    + (n - k) * math.log1p(-p)) for k in range(n + 1)]
    return min(1.0, 2 * min(sum(pmf[b:]), sum(pmf[:b + 1])))


@pytest.mark.parametrize("b, n, p", [(0, 10, 0.5), (9, 10, 0.5), (3, 40, 0.2), (30, 40, 0.5), (1, 200, 0.01),
                                     (12, 200, 0.02)])
def test_binomial_p_is_exact_for_small_variance(b: int, n: int, p: float) -> None:
    assert diff.binomial_p(b, n, p) == pytest.approx(_exact_two_sided(b, n, p), rel=1e-9)


@pytest.mark.parametrize("b, n, p", [(520, 1000, 0.5), (560, 1000, 0.5), (2300, 10000, 0.21)])
def test_binomial_p_normal_approximation_is_close(b: int, n: int, p: float) -> None:
    exact = _exact_two_sided(b, n, p)
    assert diff.binomial_p(b, n, p) == pytest.approx(exact, rel=0.1, abs=1e-4)


def test_binomial_p_edges() -> None:
    assert diff.binomial_p(5, 10, 0.0) == 1.0 and diff.binomial_p(0, 0, 0.5) == 1.0
    assert diff.binomial_p(5, 10, 0.5) == 1.0


def _ns(rows: list[tuple[list[str], int, int]]) -> NameStacks:
    index: dict[str, int] = {}
    paths = [[index.setdefault(n, len(index)) for n in p] for p, _, _ in rows]
    return NameStacks.from_lists(list(index), paths, [v for _, b, c in rows for v in (b, c)], columns=2)


def test_function_table_flat_cum_and_recursion_counted_once() -> None:
    ns = _ns([(["main", "f", "f", "g"], 10, 20), (["main", "f"], 5, 0), (["main"], 1, 2), ([], 4, 0)])
    rows = {r["name"]: r for r in diff.function_table(ns)}
    assert (rows["f"]["base_flat"], rows["f"]["base_cum"], rows["f"]["comp_cum"]) == (5, 15, 20)
    assert (rows["g"]["base_flat"], rows["g"]["comp_flat"]) == (10, 20)
    assert (rows["main"]["base_cum"], rows["main"]["comp_cum"], rows["main"]["base_flat"]) == (16, 22, 1)
    assert rows["g"]["base_share"] == pytest.approx(10 / 20) and rows["g"]["comp_share"] == pytest.approx(20 / 22)


def _stacks() -> list[tuple[Frame, ...]]:
    fns = [Frame(0x1000 + i * 16, EXE, FrameKind.NATIVE, (Line(f"fn{i}"),)) for i in range(40)]
    main = Frame(0x900, EXE, FrameKind.NATIVE, (Line("main"),))
    return [(main, fns[i // 2], fns[i]) for i in range(40)]


def _sampled(seed: int, n: int, weights: list[float], start: int) -> Profile:
    rng = random.Random(seed)
    p = Profile(labels={"pod": "api"}, start_ns=start, duration_ns=10 * S, period_ns=PERIOD)
    for stack in rng.choices(_stacks(), weights, k=n):
        p.add(stack, 1)
    return p


@pytest.fixture
def app(tmp_path: Path, make_store: Callable[[Path], Store]) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0, "STORE": make_store(tmp_path)})
    yield app
    app.extensions["podflame.store"].close()


def test_planted_regression_is_found_and_noise_is_not(app: Flask) -> None:
    client = app.test_client()
    weights = [1.0 / (i + 1) for i in range(40)]
    slower = list(weights)
    slower[25] *= 4  # fn25 takes 4x its share after the deploy
    for i in range(30):  # an hour of baseline in 30 drains, then 10 drains after
        client.post("/api/v1/ingest", data=pprof.encode([_sampled(i, 2000, weights, T0 + i * 10 * S)]))
    for i in range(10):
        client.post("/api/v1/ingest", data=pprof.encode([_sampled(100 + i, 2000, slower, T0 + (60 + i) * 10 * S)]))
    base = {"base_from": str(T0 // S), "base_to": str(T0 // S + 300)}
    # Two halves of the baseline: same distribution, different samples.
    noise = client.get("/api/v1/diff", query_string={"base_from": str(T0 // S), "base_to": str(T0 // S + 150),
                                                      "from": str(T0 // S + 150), "to": str(T0 // S + 300)}).json
    assert noise["regressions"] == [] and noise["improvements"] == []
    assert noise["rule"]["tested"] > 10
    r = client.get("/api/v1/diff", query_string={**base, "from": str(T0 // S + 600), "to": str(T0 // S + 700)}).json
    names = [row["name"] for row in r["regressions"]]
    assert names == ["fn25"], r["regressions"]
    top = r["regressions"][0]
    assert top["p_value"] < 1e-6 and top["comp_share"] > 3 * top["base_share"] * 0.8
    assert (r["base_total"], r["comp_total"]) == (30 * 2000, 10 * 2000)
    # The other functions lost share accordingly: any flagged improvement is a real loser, not fn25.
    assert all(row["change"] < 0 for row in r["improvements"])
    tree = decode_tree(r)
    assert tree["base_total"] == 60000 and tree["comp_total"] == 20000
    fn25 = tree["children"]["main"]["children"]["fn12"]["children"]["fn25"]
    assert fn25["comp_total"] == next(row["comp_flat"] for row in r["functions"] if row["name"] == "fn25")


def test_small_changes_are_not_regressions_however_significant() -> None:
    # A 0.05 percentage-point shift over millions of samples: significant, but below MIN_SHARE_CHANGE.
    ns = _ns([(["main", "a"], 1_000_000, 1_001_000), (["main", "b"], 1_000_000, 999_000)])
    rows = diff.function_table(ns)
    assert all(not r["significant"] for r in rows)


def test_non_count_units_use_the_share_rule_only() -> None:
    ns = _ns([(["main", "a"], 100, 300), (["main", "b"], 100, 100)])
    rows = {r["name"]: r for r in diff.function_table(ns, counts=False)}
    assert rows["a"]["p_value"] is None and rows["a"]["significant"]
