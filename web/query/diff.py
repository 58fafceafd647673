"""Diffs of two profiles: per-function tables and the "top regressions" rule.

Shares, not raw values, are compared (a one-hour baseline and a five-minute comparison differ
in size, not in shape): a function's change is `comp/comp_total - base/base_total`. A change
is a regression only when it is large enough to matter and unlikely to be sampling noise:

- at least `MIN_SAMPLES` samples of the function in both sides together;
- a share increase of at least `MIN_SHARE_CHANGE` (0.1 percentage point of the total);
- a two-sided binomial test: given the function's n = a + b samples, under "no change" the
  comparison's part b is Binomial(n, B / (A + B)) (A, B the sides' totals); p must be below
  `ALPHA` divided by the number of functions tested (Bonferroni), so a table of thousands of
  functions does not produce false alarms.

Counts come from `samples/count` values, or `cpu/nanoseconds` divided by the period; for other
units (bytes, objects) there is no count to test and only the first two rules apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from web.query.stacks import NameStacks
from web.store.columns import sum_by

MIN_SAMPLES = 20
MIN_SHARE_CHANGE = 0.001
ALPHA = 0.05


def function_totals(ns: NameStacks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(name ids, flat, cumulative) per function with any value; values have one column per side.

    Flat is the value of stacks whose leaf is the function; cumulative counts each stack once per
    function however often it recurses (as `go tool pprof -top` does).
    """
    n_names = max(len(ns.names), 1)
    n = ns.values.shape[0]
    stack_of = np.repeat(np.arange(n, dtype=np.int64), ns.lengths)
    pairs = np.unique(stack_of * n_names + ns.flat)
    cum = sum_by(pairs % n_names, ns.values[pairs // n_names], n_names)
    nonempty = np.flatnonzero(ns.lengths > 0)
    leaf = ns.flat[ns.offsets[nonempty] + ns.lengths[nonempty] - 1]
    flat = sum_by(leaf, ns.values[nonempty], n_names)
    ids = np.flatnonzero(np.abs(cum).sum(axis=1) + np.abs(flat).sum(axis=1))
    return ids, flat[ids], cum[ids]


def _log_pmf(k: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def _tail(k: int, n: int, p: float, step: int) -> float:
    """P(X >= k) (step 1) or P(X <= k) (step -1), summing outward until terms vanish."""
    total = 0.0
    i = k
    while 0 <= i <= n:
        term = math.exp(_log_pmf(i, n, p))
        total += term
        if term < total * 1e-17 and (i - n * p) * step > 0:
            break
        i += step
    return min(total, 1.0)


def binomial_p(b: int, n: int, p: float) -> float:
    """Two-sided p-value of b successes in n trials with success probability p (doubled smaller tail).

    Exact for small variance; the normal approximation with continuity correction otherwise
    (n p (1 - p) >= 25, where its error is far below any threshold used here).
    """
    if n <= 0 or p <= 0.0 or p >= 1.0:
        return 1.0
    var = n * p * (1 - p)
    if var >= 25:
        z = max(abs(b - n * p) - 0.5, 0.0) / math.sqrt(var)
        return min(1.0, math.erfc(z / math.sqrt(2)))
    return min(1.0, 2 * min(_tail(b, n, p, 1), _tail(b, n, p, -1)))


def function_table(ns: NameStacks, base_per_count: float = 1.0, comp_per_count: float = 1.0,
                   counts: bool = True) -> list[dict[str, Any]]:
    """Every function with baseline and comparison flat/cum values, shares, change and p-value.

    `*_per_count` convert values to sample counts for the test (the period for cpu/nanoseconds);
    `counts=False` means the values are not counts at all (no p-value).
    """
    ids, flat, cum = function_totals(ns)
    base_total, comp_total = (int(x) for x in ns.values.sum(axis=0)) if ns.values.size else (0, 0)
    rows = []
    testable = 0
    for i, name_id in enumerate(ids.tolist()):
        bf, cf = int(flat[i, 0]), int(flat[i, 1])
        row: dict[str, Any] = {
            "name": ns.names[name_id], "base_flat": bf, "comp_flat": cf,
            "base_cum": int(cum[i, 0]), "comp_cum": int(cum[i, 1]),
            "base_share": bf / base_total if base_total else 0.0,
            "comp_share": cf / comp_total if comp_total else 0.0,
        }
        row["change"] = row["comp_share"] - row["base_share"]
        row["p_value"] = None
        if counts and base_total > 0 and comp_total > 0:
            a, b = round(bf / base_per_count), round(cf / comp_per_count)
            big_a, big_b = base_total / base_per_count, comp_total / comp_per_count
            row["samples"] = a + b
            if a + b >= MIN_SAMPLES:
                testable += 1
                row["p_value"] = binomial_p(b, a + b, big_b / (big_a + big_b))
        rows.append(row)
    threshold = ALPHA / max(testable, 1)
    for row in rows:
        big_enough = row.get("samples", MIN_SAMPLES) >= MIN_SAMPLES and abs(row["change"]) >= MIN_SHARE_CHANGE
        p = row["p_value"]
        tested = p is not None and p < threshold if counts else True
        row["significant"] = bool(big_enough and base_total > 0 and comp_total > 0 and tested)
    rows.sort(key=lambda r: (-abs(r["change"]), r["name"]))
    return rows


def regressions(rows: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Significant share increases, largest first."""
    return sorted((r for r in rows if r["significant"] and r["change"] > 0),
                  key=lambda r: (-r["change"], r["name"]))[:limit]


def improvements(rows: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Significant share decreases, largest first."""
    return sorted((r for r in rows if r["significant"] and r["change"] < 0),
                  key=lambda r: (r["change"], r["name"]))[:limit]
