"""The profile store on ClickHouse: any number of stateless podflame servers share one database.

Writes: a `Batch` becomes content-hashed dictionary rows (functions, mappings, frames, stacks, series:
the same id on every server, so re-inserting is harmless) and ONE insert into `samples` whose
deduplication token is the hash of the batch's content, so an agent's retry, or the same batch
reaching two replicas, is counted once. Profile totals and hourly rollups are materialized views of
that insert (web/store/clickhouse_schema.py), so nothing in a server process is needed for correctness.

Reads are pushed down: `select` answers with one aggregate per (series, period) over the range (a
GROUP BY over `profiles`), `read` sums samples per (series, period, stack) in ClickHouse, whole
hours from the `samples_1h` rollup and only the ragged edges from raw rows, so a day of a node comes
back as its distinct stacks, never as raw rows. The query layer sees small dense integer ids (what
its caches index arrays by): this process numbers the 64-bit hashes it meets, which is a cache, not state.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from podflame.model import Frame, FrameKind, Line, Stack
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
    TypePick,
    frame_lines_of,
    label_totals,
)
from web.store.clickhouse_parts import PROFILE_BYTES, ROLLUP_BYTES, Fold, HeldHours, PartCache, fold
from web.store.clickhouse_schema import (
    DICTIONARIES,
    HOUR_NS,
    READ_EXPIRED,
    SCHEMA_VERSION,
    Layout,
    ddl,
    dictionaries,
    upgrade,
)
from web.store.clickhouse_transport import IDS, IDS_SET, ClickHouseError, ClickHouseUnavailable, Transport, quote
from web.store.columns import group_sum
from web.store.selector import Op, Selector

_U64 = struct.Struct("<Q")
_U64X2 = struct.Struct("<QQ")
_U64X3 = struct.Struct("<QQQ")
_MEMO_LIMIT = 2_000_000  # entries; past it a memo starts again (costs hashing, never correctness)


def _h(*parts: bytes) -> int:
    """A 64-bit content hash (BLAKE2b): the id of a dictionary row on every server."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(_U64.pack(len(p)))
        h.update(p)
    return int.from_bytes(h.digest(), "little")


def _s(x: str | None) -> bytes:
    return (x or "").encode()


