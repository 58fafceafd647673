"""What a ClickHouse store server keeps of the parts of a range without a statement (chDB: every writer in-process).

`PartCache`: the answers of part statements (a pod's grouping sets, the CPU chart's and the pod list's sums), kept
under their statement and the write marks of their hours, with per statement the latest answer kept and the insert
position it was read at (a base that `fold` brings up to date from the rows of later inserts). `HeldHours`: the
rollup and profile rows of the recent hours, read at a server's start, from which a part of those hours is answered
in numpy as its statement would answer it (so a fresh server's first pod, chart or pod list reads no table). Both
are only as good as the marks they were read under: web/store/clickhouse.py `ClickHouseStore._union` checks them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from web.store.clickhouse_schema import HOUR_NS


class Fold(NamedTuple):
    """What a part computes, for answering it without its statement: its shape ("gs": `_grouping_sets`, over raw rows
    or with `rollup` over the hourly rollup; "steps": the chart's sums per (series, period, step); "sums": the pod
    list's per (series, period)) and the series its condition names (None: every series). A raw or profile part is
    also brought up to date from the rows of inserts into `samples` (`fold`); a rollup part is not (its count and
    fingerprint are of the rollup's rows, which the views and merges shape)."""

    kind: str
    ids: np.ndarray | None
    per_series: bool = True
    t0: int = 0
    step: int = 1
    rollup: bool = False


def _int_hash64(x: np.ndarray) -> np.ndarray:
    """ClickHouse's hash of one 64-bit integer inside `cityHash64` (`IntHash64Impl`: a salted murmur finalizer)."""
    x = x.view(np.uint64) ^ np.uint64(0x4CF2D2BAAE6DA887)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


def city_hash64(*cols: np.ndarray) -> np.ndarray:
    """`cityHash64(a, b, ...)` of 64-bit integer columns as ClickHouse computes it (each column's `_int_hash64`,
    combined with CityHash's Hash128to64): the fingerprints of rows folded in without a statement."""
    k = np.uint64(0x9DDFEA08EB382D69)
    with np.errstate(over="ignore"):
        h = _int_hash64(cols[0])
        for c in cols[1:]:
            x = _int_hash64(c)
            a = (h ^ x) * k
            a ^= a >> np.uint64(47)
            b = (x ^ a) * k
            b ^= b >> np.uint64(47)
            h = b * k
    return h


def _regroup(cols: dict[str, np.ndarray], keys: Sequence[str], how: dict[str, str]) -> dict[str, np.ndarray]:
    """`cols` grouped by `keys`, each other column reduced as `how` says ("sum": wrapping if unsigned, "min", "max"):
    rows sorted by the keys (`lexsort`), runs of equal keys reduced (`reduceat`). A fold's few hundred rows: 0.1-0.2 ms,
    where `np.unique(axis=0)` and `ufunc.at` took ~0.8 ms."""
    order = np.lexsort([cols[k] for k in reversed(keys)])
    ks = [cols[k][order] for k in keys]
    at = _heads(*ks)
    out = {k: v[at] for k, v in zip(keys, ks, strict=True)}
    ops = {"sum": np.add, "min": np.minimum, "max": np.maximum}
    for c, op in how.items():
        v = cols[c][order]
        with np.errstate(over="ignore"):
            out[c] = ops[op].reduceat(v, at) if at.size else v[:0]
    return out


def fold(kept: pa.Table, inserts: list[pa.Table], f: Fold, lo: int, hi: int) -> pa.Table:
    """`kept` (a part's answer) with the rows of `inserts` into `samples` that its statement would read (series in
    `f.ids`, start in [lo, hi)) summed in, as the statement sums them (`f.kind`; not a rollup part)."""
    names = _FOLD_COLUMNS[f.kind]
    got: dict[str, list[np.ndarray]] = {c: [] for c in names}
    want = None if f.ids is None else np.unique(f.ids.astype(np.uint64))
    if want is not None and not want.size:
        return kept
    for t in inserts:
        start = t.column("start_ns").to_numpy()
        keep = (start >= lo) & (start < hi)
        if want is not None:  # (a pod's few series among a node's: a lookup, where np.isin sorts both)
            series = t.column("series").to_numpy()
            keep &= want[np.minimum(np.searchsorted(want, series), want.size - 1)] == series
        if keep.any():
            idx = np.flatnonzero(keep)
            for c in names:
                got[c].append(t.column(c).to_numpy()[idx])
    if not got["series"]:
        return kept
    r = {c: np.concatenate(v) for c, v in got.items()}
    n = r["series"].size
    if f.kind == "gs":
        zero = np.zeros(n, np.uint64)
        sets = [(r["series"], r["period_ns"], r["stack"], 0) if f.per_series else
                (zero, zero.view(np.int64), r["stack"], 0), (r["series"], r["period_ns"], zero, 1)]
        fp = city_hash64(r["start_ns"], r["stack"], r["value"])
        new: dict[str, list[np.ndarray]] = {c: [] for c in ("series", "period_ns", "stack", "lo", "hi", "v", "n",
                                                             "fp", "g")}
        for series, period, stack, g in sets:
            for c, v in (("series", series), ("period_ns", period), ("stack", stack), ("lo", r["start_ns"]),
                         ("hi", r["start_ns"] + r["duration_ns"]), ("v", r["value"]),
                         ("n", np.ones(n, np.int64)), ("fp", fp), ("g", np.full(n, g, np.int64))):
                new[c].append(v)
        keys: tuple[str, ...] = ("g", "series", "period_ns", "stack")
        how = {"lo": "min", "hi": "max", "v": "sum", "n": "sum", "fp": "sum"}
    elif f.kind == "steps":
        new = {"series": [r["series"]], "period_ns": [r["period_ns"]], "k": [(r["start_ns"] - f.t0) // f.step],
               "v": [r["value"]]}
        keys, how = ("series", "period_ns", "k"), {"v": "sum"}
    else:
        new = {"series": [r["series"]], "period_ns": [r["period_ns"]], "v": [r["value"]]}
        keys, how = ("series", "period_ns"), {"v": "sum"}
    cols = {}
    for field_ in kept.schema:
        dt = np.uint64 if pa.types.is_unsigned_integer(field_.type) else np.int64
        cols[field_.name] = np.concatenate([kept.column(field_.name).to_numpy().astype(dt)]
                                           + [np.asarray(v).astype(dt) for v in new[field_.name]])
    out = _regroup(cols, keys, how)
    return pa.Table.from_arrays([pa.array(out[fl.name], fl.type) for fl in kept.schema], schema=kept.schema)


# The columns of an insert's rows a fold of each kind reads
_FOLD_COLUMNS = {"gs": ("series", "start_ns", "duration_ns", "period_ns", "stack", "value"),
                 "steps": ("series", "start_ns", "period_ns", "value"), "sums": ("series", "period_ns", "value")}


class PartCache:
    """Answers of part statements under their keys (statement, write marks of its hours, ...: `_part_key`), least
    recently used first within `limit` bytes of Arrow (0: keep none); and per statement the key of its latest kept
    answer with the insert position it was read at (`base`: what `fold` brings up to date)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._bytes = 0
        self._bases: dict[str, tuple[tuple, int]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> pa.Table | None:
        with self._lock:
            t = self._parts.get(key)
            if t is not None:
                self._parts.move_to_end(key)
            return t

    def base(self, sql: str) -> tuple[pa.Table, int, tuple] | None:
        """The latest answer of `sql` kept, the insert position it was read at and its key."""
        with self._lock:
            b = self._bases.get(sql)
            t = self._parts.get(b[0]) if b is not None else None
            return None if t is None or b is None else (t, b[1], b[0])

    def keep(self, key: tuple, table: pa.Table, seq: int | None = None) -> None:
        """Keep `table` under `key` (if not kept already); with `seq`, as its statement's base read at that insert
        position (the statement is `key[0]`)."""
        with self._lock:
            if key not in self._parts:
                self._parts[key] = table
                self._bytes += table.nbytes
            if seq is not None:
                if len(self._bases) > 4096:
                    self._bases.clear()
                self._bases[key[0]] = (key, seq)
            while self._bytes > self.limit and self._parts:
                self._bytes -= self._parts.popitem(last=False)[1].nbytes


_GS = pa.schema([("series", pa.uint64()), ("period_ns", pa.int64()), ("stack", pa.uint64()), ("lo", pa.int64()),
                 ("hi", pa.int64()), ("v", pa.int64()), ("n", pa.uint64()), ("fp", pa.uint64()), ("g", pa.uint64())])
_STEPS = pa.schema([("series", pa.uint64()), ("period_ns", pa.int64()), ("k", pa.int64()), ("v", pa.int64())])
_SUMS = pa.schema([("series", pa.uint64()), ("period_ns", pa.int64()), ("v", pa.int64())])
ROLLUP_BYTES = 48  # a held rollup row: series, period, hour, stack, value and its fingerprint
PROFILE_BYTES = 32  # a held profile row: series, period, start, total


def _heads(*keys: np.ndarray) -> np.ndarray:
    """Where a run of equal keys starts in rows sorted by them (first row included)."""
    n = keys[0].size
    head = np.zeros(n, dtype=bool)
    if n:
        head[0] = True
        for k in keys:
            head[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(head)


class HeldHours:
    """The rows of the hourly rollup (`samples_1h`) and of `profiles` whose time lies in [lo, hi) (whole hours), as
    they were at a server's start, under the write marks they were read at (`marks`: per hour of [lo, hi) the inserts
    into `samples` whose rows start in it, then every other write; `tail`: the writes to `profiles` and
    `samples_1h`; `seq`: the insert position). A part of those hours whose marks are these is answered from them
    (`answer`) exactly as its statement answers it: same rows, same sums, counts and fingerprints."""

    def __init__(self, lo: int, hi: int, marks: tuple[int, ...], tail: tuple, seq: int, rollup: pa.Table,
                 profiles: pa.Table) -> None:
        self.lo, self.hi, self.marks, self.tail, self.seq = lo, hi, marks, tail, seq
        r = {c: rollup.column(c).to_numpy() for c in ("series", "period_ns", "hour", "stack", "value")}
        order = np.lexsort((r["hour"], r["stack"], r["period_ns"], r["series"]))
        self.rollup = {c: np.ascontiguousarray(v[order]) for c, v in r.items()}
        self.rollup["fp"] = city_hash64(self.rollup["hour"], self.rollup["stack"], self.rollup["value"])
        p = {c: profiles.column(c).to_numpy() for c in ("series", "period_ns", "start_ns", "total")}
        order = np.lexsort((p["start_ns"], p["period_ns"], p["series"]))
        self.profiles = {c: np.ascontiguousarray(v[order]) for c, v in p.items()}
        self.nbytes = sum(v.nbytes for v in self.rollup.values()) + sum(v.nbytes for v in self.profiles.values())

    def key(self, sql: str, lo: int, hi: int) -> tuple | None:
        """The key (`ClickHouseStore._part_key`'s shape) `sql` over [lo, hi) had when these rows were read; None when
        the range is not all held."""
        if lo < self.lo or hi > self.hi:
            return None
        first = self.lo // HOUR_NS
        return (sql, self.marks[lo // HOUR_NS - first:-(-hi // HOUR_NS) - first] + self.marks[-1:], *self.tail)

    @staticmethod
    def _rows(cols: dict[str, np.ndarray], time: str, ids: np.ndarray | None, lo: int, hi: int
              ) -> dict[str, np.ndarray]:
        """The rows of series `ids` (all: None) with `time` in [lo, hi), in their order (series first)."""
        series = cols["series"]
        if ids is None:  # (every row of the held hours: no copy; a copy of a node-hour's is ~1-3 ms of page faults)
            t = cols[time]
            keep = (t >= lo) & (t < hi)
            return cols if keep.all() else {c: v[keep] for c, v in cols.items()}
        want = np.unique(ids.astype(np.uint64))
        a, b = np.searchsorted(series, want, "left"), np.searchsorted(series, want, "right")
        idx = np.concatenate([np.arange(x, y) for x, y in zip(a.tolist(), b.tolist(), strict=True)] or
                             [np.empty(0, np.int64)])
        t = cols[time][idx]
        idx = idx[(t >= lo) & (t < hi)]
        return {c: v[idx] for c, v in cols.items()}

    def answer(self, f: Fold, lo: int, hi: int) -> pa.Table | None:
        """The answer of a part over [lo, hi) of these rows (a rollup part of whole hours, or a profile part)."""
        if f.kind == "gs":
            return self._grouping_sets(f, lo, hi) if f.rollup else None
        r = self._rows(self.profiles, "start_ns", f.ids, lo, hi)
        if f.kind == "steps":
            k = (r["start_ns"] - f.t0) // f.step  # rows sorted by (series, period, start): runs of (series, period, k)
            at = _heads(r["series"], r["period_ns"], k)
            cols = [r["series"][at], r["period_ns"][at], k[at]]
            schema = _STEPS
        else:
            at = _heads(r["series"], r["period_ns"])
            cols = [r["series"][at], r["period_ns"][at]]
            schema = _SUMS
        v = np.add.reduceat(r["total"], at) if at.size else np.empty(0, np.int64)
        return pa.Table.from_arrays([pa.array(c) for c in (*cols, v)], schema=schema)

    def _grouping_sets(self, f: Fold, lo: int, hi: int) -> pa.Table:
        """`_grouping_sets` of a rollup part: per (series, period, stack) (or per stack alone) and per (series,
        period) (g = 1, stack 0): first hour, last hour + 1 h, sum, rows and the wrapping sum of cityHash64(hour,
        stack, value)."""
        r = self._rows(self.rollup, "hour", f.ids, lo, hi)
        out: dict[str, list[np.ndarray]] = {name: [] for name in _GS.names}

        def agg(rows: dict[str, np.ndarray], at: np.ndarray, series: np.ndarray, period: np.ndarray,
                stack: np.ndarray, g: int) -> None:
            if not at.size:
                return
            with np.errstate(over="ignore"):
                cols = (series, period, stack, np.minimum.reduceat(rows["hour"], at),
                        np.maximum.reduceat(rows["hour"], at) + HOUR_NS, np.add.reduceat(rows["value"], at),
                        np.diff(np.append(at, rows["hour"].size)).astype(np.uint64),
                        np.add.reduceat(rows["fp"], at), np.full(at.size, g, np.uint64))
            for name, c in zip(_GS.names, cols, strict=True):
                out[name].append(c)

        if f.per_series:
            at = _heads(r["series"], r["period_ns"], r["stack"])
            agg(r, at, r["series"][at], r["period_ns"][at], r["stack"][at], 0)
        else:
            order = np.argsort(r["stack"], kind="stable")
            s = {c: v[order] for c, v in r.items()}
            at = _heads(s["stack"])
            agg(s, at, np.zeros(at.size, np.uint64), np.zeros(at.size, np.int64), s["stack"][at], 0)
        at = _heads(r["series"], r["period_ns"])
        agg(r, at, r["series"][at], r["period_ns"][at], np.zeros(at.size, np.uint64), 1)
        return pa.Table.from_arrays([pa.array(np.concatenate(out[fl.name]) if out[fl.name] else np.empty(0, np.int64),
                                              fl.type) for fl in _GS], schema=_GS)
