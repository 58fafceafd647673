"""The embedded store: a SQLite index + zstd column files (the default `Store`, see web/store/base.py).

Layout, designed so that merging many profiles is array arithmetic:

- `index.sqlite` (WAL): dictionary tables `strings`, `mappings`, `frames`, `stacks` intern
  every string, mapping, frame and whole stack once for the whole store; `series` holds one
  row per (sorted label set, sample type, unit); `profiles` one row per stored profile
  (series, start, duration, period, total, and where its samples are). Block rows (below) also
  have a covering partial index of their own, so a range of blocks reads a few index pages, not
  one table page per block among the raw rows (schema 4).
- Ingest (`put`) interns a `Batch`'s frames and stacks by their row values directly, without
  building Profile or Frame objects (web/normalize.py makes the batch from a decoded pprof).
- `blobs/NNNNNN/<blob id>.pfz`: one file per `put()`, a run of zstd frames, one per profile,
  each holding two integer columns (stack id, value) sorted by stack id.
- Pre-aggregated blocks (web/store/compaction.py): as data ages, each series' profiles are summed into
  aligned time buckets (level 1 = 10 min, level 2 = 1 h by default), stored like profiles with
  their `level`; `compactions` records which buckets are complete. A put landing in a compacted
  bucket marks it dirty until it is recompacted, so queries never read a stale block. Each block
  keeps a `timelines` row: (start, total, period) of the profiles it sums, so a CPU-over-time
  series can use blocks that straddle its steps without reading raw rows (`step_totals`).
- Retention (`enforce_retention`): a time limit and a disk budget cut the oldest data in small
  transactions (ingest waits at most one batch); files are unlinked after a grace period, so a
  query that already chose a block can still read it.

A query reads only the frames of the matching profiles, concatenates their columns and
sums values per stack id with numpy; stacks are named from the stacks and frames rows as
columns (`stack_frames`, `frame_lines`), no Frame objects built.
Durability: the blob file is fsynced before the SQLite commit (synchronous=FULL by default),
so an acknowledged put survives a crash and an unacknowledged one leaves at most an
unreferenced file, removed at the next open.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import zstandard

from podflame.errors import InvalidInput, Unavailable
from podflame.model import Frame, FrameKind, Line, Stack, Unresolved
from podflame.model import Mapping as ProcMapping
from web.store import deadline
from web.store.base import (
    Batch,
    Columns,
    FrameOrigin,
    LabelTotals,
    PutResult,
    RetentionResult,
    Series,
    StepTotals,
    Store,
    StoreClosed,
    StoredProfile,
    StoreTooNew,
    frame_lines_of,
    label_totals,
)
from web.store.columns import decode_timeline, encode_columns, encode_timeline, frame_columns, group_sum, sum_by
from web.store.compaction import DEFAULT_LEVELS, bucket_of, plan
from web.store.selector import MATCH_ALL, Selector
from web.store.sqlite_groups import GroupKey, GroupTable, group_key, groups_answer
from web.store.sqlite_series import HOUR_NS, SeriesIndex

SCHEMA_VERSION = 4
BLOBS_PER_DIR = 4096
_STACK_DTYPE = np.dtype("<u4")  # frame ids inside a stack row


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS strings (id INTEGER PRIMARY KEY, s TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS mappings (
  id INTEGER PRIMARY KEY, start INTEGER NOT NULL, lim INTEGER NOT NULL, off INTEGER NOT NULL,
  path INTEGER NOT NULL, build_id INTEGER NOT NULL, UNIQUE (start, lim, off, path, build_id));
CREATE TABLE IF NOT EXISTS frames (
  id INTEGER PRIMARY KEY, address INTEGER NOT NULL, mapping INTEGER NOT NULL, kind TEXT NOT NULL,
  reason TEXT NOT NULL, lines BLOB NOT NULL, UNIQUE (address, mapping, kind, reason, lines));
CREATE TABLE IF NOT EXISTS stacks (id INTEGER PRIMARY KEY, frames BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS series (
  id INTEGER PRIMARY KEY, sample_type TEXT NOT NULL, unit TEXT NOT NULL, labels TEXT NOT NULL,
  UNIQUE (labels, sample_type, unit));
CREATE TABLE IF NOT EXISTS blobs (
  id INTEGER PRIMARY KEY, bytes INTEGER NOT NULL, created_ns INTEGER NOT NULL,
  max_start_ns INTEGER NOT NULL DEFAULT 0, deleted_ns INTEGER, live INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS profiles (
  id INTEGER PRIMARY KEY, series INTEGER NOT NULL, start_ns INTEGER NOT NULL, duration_ns INTEGER NOT NULL,
  period_ns INTEGER NOT NULL, total INTEGER NOT NULL, n_samples INTEGER NOT NULL,
  blob INTEGER NOT NULL, off INTEGER NOT NULL, len INTEGER NOT NULL, level INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS timelines (profile INTEGER PRIMARY KEY, origin INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
  id INTEGER PRIMARY KEY, sample_type TEXT NOT NULL, unit TEXT NOT NULL, labels TEXT NOT NULL,
  UNIQUE (labels, sample_type, unit));
CREATE TABLE IF NOT EXISTS compactions (
  level INTEGER NOT NULL, bucket_ns INTEGER NOT NULL, state INTEGER NOT NULL,
  PRIMARY KEY (level, bucket_ns)) WITHOUT ROWID;
"""

# Created after migrations (they name columns a version-1 store lacks).
_INDEXES = """
DROP INDEX IF EXISTS profiles_by_series_time;
DROP INDEX IF EXISTS profiles_by_time;
CREATE INDEX IF NOT EXISTS profiles_by_series_level_time ON profiles (series, level, start_ns);
CREATE INDEX IF NOT EXISTS profiles_by_level_time ON profiles (level, start_ns);
CREATE INDEX IF NOT EXISTS blobs_by_age ON blobs (max_start_ns);
CREATE INDEX IF NOT EXISTS blocks_by_series_level_time ON profiles
  (series, level, start_ns, duration_ns, period_ns, total, blob, off, len) WHERE level > 0;
"""

# Blocks are found by this covering index of block rows only: their rows lie among a day's raw rows in
# the table, so reading them through the table cost a random page read each on a cold cache. SQLite
# uses a partial index only for a query that repeats its WHERE term (`level > 0`) literally.
_BLOCK_ROWS = "profiles INDEXED BY blocks_by_series_level_time WHERE level > 0 AND"
# More matched raw series than this and a time-range scan beats one index probe per series.
_MAX_SERIES_PROBES = 256
_SERIES_KEPT = 16384  # `Series` objects kept for refs (a day's pod list or a pod's per-pid list: a few thousand)
# compactions.state: _DONE (by an older podflame: per-series blocks only), _DIRTY, _GROUPED (per-series blocks and
# the group blocks beside them; an older podflame reads it as dirty and recompacts the bucket its own way).
_DONE, _DIRTY, _GROUPED = 1, 2, 3
DELETE_BATCH = 2000  # rows per retention transaction: what a concurrent put may wait for
_BATCH_PAUSE_S = 0.001  # between batches, so a waiting writer gets the lock (locks are not fair)
UNLINK_GRACE_NS = 30 * 1_000_000_000  # a query that picked a block before its deletion can still read it
COMPACTION_DELAY_NS = 60 * 1_000_000_000  # a bucket is compacted this long after it ends (late drains)
_U64 = 1 << 64
_I64_LIMIT = 1 << 63
_LINE = struct.Struct("<3q")  # one frames.lines entry: function, file (string ids), line
_RequestMemo = tuple[dict[int, tuple[int, int]], dict[int, int]]


_FRAME_COLUMNS = ("address", "mapping", "kind", "reason", "lines")


def _frame_key(address: int, mapping_id: int, kind: str, reason: str, lines: list[int]) -> tuple:
    """A frames row's values (its unique key).

    `lines` is (function, file, line) per inline frame, innermost first, flattened."""
    packed = _LINE.pack(*lines) if len(lines) == 3 else struct.pack(f"<{len(lines)}q", *lines)
    return (_to_i64(address), mapping_id, kind, reason, packed)


def _to_i64(v: int) -> int:
    """SQLite integers are signed 64-bit: store u64 addresses two's-complement."""
    return v - _U64 if v >= _I64_LIMIT else v


def _from_i64(v: int) -> int:
    return v + _U64 if v < 0 else v


# What `_put` stores per profile: series id, start, duration, period, stack ids, their values.
_Row = tuple[int, int, int, int, list[int], Iterable[int]]


class _Handle(NamedTuple):
    """Where a stored profile's samples are. A tuple: select() makes one per row (8,800 for a node's day)."""

    blob: int
    off: int
    len: int
    row: int
    level: int