def _factorize(values: pa.Array | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values in order of first appearance, the index of each value into them) by hashing, with Arrow's
    `dictionary_encode`: `np.unique(..., return_inverse=True)` sorts, 11-17x slower on a node's 266k frame hashes
    (31.5 against 1.8-2.9 ms)."""
    enc = (values if isinstance(values, pa.Array) else pa.array(values)).dictionary_encode()
    return enc.dictionary.to_numpy(zero_copy_only=False), enc.indices.to_numpy(zero_copy_only=False)


@dataclass(frozen=True, slots=True)
class _Window:
    """A StoredProfile's handle: the aggregate of a series' profiles of one period starting in [t0, t1).

    `n` and `fingerprint` (the count and a wrapping sum of hashes of its profile rows) name exactly which
    profiles it sums: a profile's samples are written once, in the insert that wrote its row, so equal
    handles read equal samples (`Store.immutable_refs`) and a late or deleted profile changes the handle.
    The window itself is not compared: two ranges holding the same profiles are the same data (a kept
    flame graph serves both)."""

    series: int  # the series' hash id
    period_ns: int
    t0: int = field(compare=False)
    t1: int = field(compare=False)
    n: int = 0
    fingerprint: int = 0
    # n and fingerprint are of the sample rows read (rollup rows for whole hours, raw rows at the edges:
    # `typed_select_summed`), not of the profile rows: another domain, never equal to a profile-row handle
    of_samples: bool = False


@dataclass(slots=True)
class _Rows:
    """Dictionary rows a put collects (by content hash), for the inserts before its samples."""

    funcs: dict[int, tuple[str, str]] = field(default_factory=dict)
    maps: dict[int, ProcMapping] = field(default_factory=dict)
    frames: dict[int, tuple[int, int, str, list[int], list[int]]] = field(default_factory=dict)
    stacks: dict[int, list[int]] = field(default_factory=dict)
    series: dict[int, tuple[str, str, list[tuple[str, str]]]] = field(default_factory=dict)


class _FrameRow(NamedTuple):
    """A frame as its rows give it: lines are (function, file, line) innermost first."""

    address: int
    mapping: ProcMapping | None
    kind: str
    lines: tuple[tuple[str, str | None, int | None], ...]


# The aggregate of a (series, period)'s profile rows in a range: what a `_Window` names.
_AGG = ("min(start_ns) AS lo, max(start_ns + duration_ns) AS hi, sum(total) AS sum_total, count() AS n, "
        "sum(cityHash64(start_ns, duration_ns, total, n_samples)) AS fingerprint")  # no alias named like a column
# Reads of up to this many series name their stacks in their own statement (`_read_named`): a pod, a service, a node
# of a few hundred pods. With the names held by the dictionaries (a put holds what it writes; expired keys are served)
# a node's day costs 268-336 ms against 307-382 through the tables; with every key a miss (a ClickHouse just started)
# 470-560 against 330-430, once per key. A cluster's thousands of series stay on the tables.
_NAMED_READ_SERIES = 512
# A flame graph of up to this many series (a pod, a deployment) is one read of each table (`typed_select_summed`); a
# node's (200 series) was slower so on a running server (its 15 minutes of raw rows hashed for the refs: 223-274
# against 173-183 ms of CPU), and keeps the selection and the read.
_ONE_READ_SERIES = 64
# ... where the engine keeps part answers (chDB: every writer in the process), up to this many: a node's past hours are
# then answered from kept parts and the hour being written folded from the inserts' rows, so a running server's node
# flame graph sends no statement (with a put before each request, the selection and the read took 20-45 ms of its
# CPU plus 10-30 ms of the engine's threads, the part of the request that varied: docs/benchmarks.md "Stop 25 ch25")
_KEPT_READ_SERIES = 512
_LOGIN_REFUSED = "Code: 516."  # AUTHENTICATION_FAILED: a dictionary's source could not log in
_MEMO_SECONDS = 2.0  # how long `types`' selection may serve the `select` that follows it in a request
# The series catalogue a server holds (`_load_catalogue`): series are content-addressed and never change, and the
# table only grows, so a server reads it once and then only the rows added since (`series.added`, schema 4). With it
# a selector is resolved in Python and the statements name the series by literal ids: no subquery over `series` and
# no `dictGet` of labels in the statement (each a part of the per-statement cost on this engine).
_CATALOGUE_LIMIT = 200_000  # series held at most; past it selectors resolve in ClickHouse again, as before
_CATALOGUE_IDS = 2_000  # a selector matching up to this many series names them as literals; more: the subquery
# Rows `added` this long before the last look are read again: clock skew between the servers that write them and
# inserts in flight. A row written by a server whose clock is further behind is missed until a restart (a limit).
_CATALOGUE_SLACK_NS = 300 * 10**9
_CATALOGUE_SECONDS = 60.0  # writers elsewhere: how often the catalogue reads the rows added since (see `_ids`)
# Answers of the statements a pod's flame graph, the CPU chart and the pod list send, kept per part of their range
# while no write touched its hours (`_union`; only where every writer is in this process: chDB). Bytes of Arrow kept.
_PART_CACHE_BYTES = 64 << 20
# Stacks whose names a server reads at its start (`_hold_stacks`): a node's day is ~15k; a cluster's latest hour more
_HELD_STACKS = 100_000
_PART_CACHE_HOURS = 24 * 62  # a part over more hours is not kept (its key names every hour's mark)
# The recent hours' rollup and profile rows a server on chDB reads at its start (`_hold_hours`), newest hour first while
# they fit: a node of 100 pods' hour is ~39k rollup and 72k profile rows, ~4.2 MB held (so ~7 node-hours).
_HELD_BYTES = 32 << 20
_HELD_HOURS = 24  # hours before now looked at (and every later one)


class ClickHouseStore(Store):
    """`Store` over a `Transport` (HTTP server or in-process chDB) and a `Layout` (database, cluster, TTL)."""

    def __init__(self, transport: Transport, layout: Layout, *, migrate: bool = True) -> None:
        self.transport = transport
        self.layout = layout
        self._lock = threading.Lock()
        self._migrating = threading.Lock()
        self._closed = False
        self._ready = not migrate
        self._in = "GLOBAL IN" if layout.cluster else "IN"  # subqueries over Distributed tables run once
        # On a cluster a put returns once every shard has its rows (not queued in the Distributed table):
        # the agent's acknowledged batch is stored, and its retry's token meets the first insert's.
        self._sync: dict[str, int] = {"distributed_foreground_insert": 1, "max_threads": 1} if layout.cluster else {}
        # process-local dense numbering of hashes (the query layer indexes arrays by these ids)
        self._stack_local: dict[int, int] = {}
        self._stack_hash: list[int] = []
        self._frame_local: dict[int, int] = {}
        self._frame_hash: list[int] = []
        self._series_local: dict[int, Series] = {}  # hash -> Series (id: dense local)
        self._series_hash: list[int] = []
        # The series catalogue (`_load_catalogue`): `_series_local` holds every series added before `_cat_since`.
        self._cat_on = False
        self._cat_since = 0
        self._cat_mark: int | None = None  # every writer here (chDB): the series table's write count at the last look
        self._cat_at = 0.0  # monotonic time of the last look
        self._cat_match: dict[tuple, tuple[int, list[int]]] = {}  # (selector, type, unit) -> (series scanned, hashes)
        self._frame_rows: dict[int, _FrameRow] = {}  # local frame id -> its rows (immutable)
        self._stack_frames: dict[int, np.ndarray] = {}  # local stack id -> local frame ids (immutable rows)
        self._frame_obj: dict[int, Frame] = {}  # local frame id -> Frame (immutable rows)
        self._mappings: dict[int, ProcMapping | None] = {0: None}  # mapping hash -> mapping (immutable rows)
        self._memo: dict[object, int] = {}  # content -> hash (mappings, functions, frames, stacks)
        # Dictionary ids this process has inserted or read from their tables (rows are never deleted: a put skips them)
        self._written: set[int] = set()
        self._retention_cutoff = 0  # the last cutoff this process enforced
        # The last `types` selection of each thread, for the `select` of the same request (one statement for
        # both: the query layer asks which types are in range, then selects one of them).
        self._recent = threading.local()
        self._selected = False  # a selection has been answered (before it, no kept answer can name a generation)
        # Reads name their stacks through the schema's dictionaries (`_read_named`) until ClickHouse refuses one (a
        # server where they cannot be made or read): then the tables, as before schema 3.
        self._dicts = True
        # The login the dictionaries' source uses: the store's own, unless it is the passwordless `default`.
        self._credentials = transport.credentials()
        self._relogged = False  # the dictionaries were made again after ClickHouse refused their login
        self._parts = PartCache(_PART_CACHE_BYTES)  # answers of parts of ranges (`_union`)
        self._holding: HeldHours | None = None  # the recent hours' rows, read at the start (`_hold_hours`)
        self.held_bytes = _HELD_BYTES  # 0: hold none (read at the start: set before it)
        if migrate:
            # Start anyway when ClickHouse is down: every call answers 503 until it is back, then migrates.
            with contextlib.suppress(ClickHouseUnavailable):
                self._migrate()

    # -- schema --------------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Apply the DDL (every statement idempotent), then what an older schema's data needs (`upgrade`)."""
        stmts = ddl(self.layout, self._credentials)
        version = f"SELECT max(version) AS v FROM {self.layout.database}.schema_version"
        for stmt in stmts[:2]:  # the database and schema_version
            self.transport.command(stmt)
        have = int(self.transport.query(version).column("v")[0].as_py() or 0)
        if have > SCHEMA_VERSION:
            raise StoreTooNew(f"ClickHouse database {self.layout.database} was written by a newer podflame "
                              f"(schema {have} > {SCHEMA_VERSION})")
        for stmt in stmts[2:]:
            if not stmt.startswith("INSERT"):
                self.transport.command(stmt)
        if have:
            for stmt in upgrade(self.layout, have):
                self.transport.command(stmt)
        if have < SCHEMA_VERSION:
            self.transport.command(stmts[-1])
        self._apply_ttl()
        self._login_dictionaries()
        self._warm()
        self._ready = True

    def _warm(self) -> None:
        """What a server's first query would otherwise pay, paid at its start: one statement in the shape of each
        cold read (selection with labels, sums, the dictionaries), matching nothing. Loads the tables' indexes and
        marks, the dictionaries themselves and the engine's first-use paths. A failure is not this start's
        problem: the query that needs it reports it."""
        db = self.layout.database
        fresh = "toUInt64(rand64())"  # a key no dictionary holds: its lookup logs in to the source (tests the login)
        agg = (f"SELECT series, period_ns, {_AGG} FROM {self._t('profiles')} WHERE series IN (SELECT id FROM "
               f"{self._t('series')} WHERE labels['pod'] = '') AND start_ns < 0 GROUP BY series, period_ns")
        stmts = [f"SELECT stack, sum(value) AS value FROM {self._t('samples_1h')} WHERE series = 0 AND hour < 0 "
                 "GROUP BY stack"]
        if self._dicts:
            stmts.append("SELECT " + ", ".join(f"dictHas('{db}.{d}', {fresh}) AS {d}" for d in DICTIONARIES))
            stmts.append(f"SELECT a.series, dictGet('{db}.series_dict', 'labels', a.series) FROM ({agg}) AS a")
        else:
            stmts.append(f"SELECT a.series, s.l FROM ({agg}) AS a INNER JOIN (SELECT id, any(labels) AS l FROM "
                         f"{self._t('series')} WHERE 0 GROUP BY id) AS s ON s.id = a.series")
        for stmt in stmts:
            try:
                self.transport.query(stmt)
            except ClickHouseError as e:
                if "dictHas" in stmt and self._dictionaries_refused(e):
                    try:  # made again with this store's login: once more
                        self.transport.query(stmt)
                    except ClickHouseError:
                        self._dicts = False
        with contextlib.suppress(ClickHouseError):
            self._load_catalogue()
            self.transport.query(" UNION ALL ".join(  # a flame graph's one read
                sql for sql, *_ in self._grouping_sets("series = 0", -HOUR_NS, 1)))
        with contextlib.suppress(ClickHouseError):  # the CPU chart's and the pod list's one statement
            self._step_sums(0, 1, 1, "0", typed=True)
            self._label_sums(0, 1, ["pod"], "0")
        with contextlib.suppress(ClickHouseError):
            self._hold_stacks()
        with contextlib.suppress(ClickHouseError):
            self._hold_hours()

    def _hold_hours(self) -> None:
        """At start, where every writer is in this process (chDB): read the rows of the hourly rollup and of `profiles`
        of the latest hours (of the last `_HELD_HOURS` before now and any later one, newest first while they fit in
        `held_bytes`), under the write marks of their hours, so that a fresh server's first pod flame graph, CPU chart
        and pod list over them are answered in numpy with no statement (`_union`, `HeldHours`), each 5-9 ms of engine
        CPU a table read. Every hour from the oldest held on is held, those with no rows yet too (the hour being
        written: the inserts since are folded in). Held rows answer while their hours' marks are unchanged or moved by
        inserts only (folded, for profile parts); a write that is not an insert (DDL, a mutation, a dropped partition)
        drops them. Over HTTP other servers write: nothing is held (an exact check is itself a statement)."""
        if self.held_bytes <= 0 or self.part_cache_bytes <= 0:
            return
        samples, rollup, profiles = self._t("samples"), self._t("samples_1h"), self._t("profiles")
        seq = self.transport.insert_seq(samples)
        if seq is None:
            return
        now = time.time_ns() // HOUR_NS * HOUR_NS
        since = now - _HELD_HOURS * HOUR_NS
        rows = self.transport.query(
            f"SELECT 0 AS t, intDiv(hour, {HOUR_NS}) AS h, count() AS n FROM {rollup} WHERE hour >= {since} GROUP BY h "
            f"UNION ALL SELECT 1 AS t, intDiv(start_ns, {HOUR_NS}) AS h, count() AS n FROM {profiles} "
            f"WHERE start_ns >= {since} GROUP BY h").to_pylist()
        size: dict[int, int] = defaultdict(int)
        for r in rows:
            size[r["h"] * HOUR_NS] += r["n"] * (PROFILE_BYTES if r["t"] else ROLLUP_BYTES)
        fits, total = [], 0
        for h in sorted(size, reverse=True):
            if total + size[h] > self.held_bytes:
                break
            total += size[h]
            fits.append(h)
        older = [h for h in size if h not in fits]
        if older and not fits:
            return  # not even the newest hour fits
        lo = max([min([now, *fits]), *(h + HOUR_NS for h in older)])
        hi = max([now, *size]) + 2 * HOUR_NS
        tail = (self.transport.table_writes(profiles), self.transport.table_writes(rollup))
        marks = self.transport.hour_writes(samples, lo, hi)
        if marks is None:
            return
        got_rollup = self.transport.query(f"SELECT series, period_ns, hour, stack, value FROM {rollup} "
                                          f"WHERE hour >= {lo} AND hour < {hi}")
        got_profiles = self.transport.query(f"SELECT series, period_ns, start_ns, total FROM {profiles} "
                                            f"WHERE start_ns >= {lo} AND start_ns < {hi}")
        if self.transport.insert_seq(samples) != seq or self.transport.hour_writes(samples, lo, hi) != marks:
            return  # written meanwhile (another store on the engine): the queries read, as before
        self._holding = HeldHours(lo, hi, marks, tail, seq, got_rollup, got_profiles)

    def _hold_stacks(self) -> None:
        """At start, before the server answers: read the names of the stacks it will most likely be asked for (every
        stack while there are up to `_HELD_STACKS`; else those of the latest hour written, up to that many), as a
        first query would read them. Stacks, frames, functions and mappings are content-addressed, so what is held
        stays right whoever writes (over HTTP too). A fresh server's first pod then sends its sums statement alone,
        where it also named its stacks through the dictionaries (10-12 ms of a 27 ms request on chDB). Stacks it
        does not hold are read as a running server reads new ones."""
        n = int(self.transport.query(f"SELECT count() AS n FROM {self._t('stacks')}").column("n")[0].as_py() or 0)
        if not n:
            return
        if n <= _HELD_STACKS:
            t = self.transport.query(f"SELECT id FROM {self._t('stacks')} LIMIT {_HELD_STACKS}")
        else:  # the latest hour's (its rollup rows: one per series and stack)
            rollup = self._t("samples_1h")
            t = self.transport.query(f"SELECT stack AS id FROM {rollup} WHERE hour >= (SELECT max(hour) FROM {rollup})"
                                     f" GROUP BY stack LIMIT {_HELD_STACKS}")
        ids = t.column("id").to_numpy()
        if not ids.size:
            return
        local = self._local_stacks(ids)
        _, flat = self._stack_frames_of(local.tolist())
        self._read_frames(np.unique(flat).tolist())

    def _login_dictionaries(self) -> None:
        """Dictionaries made with another login than this store's (by a schema-3 podflame, which named none, or a
        DBA's script), or without reading expired keys (before stop 18), are made again with this one: CREATE OR
        REPLACE, as IF NOT EXISTS keeps the old source."""
        if not self._dicts:
            return
        rows = self.transport.query(
            f"SELECT name, create_table_query AS q FROM system.tables WHERE database = {quote(self.layout.database)} "
            f"AND name IN ({', '.join(quote(d) for d in DICTIONARIES)})").to_pylist()
        want = f"USER {quote(self._credentials[0])} " if self._credentials else None
        if any(((want not in r["q"]) if want else (" USER '" in r["q"])) or READ_EXPIRED not in r["q"] for r in rows):
            self._replace_dictionaries()

    def _replace_dictionaries(self) -> None:
        for stmt in dictionaries(self.layout, self._credentials, replace=True):
            self.transport.command(stmt)

    def _dictionaries_refused(self, e: ClickHouseError) -> bool:
        """ClickHouse refused a statement that reads the dictionaries: from now on the tables, unless it refused
        their source's login (a password changed since they were made, or a database made by hand), when they
        are made again with this store's login, once per store: True then (the caller may try once more)."""
        self._dicts = False
        if _LOGIN_REFUSED not in str(e) or self._relogged:
            return False
        self._relogged = True
        try:
            self._replace_dictionaries()
        except ClickHouseError:
            return False
        self._dicts = True
        return True

    def _apply_ttl(self) -> None:
        """Retention changed since the tables were made: ALTER their TTL (not re-materialized: merges apply it)."""
        rows = self.transport.query(
            f"SELECT name, create_table_query AS q FROM system.tables WHERE database = {quote(self.layout.database)}"
        ).to_pylist()
        made = {r["name"]: r["q"] for r in rows}
        suffix = "_local" if self.layout.cluster else ""
        on = self._on
        for table in ("samples", "profiles", "samples_1h"):
            name = table + suffix
            ttl = self.layout.ttl(table)
            q = made.get(name, "")
            if ttl and f"TTL {ttl}" not in q.replace("\n", " "):
                self.transport.command(f"ALTER TABLE {self.layout.database}.{name}{on} MODIFY TTL {ttl} "
                                       "SETTINGS materialize_ttl_after_modify = 0")
            elif not ttl and " TTL " in q:
                self.transport.command(f"ALTER TABLE {self.layout.database}.{name}{on} REMOVE TTL")

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")
        if not self._ready:
            with self._migrating:  # (not `_lock`: the start's reads take it)
                if not self._ready:
                    self._migrate()

    def _t(self, name: str) -> str:
        return self.layout.table(name)

    # -- writes --------------------------------------------------------------------------------

    def put(self, batches: Sequence[Batch]) -> PutResult:
        """Dictionaries first (idempotent), then one samples insert for the whole put with its content token."""
        self._check()
        rows = _Rows()
        inserts: list[tuple[str, pa.Table]] = []
        profiles = n_samples = 0
        if len(self._memo) > _MEMO_LIMIT:
            self._memo.clear()
        for b in batches:
            got = self._batch_rows(b, rows)
            if got is None:
                continue
            data, token, n_profiles = got
            inserts.append((token, data))
            profiles += n_profiles
            n_samples += data.num_rows
        if not inserts:
            return PutResult(0, 0, 0)
        self._insert_dictionaries(rows.funcs, rows.maps, rows.frames, rows.stacks, rows.series)
        # One insert for the whole put: atomic (one block per day partition), one token for a retry to match.
        data = pa.concat_tables([d for _, d in inserts])
        put_token = inserts[0][0] if len(inserts) == 1 else hashlib.blake2b(
            "".join(t for t, _ in inserts).encode(), digest_size=16).hexdigest()
        self.transport.insert(self._t("samples"), data, {
            **self._sync, "insert_deduplicate": 1, "insert_deduplication_token": put_token,
            "deduplicate_blocks_in_dependent_materialized_views": 1})
        self.transport.settle()
        return PutResult(profiles, n_samples, data.nbytes)

    def _batch_rows(self, b: Batch, rows: _Rows) -> tuple[pa.Table, str, int] | None:
        """A batch's samples as columns (series, stack hashes sorted per series, summed values), its token, and
        its profile count; dictionary rows this process has not written go into `rows`.

        Content -> hash is memoized per process (a dict hit costs less than BLAKE2): functions and mappings by
        their content, frames by (address, mapping hash, kind, function hashes, lines), stacks by the bytes of
        their frame hashes root first, which one numpy gather over all the batch's distinct stacks builds (the
        batch's frame keys are its own, so every batch is translated, but only unseen content is hashed)."""
        memo, written = self._memo, self._written
        fh: dict[int, int] = {}  # the batch's function key -> hash
        for fkey, nf in b.functions.items():
            f = memo.get(nf)
            if f is None:
                f = memo[nf] = _h(_s(nf[0]), _s(nf[1]))
            if f not in written:
                rows.funcs[f] = (nf[0], nf[1] or "")
            fh[fkey] = f
        mh: dict[int, int] = {}  # the batch's mapping key -> hash (0: none)
        for mkey, m in b.mappings.items():
            mid = 0
            if m is not None:
                mid = memo.get(m, 0)
                if not mid:
                    mid = memo[m] = _h(_U64X3.pack(m.start, m.limit, m.offset), _s(m.path), _s(m.build_id))
                if mid not in written:
                    rows.maps[mid] = m
            mh[mkey] = mid
        loc: dict[int, int] = {}  # the batch's frame key -> hash
        for key, (address, mkey, kind, lines) in b.frames.items():
            mid = mh.get(mkey, 0) if mkey else 0
            fns = tuple([fh[fk] for fk, _ in lines])
            nums = tuple([ln for _, ln in lines])
            content = (address, mid, kind, fns, nums)
            fid = memo.get(content)
            if fid is None:
                n = len(fns)
                fid = memo[content] = _h(_U64X2.pack(address, mid), _s(kind), struct.pack(f"<{n}Q", *fns),
                                         struct.pack(f"<{n}q", *nums))
            if fid not in written:
                rows.frames[fid] = (address, mid, kind, list(fns), list(nums))
            loc[key] = fid
        # Every sample's stack key -> the index of its distinct stack in the batch; per series (id, first, end).
        distinct: dict[tuple[int, ...], int] = {}
        at: list[int] = []
        values: list[int] = []
        spans: list[tuple[int, int, int]] = []
        for p in b.series:
            if not p.samples:
                continue
            items = tuple(sorted((k, v) for k, v in p.labels.items() if v != ""))
            skey = ("series", p.sample_type, p.unit, items)
            sid = memo.get(skey)
            if sid is None:
                sid = memo[skey] = _h(_s(p.sample_type), _s(p.unit), *(_s(x) for kv in items for x in kv))
            if sid not in written:
                rows.series[sid] = (p.sample_type, p.unit, list(items))
            first = len(at)
            at += [distinct.setdefault(k, len(distinct)) for k in p.samples]
            values += p.samples.values()
            spans.append((sid, first, len(at)))
        if not spans:
            return None
        stack_hash = self._stack_hashes(list(distinct), loc, rows)[np.asarray(at, dtype=np.int64)]
        value = np.asarray(values, dtype=np.int64)
        token = hashlib.blake2b(struct.pack("<qqq", b.start_ns, b.duration_ns, b.period_ns), digest_size=16)
        # Sorted by (series in batch order, stack hash) in one pass, equal content summed: the rows and the token
        # are what a per-series sort gives.
        seg = np.repeat(np.arange(len(spans)), [end - first for _, first, end in spans])
        order = np.lexsort((stack_hash, seg))
        sh, sg = stack_hash[order], seg[order]
        head = np.ones(sh.size, dtype=bool)
        head[1:] = (sh[1:] != sh[:-1]) | (sg[1:] != sg[:-1])
        starts = np.flatnonzero(head)
        stack_col, seg_col = sh[starts], sg[starts]
        value_col = np.add.reduceat(value[order], starts)
        sids = np.array([sid for sid, _, _ in spans], dtype=np.uint64)
        bounds = np.searchsorted(seg_col, np.arange(len(spans) + 1)).tolist()
        for k, sid in enumerate(sids.tolist()):
            token.update(_U64.pack(sid))
            token.update(stack_col[bounds[k]:bounds[k + 1]].tobytes())
            token.update(value_col[bounds[k]:bounds[k + 1]].tobytes())
        n = stack_col.size
        data = pa.table({
            "series": pa.array(sids[seg_col], pa.uint64()),
            "start_ns": pa.array(np.full(n, b.start_ns, np.int64)),
            "duration_ns": pa.array(np.full(n, b.duration_ns, np.int64)),
            "period_ns": pa.array(np.full(n, b.period_ns, np.int64)),
            "stack": pa.array(stack_col, pa.uint64()),
            "value": pa.array(value_col.astype(np.int64))})
        return data, token.hexdigest(), len(spans)

    def _stack_hashes(self, keys: list[tuple[int, ...]], loc: dict[int, int], rows: _Rows) -> np.ndarray:
        """The content hash of each stack key (frame keys leaf first): its frame hashes root first as bytes, the
        memo's key, hashed when unseen."""
        memo, written = self._memo, self._written
        lens = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
        flat = np.fromiter(itertools.chain.from_iterable(keys), dtype=np.int64, count=int(lens.sum()))
        uniq, inv = _factorize(flat)
        frames = np.fromiter((loc[k] for k in uniq.tolist()), dtype=np.uint64, count=uniq.size)[inv]
        offs = np.cumsum(lens) - lens
        # leaf first -> root first: position i of a stack at [o, o + n) reads o + n - 1 - (i - o)
        rev = frames[2 * np.repeat(offs, lens) + np.repeat(lens, lens) - 1 - np.arange(flat.size)]
        buf = rev.astype("<u8").tobytes()
        out = np.empty(len(keys), dtype=np.uint64)
        for i, (o, n) in enumerate(zip(offs.tolist(), lens.tolist(), strict=True)):
            kb = buf[8 * o:8 * (o + n)]
            st = memo.get(kb)
            if st is None:
                st = memo[kb] = _h(kb)
            if st not in written:
                rows.stacks[st] = rev[o:o + n].tolist()
            out[i] = st
        return out

    def _insert_dictionaries(self, funcs: dict[int, tuple[str, str]], maps: dict[int, ProcMapping],
                             frames: dict[int, tuple[int, int, str, list[int], list[int]]],
                             stacks: dict[int, list[int]], series: dict[int, tuple[str, str, list[tuple[str, str]]]]
                             ) -> None:
        """Rows this process has not written before (a duplicate of another server's is folded by the engine)."""
        written = self._written
        if len(written) > _MEMO_LIMIT:
            written.clear()
        funcs = {k: v for k, v in funcs.items() if k not in written}
        maps = {k: v for k, v in maps.items() if k not in written}
        frames = {k: v for k, v in frames.items() if k not in written}
        stacks = {k: v for k, v in stacks.items() if k not in written}
        series = {k: v for k, v in series.items() if k not in written}
        try:
            self._write_dictionaries(funcs, maps, frames, stacks, series)
        except BaseException:
            written.clear()  # unknown what landed: write again next time
            raise
        for d in (funcs, maps, frames, stacks, series):
            written.update(d)
        self._hold_names({"stacks_dict": stacks, "frames_dict": frames, "functions_dict": funcs,
                          "mappings_dict": maps, "series_dict": series})

    def _hold_names(self, new: dict[str, Iterable[int]]) -> None:
        """Have the ClickHouse server's dictionaries hold the keys this put wrote (`dictHas` reads a key it lacks
        from its table and keeps the row), so the first query that names them, a fresh server's pod flame graph,
        is all hits: on chDB a pod's hour read named 10-12 ms against 25-35 ms with every key a miss, the keys paid
        here once each (~0.03 ms a key, in the puts that first write them; docs/benchmarks.md "Stop 18 ch8").

        Not on replicated clusters: the lookup right after the write may reach a replica that has not fetched the
        part yet, and the dictionary would remember the key as missing for its lifetime (reads stay exact, through
        the tables, but slower). A failure is not the put's: its rows are stored, the reads' own checks decide."""
        if not self._dicts or (self.layout.cluster and self.layout.replicated):
            return
        db = self.layout.database
        cols = [f"arrayCount(k -> dictHas('{db}.{d}', k), CAST([{_ints(ids)}], 'Array(UInt64)')) AS {d}"
                for d, ids in new.items() if ids]
        if cols:
            with contextlib.suppress(ClickHouseError, ClickHouseUnavailable, deadline.QueryTimeout):
                self.transport.query("SELECT " + ", ".join(cols))

    def _write_dictionaries(self, funcs: dict[int, tuple[str, str]], maps: dict[int, ProcMapping],
                            frames: dict[int, tuple[int, int, str, list[int], list[int]]],
                            stacks: dict[int, list[int]], series: dict[int, tuple[str, str, list[tuple[str, str]]]]
                            ) -> None:
        def ins(table: str, data: pa.Table, _: dict) -> None:
            self.transport.insert(table, data, self._sync)

        if funcs:
            ins(self._t("functions"), pa.table({"id": pa.array(list(funcs), pa.uint64()),
                                                "name": [v[0] for v in funcs.values()],
                                                "file": [v[1] for v in funcs.values()]}), {})
        if maps:
            ins(self._t("mappings"), pa.table({
                "id": pa.array(list(maps), pa.uint64()),
                "start": pa.array([m.start for m in maps.values()], pa.uint64()),
                "limit": pa.array([m.limit for m in maps.values()], pa.uint64()),
                "offset": pa.array([m.offset for m in maps.values()], pa.uint64()),
                "path": [m.path for m in maps.values()], "build_id": [m.build_id or "" for m in maps.values()]}), {})
        if frames:
            ins(self._t("frames"), pa.table({
                "id": pa.array(list(frames), pa.uint64()),
                "address": pa.array([f[0] for f in frames.values()], pa.uint64()),
                "mapping": pa.array([f[1] for f in frames.values()], pa.uint64()),
                "kind": [f[2] for f in frames.values()],
                "functions": pa.array([f[3] for f in frames.values()], pa.list_(pa.uint64())),
                "lines": pa.array([f[4] for f in frames.values()], pa.list_(pa.int64()))}), {})
        if stacks:
            ins(self._t("stacks"), pa.table({"id": pa.array(list(stacks), pa.uint64()),
                                             "frames": pa.array(list(stacks.values()), pa.list_(pa.uint64()))}), {})
        if series:
            table = self._t("series")
            before = self.transport.table_writes(table)
            ins(table, pa.table({
                "id": pa.array(list(series), pa.uint64()),
                "sample_type": [v[0] for v in series.values()], "unit": [v[1] for v in series.values()],
                "labels": pa.array([v[2] for v in series.values()], pa.map_(pa.string(), pa.string())),
                "added": pa.array(np.full(len(series), time.time_ns(), np.int64))}), {})
            self._catalogue_wrote(series, before)

    def _catalogue_wrote(self, series: dict[int, tuple[str, str, list[tuple[str, str]]]], before: int | None) -> None:
        """The series this put inserted, into the catalogue without reading them back, when every writer is here
        (chDB) and this insert was the table's only write since the catalogue's last look (its count moved by one
        from that look's): the catalogue then holds every row again, as a read of the rows added since would make
        it. Otherwise the next look reads them (`_catalogue`)."""
        after = self.transport.table_writes(self._t("series"))
        with self._lock:
            if not self._cat_on or before is None or after != before + 1 or before != self._cat_mark:
                return
            self._keep_series({"id": h, "t": t, "u": u, "l": labels} for h, (t, u, labels) in series.items())
            self._cat_mark = after

    # -- series --------------------------------------------------------------------------------

    def _series_where(self, selector: Selector | None, sample_type: str | None, unit: str | None) -> str:
        """The selector as a condition over the series table (a missing label reads as '', as Prometheus)."""
        conds = []
        for m in selector.matchers if selector else ():
            v = f"labels[{quote(m.name)}]"
            if m.op is Op.EQ:
                conds.append(f"{v} = {quote(m.value)}")
            elif m.op is Op.NE:
                conds.append(f"{v} != {quote(m.value)}")
            else:
                hit = f"match({v}, {quote('^(?:' + m.value + ')$')})"
                conds.append(hit if m.op is Op.RE else f"NOT {hit}")
        if sample_type is not None:
            conds.append(f"sample_type = {quote(sample_type)}")
        if unit is not None:
            conds.append(f"unit = {quote(unit)}")
        return " AND ".join(conds) or "1"

    def _series_ids_sql(self, selector: Selector | None, sample_type: str | None = None,
                        unit: str | None = None) -> str:
        return f"SELECT id FROM {self._t('series')} WHERE {self._series_where(selector, sample_type, unit)}"

    def _series_in(self, where: str) -> str:
        """A condition on `series` of the rows of `profiles`: in the series matching `where`; none when every series
        does (`{}`: the subquery over `series` cost ~2 ms of a 12-14 ms statement on chDB). A profile's series row is
        written before it, and each caller names the series from the table or its dictionary, whose misses it
        reads from the table: a profile without one is left out either way."""
        return "1" if where == "1" else f"series {self._in} (SELECT id FROM {self._t('series')} WHERE {where})"

    def _keep_series(self, rows: Iterable[dict], id_key: str = "id") -> None:
        """Series rows (`id_key`, t, u, l) into this process' cache (caller holds the lock); read from the table, so a
        put need not write them again."""
        for r in rows:
            if r[id_key] not in self._series_local:
                self._series_hash.append(r[id_key])
                self._series_local[r[id_key]] = Series(len(self._series_hash) - 1, dict(r["l"]), r["t"], r["u"])
                self._written.add(r[id_key])

    def _load_catalogue(self) -> None:
        """Hold every series (at a server's start: one statement), unless there are more than `_CATALOGUE_LIMIT`."""
        self._read_catalogue(None)

    def _read_catalogue(self, since: int | None) -> None:
        """Read the series added since `since` (None: all) into the catalogue; past the limit, stop using it."""
        now = time.time_ns()
        mark = self.transport.table_writes(self._t("series"))  # before the read: a write after it is seen next time
        cond = "" if since is None else f"WHERE added >= {int(since)} "
        rows = self.transport.query(
            f"SELECT id, any(sample_type) AS t, any(unit) AS u, any(labels) AS l FROM {self._t('series')} {cond}"
            f"GROUP BY id LIMIT {_CATALOGUE_LIMIT + 1}").to_pylist()
        with self._lock:
            self._keep_series(rows)
            self._cat_on = len(rows) <= _CATALOGUE_LIMIT and len(self._series_local) <= _CATALOGUE_LIMIT
            self._cat_since, self._cat_mark, self._cat_at = now - _CATALOGUE_SLACK_NS, mark, time.monotonic()

    def _catalogue(self) -> str | None:
        """None when the catalogue cannot resolve selectors; else a condition to OR with its literal ids ("" when it
        is known to hold every series). Every writer in this process (chDB): the catalogue reads the rows added since
        its last look when the series table was written since, so it holds every series. Writers elsewhere (other
        servers on a ClickHouse server): the statements also take the series added since the last look by the
        selector in SQL (`added` has a min-max index: the recent granules only), and every `_CATALOGUE_SECONDS`
        the catalogue reads them, so that condition stays small."""
        if not self._cat_on:
            return None
        mark = self.transport.table_writes(self._t("series"))
        if mark is not None:
            if mark != self._cat_mark:
                self._read_catalogue(self._cat_since)
            return "" if self._cat_on else None
        if time.monotonic() - self._cat_at > _CATALOGUE_SECONDS:
            self._read_catalogue(self._cat_since)
        return f"added >= {int(self._cat_since)}" if self._cat_on else None

    def _matching(self, selector: Selector | None, sample_type: str | None, unit: str | None) -> list[int]:
        """Hashes of the held series the selector (and type, unit) matches; kept per selector and extended with the
        series met since (the cache only grows)."""
        key = (selector, sample_type, unit)
        with self._lock:
            done, ids = self._cat_match.get(key, (0, []))
            hashes = self._series_hash
            if done < len(hashes):
                local = self._series_local
                new = [h for h in hashes[done:] if (sample_type is None or local[h].sample_type == sample_type)
                       and (unit is None or local[h].unit == unit)
                       and (selector is None or selector.matches(local[h].labels))]
                ids = ids + new
                if len(self._cat_match) > 256:
                    self._cat_match.clear()
                self._cat_match[key] = (len(hashes), ids)
        return ids

    def _ids(self, selector: Selector | None, sample_type: str | None, unit: str | None) -> tuple[str, int]:
        """The condition on `series` of the rows of a series-keyed table for the series matching, and how many series
        it names by literal ids from the catalogue (-1: none, the condition is SQL over `series`; with every series
        matching ({}) no condition at all)."""
        where = self._series_where(selector, sample_type, unit)
        if where == "1":
            return "1", -1
        extra = self._catalogue()
        if extra is None:
            return self._series_in(where), -1
        ids = self._matching(selector, sample_type, unit)
        if len(ids) > _CATALOGUE_IDS:
            return self._series_in(where), -1
        cond = f"series IN ({_ints(ids)})" if ids else "0"
        if extra:
            cond = f"({cond} OR series {self._in} (SELECT id FROM {self._t('series')} WHERE {extra} AND {where}))"
        return cond, len(ids)

    def _series(self, hashes: Iterable[int]) -> dict[int, Series]:
        """Series by hash id, from this process' cache or the series table."""
        want = set(hashes)
        missing = [h for h in want if h not in self._series_local]
        if missing:
            rows = self.transport.query(
                f"SELECT id, any(sample_type) AS t, any(unit) AS u, any(labels) AS l FROM {self._t('series')} "
                f"WHERE id {self._in} {IDS_SET} GROUP BY id", missing).to_pylist()
            with self._lock:
                self._keep_series(rows)
        return {h: self._series_local[h] for h in want if h in self._series_local}

    # -- reads ---------------------------------------------------------------------------------

    def _live(self, t0: int) -> int:
        """`t0`, or with retention the first whole hour no TTL merge can touch yet, if later: reads never see a row
        that a merge may delete at any moment (its start is before now - retention), so with retention on too an
        answer changes only with a write or when this hour moves, both of which `generation` says."""
        seconds = self.layout.retention_seconds
        if seconds is None:
            return t0
        return max(t0, -(-(time.time_ns() - seconds * 10**9) // HOUR_NS) * HOUR_NS)

    def _selection(self, selector: Selector | None, t0: int, t1: int) -> list[dict]:
        """Every (series, period) with profiles starting in [t0, t1): their aggregate (`_AGG`) with the series'
        type, unit and labels (`t`, `u`, `l`).

        Labels come from this process' cache of series (immutable by their hash) once it holds any: the aggregate
        alone, then a read of the series it has not met (`_series`, often none). A store's first selection, its
        cache empty, joins them in (one round trip for a fresh server's first query). On chDB, medians of 12
        alternating runs at stop 15: a pod's hour 8.2 against 11.9 ms of CPU with the cache, 12.6 against 12.4
        without; a node's 11.7 against 17.1, and 16.8 against 15.8."""
        where = self._series_where(selector, None, None)
        agg, cols = self._selection_agg(selector, t0, t1)
        self._selected = True
        if self._series_local:
            return self._labelled(self.transport.query(
                f"SELECT a.series AS series, a.period_ns AS period_ns, {cols} FROM ({agg}) AS a").to_pylist())
        named = self._selection_named(agg, cols) if self._dicts else None
        if named is not None:
            rows = named
        else:
            rows = self.transport.query(
                f"SELECT a.series AS series, a.period_ns AS period_ns, {cols}, s.t AS t, s.u AS u, s.l AS l "
                f"FROM ({agg}) AS a INNER JOIN (SELECT id, any(sample_type) AS t, any(unit) AS u, "
                f"any(labels) AS l FROM {self._t('series')} WHERE {where} GROUP BY id) AS s ON s.id = a.series"
            ).to_pylist()
        with self._lock:
            self._keep_series(rows, "series")  # (aggregate rows: the series id is their `series`)
        return rows

    def _selection_agg(self, selector: Selector | None, t0: int, t1: int) -> tuple[str, str]:
        """`_selection`'s aggregate statement over `profiles` (whole hours through the hourly projection, the edges
        from rows) and the columns to take from it as `a` (lo, hi, total, n, fingerprint)."""
        t0 = self._live(t0)
        ids, _ = self._ids(selector, None, None)
        parts = []
        for span in _spans(t0, t1):
            parts.append(f"SELECT series, period_ns, {_AGG} FROM {self._t('profiles')} WHERE {ids} AND {span} "
                         "GROUP BY series, period_ns")
        agg = parts[0] if len(parts) == 1 else (
            "SELECT series, period_ns, min(lo) AS p_lo, max(hi) AS p_hi, sum(sum_total) AS p_total, sum(n) AS p_n, "
            f"sum(fingerprint) AS p_fp FROM ({' UNION ALL '.join(parts)}) GROUP BY series, period_ns")
        names = ("lo", "hi", "sum_total", "n", "fingerprint") if len(parts) == 1 else ("p_lo", "p_hi", "p_total",
                                                                                       "p_n", "p_fp")
        return agg, (f"a.{names[0]} AS lo, a.{names[1]} AS hi, a.{names[2]} AS total, a.{names[3]} AS n, "
                     f"a.{names[4]} AS fingerprint")

    def _labelled(self, rows: list[dict]) -> list[dict]:
        """Aggregate rows with their series' type, unit and labels (`t`, `u`, `l`) from this process' cache of series,
        which reads the ones it has not met; a row whose series has no row is left out (as the join: a profile's
        series row is written first)."""
        series = self._series(r["series"] for r in rows)
        rows = [r for r in rows if r["series"] in series]
        for r in rows:
            s = series[r["series"]]
            r["t"], r["u"], r["l"] = s.sample_type, s.unit, s.labels
        return rows

    def _selection_named(self, agg: str, cols: str) -> list[dict] | None:
        """The aggregate rows with their series' type, unit and labels from the series dictionary (`dictGet`)
        instead of a join with the series table: on chDB a pod's hour 5.4-5.8 against 9.5-11.5 ms. A series the
        dictionary does not have (written after its first lookup, on a replica behind) is read from the table;
        None when ClickHouse refused the dictionary (the join, from then on)."""
        sd = f"'{self.layout.database}.series_dict'"
        try:
            t = self.transport.query(f"SELECT a.series AS series, a.period_ns AS period_ns, {cols}, "
                                     f"dictGet({sd}, ('sample_type', 'unit', 'labels'), a.series) AS x, "
                                     f"dictHas({sd}, a.series) AS ok FROM ({agg}) AS a")
        except ClickHouseError as e:
            self._dictionaries_refused(e)  # this selection joins the table; the next one may use them again
            return None
        x = t.column("x").combine_chunks()
        tul = [x.field(i).to_pylist() for i in range(3)]
        ok = t.column("ok").to_pylist()
        rows = t.drop_columns(["x", "ok"]).to_pylist()
        for r, t_, u, lab, has in zip(rows, *tul, ok, strict=True):
            if has:
                r["t"], r["u"], r["l"] = t_, u, lab
        missing = [r["series"] for r, has in zip(rows, ok, strict=True) if not has]
        if missing:
            found = self._series(missing)
            rows = [r for r in rows if "t" in r or r["series"] in found]  # (as the join: the table's rows only)
            for r in rows:
                if "t" not in r:
                    got = found[r["series"]]
                    r["t"], r["u"], r["l"] = got.sample_type, got.unit, list(got.labels.items())
        return rows

    def types(self, t0: int, t1: int, selector: Selector | None = None) -> list[tuple[str, str]]:
        """From the selection itself, kept for this thread's next `select` of the same range and selector."""
        self._check()
        rows = self._selection(selector, t0, t1)
        self._recent.kept = ((selector, t0, t1), rows, time.monotonic() + _MEMO_SECONDS)
        return sorted({(r["t"], r["u"]) for r in rows})

    def select(self, selector: Selector, t0: int, t1: int, sample_type: str | None = None,
               unit: str | None = None, *, align_ns: int | None = None,
               max_level: int | None = None) -> list[StoredProfile]:
        """One aggregate per (series, period) whose profiles start in [t0, t1) (per step with `align_ns`;
        with `max_level=0` the raw profiles themselves)."""
        self._check()
        self._selected = True
        if max_level != 0 and not align_ns:
            kept = getattr(self._recent, "kept", None)
            self._recent.kept = None
            if kept is not None and kept[0] == (selector, t0, t1) and time.monotonic() < kept[2]:
                rows = kept[1]
            else:
                rows = self._selection(selector, t0, t1)
            return self._refs(rows, t0, t1, sample_type, unit)
        live = self._live(t0)
        where = (f"series {self._in} ({self._series_ids_sql(selector, sample_type, unit)}) "
                 f"AND start_ns >= {int(live)} AND start_ns < {int(t1)}")
        if max_level == 0:
            rows = self.transport.query(
                f"SELECT series, period_ns, start_ns AS lo, start_ns + duration_ns AS hi, sum(total) AS sum_total, "
                f"count() AS n, sum(cityHash64(start_ns, duration_ns, total, n_samples)) AS fingerprint "
                f"FROM {self._t('profiles')} WHERE {where} GROUP BY series, period_ns, start_ns, duration_ns"
            ).to_pylist()
        else:
            step = f"intDiv(start_ns - {int(t0)}, {int(align_ns or 1)})"
            rows = self.transport.query(
                f"SELECT series, period_ns, {step} AS k, {_AGG} FROM {self._t('profiles')} WHERE {where} "
                f"GROUP BY series, period_ns, k").to_pylist()
        series = self._series(r["series"] for r in rows)
        out = []
        for r in rows:
            if max_level == 0:
                w0, w1 = r["lo"], r["lo"] + 1
            else:
                w0 = t0 + r["k"] * int(align_ns or 1)
                w1 = min(w0 + int(align_ns or 1), t1)
                w0 = max(w0, live)
            out.append(StoredProfile(series[r["series"]], r["lo"], r["hi"] - r["lo"], r["period_ns"], r["sum_total"],
                                     _Window(r["series"], r["period_ns"], w0, w1, r["n"], r["fingerprint"])))
        out.sort(key=lambda p: (p.start_ns, p.series.id, p.period_ns))
        return out

    def _refs(self, rows: list[dict], t0: int, t1: int, sample_type: str | None, unit: str | None
              ) -> list[StoredProfile]:
        """The refs of a selection's rows (`_selection`) of that type and unit (None: any), in time order."""
        series = self._series(r["series"] for r in rows)
        live = self._live(t0)
        out = [StoredProfile(series[r["series"]], r["lo"], r["hi"] - r["lo"], r["period_ns"], r["total"],
                             _Window(r["series"], r["period_ns"], live, t1, r["n"], r["fingerprint"]))
               for r in rows if (sample_type is None or r["t"] == sample_type) and (unit is None or r["u"] == unit)]
        out.sort(key=lambda p: (p.start_ns, p.series.id, p.period_ns))
        return out

    def _sum_sql(self, series: Sequence[int], periods: Sequence[int], t0: int, t1: int) -> list[str]:
        """Queries giving (series, period_ns, stack, value) summed over [t0, t1): whole hours from the rollup."""
        where = f"series IN ({_ints(series)}) AND period_ns IN ({_ints(periods)})"
        return [f"SELECT series, period_ns, stack, sum(value) AS value FROM {self._t(table)} WHERE {where} "
                f"AND {col} >= {lo} AND {col} < {hi} GROUP BY series, period_ns, stack"
                for table, col, lo, hi in _ranges(t0, t1)]

    def read(self, profiles: Sequence[StoredProfile]) -> Columns:
        """Sums per (window, series, period, stack) computed by ClickHouse; one query per distinct window."""
        self._check()
        windows: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, p in enumerate(profiles):
            w = _window(p)
            windows[(w.t0, w.t1)].append(i)
        prof: list[np.ndarray] = []
        stack: list[np.ndarray] = []
        value: list[np.ndarray] = []
        for (t0, t1), idx in windows.items():
            handles = [_window(profiles[i]) for i in idx]
            where = {(h.series, h.period_ns): i for h, i in zip(handles, idx, strict=True)}
            sql = " UNION ALL ".join(self._sum_sql(sorted({k[0] for k in where}), sorted({k[1] for k in where}),
                                                   t0, t1))
            t = self.transport.query(f"SELECT series, period_ns, stack, sum(value) AS value FROM ({sql}) "
                                     "GROUP BY series, period_ns, stack")
            if not t.num_rows:
                continue
            # (series, period) -> profile index, by a lookup per distinct pair, gathered for all rows
            pairs, inv = np.unique(np.stack((t.column("series").to_numpy().astype(np.uint64),
                                             t.column("period_ns").to_numpy().astype(np.uint64)), axis=1),
                                   axis=0, return_inverse=True)
            index = np.array([where.get((int(a), int(b)), -1) for a, b in pairs.tolist()], dtype=np.int64)
            at = index[inv.reshape(-1)]
            keep = at >= 0
            prof.append(at[keep])
            stack.append(self._local_stacks(t.column("stack").to_numpy()[keep]))
            value.append(t.column("value").to_numpy()[keep].astype(np.int64))
        if not prof:
            empty = np.empty(0, np.int64)
            return Columns(empty, empty, empty)
        return Columns(np.concatenate(prof), np.concatenate(stack), np.concatenate(value))

    def typed_select_summed(self, selector: Selector, t0: int, t1: int, pick: TypePick,
                            keep: Collection[str] | None = ()) -> tuple[str, str | None, list[StoredProfile]]:
        """A flame graph's type, refs AND sums from ONE read of each table (`GROUPING SETS`: the sums per (series,
        period, stack) and per (series, period) in the same pass), where the selection (`profiles`) and the sums
        (`samples_1h`, `samples`) read two: on chDB a pod's hour 6.2 against 6.1 + 5.1 ms of CPU (docs/benchmarks.md
        "Stop 20 ch10"). For a selector the series catalogue resolves to at most `_ONE_READ_SERIES` series (where parts
        are kept, `_KEPT_READ_SERIES`) and
        `keep=()` (the refs' labels are not read): the types come from the catalogue, the refs' count and
        fingerprint are of the sample rows read (`_Window.of_samples`), their start and end of the hours they cover
        (whole hours) or the profiles (edges), and the sums are kept for this thread's `read_merged`, which then
        sends nothing (a fresh server names the stacks through the dictionaries in one more statement). Otherwise
        `picked_type` then `select_summed`, as before."""
        self._check()
        cond, n = self._ids(selector, None, None) if keep is not None and not keep else ("", -1)
        if not 0 <= n <= (_KEPT_READ_SERIES if self._keeps_parts() else _ONE_READ_SERIES):
            return self._typed_selection_summed(selector, t0, t1, pick, keep)
        self._selected = True
        live = self._live(t0)
        # Matched series all of one type and unit (the catalogue says): the sums per stack alone, which is what the
        # read of every ref sums (a node's 200 series x 14k stacks per series would come back otherwise)
        local = self._series_local
        one = len({(local[h].sample_type, local[h].unit) for h in self._matching(selector, None, None)}) <= 1
        ids = None if cond == "1" else np.array(self._matching(selector, None, None), np.uint64)
        t = self._union(self._grouping_sets(cond, live, t1, per_series=not one, ids=ids, fold=" OR " not in cond))
        g = t.column("g").to_numpy() != 0
        per = {k: t.column(k).to_numpy()[g].tolist() for k in ("series", "period_ns", "lo", "hi", "v", "n", "fp")}
        agg: dict[tuple[int, int], list[int]] = {}
        for s_, p_, lo_, hi_, v_, n_, fp_ in zip(*per.values(), strict=True):
            a = agg.get((s_, p_))
            if a is None:
                agg[(s_, p_)] = [max(lo_, live), min(hi_, t1), v_, n_, fp_]
            else:
                a[0], a[1] = min(a[0], max(lo_, live)), max(a[1], min(hi_, t1))
                a[2], a[3], a[4] = a[2] + v_, a[3] + n_, (a[4] + fp_) & 0xFFFFFFFFFFFFFFFF
        series = self._series({s_ for s_, _ in agg})
        present = sorted({(series[s_].sample_type, series[s_].unit) for s_, _ in agg if s_ in series})
        if not present:
            sample_type, unit = pick(self.types(t0, t1))
            return sample_type, unit, []
        sample_type, unit_ = pick(present)
        refs = [StoredProfile(series[s_], a[0], a[1] - a[0], p_, a[2],
                              _Window(s_, p_, live, t1, a[3], a[4], of_samples=True))
                for (s_, p_), a in agg.items()
                if s_ in series and series[s_].sample_type == sample_type and series[s_].unit == unit_]
        refs.sort(key=lambda p: (p.start_ns, p.series.id, p.period_ns))
        cols = {k: t.column(k).to_numpy()[~g] for k in ("series", "period_ns", "stack", "v")}
        # per stack alone: good for a read of exactly every pair read (a series the catalogue had not met, of
        # another type, through the statement's `added` condition: not good, the read sends its own statement)
        every = None if not one else {r.handle for r in refs} if len(refs) == len(agg) else set()
        self._recent.sums = ((live, t1), cols, time.monotonic() + _MEMO_SECONDS, every)
        return sample_type, unit_, refs

    def _typed_selection_summed(self, selector: Selector, t0: int, t1: int, pick: TypePick,
                                keep: Collection[str] | None) -> tuple[str, str | None, list[StoredProfile]]:
        """A flame graph wider than the grouping sets take (a node over HTTP, a cluster): the selection (`profiles`,
        hourly projection) and the sums per stack of the picked type's series in ONE statement, where `picked_type`
        then `select_summed` send the selection and then the sums. The type is picked before it is read, from the
        catalogue's types of the matching series (those in range are among them, so `pick`, which prefers a type,
        chooses the same one when it is present); the selection's own types check it: another choice (the
        guessed type has no profile in range) reads that type's sums as before. The sums are of every series of
        that type the selector matches in range (the catalogue's ids, and over HTTP the series added since its
        last look, by type in SQL): exactly the refs' (series, period) pairs, since a profile and its samples are
        one insert. Kept for this thread's `read_merged`, which then sends nothing."""
        local = self._series_local
        known = sorted({(local[h].sample_type, local[h].unit) for h in self._matching(selector, None, None)}) \
            if self._catalogue() is not None else []
        if not known:
            return super().typed_select_summed(selector, t0, t1, pick, keep)
        guess = pick(known)
        cond, _ = self._ids(selector, guess[0], guess[1])
        live = self._live(t0)
        sums = [f"SELECT stack, sum(value) AS value FROM {self._t(table)} WHERE {cond} AND {col} >= {lo} "
                f"AND {col} < {hi} GROUP BY stack" for table, col, lo, hi in _ranges(live, t1)]
        sql = sums[0] if len(sums) == 1 else \
            f"SELECT stack, sum(value) AS value FROM ({' UNION ALL '.join(sums)}) GROUP BY stack"
        agg, cols = self._selection_agg(selector, t0, t1)
        self._selected = True
        t = self.transport.query(
            f"SELECT 1 AS sel, a.series AS series, a.period_ns AS period_ns, {cols}, 0 AS stack, 0 AS value "
            f"FROM ({agg}) AS a UNION ALL SELECT 0, 0, 0, 0, 0, 0, 0, 0, stack, value FROM ({sql})")
        sel = t.column("sel").to_numpy(zero_copy_only=False) != 0
        rows = self._labelled(t.filter(pa.array(sel)).drop_columns(["sel", "stack", "value"]).to_pylist())
        present = sorted({(r["t"], r["u"]) for r in rows})
        if not present:
            sample_type, unit = pick(self.types(t0, t1))
            return sample_type, unit, []
        sample_type, unit = pick(present)
        if (sample_type, unit) != guess:  # (the selection serves `select` as `types` would have)
            self._recent.kept = ((selector, t0, t1), rows, time.monotonic() + _MEMO_SECONDS)
            return sample_type, unit, self.select_summed(selector, t0, t1, sample_type, unit, keep=keep)
        refs = self._refs(rows, t0, t1, sample_type, unit)
        stacks = t.column("stack").to_numpy(zero_copy_only=False)[~sel]
        cols_ = {"stack": stacks, "v": t.column("value").to_numpy(zero_copy_only=False)[~sel],
                 "series": np.zeros(stacks.size, np.uint64), "period_ns": np.zeros(stacks.size, np.uint64)}
        every = {r.handle for r in refs}
        self._recent.sums = ((live, t1), cols_, time.monotonic() + _MEMO_SECONDS, every)
        return sample_type, unit, refs

    def _grouping_sets(self, cond: str, t0: int, t1: int, per_series: bool = True, ids: np.ndarray | None = None,
                       fold: bool = False) -> list[tuple[str, int, int, Fold | None]]:
        """Per table of [t0, t1) (`_ranges`), rows of the series matching `cond`: per (series, period, stack), or with
        `per_series` False per stack alone (series and period 0), and per (series, period) (g = 1: stack 0) their
        first and end time (lo, hi), sum (v), row count (n) and a wrapping sum of the rows' hashes (fp). As parts
        for `_union` (statement, its range, and with `fold` for the raw ranges how inserts of series `ids` (None:
        every series) change it)."""
        sums = "(series, period_ns, stack)" if per_series else "(stack)"
        parts = []
        for table, col, lo, hi in _kept_ranges(t0, t1):
            end = f"max({col}) + {HOUR_NS}" if table == "samples_1h" else "max(start_ns + duration_ns)"
            parts.append((f"SELECT series, period_ns, stack, min({col}) AS lo, {end} AS hi, sum(value) AS v, "
                          f"count() AS n, sum(cityHash64({col}, stack, value)) AS fp, grouping(stack) AS g "
                          f"FROM {self._t(table)} WHERE {cond} AND {col} >= {int(lo)} AND {col} < {int(hi)} "
                          f"GROUP BY GROUPING SETS ({sums}, (series, period_ns))", lo, hi,
                          Fold("gs", ids, per_series, rollup=table == "samples_1h") if fold else None))
        return parts

    def _union(self, parts: Sequence[tuple[str, int, int, Fold | None]]) -> pa.Table:
        """The UNION ALL of `parts` (a SELECT over rows of `samples`, `samples_1h` or `profiles` that start in [lo, hi),
        with the same columns, and how inserts change it: `Fold`), each part's answer kept while no write touched its
        hours: where every writer is in this process (chDB), the engine counts inserts per hour of their rows
        (`Transport.hour_writes`), so a part whose marks are unchanged would read the same rows; its materialized
        views fill `profiles` and `samples_1h` from those inserts alone, and any other write (DDL, a mutation, a
        dropped partition, an insert elsewhere) moves every mark. A server that has answered a pod, the chart or the
        pod list of past hours answers them again with no statement. **Write-through:** a part whose hours only took
        inserts into `samples` since it was kept (the hour being written) is brought up to date from those inserts'
        rows, which the engine holds (`Transport.inserts_since`: each known stored whole), summed in numpy as its
        statement sums them; when they are not all held, it is read. Over HTTP (writers elsewhere) every part is
        read, as before. The parts not kept go as one statement."""
        samples = self._t("samples")
        seq = self.transport.insert_seq(samples) if self.part_cache_bytes > 0 else None
        keys = [self._part_key(sql, lo, hi) for sql, lo, hi, _ in parts]
        if seq is not None and self.transport.insert_seq(samples) != seq:
            seq = None  # an insert between: no fold, and nothing kept is a base for one
        held = self._holding
        if held is not None and any(k is not None and k[1][-1:] + k[2:] != held.marks[-1:] + held.tail for k in keys):
            held = self._holding = None  # a write that was not an insert (DDL, a mutation): what it holds is done
        got: list[pa.Table | None] = [None] * len(parts)
        new: list[int] = []  # parts brought up to date from a base, or read: to keep
        for i, key in enumerate(keys):
            if key is None:
                continue
            got[i] = self._parts.get(key)
            sql, lo, hi, f = parts[i]
            if got[i] is not None or seq is None or f is None:
                continue
            # the latest kept answer of this statement, else the rows held from the start, and the inserts since
            base = self._parts.base(sql)
            hkey = held.key(sql, lo, hi) if base is None and held is not None else None
            if base is None and hkey is not None and (hkey == key or not f.rollup):
                t = held.answer(f, lo, hi)  # type: ignore[union-attr]
                base = (t, held.seq, hkey) if t is not None else None  # type: ignore[union-attr]
            if base is not None:
                got[i] = self._rebased(base, key, f, lo, hi, seq)
                if got[i] is not None:
                    new.append(i)
        miss = [i for i, t in enumerate(got) if t is None]
        if len(miss) == 1:  # (taken into buffers of its own: chDB's answer may be a view of the engine's result)
            one = self.transport.query(parts[miss[0]][0])
            got[miss[0]] = one.take(pa.array(np.arange(one.num_rows))) if keys[miss[0]] is not None else one
        elif miss:  # one statement, each row marked with its part
            t = self.transport.query(" UNION ALL ".join(
                parts[i][0].replace("SELECT ", f"SELECT toUInt16({j}) AS podflame_part, ", 1)
                for j, i in enumerate(miss)))
            which = t.column("podflame_part").to_numpy()
            t = t.drop_columns(["podflame_part"])
            for j, i in enumerate(miss):
                got[i] = t.filter(pa.array(which == j))
        if miss and seq is not None and self.transport.insert_seq(samples) != seq:
            seq = None  # an insert during the read: what was read is no base for a fold
        for i in new + miss:
            key, t = keys[i], got[i]
            if key is not None and t is not None:
                self._parts.keep(key, t, seq if parts[i][3] is not None else None)
        tables = [t for t in got if t is not None]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")

    def _rebased(self, base: tuple[pa.Table, int, tuple], key: tuple, f: Fold, lo: int, hi: int, seq: int
                 ) -> pa.Table | None:
        """A part's answer under `key` from `base` (an answer, the insert position and the key it was read at): itself
        when the key is the same; brought up to date from the rows of the inserts since (`fold`) when its hours took
        only inserts into `samples` since, and the engine holds each of them stored whole; else None (read it)."""
        table, at, was = base
        if was == key:
            return table
        if f.rollup or was[2:] != key[2:] or was[1][-1] != key[1][-1] or len(was[1]) != len(key[1]):
            return None
        rows = self.transport.inserts_since(self._t("samples"), at)
        if rows is None or len(rows) < seq - at:
            return None
        return fold(table, rows[:seq - at], f, lo, hi)

    def _keeps_parts(self) -> bool:
        """Whether part answers are kept (the engine counts the writes of every writer, and the cache is on)."""
        return self.part_cache_bytes > 0 and self.transport.hour_writes(self._t("samples"), 0, 0) is not None

    @property
    def part_cache_bytes(self) -> int:
        """Bytes of part answers kept at most (0: none kept, and the rows held from the start not used)."""
        return self._parts.limit

    @part_cache_bytes.setter
    def part_cache_bytes(self, n: int) -> None:
        self._parts.limit = n

    def _part_key(self, sql: str, lo: int, hi: int) -> tuple | None:
        """What `_union` keeps a part's answer under: its statement and the marks of the writes that could change
        it (taken before it is read: a write during the read moves them, so that answer is never found); None when
        the engine cannot say (writers elsewhere), the cache is off, or the part spans too many hours."""
        if self.part_cache_bytes <= 0 or hi - lo > _PART_CACHE_HOURS * HOUR_NS:
            return None
        marks = self.transport.hour_writes(self._t("samples"), lo, hi)
        if marks is None:
            return None
        return (sql, marks, self.transport.table_writes(self._t("profiles")),
                self.transport.table_writes(self._t("samples_1h")))

    def _kept_sums(self, profiles: Sequence[StoredProfile]) -> tuple[np.ndarray, np.ndarray] | None:
        """`read_merged` from the sums this thread's `typed_select_summed` read, when the profiles are of its window:
        summed per stack over exactly their (series, period) pairs. A server that has read no stack yet names them
        through the dictionaries (`_read_named` over these ids: no table read), as its sums statement would have."""
        kept = getattr(self._recent, "sums", None)
        self._recent.sums = None
        if kept is None or time.monotonic() > kept[2] or not profiles:
            return None
        window, cols, _, every = kept
        pairs = set()
        for p in profiles:
            w = _window(p)
            if (w.t0, w.t1) != window:
                return None
            pairs.add((w.series, w.period_ns))
        if every is not None:  # summed per stack over every ref read: exactly those refs (their count and fingerprint)
            if {_window(p) for p in profiles} != every:
                return None
            keep = np.ones(cols["stack"].size, dtype=bool)
        else:
            keep = _pairs_in(cols["series"], cols["period_ns"], pairs)
        stacks = cols["stack"][keep]
        ids = self._local_stacks(stacks)
        # the stacks not held yet: named in one statement (the tables take three), for a read `read_merged` names too
        if self._dicts and stacks.size and len({s_ for s_, _ in pairs}) <= _NAMED_READ_SERIES:
            held, hashes = self._stack_frames, self._stack_hash
            new = [hashes[k] for k in np.unique(ids).tolist() if k not in held]
            if new:
                self._read_named(f"SELECT arrayJoin(CAST([{_ints(new)}], 'Array(UInt64)')) AS stack, "
                                 "toInt64(0) AS value")
        return group_sum(ids, cols["v"][keep].astype(np.int64))

    def read_merged(self, profiles: Sequence[StoredProfile]) -> tuple[np.ndarray, np.ndarray]:
        """The merge pushed down: ClickHouse sums per stack over every (series, period) of the profiles (exactly
        those pairs), so a cluster's range comes back as its distinct stacks, not a row per series and stack.
        One GROUP BY stack per table read (no per-series level in between: on a cluster-day's rollup rows that
        halved the statement), summed again only when a range reads both raw rows and the rollup."""
        self._check()
        kept = self._kept_sums(profiles)
        if kept is not None:
            return kept
        windows: dict[tuple[int, int], set[tuple[int, int]]] = defaultdict(set)
        for p in profiles:
            w = _window(p)
            windows[(w.t0, w.t1)].add((w.series, w.period_ns))
        stack: list[np.ndarray] = []
        value: list[np.ndarray] = []
        for (t0, t1), pairs in windows.items():
            ids, periods = sorted({k[0] for k in pairs}), sorted({k[1] for k in pairs})
            where = f"series IN ({_ints(ids)}) AND period_ns IN ({_ints(periods)})"
            if len(pairs) < len(ids) * len(periods):  # not every series in every period: name the pairs
                where += f" AND (series, period_ns) IN ({','.join(f'({int(a)},{int(b)})' for a, b in sorted(pairs))})"
            parts = [f"SELECT stack, sum(value) AS value FROM {self._t(table)} WHERE {where} AND {col} >= {lo} "
                     f"AND {col} < {hi} GROUP BY stack" for table, col, lo, hi in _ranges(t0, t1)]
            sql = parts[0] if len(parts) == 1 else \
                f"SELECT stack, sum(value) AS value FROM ({' UNION ALL '.join(parts)}) GROUP BY stack"
            # A fresh store's small read (a pod, a service: the cold query a user waits on) names its stacks in the
            # same statement; a wide one reads the tables (14k stacks fill a dictionary 4x slower than a table read)
            named = self._dicts and not self._stack_frames and len(ids) <= _NAMED_READ_SERIES
            got = self._read_named(sql) if named else None
            if got is None:
                t = self.transport.query(sql)
                got = (t.column("stack").to_numpy(), t.column("value").to_numpy()) if t.num_rows else None
            if got is not None and got[0].size:
                stack.append(self._local_stacks(got[0]))
                value.append(got[1].astype(np.int64))
        if not stack:
            empty = np.empty(0, np.int64)
            return empty, empty
        if len(stack) == 1:
            order = np.argsort(stack[0], kind="stable")
            return stack[0][order], value[0][order]
        return group_sum(np.concatenate(stack), np.concatenate(value))

    def _local_stacks(self, hashes: np.ndarray) -> np.ndarray:
        uniq, inv = _factorize(hashes)
        with self._lock:
            table = self._stack_local
            ids = []
            for h in uniq.tolist():
                i = table.get(h)
                if i is None:
                    i = table[h] = len(self._stack_hash)
                    self._stack_hash.append(h)
                ids.append(i)
        return np.array(ids, dtype=np.int64)[inv]

    def _read_named(self, sums: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The sums of `sums` (stack, value) AND everything that names them, in ONE statement: each stack's frames,
        each distinct frame's row, its functions' names and its mapping, through the schema's dictionaries
        (`dictGet`, one row of arrays), kept as `stack_frames` and `_read_frames` keep what they read. A store that
        has read nothing yet uses it (a fresh server's first query, the cold case): its stacks are all new, and
        the four statements it replaces (stacks, frames, then names and mappings) cost 3-6 ms each on chDB, where
        this adds 3-4 ms to the sums for a pod's 285 stacks (docs/benchmarks.md, "sixth pass").

        None when ClickHouse refused it (then the store reads the tables from now on) or a dictionary did not
        have a key (a replica behind another: the caller reads the sums alone, and the names come from the tables)."""
        sd, fd, nd, md = (f"'{self.layout.database}.{d}'" for d in ("stacks_dict", "frames_dict", "functions_dict",
                                                                     "mappings_dict"))
        sql = (f"SELECT groupArray(stack) AS stacks, groupArray(value) AS vals, "
               f"groupArray(dictGet({sd}, 'frames', stack)) AS sframes, min(dictHas({sd}, stack)) AS s_ok, "
               "arrayDistinct(arrayFlatten(sframes)) AS fids, "
               f"arrayMap(f -> dictGet({fd}, ('address', 'mapping', 'kind', 'functions', 'lines'), f), fids) AS frows, "
               f"arrayAll(f -> dictHas({fd}, f), fids) AS f_ok, "
               "arrayDistinct(arrayFlatten(arrayMap(r -> r.4, frows))) AS nids, "
               f"arrayMap(f -> dictGet({nd}, ('name', 'file'), f), nids) AS nrows, "
               f"arrayAll(f -> dictHas({nd}, f), nids) AS n_ok, "
               "arrayFilter(m -> m != 0, arrayDistinct(arrayMap(r -> r.2, frows))) AS mids, "
               f"arrayMap(m -> dictGet({md}, ('start', 'limit', 'offset', 'path', 'build_id'), m), mids) AS mrows, "
               f"arrayAll(m -> dictHas({md}, m), mids) AS m_ok "
               f"FROM ({sums})")
        try:
            t = self.transport.query(sql)
        except ClickHouseError as e:
            self._dictionaries_refused(e)  # not readable here: the tables, as before schema 3
            return None
        row = {name: t.column(name)[0] for name in t.column_names}
        stacks = row["stacks"].values.to_numpy(zero_copy_only=False)
        values = row["vals"].values.to_numpy(zero_copy_only=False)
        if not stacks.size:
            return stacks, values
        if not all(row[k].as_py() for k in ("s_ok", "f_ok", "n_ok", "m_ok")):
            return None
        nrows = row["nrows"].values
        names = dict(zip(row["nids"].values.to_numpy(zero_copy_only=False).tolist(),
                         zip(nrows.field(0).to_pylist(), nrows.field(1).to_pylist(), strict=True), strict=True))
        maps: dict[int, ProcMapping | None] = {h: ProcMapping(a, b, c, p, bid or None) for h, a, b, c, p, bid in zip(
            row["mids"].values.to_numpy(zero_copy_only=False).tolist(),
            *(row["mrows"].values.field(i).to_pylist() for i in range(5)), strict=True)}
        frows = row["frows"].values
        cols = {"id": row["fids"].values.to_numpy(zero_copy_only=False).tolist(),
                **{k: frows.field(i).to_pylist() for i, k in enumerate(("address", "mapping", "kind", "functions",
                                                                           "lines"))}}
        lists = row["sframes"].values
        uniq, inv = _factorize(lists.flatten())
        lengths = lists.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        local = self._local_stacks(stacks)
        with self._lock:
            fids = np.fromiter((self._frame_id(h) for h in uniq.tolist()), np.int64, count=uniq.size)[inv]
            cache = self._stack_frames
            if len(cache) > _MEMO_LIMIT:
                cache.clear()
            ends = np.cumsum(lengths)
            for sid, end, n in zip(local.tolist(), ends.tolist(), lengths.tolist(), strict=True):
                cache[sid] = fids[end - n:end]
        self._written.update(stacks.tolist())  # (every one in its dictionary: stored)
        self._keep_frames(cols, names, maps)
        return stacks, values

    def step_totals(self, selector: Selector, t0: int, t1: int, step_ns: int, sample_type: str | None = None,
                    unit: str | None = None) -> StepTotals:
        """Totals per (period, step) summed by ClickHouse in ONE statement, the series filter (selector, type, unit)
        pushed down: no selection first and no refs (`StepTotals.refs` is empty)."""
        self._check()
        rows = self._step_sums(t0, t1, step_ns, self._series_where(selector, sample_type, unit))
        return self._steps_of(rows, t0, t1, step_ns, None, None)

    def typed_step_totals(self, selector: Selector, t0: int, t1: int, step_ns: int, pick: TypePick
                          ) -> tuple[str, str | None, StepTotals]:
        """A CPU chart in ONE statement: sums per (type, unit, period, step) of every matching series, of which
        `pick` chooses the type among those present. Before, the chart cost a selection (`types`: a row per series
        with its labels) and then the sums; each statement has a floor on this engine (a pod's one-table read:
        4-5 ms of CPU on chDB, docs/benchmarks.md "Stop 19 ch9"). A second statement only when nothing matches (the
        whole range's types then name the unit of an all-zero chart)."""
        self._check()
        rows = self._step_sums(t0, t1, step_ns, self._series_where(selector, None, None), typed=True, sel=selector)
        present = sorted({(r["t"], r["u"]) for r in rows})
        if not present:
            return (*pick(self.types(t0, t1)), StepTotals([], {}))
        sample_type, unit = pick(present)
        return sample_type, unit, self._steps_of(rows, t0, t1, step_ns, sample_type, unit)

    def _step_sums(self, t0: int, t1: int, step_ns: int, where: str, typed: bool = False,
                   sel: Selector | None = None) -> list[dict]:
        """Rows (period_ns, k: the step, v: the sum), and with `typed` the series' type and unit (t, u), of the
        profiles of series matching `where` (the selector `sel`, when given) that start in [t0, t1)."""
        k = f"intDiv(start_ns - {int(t0)}, {int(step_ns)})"  # starts lie in [t0, t1): never negative
        span = f"start_ns >= {int(self._live(t0))} AND start_ns < {int(t1)}"
        ids = self._series_in(where)
        if typed and sel is not None:
            held = self._held(sel)
            if held is not None:
                cond, fold = held
                if fold is not None:
                    fold = fold._replace(kind="steps", t0=int(t0), step=int(step_ns))
                # the hour being written apart from the hours before it (`_union` keeps those)
                lo, hi = int(self._live(t0)), int(t1)
                cut = hi // HOUR_NS * HOUR_NS
                spans = [(lo, cut), (cut, hi)] if lo < cut < hi else [(lo, hi)]
                t = self._union([(f"SELECT series, period_ns, {k} AS k, sum(total) AS v FROM {self._t('profiles')} "
                                  f"WHERE {cond} AND start_ns >= {a} AND start_ns < {b} GROUP BY series, period_ns, k",
                                  a, b, fold) for a, b in spans])
                return self._by_series(t, ("period_ns", "k"))
        if not typed:
            return self.transport.query(  # type: ignore[no-any-return]
                f"SELECT period_ns, {k} AS k, sum(total) AS v FROM {self._t('profiles')} WHERE {ids} AND {span} "
                "GROUP BY period_ns, k").to_pylist()
        sums = (f"SELECT series, period_ns, {k} AS k, sum(total) AS pv FROM {self._t('profiles')} WHERE {ids} "
                f"AND {span} GROUP BY series, period_ns, k")
        return self._typed(sums, where, "t, u, period_ns, k, sum(pv) AS v", "t, u, period_ns, k")

    def _held(self, selector: Selector) -> tuple[str, Fold | None] | None:
        """The condition on `series` for the selector's series when the catalogue holds them all and they are few
        enough to be summed per series and named in Python (`_by_series`), with the series it names for a `Fold`
        (None: not one); None: sum per type in the statement."""
        cond, n = self._ids(selector, None, None)
        if n >= 0 or (cond == "1" and self._catalogue() is not None and len(self._series_hash) <= _CATALOGUE_IDS):
            if " OR " in cond:
                return cond, None
            ids = None if cond == "1" else np.array(self._matching(selector, None, None), np.uint64)
            return cond, Fold("sums", ids)
        return None

    def _by_series(self, t: pa.Table, keys: tuple[str, ...], labels: Sequence[str] | None = ()) -> list[dict]:
        """Rows of `t` (a `series` column, the `keys` columns, a sum `v`) summed per (type, unit, keys) of their
        series, named from the catalogue (a series it lacks is read: `_series`): rows as `_typed` gives them. With
        `labels` (the pod list's `by`) also per those labels' presence and value (h{i}, v{i}); None: per label set
        (l). A series with no row in the series table is left out, as the join leaves it."""
        if not t.num_rows:
            return []
        uniq, inv = _factorize(t.column("series").to_numpy())
        series = self._series(uniq.tolist())
        names: dict[tuple, int] = {}
        code = np.empty(uniq.size, dtype=np.int64)
        for i, h in enumerate(uniq.tolist()):
            s_ = series.get(h)
            if s_ is None:
                code[i] = -1
                continue
            if labels is None:
                key: tuple = (s_.sample_type, s_.unit, tuple(sorted(s_.labels.items())))
            else:
                key = (s_.sample_type, s_.unit, *((n in s_.labels, s_.labels.get(n, "")) for n in labels))
            code[i] = names.setdefault(key, len(names))
        at = code[inv]
        ok = at >= 0
        cols = [at[ok]] + [t.column(c).to_numpy()[ok].astype(np.int64) for c in keys]
        groups, ginv = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
        sums = np.zeros(len(groups), dtype=np.int64)
        np.add.at(sums, ginv.reshape(-1), t.column("v").to_numpy()[ok].astype(np.int64))
        by_code = list(names)
        out = []
        for g, v in zip(groups.tolist(), sums.tolist(), strict=True):
            name = by_code[g[0]]
            r: dict = {"t": name[0], "u": name[1], "v": v, **dict(zip(keys, g[1:], strict=True))}
            if labels is None:
                r["l"] = dict(name[2])
            else:
                for i, (has, value) in enumerate(name[2:]):
                    r[f"h{i}"], r[f"v{i}"] = has, value
            out.append(r)
        return out

    def _typed(self, sums: str, where: str, cols: str, group: str, labels: bool = False) -> list[dict]:
        """`cols` grouped by `group` over the rows of `sums` (a subquery with a `series` column) given their series'
        type `t`, unit `u` and with `labels` the label set `l`: from the series dictionary, looked up per row of
        `sums` (a series' sums, never a profile), or from the series table (a join: +2-3 ms of a 10-13 ms statement
        on chDB) when ClickHouse refuses the dictionary or it lacks one of the series (a replica behind)."""
        if self._dicts:
            sd = f"'{self.layout.database}.series_dict'"
            named = (f"dictGet({sd}, 'sample_type', p.series) AS t, dictGet({sd}, 'unit', p.series) AS u"
                     + (f", dictGet({sd}, 'labels', p.series) AS l" if labels else ""))
            try:
                rows: list[dict] = self.transport.query(
                    f"SELECT {cols}, min(ok) AS ok FROM (SELECT p.*, {named}, dictHas({sd}, p.series) AS ok "
                    f"FROM ({sums}) AS p) GROUP BY {group}").to_pylist()
            except ClickHouseError as e:
                self._dictionaries_refused(e)
            else:
                if all(r["ok"] for r in rows):
                    return rows
        return self.transport.query(  # type: ignore[no-any-return]
            f"SELECT {cols} FROM (SELECT p.*, s.t AS t, s.u AS u{', s.l AS l' if labels else ''} FROM ({sums}) AS p "
            f"INNER JOIN {self._series_types(where, labels)} AS s ON s.id = p.series) GROUP BY {group}").to_pylist()

    def _series_types(self, where: str, labels: bool = False) -> str:
        """A subquery of the matching series' (id, t: type, u: unit[, l: labels]), one row per id (a row not merged
        yet by ReplacingMergeTree is the same content twice)."""
        return (f"(SELECT id, any(sample_type) AS t, any(unit) AS u{', any(labels) AS l' if labels else ''} "
                f"FROM {self._t('series')} WHERE {where} GROUP BY id)")

    @staticmethod
    def _steps_of(rows: list[dict], t0: int, t1: int, step_ns: int, sample_type: str | None, unit: str | None
                  ) -> StepTotals:
        """`StepTotals` of the rows of `sample_type` (all when None) and `unit` (any when None)."""
        n = -(-(t1 - t0) // step_ns)
        by_period: dict[int, np.ndarray] = {}
        for r in rows:
            if (sample_type is None or r["t"] == sample_type) and (unit is None or r["u"] == unit):
                sums = by_period.get(r["period_ns"])
                if sums is None:
                    sums = by_period[r["period_ns"]] = np.zeros(n, dtype=np.int64)
                sums[r["k"]] += r["v"]
        return StepTotals([], by_period)

    def totals_by(self, selector: Selector, t0: int, t1: int, by: Sequence[str] | None,
                  sample_type: str | None = None, unit: str | None = None) -> list[LabelTotals]:
        """Summed per value of the `by` labels in ONE statement (no selection, no refs)."""
        self._check()
        rows = self._label_sums(t0, t1, by, self._series_where(selector, sample_type, unit))
        return self._groups_of(rows, by, None, None)

    def typed_totals_by(self, selector: Selector, t0: int, t1: int, by: Sequence[str] | None, pick: TypePick
                        ) -> tuple[str, str | None, list[LabelTotals]]:
        """The pod list in ONE statement: sums per (type, unit, `by` labels, period) of every matching series, of
        which `pick` chooses the type (as `typed_step_totals`)."""
        self._check()
        rows = self._label_sums(t0, t1, by, self._series_where(selector, None, None), sel=selector)
        present = sorted({(r["t"], r["u"]) for r in rows})
        if not present:
            return (*pick(self.types(t0, t1)), [])
        sample_type, unit = pick(present)
        return sample_type, unit, self._groups_of(rows, by, sample_type, unit)

    def _label_sums(self, t0: int, t1: int, by: Sequence[str] | None, where: str, sel: Selector | None = None
                    ) -> list[dict]:
        """Rows (t, u, period_ns, v, and per `by` label i: h{i} whether the series has it, v{i} its value; or l: the
        whole label set when `by` is None) of the series matching `where` (the selector `sel`, when given) with
        profiles starting in [t0, t1), whole hours from the hourly projection."""
        held = self._held(sel) if sel is not None else None
        if held is not None:
            cond, fold = held
            live = self._live(t0)
            t = self._union([(f"SELECT series, period_ns, sum(total) AS v FROM {self._t('profiles')} WHERE {cond} "
                              f"AND {_span(table, lo, hi)} GROUP BY series, period_ns", lo, hi, fold)
                             for table, _, lo, hi in _kept_ranges(live, t1)])
            return self._by_series(t, ("period_ns",), None if by is None else list(by))
        ids = self._series_in(where)
        sums = " UNION ALL ".join(f"SELECT series, period_ns, sum(total) AS pv FROM {self._t('profiles')} WHERE {ids} "
                                  f"AND {span} GROUP BY series, period_ns" for span in _spans(self._live(t0), t1))
        keys = ["l"] if by is None else [f"mapContains(l, {quote(name)}) AS h{i}, l[{quote(name)}] AS v{i}"
                                         for i, name in enumerate(by)]
        group = ["l"] if by is None else [f"h{i}, v{i}" for i in range(len(by))]
        return self._typed(sums, where, f"t, u, period_ns, {', '.join(keys)}, sum(pv) AS v",
                           f"t, u, period_ns, {', '.join(group)}", labels=True)

    @staticmethod
    def _groups_of(rows: list[dict], by: Sequence[str] | None, sample_type: str | None, unit: str | None
                   ) -> list[LabelTotals]:
        """`label_totals` of the rows of `sample_type` (all when None) and `unit` (any when None)."""
        def labels(r: dict) -> dict[str, str]:
            if by is None:
                return dict(r["l"])
            return {name: r[f"v{i}"] for i, name in enumerate(by) if r[f"h{i}"]}

        return label_totals(((labels(r), r["v"], r["period_ns"]) for r in rows
                             if (sample_type is None or r["t"] == sample_type) and (unit is None or r["u"] == unit)),
                            by)

    def stack_frames(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Stacks are content-addressed, so immutable: each is read once per process (one statement for all
        the new ones of a call) and kept as its local frame ids; later queries cost no round trip. Decoded as
        arrays (the flat frame hashes numbered once per distinct hash), not a list per stack."""
        self._check()
        return self._stack_frames_of([int(i) for i in ids])

    def _stack_frames_of(self, want: list[int]) -> tuple[np.ndarray, np.ndarray]:
        cache = self._stack_frames
        missing = {self._stack_hash[i] for i in want if i not in cache}
        if missing:
            # No GROUP BY: a row not merged yet by ReplacingMergeTree is the same content twice (kept once below)
            rows = self.transport.query(f"SELECT id, frames FROM {self._t('stacks')} WHERE id {self._in} "
                                        f"(SELECT id FROM {IDS})", sorted(missing))
            lists = rows.column("frames").combine_chunks()
            uniq, inv = _factorize(lists.flatten())
            lengths = lists.value_lengths().to_numpy().astype(np.int64)
            with self._lock:
                if len(cache) > _MEMO_LIMIT:
                    cache.clear()
                local = np.fromiter((self._frame_id(h) for h in uniq.tolist()), np.int64, count=uniq.size)
                fids = local[inv]
                ends = np.cumsum(lengths)
                read = rows.column("id").to_pylist()
                for h, end, n in zip(read, ends.tolist(), lengths.tolist(), strict=True):
                    cache[self._stack_local[h]] = fids[end - n:end]
            self._written.update(read)  # stored: a put need not write them again
        per = [cache[i] for i in want]
        lengths = np.fromiter((len(a) for a in per), np.int64, count=len(per))
        return lengths, (np.concatenate(per) if per else np.empty(0, np.int64))

    def _frame_id(self, h: int) -> int:
        """The dense local id of a frame hash (caller holds the lock)."""
        i = self._frame_local.get(h)
        if i is None:
            i = self._frame_local[h] = len(self._frame_hash)
            self._frame_hash.append(h)
        return i

    def _read_frames(self, frame_ids: Iterable[int]) -> None:
        """Read the frames of these local ids not read yet, in two statements whatever their number: the frame
        rows, then their functions and the mappings not met before (a UNION ALL, each by the ids the frames
        named, so no subquery reads the frames again), and keep each frame as its rows: `_FrameRow` (what
        `frame_lines` and `frame_origins` answer from; a `Frame` object only when `stacks` asks). Frames and
        mappings are immutable: kept per process.

        Before, mappings were joined to the frames and the functions read through a subquery over frames: on a
        pod's 381 frames 10 + 5 ms against 3.5 + 7 ms now. Resolving names in SQL instead (a scalar subquery's
        arrays and `transform`/`indexOf` per element) measured 2-20x slower than a dict in Python."""
        known = self._frame_rows
        missing = sorted({self._frame_hash[i] for i in frame_ids if i not in known})
        if not missing:
            return
        # No GROUP BY: rows not merged yet by ReplacingMergeTree are the same content twice (a dict keeps one)
        t = self.transport.query(f"SELECT id, address, mapping, kind, functions, lines FROM {self._t('frames')} "
                                 f"WHERE id {self._in} {IDS_SET}", missing)
        cols = {name: t.column(name).to_pylist() for name in t.column_names}
        maps = self._mappings
        with self._lock:  # what this read uses: the kept mappings it names, plus those read below
            using = {h: maps[h] for h in set(cols["mapping"]) if h in maps}
        new_maps = sorted({h for h in cols["mapping"] if h not in using})
        fns = sorted({f for row in cols["functions"] for f in row})
        sql = (f"SELECT 0 AS k, id, name AS s1, file AS s2, toUInt64(0) AS n1, toUInt64(0) AS n2, toUInt64(0) AS n3 "
               f"FROM {self._t('functions')} WHERE id {self._in} {IDS_SET}")
        if new_maps:
            sql += (f" UNION ALL SELECT 1 AS k, id, path AS s1, build_id AS s2, start AS n1, limit AS n2, offset AS n3 "
                    f"FROM {self._t('mappings')} WHERE id IN ({_ints(new_maps)})")
        named = self.transport.query(sql, fns or [0])  # (no frame named a function: no id 0 either)
        k = named.column("k").to_numpy()
        cut = {name: named.column(name).to_pylist() for name in ("id", "s1", "s2", "n1", "n2", "n3")}
        names: dict[int, tuple[str, str]] = {}
        got_maps: dict[int, ProcMapping | None] = {}
        for i, kind in enumerate(k.tolist()):
            if kind == 0:
                names[cut["id"][i]] = (cut["s1"][i], cut["s2"][i])
            else:
                got_maps[cut["id"][i]] = ProcMapping(cut["n1"][i], cut["n2"][i], cut["n3"][i], cut["s1"][i],
                                                     cut["s2"][i] or None)
        self._keep_frames(cols, names, got_maps, using)

    def _keep_frames(self, cols: dict[str, list], names: dict[int, tuple[str, str]],
                     got_maps: dict[int, ProcMapping | None], using: dict[int, ProcMapping | None] | None = None
                     ) -> None:
        """Keep frame rows as read (`cols`: id, address, mapping, kind, functions, lines per frame) with their
        functions' names and the mappings read beside them (`using`: kept ones this read names)."""
        maps, known = self._mappings, self._frame_rows
        with self._lock:
            if len(maps) > _MEMO_LIMIT:  # a busy node's short-lived processes each map their binaries anew
                maps.clear()
                maps[0] = None
            maps.update(got_maps)
            if using is None:
                using = {h: maps.get(h) for h in set(cols["mapping"])}
        using.update(got_maps)
        got: dict[int, _FrameRow] = {}
        for j, h in enumerate(cols["id"]):
            # (function, file, line) innermost first, as the row keeps them
            lines = tuple((names[f][0], names[f][1] or None, ln or None)
                          for f, ln in zip(cols["functions"][j], cols["lines"][j], strict=True))
            got[self._frame_local[h]] = _FrameRow(cols["address"][j], using.get(cols["mapping"][j]), cols["kind"][j],
                                                  lines)
        with self._lock:
            if len(known) > _MEMO_LIMIT:
                known.clear()
                self._frame_obj.clear()
            known.update(got)
        self._written.update(cols["id"], names, (h for h in got_maps if h))  # read from their tables: stored

    def _row(self, i: int) -> _FrameRow:
        row = self._frame_rows.get(i)
        if row is None:  # dropped from a full cache between read and use: read again
            self._read_frames([i])
            row = self._frame_rows[i]
        return row

    def _load_frames(self, frame_ids: Iterable[int]) -> dict[int, Frame]:
        """Frames by local id, as objects (built once per frame, from its kept rows)."""
        want = [int(i) for i in frame_ids]
        self._read_frames(want)
        objs = self._frame_obj
        out: dict[int, Frame] = {}
        for i in want:
            f = objs.get(i)
            if f is None:
                r = self._row(i)
                f = objs[i] = Frame(r.address, r.mapping, FrameKind(r.kind),
                                    tuple(Line(n, file, ln) for n, file, ln in r.lines))
            out[i] = f
        return out

    def stacks(self, ids: Iterable[int]) -> dict[int, Stack]:
        want = [int(i) for i in ids]
        lengths, flat = self.stack_frames(want)
        frames = self._load_frames(set(flat.tolist()))
        out: dict[int, Stack] = {}
        pos = 0
        for sid, n in zip(want, lengths.tolist(), strict=True):
            out[sid] = tuple(frames[f] for f in flat[pos:pos + n].tolist())
            pos += n
        return out

    def frame_lines(self, frame_ids: Iterable[int]) -> dict[int, tuple[tuple[str, str | None, int | None], ...]]:
        """`frame_lines_of` from the kept rows: outermost first; an unsymbolized frame as its fallback name."""
        self._check()
        want = [int(i) for i in frame_ids]
        self._read_frames(want)
        out = {}
        for i in want:
            r = self._row(i)
            out[i] = tuple(reversed(r.lines)) if r.lines else frame_lines_of(
                Frame(r.address, r.mapping, FrameKind(r.kind), ()))
        return out

    def frame_origins(self, frame_ids: Iterable[int]) -> dict[int, FrameOrigin] | None:
        """Kind, mapping path and file of its innermost line that has one (`frame_origin_of`), from the rows
        `frame_lines` read (no statement once it has)."""
        want = [int(i) for i in frame_ids]
        self._read_frames(want)
        out = {}
        for i in want:
            r = self._row(i)
            out[i] = (r.kind, r.mapping.path if r.mapping is not None else "",
                      next((file for _, file, _ in r.lines if file), ""))
        return out

    # Equal refs read equal samples: a ref names its profile rows by count and fingerprint (`_Window`).
    immutable_refs = True

    def generation(self) -> Hashable | None:
        """The set of active parts of the tables answers are read from (samples, totals, rollups), as a hash:
        every insert, merge, mutation, TTL pass or dropped partition, from any server, changes it. One
        statement over `system.parts` (on a cluster, every shard's, through `cluster()`).

        Without that statement when every writer is in this process (chDB: `Transport.writes`): then the count of
        writes through the engine moves with every insert, mutation or dropped partition, and nothing else
        changes an answer: merges keep sums, and rows a TTL merge may delete are not read (`_live`: the hour
        reads start from is part of the generation).

        None (no statement) until this store has answered a selection: an answer is kept under a generation only
        by a request that then selected (web/query/merge.py), so before the first there is nothing to find, and a
        fresh server's first query, cold anyway, does not pay a round trip to learn that."""
        self._check()
        writes = self.transport.writes()
        if writes is not None:
            return ("writes", writes, self._live(0))
        if not self._selected:
            return None
        suffix = "_local" if self.layout.cluster else ""
        parts = f"cluster('{self.layout.cluster}', system.parts)" if self.layout.cluster else "system.parts"
        tables = ", ".join(quote(t + suffix) for t in ("samples", "profiles", "samples_1h"))
        row = self.transport.query(
            f"SELECT count() AS n, groupBitXor(cityHash64(table, name)) AS h FROM {parts} "
            f"WHERE database = {quote(self.layout.database)} AND table IN ({tables}) AND active").to_pylist()[0]
        return (row["n"], row["h"])

    # -- labels --------------------------------------------------------------------------------

    def _active_series(self, t0: int, t1: int, selector: Selector | None) -> str:
        """Series with profiles starting in [t0, t1): whole hours through the hourly projection (GROUP BY, which
        it answers), the ragged edges from rows."""
        t0 = self._live(t0)
        ids = f"series {self._in} ({self._series_ids_sql(selector)})"
        return " UNION ALL ".join(f"SELECT series FROM {self._t('profiles')} WHERE {ids} AND {span} GROUP BY series"
                                  for span in _spans(t0, t1))

    def label_names(self, t0: int, t1: int, selector: Selector | None = None) -> list[str]:
        self._check()
        rows = self.transport.query(
            f"SELECT DISTINCT arrayJoin(mapKeys(labels)) AS k FROM {self._t('series')} "
            f"WHERE id {self._in} ({self._active_series(t0, t1, selector)}) ORDER BY k")
        return [str(k) for k in rows.column("k").to_pylist()]

    def label_values(self, name: str, t0: int, t1: int, selector: Selector | None = None) -> list[str]:
        self._check()
        v = f"labels[{quote(name)}]"
        rows = self.transport.query(
            f"SELECT DISTINCT {v} AS v FROM {self._t('series')} "
            f"WHERE id {self._in} ({self._active_series(t0, t1, selector)}) "
            f"AND mapContains(labels, {quote(name)}) ORDER BY v")
        return [str(x) for x in rows.column("v").to_pylist()]

    # -- retention -----------------------------------------------------------------------------

    def enforce_retention(self, max_age_ns: int | None, max_bytes: int | None,
                          now_ns: int | None = None) -> RetentionResult:
        """A time limit, then a disk budget, as the SQLite store honours them.

        Time: delete what started before the cutoff, rounded down to an hour so raw rows and hourly
        rollups go together (the tables' TTL does the same in the background; this is for an explicit pass).
        Bytes: drop whole day partitions of samples, totals and rollups, oldest first, while the database's
        active parts exceed the budget (a partition drop is instant and frees its files at once, where a
        DELETE waits for merges). The newest day is never dropped, so a budget below one day's data is
        reported (bytes_used stays over it), not met by losing everything."""
        self._check()
        cutoff, n = 0, 0
        if max_age_ns is not None:
            now = time.time_ns() if now_ns is None else now_ns
            cutoff = (now - max_age_ns) // HOUR_NS * HOUR_NS
            if cutoff > self._retention_cutoff:  # the server's maintenance asks every 30 s: cut once an hour
                gone = self.transport.query(f"SELECT count() AS n FROM {self._t('profiles')} WHERE start_ns < {cutoff}")
                n = int(gone.column("n")[0].as_py())
                if n:
                    for table, col in (("samples", "start_ns"), ("profiles", "start_ns"), ("samples_1h", "hour")):
                        self.transport.command(f"ALTER TABLE {self._local(table)}{self._on} DELETE WHERE "
                                               f"{col} < {cutoff} SETTINGS mutations_sync = 2")
                self._retention_cutoff = cutoff
            else:
                cutoff = 0
        if max_bytes is not None:
            dropped, first_kept = self._drop_oldest_days(max_bytes)
            n += dropped
            cutoff = max(cutoff, first_kept)
        return RetentionResult(cutoff, n, 0, self.bytes_used())

    @property
    def _on(self) -> str:
        return f" ON CLUSTER '{self.layout.cluster}'" if self.layout.cluster and self.layout.on_cluster else ""

    def _local(self, table: str) -> str:
        """The table that holds the rows (the `*_local` one on a cluster)."""
        return f"{self.layout.database}.{table}{'_local' if self.layout.cluster else ''}"

    def _drop_oldest_days(self, max_bytes: int) -> tuple[int, int]:
        """Drop the oldest day partitions until the database fits `max_bytes`; (profiles dropped, start of
        the oldest day kept, 0 if none was dropped). Sizes come from system.parts (this replica's)."""
        used = self.bytes_used()
        if used <= max_bytes:
            return 0, 0
        suffix = "_local" if self.layout.cluster else ""
        tables = [t + suffix for t in ("samples", "profiles", "samples_1h")]
        rows = self.transport.query(
            f"SELECT partition_id AS p, sum(bytes_on_disk) AS b FROM system.parts WHERE active AND "
            f"database = {quote(self.layout.database)} AND table IN ({', '.join(quote(t) for t in tables)}) "
            "GROUP BY p ORDER BY p").to_pylist()
        days = [(r["p"], int(r["b"])) for r in rows]
        dropped, kept = 0, 0
        for day, size in days[:-1]:  # never the newest day
            if used <= max_bytes:
                break
            n = self.transport.query(f"SELECT count() AS n FROM {self._local('profiles')} "
                                     f"WHERE _partition_id = {quote(day)}").column("n")[0].as_py()
            for t in ("samples", "profiles", "samples_1h"):
                self.transport.command(f"ALTER TABLE {self._local(t)}{self._on} DROP PARTITION ID {quote(day)}")
            used -= size
            dropped += int(n)
        if dropped:  # everything before the oldest profile left is gone
            left = self.transport.query(f"SELECT min(start_ns) AS t FROM {self._local('profiles')}")
            kept = int(left.column("t")[0].as_py() or 0)
        return dropped, kept

    def bytes_used(self) -> int:
        """Compressed bytes of this database's active parts."""
        rows = self.transport.query(f"SELECT sum(bytes_on_disk) AS b FROM system.parts "
                                    f"WHERE database = {quote(self.layout.database)} AND active")
        return int(rows.column("b")[0].as_py() or 0)

    def stats(self) -> dict[str, int]:
        """Counts and bytes, for metrics and benchmarks."""
        self._check()
        out = {}
        for key, expr, table in (("series", "uniqExact(id)", "series"), ("profiles", "count()", "profiles"),
                                 ("stacks", "uniqExact(id)", "stacks"), ("frames", "uniqExact(id)", "frames"),
                                 ("samples", "count()", "samples")):
            out[key] = int(self.transport.query(f"SELECT {expr} AS n FROM {self._t(table)}").column("n")[0].as_py())
        out["bytes"] = self.bytes_used()
        return out

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.transport.close()


def _window(p: StoredProfile) -> _Window:
    """The handle this store gave `p` (a handle of another store is a caller's bug)."""
    h = p.handle
    if not isinstance(h, _Window):
        raise TypeError(f"not a ClickHouse store's profile: {h!r}")
    return h


def _ranges(t0: int, t1: int) -> list[tuple[str, str, int, int]]:
    """[t0, t1) as (table, time column, lo, hi): whole hours from the hourly rollup, the ragged edges raw."""
    h0 = -(-t0 // HOUR_NS) * HOUR_NS
    h1 = t1 // HOUR_NS * HOUR_NS
    if h1 <= h0:
        return [("samples", "start_ns", t0, t1)]
    out = [("samples_1h", "hour", h0, h1)]
    if t0 < h0:
        out.append(("samples", "start_ns", t0, h0))
    if h1 < t1:
        out.append(("samples", "start_ns", h1, t1))
    return out


def _kept_ranges(t0: int, t1: int) -> list[tuple[str, str, int, int]]:
    """`_ranges`, with a raw range that crosses an hour cut there: the hour being written apart from the one before
    it, whose answer `ClickHouseStore._union` may keep (a page's last hour or 15 minutes reads two hours raw)."""
    out = []
    for table, col, lo, hi in _ranges(t0, t1):
        cut = hi // HOUR_NS * HOUR_NS
        if table == "samples" and lo < cut < hi:
            out += [(table, col, lo, cut), (table, col, cut, hi)]
        else:
            out.append((table, col, lo, hi))
    return out


def _span(table: str, lo: int, hi: int) -> str:
    """A range of `_ranges` as a condition on `profiles` (`_spans`)."""
    if table == "samples_1h":
        return f"intDiv(start_ns, {HOUR_NS}) >= {lo // HOUR_NS} AND intDiv(start_ns, {HOUR_NS}) < {hi // HOUR_NS}"
    return f"start_ns >= {int(lo)} AND start_ns < {int(hi)}"


def _spans(t0: int, t1: int) -> list[str]:
    """[t0, t1) as conditions on `profiles`: whole hours written as intDiv(start_ns, hour), so that the hourly
    projection answers them (ClickHouse matches the expression of its GROUP BY), the ragged edges on start_ns."""
    return [_span(table, lo, hi) for table, _, lo, hi in _ranges(t0, t1)]


def _pairs_in(series: np.ndarray, period: np.ndarray, pairs: Collection[tuple[int, int]]) -> np.ndarray:
    """Which rows' (series, period) is one of `pairs`: per distinct period (one or two on a node) a sorted lookup of the
    series, where a comparison per pair took ~6 ms for a node's 100 pairs over its 43k rows."""
    keep = np.zeros(series.size, dtype=bool)
    by_period: dict[int, list[int]] = defaultdict(list)
    for s_, per in pairs:
        by_period[per].append(s_)
    for per, ids in by_period.items():
        want = np.unique(np.array(ids, dtype=np.uint64))
        at = np.minimum(np.searchsorted(want, series), want.size - 1)
        keep |= (want[at] == series) & (period == per)
    return keep


def _ints(values: Iterable[int]) -> str:
    return ",".join(str(int(v)) for v in values) or "NULL"

