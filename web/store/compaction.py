"""Time-bucket pre-aggregation: which stored blocks answer a time range.

Aged data is summed per series into aligned buckets (by default 10 min and 1 h). Buckets are
added beside the raw profiles, not instead of them, so every answer stays exact: a query uses
a bucket only when the bucket lies wholly inside its range (and inside one step of a time
series), and fills the edges from finer buckets and finally from raw profiles. A 7-day query
then reads about 170 hourly blocks per series instead of 60,000 profiles.

`plan` is pure (no storage), so the rule is tested on its own and every backend can share it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

S = 1_000_000_000
DEFAULT_LEVELS = (600 * S, 3600 * S)  # bucket widths of levels 1, 2, ...; level 0 is raw


def bucket_of(t: int, width: int) -> int:
    return t - t % width


def plan(t0: int, t1: int, widths: Sequence[int], done: Sequence[Sequence[int]], floor: int = 0,
         align: int | None = None, max_level: int | None = None) -> list[tuple[int, int, int]]:
    """Cover [t0, t1) with (level, start, end) pieces, coarsest first where complete.

    `done[i]` is the sorted list of compacted bucket starts of level i + 1 (dirty ones left out);
    buckets starting before `floor` (the retention cut) are partial and never used. With `align`,
    no piece crosses a boundary t0 + k * align, so per-step sums stay exact. Adjacent pieces of one
    level are merged, so a long raw stretch is one range.
    """
    top = len(widths) if max_level is None else min(max_level, len(widths))
    out: list[tuple[int, int, int]] = []

    def emit(level: int, a: int, b: int) -> None:
        if a >= b:
            return
        if out and out[-1][0] == level and out[-1][2] == a:
            out[-1] = (level, out[-1][1], b)
        else:
            out.append((level, a, b))

    def cover(a: int, b: int, level: int) -> None:
        if a >= b:
            return
        if level == 0:
            emit(0, a, b)
            return
        w = widths[level - 1]
        buckets = done[level - 1]
        lo = max(a, floor)
        first = lo + (-lo) % w
        i = bisect.bisect_left(buckets, first)
        pos = a
        while i < len(buckets) and buckets[i] + w <= b:
            k = buckets[i]
            cover(pos, k, level - 1)
            emit(level, k, k + w)
            pos = k + w
            i += 1
        cover(pos, b, level - 1)

    if align:
        a = t0
        while a < t1:
            b = min(a + align, t1)
            cover(a, b, top)
            a = b
    else:
        cover(t0, t1, top)
    return out