class StoreUnusable(Unavailable):
    """The data directory cannot be created or written, or its index is not a SQLite database."""


class SqliteStore(Store):
    """SQLite index + zstd column files under one directory; one writer at a time, readers in parallel.

    One connection, guarded by a lock, serves index reads and writes (they are short); blob
    files are read and decompressed outside the lock so queries run concurrently.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, synchronous: str = "FULL", zstd_level: int = 3,
                 levels: Sequence[int] = DEFAULT_LEVELS) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise InvalidInput("synchronous must be NORMAL, FULL or EXTRA (anything less is not durable)")
        self.dir = Path(data_dir)
        self.blob_dir = self.dir / "blobs"
        try:
            self._open(synchronous, zstd_level, levels)
        except (OSError, sqlite3.DatabaseError) as e:  # a user's --data: say which folder and why, not a traceback
            if isinstance(e, OSError):
                why = f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)
            else:
                why = f"{self.dir / 'index.sqlite'}: {e}"
            raise StoreUnusable(f"cannot use {self.dir} as the data directory: {why} (give another folder "
                                "with --data, one this user can write)") from None

    def _open(self, synchronous: str, zstd_level: int, levels: Sequence[int]) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.zstd_level = zstd_level
        self._zstd = zstandard.ZstdCompressor(level=zstd_level)  # used under the write lock only
        self.levels = tuple(sorted(levels))
        if any(b % a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise InvalidInput("each bucket width must be a multiple of the finer one")
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.dir / "index.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA foreign_keys=OFF")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreTooNew(f"{self.dir} was written by a newer podflame (schema {row[0]} > {SCHEMA_VERSION})")
        elif int(row[0]) < SCHEMA_VERSION:
            self._migrate(int(row[0]))
        self._db.executescript(_INDEXES)
        self._reset_caches()
        self._load_series()
        self._load_compactions()
        self._sweep_orphans()
        self._closed = False

    def _migrate(self, version: int) -> None:
        """Version 1 -> 2: profile levels, blob ages and deletion marks (old rows are raw, age from rows).

        Version 2 -> 3: the `timelines` table (created by the schema script); blocks written before
        have none, and time series fall back to blocks that fit their steps.

        Version 3 -> 4: the covering index of blocks, `blocks_by_series_level_time` (created with the
        other indexes, from the rows already there).
        """
        with self._db:
            if version >= 2:
                self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
                return
            self._db.execute("ALTER TABLE profiles ADD COLUMN level INTEGER NOT NULL DEFAULT 0")
            self._db.execute("ALTER TABLE blobs ADD COLUMN max_start_ns INTEGER NOT NULL DEFAULT 0")
            self._db.execute("ALTER TABLE blobs ADD COLUMN deleted_ns INTEGER")
            self._db.execute("ALTER TABLE blobs ADD COLUMN live INTEGER NOT NULL DEFAULT 0")
            self._db.execute("UPDATE blobs SET max_start_ns = coalesce((SELECT max(start_ns) FROM profiles "
                             "WHERE blob = blobs.id), 0), live = (SELECT count(*) FROM profiles WHERE blob = blobs.id)")
            self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    def _meta(self, key: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                         (key, str(value)))

    def _load_compactions(self) -> None:
        """Which buckets are complete (per level, sorted, for the planner) and which are dirty."""
        self._floor = self._meta("retention_floor_ns")
        self._watermark = [self._meta(f"compacted_through_{lv}") for lv in range(1, len(self.levels) + 1)]
        self._done_sets: list[set[int]] = [set() for _ in self.levels]
        self._grouped: list[set[int]] = [set() for _ in self.levels]  # done buckets that have group blocks
        self._dirty: set[tuple[int, int]] = set()
        for level, bucket, state in self._db.execute("SELECT level, bucket_ns, state FROM compactions"):
            if not 1 <= level <= len(self.levels):
                continue  # written with other level settings: ignored, as if never compacted
            if state in (_DONE, _GROUPED):
                self._done_sets[level - 1].add(bucket)
                if state == _GROUPED:
                    self._grouped[level - 1].add(bucket)
            else:
                self._dirty.add((level, bucket))
        self._refresh_done()

    def _refresh_done(self) -> None:
        self._done = [sorted(d) for d in self._done_sets]

    # -- caches --------------------------------------------------------------------------------

    def _reset_caches(self) -> None:
        """Dictionary caches (write side: value -> id; read side: id -> value)."""
        self._string_ids: dict[str, int] = {}
        self._strings: dict[int, str] = {}
        self._mapping_ids: dict[ProcMapping, int] = {}
        self._mappings: dict[int, ProcMapping] = {}
        self._frame_keys: dict[tuple, int] = {}  # frames table key (address, mapping, kind, reason, lines) -> id
        self._frames: dict[int, Frame] = {}
        self._stack_ids: dict[bytes, int] = {}
        self._stacks: dict[int, Stack] = {}

    def _load_series(self) -> None:
        """All series in memory: by id, by key, and as the columns of a `SeriesIndex` (matchers, label lists).

        Series are kept as their key's strings (tuples of strings, which the garbage collector stops tracking),
        and `Series` objects are made for the ones refs name (`_series_of`): a `Series` per series made every
        full collection walk ~46k more objects on an 8 h churn store (half of the process's tracked heap, 85 ms
        a collection under load), and a week's retention would keep a million."""
        self._series_ids: dict[tuple[str, str, str], int] = {}
        self._series_keys: dict[int, tuple[str, str, str]] = {}
        self._series_objs: dict[int, Series] = {}  # the last _SERIES_KEPT made, oldest first
        self._index = SeriesIndex()
        for sid, st, unit, labels in self._db.execute("SELECT id, sample_type, unit, labels FROM series"):
            self._add_series(sid, labels, st, unit, json.loads(labels))
        # Each series's first and last row start (any level): series of short-lived processes (a new `pid`
        # each) outnumber the rest, and most lie wholly inside or outside a query's range, so label lists
        # and type probes decide them from memory instead of scanning the range's rows.
        sids: list[int] = []
        starts: list[int] = []
        # Per hour too: the index lists each hour's series (`SeriesIndex.near_slots`).
        for sid, lo, hi in self._db.execute("SELECT series, min(start_ns), max(start_ns) FROM profiles "
                                            f"GROUP BY series, start_ns / {HOUR_NS}"):
            if sid in self._series_keys:
                sids += (sid, sid)
                starts += (lo, hi)
        self._index.extend(sids, starts)
        self._groups = GroupTable()
        for gid, st, unit, labels in self._db.execute("SELECT id, sample_type, unit, labels FROM groups"):
            self._groups.add(gid, labels, st, unit)

    def _add_series(self, sid: int, key: str, sample_type: str, unit: str, items: Iterable[tuple[str, str]]) -> None:
        self._series_ids[(key, sample_type, unit)] = sid
        self._series_keys[sid] = (key, sample_type, unit)
        self._index.add(sid, dict(items), sample_type, unit)

    def _series_of(self, sid: int) -> Series:
        """The series `sid` as a `Series` (caller holds the lock): made from its key when not among the last
        _SERIES_KEPT made."""
        s = self._series_objs.get(sid)
        if s is None:
            key, sample_type, unit = self._series_keys[sid]
            s = self._series_objs[sid] = Series(sid, dict(json.loads(key)), sample_type, unit)
            if len(self._series_objs) > _SERIES_KEPT:
                del self._series_objs[next(iter(self._series_objs))]
        return s

    def _sweep_orphans(self) -> None:
        """Remove blob files a crash left behind: before their rows committed, or after their deletion."""
        for (blob_id,) in self._db.execute("SELECT id FROM blobs WHERE deleted_ns IS NOT NULL").fetchall():
            self._blob_path(blob_id).unlink(missing_ok=True)
        self._db.execute("DELETE FROM blobs WHERE deleted_ns IS NOT NULL")
        (max_id,) = self._db.execute("SELECT coalesce(max(id), 0) FROM blobs").fetchone()
        for d in sorted(self.blob_dir.glob("[0-9]*"))[-2:]:
            for f in d.glob("*.pfz"):
                with contextlib.suppress(ValueError):
                    if int(f.stem) > max_id:
                        f.unlink(missing_ok=True)

    def _blob_path(self, blob_id: int) -> Path:
        return self.blob_dir / f"{blob_id // BLOBS_PER_DIR:06d}" / f"{blob_id:010d}.pfz"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[list[Path]]:
        """BEGIN IMMEDIATE ... COMMIT (the caller holds the lock). On any error: ROLLBACK, and the blob files
        written inside it (the caller lists them in what this yields) are removed before re-raising."""
        written: list[Path] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield written
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            for path in written:
                path.unlink(missing_ok=True)
            raise

    def _write_blob(self, frames: list[bytes], max_start_ns: int, rows: int | None = None
                    ) -> tuple[int, Path, list[int]]:
        """One blob file of column frames and its row (the caller holds a transaction): id, path, offsets.
        `rows`: how many profiles rows will point into it (default one per frame).

        A file that fails to write is removed here; one written under a transaction that then rolls
        back is `_transaction`'s to remove (the caller lists it there).
        """
        blob_id = self._insert(
            "INSERT INTO blobs (bytes, created_ns, max_start_ns, live) VALUES (?, ?, ?, ?)",
            (sum(len(f) for f in frames), time.time_ns(), max_start_ns, len(frames) if rows is None else rows))
        path = self._blob_path(blob_id)
        try:
            _write_durably(path, frames)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return blob_id, path, np.cumsum([0, *(len(f) for f in frames)]).tolist()

    # -- interning (caller holds the lock and a transaction) -----------------------------------

    def _row_id(self, table: str, columns: tuple[str, ...], key: tuple) -> int:
        """The id of the row of `table` whose `columns` equal `key`, inserted when there is none.

        Only reached on a cache miss; table and column names are this module's constants.
        """
        where = " AND ".join(f"{c}=?" for c in columns)
        row = self._db.execute(f"SELECT id FROM {table} WHERE {where}", key).fetchone()
        if row:
            return row[0]
        marks = ",".join("?" * len(columns))
        return self._insert(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", key)

    def _insert(self, sql: str, params: tuple) -> int:
        """Run an INSERT; the new row's id (sqlite3 types lastrowid as optional: an INSERT always sets it)."""
        row_id = self._db.execute(sql, params).lastrowid
        assert row_id is not None
        return row_id

    def _intern_string(self, s: str | None) -> int:
        if not s:
            return 0
        sid = self._string_ids.get(s)
        if sid is None:
            sid = self._row_id("strings", ("s",), (s,))
            self._string_ids[s] = sid
        return sid

    def _intern_mapping(self, m: ProcMapping | None) -> int:
        if m is None:
            return 0
        mid = self._mapping_ids.get(m)
        if mid is None:
            key = (_to_i64(m.start), _to_i64(m.limit), _to_i64(m.offset), self._intern_string(m.path),
                   self._intern_string(m.build_id))
            mid = self._row_id("mappings", ("start", "lim", "off", "path", "build_id"), key)
            self._mapping_ids[m] = mid
        return mid

    def _intern_frame_row(self, batch: Batch, key: int, memo: _RequestMemo) -> int:
        """The frames row of `batch.frames[key]`, found by the row's own values (no Frame is built).

        `memo` keeps this put's function keys -> (name, file) string ids and mapping keys -> mapping ids.
        """
        address, mapping_key, kind, lines = batch.frames[key]
        functions, mappings = memo
        parts: list[int] = []
        for fkey, line in lines:
            ids = functions.get(fkey)
            if ids is None:
                name, file = batch.functions[fkey]
                ids = functions[fkey] = (self._intern_string(name), self._intern_string(file))
            parts += (*ids, line)
        mid = mappings.get(mapping_key)
        if mid is None:
            mid = mappings[mapping_key] = self._intern_mapping(batch.mappings.get(mapping_key))
        row = _frame_key(address, mid, kind, "", parts)
        frame_id = self._frame_keys.get(row)
        if frame_id is None:
            frame_id = self._frame_keys[row] = self._row_id("frames", _FRAME_COLUMNS, row)
        return frame_id

    def _intern_stack(self, frame_ids: list[int]) -> int:
        key = struct.pack(f"<{len(frame_ids)}I", *frame_ids)  # = _STACK_DTYPE bytes
        sid = self._stack_ids.get(key)
        if sid is None:
            sid = self._row_id("stacks", ("frames",), (key,))
            self._stack_ids[key] = sid
        return sid

    def _intern_series(self, labels: Mapping[str, str], sample_type: str, unit: str) -> int:
        items = sorted((k, v) for k, v in labels.items() if v != "")
        key = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
        sid = self._series_ids.get((key, sample_type, unit))
        if sid is None:
            sid = self._insert("INSERT INTO series (sample_type, unit, labels) VALUES (?,?,?)",
                               (sample_type, unit, key))
            self._add_series(sid, key, sample_type, unit, items)
        return sid

    # -- writes --------------------------------------------------------------------------------

    def put(self, batches: Sequence[Batch]) -> PutResult:
        """Stacks of frame keys straight to store ids: no Frame or stack tuple is built or hashed; a frame
        is interned by its frames-table row (once per batch), a stack key once per batch."""
        work = [(b, [p for p in b.series if p.samples]) for b in batches]
        count = sum(len(ps) for _, ps in work)

        def rows() -> Iterator[_Row]:
            for b, series in work:
                frame_of: dict[int, int] = {}  # the batch's frame key -> frame id
                memo: _RequestMemo = ({}, {})
                stack_memo: dict[tuple[int, ...], int] = {}
                for p in series:
                    series_id = self._intern_series(p.labels, p.sample_type, p.unit)
                    sids: list[int] = []
                    for key in p.samples:
                        sid = stack_memo.get(key)
                        if sid is None:
                            try:  # batch stacks are leaf first, ours root first
                                fids = [frame_of[k] for k in reversed(key)]
                            except KeyError:  # a frame met for the first time: intern in stack order
                                fids = []
                                for k in reversed(key):
                                    fid = frame_of.get(k)
                                    if fid is None:
                                        fid = frame_of[k] = self._intern_frame_row(b, k, memo)
                                    fids.append(fid)
                            sid = stack_memo[key] = self._intern_stack(fids)
                        sids.append(sid)
                    yield series_id, b.start_ns, b.duration_ns, b.period_ns, sids, p.samples.values()

        return self._put(rows(), count)

    def _put(self, rows: Iterator[_Row], count: int) -> PutResult:
        """One transaction and one blob file for `rows`, whose ids are interned as they are iterated
        (inside the transaction: a failure forgets them all)."""
        if not count:
            return PutResult(0, 0, 0)
        with self._lock:
            self._check_open()
            series_before = set(self._series_keys)
            try:
                with self._transaction() as written:
                    frames_out: list[bytes] = []
                    out: list[tuple] = []
                    n_samples = 0
                    for series_id, start, duration, period, sids, vals in rows:
                        stack_ids = np.array(sids, dtype=np.int64)
                        values = np.fromiter(vals, dtype=np.int64, count=len(sids))
                        if len(set(sids)) != len(sids):  # equal stacks held as distinct objects or location ids
                            uniq, inv = np.unique(stack_ids, return_inverse=True)
                            stack_ids, values = uniq, sum_by(inv, values, uniq.size)
                        frames_out.append(encode_columns(stack_ids, values, self.zstd_level, self._zstd))
                        out.append((series_id, start, duration, period, int(values.sum()), int(stack_ids.size)))
                        n_samples += int(stack_ids.size)
                    blob_id, path, offsets = self._write_blob(frames_out, max(r[1] for r in out))
                    written.append(path)
                    self._db.executemany(
                        "INSERT INTO profiles (series, start_ns, duration_ns, period_ns, total, n_samples, blob, off,"
                        " len) VALUES (?,?,?,?,?,?,?,?,?)",
                        [(*row, blob_id, offsets[i], len(frame))
                         for i, (row, frame) in enumerate(zip(out, frames_out, strict=True))])
                    dirtied = self._mark_dirty({r[1] for r in out})
            except BaseException:
                # Ids handed out inside the rolled-back transaction are void: forget them.
                self._reset_caches()
                for sid in set(self._series_keys) - series_before:
                    self._drop_series(sid)
                raise
            self._index.extend([row[0] for row in out], [row[1] for row in out])
            for level, bucket in dirtied:  # only once committed: the planner must not use these now
                self._done_sets[level - 1].discard(bucket)
                self._grouped[level - 1].discard(bucket)
                self._dirty.add((level, bucket))
            if dirtied:
                self._refresh_done()
            return PutResult(count, n_samples, offsets[-1])

    def _mark_dirty(self, starts: set[int]) -> list[tuple[int, int]]:
        """Buckets compaction already passed that these start times fall in: they need (re)compaction."""
        out = []
        for i, width in enumerate(self.levels):
            for bucket in {bucket_of(t, width) for t in starts}:
                if bucket < self._watermark[i] and (i + 1, bucket) not in self._dirty and bucket >= self._floor:
                    self._db.execute("INSERT INTO compactions VALUES (?, ?, ?) ON CONFLICT (level, bucket_ns) "
                                     "DO UPDATE SET state=excluded.state", (i + 1, bucket, _DIRTY))
                    out.append((i + 1, bucket))
        return out

    def _drop_series(self, sid: int) -> None:
        self._series_objs.pop(sid, None)
        self._series_ids.pop(self._series_keys.pop(sid), None)
        self._index.drop(sid)  # dead values would stay in every label list and regex scan

    @property
    def closed(self) -> bool:
        return bool(getattr(self, "_closed", False))

    def check_ready(self, timeout: float = 2.0) -> None:
        """Open, the index takes a write lock, the data folder takes a file: what an ingest needs.
        A put holding the lock past `timeout` counts as not ready (the probe says the truth: busy)."""
        self._check_open()
        if not self._lock.acquire(timeout=timeout):
            raise Unavailable(f"the store's write lock was held for over {timeout:g}s")
        try:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
            probe = self.dir / ".ready-probe"
            try:
                probe.write_bytes(b"ok")
                probe.unlink()
            except OSError as e:
                raise Unavailable(f"cannot write in {self.dir}: {e.strerror or e}") from None
        except sqlite3.Error as e:
            raise Unavailable(f"the index cannot start a write: {e}") from None
        finally:
            self._lock.release()

    # -- reads ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise StoreClosed("the store is closed")

    def _match_series(self, selector: Selector | None, sample_type: str | None = None,
                      unit: str | None = None, t0: int | None = None, t1: int | None = None,
                      pieces: Sequence[tuple[int, int, int]] = ()) -> set[int]:
        """Series ids matching the selector; with a range, only those whose rows could lie in it (its span
        meets the range: a superset of the active ones, decided from memory); with `pieces`, in one of them
        (the edges group blocks leave: a few minutes' series, not the range's 75k)."""
        index = self._index
        span = (min(p[1] for p in pieces), max(p[2] for p in pieces)) if pieces else \
            (t0, t1) if t0 is not None and t1 is not None else None
        mask = index.match(selector, sample_type, unit, span)
        if pieces:
            near = np.zeros(index.size, dtype=bool)
            for _, a, b in pieces:
                inside, straddle = index.around(mask, a, b)
                near[inside] = near[straddle] = True
            return set(index.sids(np.flatnonzero(near)))
        if t0 is not None and t1 is not None:
            inside, straddle = index.around(mask, t0, t1)
            return set(index.sids(inside)) | set(index.sids(straddle))
        return set(index.sids(np.flatnonzero(mask)))

    def _plan(self, t0: int, t1: int, align_ns: int | None = None,
              max_level: int | None = None) -> list[tuple[int, int, int]]:
        return plan(t0, t1, self.levels, self._done, self._floor, align_ns, max_level)

    def _active(self, mask: np.ndarray, t0: int, t1: int, wanted: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Slots of `mask` whose series have at least one profile starting in [t0, t1): (decided from their
        spans, found among the rest in the rows).

        A span's ends are starts of raw rows (blocks start at their first raw row), so a series whose first
        or last row starts inside the planned pieces is active (the pieces read that raw row or the block
        summing it); one whose rows all lie outside is not. Only series with rows on both sides of the
        range (long-lived ones) are looked up in the index, and of those only the ones `wanted` keeps (given
        the slots decided from spans, it says per undecided slot whether its answer could change anything:
        a label list need not look up a series whose labels are already listed)."""
        pieces = self._plan(t0, t1)
        none = np.empty(0, dtype=np.int64)
        if not pieces:
            return none, none
        inside, straddle = self._index.around(mask, min(p[1] for p in pieces), max(p[2] for p in pieces))
        if wanted is not None and straddle.size:
            straddle = straddle[wanted(inside)[straddle]]
        if not straddle.size:
            return inside, none
        sids = self._index.sids(straddle)
        if len(sids) <= _MAX_SERIES_PROBES:
            # One at a time, skipping those that found ones made useless (60 long-lived series with the same
            # names: the first that has a row in the range answers a name list).
            q = "SELECT 1 FROM profiles WHERE series=? AND level=? AND start_ns>=? AND start_ns<? LIMIT 1"
            hit = np.zeros(len(sids), dtype=bool)
            still = None
            for j, (i, slot) in enumerate(zip(sids, straddle.tolist(), strict=True)):
                if still is not None and not still[slot]:
                    continue
                if any(self._db.execute(q, (i, *p)).fetchone() for p in pieces):
                    hit[j] = True
                    if wanted is not None:
                        still = wanted(np.concatenate((inside, straddle[hit])))
        else:
            out: set[int] = set()
            for p in pieces:
                deadline.check()
                out.update(r[0] for r in self._db.execute(
                    "SELECT DISTINCT series FROM profiles WHERE level=? AND start_ns>=? AND start_ns<?", p))
            hit = np.fromiter((i in out for i in sids), dtype=bool, count=len(sids))
        return inside, straddle[hit]

    def select(self, selector: Selector, t0: int, t1: int, sample_type: str | None = None,
               unit: str | None = None, *, align_ns: int | None = None,
               max_level: int | None = None) -> list[StoredProfile]:
        return self._select(selector, t0, t1, sample_type, unit, align_ns, max_level, summed=False)

    def select_summed(self, selector: Selector, t0: int, t1: int, sample_type: str | None = None,
                      unit: str | None = None, *, keep: Collection[str] | None = (), align_ns: int | None = None,
                      max_level: int | None = None) -> list[StoredProfile]:
        """`select`, with the group blocks of compacted buckets in place of their member series' blocks when
        neither the selector nor `keep` names a per-process label (web/store/sqlite_groups.py): a node's
        range of short-lived processes then reads a block per group and bucket, not per process. A group
        ref's series has the group's labels (no `pid`) and a negative id."""
        return self._select(selector, t0, t1, sample_type, unit, align_ns, max_level,
                            summed=groups_answer(selector, keep))

    def _split_grouped(self, pieces: list[tuple[int, int, int]]
                       ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Block pieces whose every bucket has group blocks, and the rest (raw pieces, and buckets compacted
        by an older podflame, read per series until recompacted)."""
        grouped: list[tuple[int, int, int]] = []
        rest: list[tuple[int, int, int]] = []
        for level, a, b in pieces:
            if not level:
                rest.append((level, a, b))
                continue
            width, have = self.levels[level - 1], self._grouped[level - 1]
            for k in range(a, b, width):
                out = grouped if k in have else rest
                if out and out[-1][0] == level and out[-1][2] == k:
                    out[-1] = (level, out[-1][1], k + width)
                else:
                    out.append((level, k, k + width))
        return grouped, rest

    def _select(self, selector: Selector, t0: int, t1: int, sample_type: str | None, unit: str | None,
                align_ns: int | None, max_level: int | None, *, summed: bool) -> list[StoredProfile]:
        cols = "series, start_ns, duration_ns, period_ns, total, blob, off, len, id, level"
        rows, series = self._select_rows(selector, t0, t1, sample_type, unit, align_ns, max_level, summed=summed,
                                         cols=cols)
        rows.sort(key=itemgetter(1, 0))
        return [StoredProfile(series[r[0]], r[1], r[2], r[3], r[4], _Handle._make(r[5:10])) for r in rows]

    def totals_by(self, selector: Selector, t0: int, t1: int, by: Sequence[str] | None,
                  sample_type: str | None = None, unit: str | None = None) -> list[LabelTotals]:
        """SQLite sums each series' rows per period (GROUP BY), and only the series' sums are grouped here:
        a pod list over short-lived processes no longer makes a ref per profile."""
        rows, series = self._select_rows(selector, t0, t1, sample_type, unit, None, None,
                                         summed=groups_answer(selector, by), cols="series, period_ns, SUM(total)",
                                         group_by=" GROUP BY series, period_ns")
        return label_totals(((series[sid].labels, total, period) for sid, period, total in rows), by)

    def _select_rows(self, selector: Selector, t0: int, t1: int, sample_type: str | None, unit: str | None,
                     align_ns: int | None, max_level: int | None, *, summed: bool, cols: str, group_by: str = "",
                     series_in_sql: bool = False) -> tuple[list[tuple], dict[int, Series]]:
        """The `cols` (the series first) of the rows `select` answers with (`group_by` appended to every
        statement, grouping by series first), and the series they name (groups under negative ids).

        `series_in_sql`: the matched series are filtered by SQLite in every statement (a scan of many series
        takes them as one JSON array), so `cols` and `group_by` need not name the series and a GROUP BY can
        sum across series; no series are returned then."""
        rows: list[tuple] = []
        with self._lock:
            self._check_open()
            pieces = self._plan(t0, t1, align_ns, max_level)
            if summed:
                by_group, pieces = self._split_grouped(pieces)
                gids = self._groups.matching(selector, sample_type, unit) if by_group else []
                for chunk in _chunks([-g for g in gids], 500):  # a group's rows have its id negated
                    marks = ",".join("?" * len(chunk))
                    sql = f"SELECT {cols} FROM {_BLOCK_ROWS} series IN ({marks}) AND level=? AND start_ns>=? " \
                          f"AND start_ns<?{group_by}"
                    for piece in by_group:
                        rows += self._db.execute(sql, (*chunk, *piece)).fetchall()
            ids = self._match_series(selector, sample_type, unit, t0, t1, pieces if summed else ()) \
                if pieces else set()
            raw = [p for p in pieces if not p[0]]
            blocks = [p for p in pieces if p[0]]
            many = len(ids) > _MAX_SERIES_PROBES
            # Blocks of most of the range's series (a node's day of short-lived processes: ~140k series, a
            # block or two each): one time scan per piece, not a statement per 200 series and piece.
            scan_blocks = many and 4 * len(ids) > self._index.near_count(t0, t1)
            for chunk in _chunks(sorted(ids), 200) if (blocks and not scan_blocks) or not many else ():
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {cols} FROM {_BLOCK_ROWS} series IN ({marks}) AND level=? AND start_ns>=? " \
                      f"AND start_ns<?{group_by}"
                for piece in () if scan_blocks else blocks:  # few rows per series, all in the index
                    rows += self._db.execute(sql, (*chunk, *piece)).fetchall()
                if not many:
                    sql = (f"SELECT {cols} FROM profiles WHERE series IN ({marks}) "
                           f"AND level=? AND start_ns>=? AND start_ns<?{group_by}")
                    for piece in raw:
                        rows += self._db.execute(sql, (*chunk, *piece)).fetchall()
            if many and series_in_sql:
                # One ephemeral index of the ids per statement (SQLite builds it for IN over a subquery).
                sql = f"SELECT {cols} FROM profiles WHERE level=? AND start_ns>=? AND start_ns<? " \
                      f"AND series IN (SELECT value FROM json_each(?)){group_by}"
                wanted = json.dumps(sorted(ids))
                for piece in raw + blocks if scan_blocks else raw:
                    deadline.check()
                    rows += self._db.execute(sql, (*piece, wanted)).fetchall()
            elif many:
                sql = f"SELECT {cols} FROM profiles WHERE level=? AND start_ns>=? AND start_ns<?{group_by}"
                for piece in raw + blocks if scan_blocks else raw:
                    deadline.check()
                    rows += [r for r in self._db.execute(sql, piece) if r[0] in ids]
            if series_in_sql:
                return rows, {}
            groups = self._groups.by_id
            series = {o: self._series_of(o) if o > 0 else groups[-o] for o in {r[0] for r in rows}}
        return rows, series

    def read(self, profiles: Sequence[StoredProfile]) -> Columns:
        """One read per blob file (the span its chosen frames cover), one decompressor, and the stack-id
        deltas of all frames undone by one cumulative sum: per frame only a decompress and two views."""
        by_blob: dict[int, list[tuple[int, _Handle]]] = defaultdict(list)
        for i, p in enumerate(profiles):
            h = p.handle
            assert isinstance(h, _Handle)
            by_blob[h.blob].append((i, h))
        dctx = zstandard.ZstdDecompressor()
        order: list[int] = []
        sizes: list[int] = []
        deltas: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for blob, items in by_blob.items():
            lo = min(h.off for _, h in items)
            hi = max(h.off + h.len for _, h in items)
            with open(self._blob_path(blob), "rb") as f:
                span = memoryview(os.pread(f.fileno(), hi - lo, lo))
            deadline.check()
            for i, h in items:
                d, v = frame_columns(dctx.decompress(span[h.off - lo:h.off - lo + h.len]))
                order.append(i)
                sizes.append(d.size)
                deltas.append(d)
                values.append(v)
        if not deltas:
            empty = np.empty(0, dtype=np.int64)
            return Columns(empty, empty, empty)
        n = np.array(sizes, dtype=np.int64)
        # Widened to int64 in the one copy (a u8 delta past 2**63 was never written: ids are far smaller).
        stack = np.cumsum(np.concatenate(deltas, dtype=np.int64, casting="unsafe"))
        # Each frame's deltas start again from 0: subtract the running sum just before it.
        starts = np.cumsum(n) - n
        before = np.zeros(n.size, dtype=np.int64)
        later = starts > 0
        before[later] = stack[starts[later] - 1]
        stack -= np.repeat(before, n)
        return Columns(np.repeat(np.array(order, dtype=np.int64), n), stack,
                       np.concatenate(values, dtype=np.int64, casting="unsafe"))

    def stacks(self, ids: Iterable[int]) -> dict[int, Stack]:
        with self._lock:
            self._check_open()
            want = [int(i) for i in ids]
            missing = [i for i in want if i not in self._stacks]
            rows = self._fetch("SELECT id, frames FROM stacks WHERE id IN ({})", missing)
            frame_ids = {i: np.frombuffer(blob, _STACK_DTYPE).tolist() for i, blob in rows}
            self._load_frames({f for fs in frame_ids.values() for f in fs})
            for i, fs in frame_ids.items():
                self._stacks[i] = tuple(self._frames[f] for f in fs)
            return {i: self._stacks[i] for i in want}

    def stack_frames(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Straight from the stacks table's rows (no Frame tuples built): their bytes joined are the frame ids."""
        want = [int(i) for i in ids]
        with self._lock:
            self._check_open()
            rows = dict(self._rows_by_id("stacks", "frames", want))
        blobs = [rows[i] for i in want]
        lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs)) // _STACK_DTYPE.itemsize
        return lengths, np.frombuffer(b"".join(blobs), _STACK_DTYPE).astype(np.int64)

    def frame_lines(self, frame_ids: Iterable[int]) -> dict[int, tuple[tuple[str, str | None, int | None], ...]]:
        """From the frames table's rows and the strings they name; a Frame is built only to name an
        unsymbolized frame (its fallback name needs the mapping)."""
        want = [int(i) for i in frame_ids]
        with self._lock:
            self._check_open()
            rows = self._rows_by_id("frames", "lines", want)
            triples = {fid: struct.unpack(f"<{len(blob) // 8}q", blob) for fid, blob in rows}
            self._load_strings({s for v in triples.values() for s in (*v[0::3], *v[1::3]) if s})
            strings = self._strings
            out: dict[int, tuple[tuple[str, str | None, int | None], ...]] = {}
            bare = []
            for fid, v in triples.items():
                if v:  # (function, file, line) triples innermost first, as Frame.lines
                    out[fid] = tuple((strings.get(v[j], ""), strings.get(v[j + 1]) if v[j + 1] else None,
                                      v[j + 2] or None) for j in range(len(v) - 3, -1, -3))
                else:
                    bare.append(fid)
            if bare:
                self._load_frames(set(bare))
                out.update((fid, frame_lines_of(self._frames[fid])) for fid in bare)
        return out

    immutable_refs = True  # a ref names a row and a byte range of a blob file, never rewritten in place

    def generation(self) -> Hashable:
        """Rows this connection changed (every write path: puts, compaction, retention; rolled back ones too,
        which only costs a miss) and SQLite's data_version (commits by any other connection)."""
        with self._lock:
            self._check_open()
            return (self._db.total_changes, self._db.execute("PRAGMA data_version").fetchone()[0])

    def frame_origins(self, frame_ids: Iterable[int]) -> dict[int, FrameOrigin]:
        """From the frames table's kind and mapping columns (a Python frame's file from its first line):
        a node's hundred thousand frames in a few hundred ms, where building their Frames takes seconds."""
        want = [int(i) for i in frame_ids]
        with self._lock:
            self._check_open()
            rows = self._rows_by_id("frames", "kind, mapping, lines", want)
            self._load_mappings({m for _, _, m, _ in rows if m})
            file_of: dict[int, int] = {}
            for fid, kind, _, blob in rows:
                if kind == "python":  # (function, file, line) triples innermost first: the first file set
                    v = struct.unpack(f"<{len(blob) // 8}q", blob)
                    file_of[fid] = next((f for f in v[1::3] if f), 0)
            self._load_strings(set(file_of.values()) - {0})
            mappings, strings = self._mappings, self._strings
            return {fid: (kind, mappings[m].path if m else "", strings.get(file_of.get(fid, 0), ""))
                    for fid, kind, m, _ in rows}

    def _rows_by_id(self, table: str, columns: str, ids: Sequence[int]) -> list[tuple]:
        """(id, columns...) of these rows (caller holds the lock). Many ids close together: one range scan,
        pages read in order, rather than a B-tree probe per id (cold, each probe may be a disk read)."""
        if not ids:
            return []
        lo, hi = min(ids), max(ids)
        if len(ids) >= 256 and hi - lo < 4 * len(ids):
            wanted = set(ids)
            return [r for r in self._db.execute(f"SELECT id, {columns} FROM {table} WHERE id BETWEEN ? AND ?",
                                                (lo, hi)) if r[0] in wanted]
        return self._fetch(f"SELECT id, {columns} FROM {table} WHERE id IN ({{}})", ids)

    def _timelines(self, rows: Sequence[int]) -> dict[int, tuple[int, bytes]]:
        """Block row id -> (origin, encoded timeline), for the blocks that have one."""
        with self._lock:
            self._check_open()
            return {r: (o, d) for r, o, d in self._fetch("SELECT profile, origin, data FROM timelines "
                                                         "WHERE profile IN ({})", rows)}

    def step_totals(self, selector: Selector, t0: int, t1: int, step_ns: int, sample_type: str | None = None,
                    unit: str | None = None) -> StepTotals:
        """Summed by SQLite per (period, step) over the rows `select_summed` would give, the series filter in
        each statement: a node busy with short-lived processes (a series each) answers a few rows per step, not
        a ref per profile (no refs are given). The coarsest blocks serve, whatever the steps: a block
        straddling a step boundary is split by its timeline (its profiles' starts and totals), so a day at
        5-min steps reads ~100 rows per series, and group blocks where the selector names no per-process
        label."""
        t0, step_ns = int(t0), int(step_ns)
        step = f"(start_ns - {t0}) / {step_ns}"  # starts lie in [t0, t1): never negative, so / is a floor
        straddles = f"level > 0 AND {step} != (start_ns + MAX(duration_ns, 1) - 1 - {t0}) / {step_ns}"
        rows, _ = self._select_rows(selector, t0, t1, sample_type, unit, None, None,
                                    summed=groups_answer(selector, ()), series_in_sql=True,
                                    cols=f"period_ns, {step}, CASE WHEN {straddles} THEN id ELSE 0 END, SUM(total)",
                                    group_by=" GROUP BY 1, 2, 3")
        split = [r[2] for r in rows if r[2]]
        timelines = self._timelines(split)
        if len(timelines) < len(split):  # blocks written before timelines existed
            return super().step_totals(selector, t0, t1, step_ns, sample_type, unit)
        whole = [r for r in rows if not r[2]]
        steps = [np.fromiter((r[1] for r in whole), np.int64, len(whole))]
        totals = [np.fromiter((r[3] for r in whole), np.int64, len(whole))]
        periods = [np.fromiter((r[0] for r in whole), np.int64, len(whole))]
        dctx = zstandard.ZstdDecompressor()
        for row in split:
            origin, frame = timelines[row]
            s, t, p = decode_timeline(frame, origin, dctx)
            keep = (s >= t0) & (s < t1)  # always all of them: the block lies inside [t0, t1)
            steps.append((s[keep] - t0) // step_ns)
            totals.append(t[keep])
            periods.append(p[keep])
        at, total, period = np.concatenate(steps), np.concatenate(totals), np.concatenate(periods)
        n = -(-(t1 - t0) // step_ns)
        by_period: dict[int, np.ndarray] = {}
        for p in np.unique(period).tolist():
            mask = period == p
            keys, sums = group_sum(at[mask], total[mask])
            out = by_period[p] = np.zeros(n, dtype=np.int64)
            out[keys] = sums
        return StepTotals([], by_period)

    def _fetch(self, sql: str, ids: Sequence[int]) -> list[tuple]:
        out: list[tuple] = []
        for chunk in _chunks(list(ids), 500):
            out += self._db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return out

    def _load_frames(self, ids: set[int]) -> None:
        missing = [i for i in ids if i not in self._frames]
        rows = self._fetch("SELECT id, address, mapping, kind, reason, lines FROM frames WHERE id IN ({})", missing)
        lines = {}
        for i, *_, blob in rows:
            v = struct.unpack(f"<{len(blob) // 8}q", blob)
            lines[i] = [v[j:j + 3] for j in range(0, len(v), 3)]
        self._load_mappings({r[2] for r in rows if r[2]})
        self._load_strings({s for ls in lines.values() for fn, file, _ in ls for s in (fn, file) if s})
        for fid, address, mapping, kind, reason, _ in rows:
            self._frames[fid] = Frame(
                _from_i64(address), self._mappings[mapping] if mapping else None, FrameKind(kind),
                tuple(Line(self._strings.get(fn, ""), self._strings.get(file), ln or None)
                      for fn, file, ln in lines[fid]),
                Unresolved(reason) if reason else None)

    def _load_mappings(self, ids: set[int]) -> None:
        missing = [i for i in ids if i not in self._mappings]
        rows = self._fetch("SELECT id, start, lim, off, path, build_id FROM mappings WHERE id IN ({})", missing)
        self._load_strings({s for r in rows for s in (r[4], r[5]) if s})
        for mid, start, lim, off, path, build_id in rows:
            self._mappings[mid] = ProcMapping(_from_i64(start), _from_i64(lim), _from_i64(off),
                                              self._strings.get(path, ""), self._strings.get(build_id))

    def _load_strings(self, ids: set[int]) -> None:
        missing = [i for i in ids if i not in self._strings]
        for sid, s in self._rows_by_id("strings", "s", missing):
            self._strings[sid] = s

    # -- pre-aggregation -------------------------------------------------------------------------

    def compact(self, now_ns: int | None = None, max_buckets: int = 64) -> int:
        """Write up to `max_buckets` complete buckets (dirty ones first, then newly aged ones, fine to coarse).

        The bucket's data is read and summed outside the lock; the write commits only if no profile
        landed in the bucket meanwhile (else the bucket is retried on the next pass).
        """
        now = time.time_ns() if now_ns is None else now_ns
        done = 0
        for i, width in enumerate(self.levels):
            level = i + 1
            with self._lock:
                self._check_open()
                todo = sorted(b for lv, b in self._dirty if lv == level)
                # Buckets an older podflame compacted have no group blocks: recompacted once, oldest first.
                todo += sorted(b for b in self._done_sets[i] - self._grouped[i] if b >= self._floor)
                eligible_end = bucket_of(now - COMPACTION_DELAY_NS, width)  # buckets ending by then
                start = max(self._watermark[i], bucket_of(self._floor, width) + (width if self._floor % width else 0))
                fresh: list[int] = []
                if start < eligible_end:
                    fresh = [r[0] for r in self._db.execute(
                        "SELECT DISTINCT start_ns - (start_ns % ?) FROM profiles WHERE level=0 AND start_ns>=? "
                        "AND start_ns<? ORDER BY 1", (width, start, eligible_end))]
            for bucket in todo:
                if done >= max_buckets:
                    return done
                done += self._compact_bucket(level, bucket)
            for bucket in fresh:
                if done >= max_buckets:
                    with self._lock:
                        self._advance_watermark(i, bucket)
                    return done
                done += self._compact_bucket(level, bucket)
            if start < eligible_end:
                with self._lock:
                    self._advance_watermark(i, eligible_end)
        return done

    def _advance_watermark(self, i: int, value: int) -> None:
        if value > self._watermark[i] and not self._closed:
            self._set_meta(f"compacted_through_{i + 1}", value)
            self._watermark[i] = value

    def _compact_bucket(self, level: int, bucket: int) -> int:
        """Sum the bucket's profiles (raw ones and finer blocks) per series, and per group of series that differ
        only in `pid` (web/store/sqlite_groups.py), into blocks; a group of one series points at its series's
        block (no second copy of the data), so a steady node's groups cost an index row each."""
        width = self.levels[level - 1]
        end = bucket + width
        with self._lock:
            self._check_open()
            if bucket < self._floor:
                return 0
            (seen,) = self._db.execute("SELECT coalesce(max(id), 0) FROM profiles").fetchone()
            refs = self.select(MATCH_ALL, bucket, end, max_level=level - 1)
            sub = self._timelines([_handle(r).row for r in refs if _handle(r).level])
        frames_out: list[bytes] = []
        # Per block: its series id (or group key), row values after that, the frame it reads, its timeline.
        blocks: list[tuple[int | GroupKey, tuple, int, bytes | None]] = []
        if refs:
            cols = self.read(refs)
            series_ids = np.array([r.series.id for r in refs], dtype=np.int64)
            by_series: dict[int, list[StoredProfile]] = defaultdict(list)
            for r in refs:
                by_series[r.series.id].append(r)
            members: dict[GroupKey, list[int]] = defaultdict(list)
            for sid, group in by_series.items():
                s = group[0].series
                members[group_key(s.labels, s.sample_type, s.unit)].append(sid)
            frame_of: dict[int, int] = {}
            for sid, (stack, value) in _split_sums(series_ids[cols.profile], cols).items():
                frame_of[sid] = len(frames_out)
                frames_out.append(encode_columns(stack, value, self.zstd_level))  # outside the lock: own compressor
                blocks.append((sid, _block_row(by_series[sid], value, stack), frame_of[sid],
                               _block_timeline(by_series[sid], sub, bucket)))
            shared = {key: sids for key, sids in members.items() if len(sids) > 1}
            for key, sids in members.items():
                if len(sids) == 1 and sids[0] in frame_of:
                    sid = sids[0]
                    blocks.append((key, *blocks[frame_of[sid]][1:]))  # series blocks come first: j = frame
            if shared:
                keys = list(shared)
                index_of = {sid: j for j, key in enumerate(keys) for sid in shared[key]}
                group_of = np.array([index_of.get(r.series.id, -1) for r in refs], dtype=np.int64)[cols.profile]
                for j, (stack, value) in _split_sums(group_of, cols).items():
                    key = keys[j]
                    group = [r for sid in shared[key] for r in by_series[sid]]
                    blocks.append((key, _block_row(group, value, stack), len(frames_out),
                                   _block_timeline(group, sub, bucket)))
                    frames_out.append(encode_columns(stack, value, self.zstd_level))
        with self._lock:
            self._check_open()
            changed = self._db.execute("SELECT 1 FROM profiles WHERE id>? AND level<? AND start_ns>=? "
                                       "AND start_ns<? LIMIT 1", (seen, level, bucket, end)).fetchone()
            if changed or bucket < self._floor:
                return 0
            groups_before = set(self._groups.by_id)
            try:
                with self._transaction() as written:
                    old = self._db.execute("SELECT id, blob FROM profiles WHERE level=? AND start_ns>=? AND start_ns<?",
                                           (level, bucket, end)).fetchall()
                    self._db.executemany("DELETE FROM profiles WHERE id=?", [(r[0],) for r in old])
                    self._db.executemany("DELETE FROM timelines WHERE profile=?", [(r[0],) for r in old])
                    self._release_blobs([r[1] for r in old])
                    if blocks:
                        series_rows = [b[1] for b in blocks if isinstance(b[0], int)]
                        blob_id, path, offsets = self._write_blob(frames_out, max(r[0] for r in series_rows),
                                                                  rows=len(blocks))
                        written.append(path)
                        for owner, row, j, tl in blocks:
                            sid = owner if isinstance(owner, int) else -self._intern_group(owner)
                            row_id = self._db.execute(
                                "INSERT INTO profiles (series, start_ns, duration_ns, period_ns, total, n_samples,"
                                " blob, off, len, level) VALUES (?,?,?,?,?,?,?,?,?,?)",
                                (sid, *row, blob_id, offsets[j], len(frames_out[j]), level)).lastrowid
                            if tl is not None:
                                self._db.execute("INSERT INTO timelines VALUES (?, ?, ?)", (row_id, bucket, tl))
                    self._db.execute("INSERT INTO compactions VALUES (?, ?, ?) ON CONFLICT (level, bucket_ns) "
                                     "DO UPDATE SET state=excluded.state", (level, bucket, _GROUPED))
            except BaseException:
                for gid in set(self._groups.by_id) - groups_before:  # their rows were rolled back
                    self._groups.drop(gid)
                raise
            series_blocks = [(b[0], b[1][0]) for b in blocks if isinstance(b[0], int)]
            self._index.extend([sid for sid, _ in series_blocks], [t for _, t in series_blocks])
            self._dirty.discard((level, bucket))
            self._done_sets[level - 1].add(bucket)
            self._grouped[level - 1].add(bucket)
            self._refresh_done()
            return 1

    def _intern_group(self, key: GroupKey) -> int:
        """The id of a group (caller holds a transaction, and forgets new groups if it rolls back)."""
        gid = self._groups.ids.get(key)
        if gid is None:
            labels, sample_type, unit = key
            gid = self._insert("INSERT INTO groups (sample_type, unit, labels) VALUES (?,?,?)",
                               (sample_type, unit, labels))
            self._groups.add(gid, labels, sample_type, unit)
        return gid

    def _release_blobs(self, blob_ids: Iterable[int]) -> None:
        """Count deleted rows off their blobs (one id per row); blobs left with none are marked for unlinking.

        A reference count, not an index on profiles.blob: that index would cost every put a write.
        """
        counts: dict[int, int] = defaultdict(int)
        for blob_id in blob_ids:
            counts[blob_id] += 1
        if not counts:
            return
        self._db.executemany("UPDATE blobs SET live = live - ? WHERE id=?", [(n, b) for b, n in counts.items()])
        self._db.executemany("UPDATE blobs SET deleted_ns=? WHERE id=? AND live<=0 AND deleted_ns IS NULL",
                             [(time.time_ns(), b) for b in counts])

    # -- retention -------------------------------------------------------------------------------

    def bytes_used(self) -> int:
        """Blob bytes (including files waiting for their grace period) plus the index's used pages."""
        with self._lock:
            self._check_open()
            (blobs,) = self._db.execute("SELECT coalesce(sum(bytes), 0) FROM blobs").fetchone()
            pages = self._db.execute("PRAGMA page_count").fetchone()[0] - \
                self._db.execute("PRAGMA freelist_count").fetchone()[0]
            return int(blobs) + pages * self._db.execute("PRAGMA page_size").fetchone()[0]

    def enforce_retention(self, max_age_ns: int | None, max_bytes: int | None,
                          now_ns: int | None = None, grace_ns: int = UNLINK_GRACE_NS,
                          _depth: int = 0) -> RetentionResult:
        """Cut everything that started before now - max_age, and the oldest blobs until under max_bytes.

        Rows go in transactions of DELETE_BATCH with the lock released in between, so a concurrent
        put waits for one batch at most; files are unlinked outside the lock once `grace_ns` passed.
        """
        now = time.time_ns() if now_ns is None else now_ns
        cutoff = now - max_age_ns if max_age_ns else 0
        if max_bytes is not None:
            cutoff = max(cutoff, self._budget_cutoff(max_bytes))
        deleted = 0
        if cutoff > self._floor:
            with self._lock:
                self._check_open()
                self._set_meta("retention_floor_ns", cutoff)
                self._floor = cutoff  # from now on the planner ignores buckets the cut makes partial
            while True:
                with self._lock:
                    self._check_open()
                    batch: list[tuple[int, int, int]] = []
                    for level in range(len(self.levels) + 1):  # the (level, start) index, level by level
                        batch += self._db.execute("SELECT id, blob, level FROM profiles WHERE level=? AND start_ns<? "
                                                  "LIMIT ?",
                                                  (level, cutoff, DELETE_BATCH - len(batch))).fetchall()
                        if len(batch) >= DELETE_BATCH:
                            break
                    if not batch:
                        break
                    with self._db:
                        self._db.execute("BEGIN IMMEDIATE")
                        self._db.executemany("DELETE FROM profiles WHERE id=?", [(r[0],) for r in batch])
                        self._db.executemany("DELETE FROM timelines WHERE profile=?",
                                             [(r[0],) for r in batch if r[2]])
                        self._release_blobs([r[1] for r in batch])
                        self._db.execute("DELETE FROM compactions WHERE bucket_ns<?",
                                         (bucket_of(cutoff, self.levels[0]) if self.levels else cutoff,))
                    deleted += len(batch)
                time.sleep(_BATCH_PAUSE_S)  # a waiting put takes the lock here
            self._drop_expired_series(cutoff)
        files = self._unlink_released(time.time_ns() - grace_ns)  # wall clock: readers run in real time
        if max_bytes is not None and files and self.bytes_used() > max_bytes and _depth < 3:
            # Index pages do not shrink with the blobs they point at as much as estimated: cut more.
            more = self.enforce_retention(None, max_bytes, now_ns, grace_ns, _depth=_depth + 1)
            return RetentionResult(max(cutoff, more.cutoff_ns), deleted + more.profiles, files + more.files,
                                   more.bytes_used)
        return RetentionResult(cutoff if cutoff > 0 else 0, deleted, files, self.bytes_used())

    def _drop_expired_series(self, cutoff: int) -> None:
        """Forget series the cut left without rows: every short-lived process is a series, and kept ones
        would grow memory, label lists and every matcher without bound."""
        with self._lock:
            self._check_open()
            first = "SELECT min(start_ns) FROM profiles WHERE series=? AND level=?"  # one index seek a level
            index = self._index
            index.forget_before(cutoff)
            live = index.live()
            rowless = live & (index.first[:index.size] > index.last[:index.size])  # since an older version
            gone = [sid for sid in index.sids(np.flatnonzero(rowless))
                    if not self._db.execute("SELECT 1 FROM profiles WHERE series=? LIMIT 1", (sid,)).fetchone()]
            # The first row may be gone: the ends must stay starts of rows.
            for sid in index.sids(np.flatnonzero(live & (index.first[:index.size] < cutoff))):
                starts = [r[0] for lv in range(len(self.levels) + 1)
                          if (r := self._db.execute(first, (sid, lv)).fetchone())[0] is not None]
                if starts:
                    index.set_first(sid, min(starts))
                else:
                    gone.append(sid)  # no row at any level
            # Groups the cut left without blocks (a few hundred at most: one index seek each).
            empty = [gid for gid in self._groups.by_id
                     if not self._db.execute("SELECT 1 FROM profiles WHERE series=? LIMIT 1", (-gid,)).fetchone()]
            if not gone and not empty:
                return
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM series WHERE id=?", [(i,) for i in gone])
                self._db.executemany("DELETE FROM groups WHERE id=?", [(i,) for i in empty])
            for sid in gone:
                self._drop_series(sid)
            for gid in empty:
                self._groups.drop(gid)

    def _budget_cutoff(self, max_bytes: int) -> int:
        """The start time before which deleting the oldest blobs frees the excess over the budget.

        Only blob bytes count as freed: index pages are reused but the file rarely shrinks, so
        counting them would leave the store over budget.
        """
        with self._lock:
            self._check_open()
            (live, pending) = self._db.execute(
                "SELECT coalesce(sum(CASE WHEN deleted_ns IS NULL THEN bytes END), 0), "
                "coalesce(sum(CASE WHEN deleted_ns IS NOT NULL THEN bytes END), 0) FROM blobs").fetchone()
        used = self.bytes_used()
        excess = used - pending - max_bytes  # files in their grace period are already on their way out
        if excess <= 0 or live <= 0:
            return 0
        cutoff = 0
        freed = 0
        with self._lock:
            for max_start, nbytes in self._db.execute(
                    "SELECT max_start_ns, bytes FROM blobs WHERE deleted_ns IS NULL ORDER BY max_start_ns"):
                freed += nbytes
                cutoff = max(cutoff, max_start + 1)
                if freed >= excess:
                    break
        return cutoff

    def _unlink_released(self, before_ns: int) -> int:
        with self._lock:
            self._check_open()
            ids = [r[0] for r in self._db.execute("SELECT id FROM blobs WHERE deleted_ns IS NOT NULL AND deleted_ns<=?",
                                                  (before_ns,))]
        for blob_id in ids:
            self._blob_path(blob_id).unlink(missing_ok=True)
        with self._lock:
            self._check_open()
            self._db.executemany("DELETE FROM blobs WHERE id=?", [(i,) for i in ids])
        return len(ids)

    def label_names(self, t0: int, t1: int, selector: Selector | None = None) -> list[str]:
        """Names of the active matching series, from the index's columns: a long-lived series straddling the
        range is looked up in the rows only when it has a name the others did not give."""
        with self._lock:
            self._check_open()
            index = self._index
            columns = [(name, index.column(name)) for name in index.labels]

            def new_names(inside: np.ndarray) -> np.ndarray:
                found = index.names_in(inside)
                wanted = np.zeros(index.size, dtype=bool)
                for name, column in columns:
                    if name not in found and column is not None:
                        wanted |= column >= 0
                return wanted

            inside, straddling = self._active(index.match(selector, near=(t0, t1)), t0, t1, new_names)
            return sorted(index.names_in(inside) | index.names_in(straddling))

    def label_values(self, name: str, t0: int, t1: int, selector: Selector | None = None) -> list[str]:
        return self.label_values_page(name, t0, t1, selector)[0]

    def label_values_page(self, name: str, t0: int, t1: int, selector: Selector | None = None, prefix: str = "",
                          limit: int | None = None) -> tuple[list[str], bool]:
        """The name's values among the active matching series: value ids present, from the index's columns;
        a prefix narrows the series to those whose value has it before their ranges are looked at."""
        with self._lock:
            self._check_open()
            index = self._index
            column = index.column(name)
            if column is None:
                return [], False
            mask = index.match(selector, near=(t0, t1)) & (column >= 0)
            if prefix:
                mask &= index.with_prefix(name, prefix)

            def new_values(inside: np.ndarray) -> np.ndarray:
                known = np.concatenate(([True], index.value_ids_in(name, inside)))
                return ~known[column + 1]

            inside, straddling = self._active(mask, t0, t1, new_values)
            values, count = index.values(name, index.value_ids_in(name, inside) | index.value_ids_in(name, straddling),
                                         limit)
            return values, count > len(values)

    def types(self, t0: int, t1: int, selector: Selector | None = None) -> list[tuple[str, str]]:
        """(sample type, unit) of the active matching series: a straddling series is looked up in the rows
        only when no other series gave its type (every query asks this first)."""
        with self._lock:
            self._check_open()
            index = self._index
            kind = index.kind[:index.size]

            def present(slots: np.ndarray) -> np.ndarray:  # per kind (a count, not a sort of 75k slots' kinds)
                return np.bincount(kind[slots], minlength=len(index.kinds)) > 0

            def new_kinds(inside: np.ndarray) -> np.ndarray:
                return ~present(inside)[kind]

            inside, straddling = self._active(index.match(selector, near=(t0, t1)), t0, t1, new_kinds)
            found = present(inside) | present(straddling)
            return sorted(index.kinds[k] for k in np.flatnonzero(found).tolist())

    def stats(self) -> dict[str, int]:
        """Counts and bytes on disk, for metrics and benchmarks."""
        with self._lock:
            self._check_open()
            q = self._db.execute
            return {
                "series": len(self._series_keys),
                "groups": len(self._groups.by_id),
                "profiles": q("SELECT count(*) FROM profiles").fetchone()[0],
                "stacks": q("SELECT count(*) FROM stacks").fetchone()[0],
                "frames": q("SELECT count(*) FROM frames").fetchone()[0],
                "blob_bytes": q("SELECT coalesce(sum(bytes), 0) FROM blobs").fetchone()[0],
                "index_bytes": sum(f.stat().st_size for f in self.dir.glob("index.sqlite*")),
            }

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _handle(r: StoredProfile) -> _Handle:
    """Where a profile this store selected lies (`StoredProfile.handle` is opaque to everyone else)."""
    return cast(_Handle, r.handle)


def _split_sums(owner: np.ndarray, cols: Columns) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The samples summed per (owner, stack), split by owner (owners < 0 left out): owner -> (stacks, sums)."""
    keep = owner >= 0
    keys, values = group_sum((owner[keep] << 32) | cols.stack[keep], cols.value[keep])
    owner_of = keys >> 32
    bounds = np.flatnonzero(np.concatenate(([True], owner_of[1:] != owner_of[:-1], [True])))
    return {int(owner_of[a]): (keys[a:b] & 0xFFFFFFFF, values[a:b])
            for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)}


def _block_row(group: Sequence[StoredProfile], value: np.ndarray, stack: np.ndarray) -> tuple:
    """A block's (start, duration, period, total, n_samples) summing `group` into these sums: it starts at its
    first profile and ends with its last; its period is the one weighing most."""
    first = min(r.start_ns for r in group)
    last = max(r.start_ns + r.duration_ns for r in group)
    weight: dict[int, int] = defaultdict(int)
    for r in group:
        weight[r.period_ns] += abs(r.total) or 1
    period = max(weight.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return (first, last - first, period, int(value.sum()), int(stack.size))


def _block_timeline(group: Sequence[StoredProfile], sub: dict[int, tuple[int, bytes]], origin: int) -> bytes | None:
    """The timeline of a block summing `group`: raw profiles as they are, finer blocks by their timelines."""
    starts, totals, periods = [], [], []
    raw = [r for r in group if not _handle(r).level]
    starts.append(np.fromiter((r.start_ns for r in raw), np.int64, len(raw)))
    totals.append(np.fromiter((r.total for r in raw), np.int64, len(raw)))
    periods.append(np.fromiter((r.period_ns for r in raw), np.int64, len(raw)))
    dctx = zstandard.ZstdDecompressor()
    for r in group:
        if _handle(r).level:
            entry = sub.get(_handle(r).row)
            if entry is None:
                return None  # a block from before timelines: this one cannot have one either
            s, t, p = decode_timeline(entry[1], entry[0], dctx)
            starts.append(s)
            totals.append(t)
            periods.append(p)
    return encode_timeline(np.concatenate(starts), np.concatenate(totals), np.concatenate(periods), origin)


def _chunks(items: list[int], n: int) -> Iterable[list[int]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _write_durably(path: Path, chunks: list[bytes]) -> None:
    """Write and fsync a file (and its directory, when new), before the index points at it."""
    new_dir = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    dirs = [path.parent, path.parent.parent] if new_dir else [path.parent]
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
