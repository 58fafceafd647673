"""The ClickHouse schema of the profile store: DDL for a single node or a cluster, built as text.

Designed for the engine, not ported from SQLite: dictionaries (functions, mappings, frames, stacks,
series) are keyed by a 64-bit hash of their content, so every replica and every server computes the
same id without asking anyone, and a re-insert is a harmless duplicate (ReplacingMergeTree folds
them). Samples are one MergeTree ordered by (series, start, stack), what every query filters on,
with delta/T64 + ZSTD codecs; the day partitions make retention a partition drop. Profile totals
and hourly rollups are materialized views of the one samples insert, so a put is a single insert
(atomic per block, deduplicated by its token) and the database does what compaction does in SQLite.

A cluster gets `*_local` ReplicatedMergeTree tables created ON CLUSTER and Distributed tables of the
plain names over them, sharded by series (a series' rows live on one shard: its GROUP BY is local).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from podflame.errors import InvalidInput
from web.store.clickhouse_transport import quote

# 2: the hourly projection of profile totals (a day's selection reads ~24 rows per series)
# 3: dictionaries over stacks, frames, functions, mappings and series (a read names its stacks, a selection its
#    series, in its own statement)
# 4: `series.added` (when a server wrote the row, its clock; 0 before schema 4) with a min-max index: a server holds
#    the series catalogue and reads only the rows added since it last looked
SCHEMA_VERSION = 4
HOUR_NS = 3600 * 10**9
DEDUP_WINDOW = 100_000  # insert tokens remembered per table: agent retries come within minutes
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# When a server wrote a series row (its wall clock, ns; 0 for rows written before schema 4): what a server that holds
# the series catalogue reads again (web/store/clickhouse.py `_refresh_catalogue`).
SERIES_ADDED = "added Int64 DEFAULT 0 CODEC(T64, ZSTD(3))"

_DAY = "toYYYYMMDD(toDateTime(intDiv(start_ns, 1000000000)))"

# table -> (columns, engine kind, ORDER BY, partition expression or None, time column for TTL or None)
_TABLES: dict[str, tuple[str, str, str, str | None, str | None]] = {
    "functions": ("id UInt64, name String CODEC(ZSTD(3)), file String CODEC(ZSTD(3))",
                  "ReplacingMergeTree", "id", None, None),
    "mappings": ("id UInt64, start UInt64, limit UInt64, offset UInt64, path String CODEC(ZSTD(3)), "
                 "build_id String CODEC(ZSTD(3))", "ReplacingMergeTree", "id", None, None),
    # lines: (function id, line) innermost first, as pprof's Location.line
    "frames": ("id UInt64, address UInt64, mapping UInt64, kind LowCardinality(String), "
               "functions Array(UInt64) CODEC(ZSTD(3)), lines Array(Int64) CODEC(ZSTD(3))",
               "ReplacingMergeTree", "id", None, None),
    "stacks": ("id UInt64, frames Array(UInt64) CODEC(ZSTD(3))", "ReplacingMergeTree", "id", None, None),  # root first
    "series": ("id UInt64, sample_type LowCardinality(String), unit LowCardinality(String), "
               f"labels Map(LowCardinality(String), String), {SERIES_ADDED}",
               "ReplacingMergeTree", "id", None, None),
    "samples": ("series UInt64, start_ns Int64 CODEC(DoubleDelta, ZSTD(3)), "
                "duration_ns Int64 CODEC(T64, ZSTD(3)), period_ns Int64 CODEC(T64, ZSTD(3)), "
                "stack UInt64 CODEC(ZSTD(3)), value Int64 CODEC(T64, ZSTD(3))",
                "MergeTree", "(series, start_ns, stack)", _DAY, "start_ns"),
    "profiles": ("series UInt64, start_ns Int64 CODEC(DoubleDelta, ZSTD(3)), duration_ns Int64 CODEC(T64, ZSTD(3)), "
                 "period_ns Int64 CODEC(T64, ZSTD(3)), total Int64 CODEC(T64, ZSTD(3)), "
                 "n_samples UInt32 CODEC(T64, ZSTD(3))",
                 "MergeTree", "(series, start_ns)", _DAY, "start_ns"),
    "samples_1h": ("series UInt64, period_ns Int64, hour Int64 CODEC(DoubleDelta, ZSTD(3)), "
                   "stack UInt64 CODEC(ZSTD(3)), value Int64 CODEC(T64, ZSTD(3))",
                   "SummingMergeTree(value)", "(series, period_ns, hour, stack)",
                   "toYYYYMMDD(toDateTime(intDiv(hour, 1000000000)))", "hour"),
}

# view -> (target, SELECT over samples): filled by the one insert into samples
_VIEWS = {
    "profiles_mv": ("profiles", "SELECT series, start_ns, any(duration_ns) AS duration_ns, period_ns, "
                                "sum(value) AS total, toUInt32(count()) AS n_samples FROM {db}.samples "
                                "GROUP BY series, start_ns, period_ns"),
    "samples_1h_mv": ("samples_1h",
                      f"SELECT series, period_ns, intDiv(start_ns, {HOUR_NS}) * {HOUR_NS} AS hour, stack, "
                      "sum(value) AS value FROM {db}.samples GROUP BY series, period_ns, hour, stack"),
}


# table -> (projection, its SELECT): aggregates ClickHouse keeps beside each part and reads instead of the rows
# when a query asks for them. A day's selection (one aggregate per series over 8,640 profiles each) reads the
# hourly one for whole hours; a part written before the projection existed is read raw, so answers stay exact.
PROJECTIONS = {
    "profiles": ("by_hour", f"SELECT series, period_ns, intDiv(start_ns, {HOUR_NS}), min(start_ns), "
                            "max(start_ns + duration_ns), sum(total), count(), "
                            "sum(cityHash64(start_ns, duration_ns, total, n_samples)) "
                            f"GROUP BY series, period_ns, intDiv(start_ns, {HOUR_NS})"),
}

# dictionary -> (its table, attributes): ClickHouse dictionaries over the content-addressed tables, so one statement
# can sum a range AND name what it summed (`dictGet`), where reading the tables took a statement each (stacks, frames,
# functions and mappings: each point read decompresses whole granules of its table). CACHE layout: a key is read from
# its table on first use and kept in the ClickHouse server's memory (bounded by cells), so a dictionary never serves a
# stale or partial table. Rows never change (ids are content hashes), so a long lifetime costs nothing but a kept
# key's re-read each 1-2 h; it also bounds how long a key missing at its first lookup (a replica behind) is
# remembered as missing: the store checks `dictHas` and reads the tables for such a read (web/store/clickhouse.py
# `_read_named`). A miss costs more than the table read it replaces (each dictionary fills its misses with an
# internal query of its own): the gain is a ClickHouse server that has served these keys before.
DICTIONARIES = {
    "stacks_dict": ("stacks", "frames Array(UInt64)"),
    "frames_dict": ("frames", "address UInt64, mapping UInt64, kind String, functions Array(UInt64), "
                              "lines Array(Int64)"),
    "functions_dict": ("functions", "name String, file String"),
    "mappings_dict": ("mappings", "start UInt64, limit UInt64, offset UInt64, path String, build_id String"),
    "series_dict": ("series", "sample_type String, unit String, labels Map(String, String)"),
}
DICTIONARY_CELLS = 1 << 20  # keys kept per dictionary (a key and its row; past it ClickHouse evicts, reads again)
# A key past its lifetime is answered from the cell and read again in the background, not waited for: rows never
# change (ids are content hashes), so the kept row is right, and a key stays held (a put's `_hold_names`, a query's
# lookup) until evicted, not only for 1-2 h. A key missing at its lookup stays missing until re-read the same way
# (the reads' dictHas checks send that read to the tables).
READ_EXPIRED = "ALLOW_READ_EXPIRED_KEYS 1"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the tables live: a database, optionally a cluster (then tables are replicated and distributed)."""

    database: str
    cluster: str | None = None
    retention_seconds: int | None = None
    # DDL ON CLUSTER (a server's distributed DDL queue). False: each node is given the same DDL by itself
    # (chDB, which has no distributed DDL queue, or a DBA applying it per node).
    on_cluster: bool = True
    # Replicated*MergeTree under the Distributed tables (Keeper coordinates the replicas of a shard). False:
    # shards without replicas (plain MergeTree); also what runs on chDB, whose replicas stay read-only.
    replicated: bool = True

    def __post_init__(self) -> None:
        for what, name in (("database", self.database), ("cluster", self.cluster)):
            if name is not None and not _NAME.fullmatch(name):
                raise InvalidInput(f"ClickHouse {what} name {name!r} must be letters, digits and _")

    def table(self, name: str) -> str:
        """The table queries and inserts name (the Distributed one on a cluster)."""
        return f"{self.database}.{name}"

    def ttl(self, table: str) -> str | None:
        """The TTL expression of a table, or None (no retention, or a dictionary table)."""
        column = _TABLES[table][4]
        if self.retention_seconds is None or column is None:
            return None
        slack = f" + {HOUR_NS}" if table == "samples_1h" else ""  # an hour's rollup goes with its last sample
        return f"toDateTime(intDiv({column}{slack}, 1000000000)) + toIntervalSecond({int(self.retention_seconds)})"


def ddl(layout: Layout, credentials: tuple[str, str] | None = None) -> list[str]:
    """Every statement that creates the schema (idempotent: IF NOT EXISTS), in order. `credentials`: the user and
    password the dictionaries' source logs in with (`dictionaries`)."""
    db, cluster = layout.database, layout.cluster
    on = f" ON CLUSTER '{cluster}'" if cluster and layout.on_cluster else ""
    out = [f"CREATE DATABASE IF NOT EXISTS {db}{on}",
           f"CREATE TABLE IF NOT EXISTS {db}.schema_version{on} (version UInt32, applied DateTime DEFAULT now()) "
           f"ENGINE = {_engine('ReplacingMergeTree', db, 'schema_version', cluster if layout.replicated else None)} "
           "ORDER BY version"]
    for name, (columns, kind, order, partition, _) in _TABLES.items():
        local = f"{name}_local" if cluster else name
        clauses = [f"ENGINE = {_engine(kind, db, local, cluster if layout.replicated else None)}"]
        if partition:
            clauses.append(f"PARTITION BY {partition}")
        clauses.append(f"ORDER BY {order}")
        ttl = layout.ttl(name)
        if ttl:
            clauses.append(f"TTL {ttl}")
        window = ("replicated_deduplication_window" if cluster and layout.replicated
                  else "non_replicated_deduplication_window")
        clauses.append(f"SETTINGS {window} = {DEDUP_WINDOW}" if partition else "")
        out.append(f"CREATE TABLE IF NOT EXISTS {db}.{local}{on} ({columns}) " + " ".join(c for c in clauses if c))
        if name in PROJECTIONS:
            proj, select = PROJECTIONS[name]
            out.append(f"ALTER TABLE {db}.{local}{on} ADD PROJECTION IF NOT EXISTS {proj} ({select})")
        if name == "series":  # schema 4 on a table made before it (IF NOT EXISTS: nothing on a new one)
            out.append(f"ALTER TABLE {db}.{local}{on} ADD COLUMN IF NOT EXISTS {SERIES_ADDED}")
            out.append(f"ALTER TABLE {db}.{local}{on} ADD INDEX IF NOT EXISTS added_minmax added TYPE minmax "
                       "GRANULARITY 1")
        if cluster:
            shard = "series" if name in ("samples", "profiles", "samples_1h") else "id"
            out.append(f"CREATE TABLE IF NOT EXISTS {db}.{name}{on} AS {db}.{local} "
                       f"ENGINE = Distributed('{cluster}', {db}, {local}, sipHash64({shard}))")
            if name == "series":
                out.append(f"ALTER TABLE {db}.{name}{on} ADD COLUMN IF NOT EXISTS {SERIES_ADDED}")
    out += dictionaries(layout, credentials)
    for view, (target, select) in _VIEWS.items():
        # On a cluster the views read each shard's local samples and write its local target.
        src = "samples_local" if cluster else "samples"
        dst = f"{target}_local" if cluster else target
        body = select.format(db=db).replace(f"{db}.samples ", f"{db}.{src} ")
        out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view}{on} TO {db}.{dst} AS {body}")
    out.append(f"INSERT INTO {db}.schema_version (version) VALUES ({SCHEMA_VERSION})")
    return out


def dictionaries(layout: Layout, credentials: tuple[str, str] | None = None, *, replace: bool = False) -> list[str]:
    """The dictionaries' DDL. Their source is the table queries name (the Distributed one on a cluster), read by
    the ClickHouse server itself (no HOST), which logs in for it as `default` with no password unless the SOURCE
    names a user: on a server where `default` has a password (or is not the store's user) the dictionaries are
    refused, so they carry the store's own `credentials` (user, password). ClickHouse shows that password as
    '[HIDDEN]' in SHOW CREATE and system.tables, but keeps it in the dictionary's metadata file on its disk.
    `replace`: CREATE OR REPLACE (the credentials changed; the kept keys go with it)."""
    db = layout.database
    on = f" ON CLUSTER '{layout.cluster}'" if layout.cluster and layout.on_cluster else ""
    verb = "CREATE OR REPLACE DICTIONARY" if replace else "CREATE DICTIONARY IF NOT EXISTS"
    login = f" {source_login(credentials)}" if credentials else ""
    return [f"{verb} {db}.{name}{on} (id UInt64, {attributes}) PRIMARY KEY id "
            f"SOURCE(CLICKHOUSE(DB '{db}' TABLE '{table}'{login})) "
            f"LAYOUT(CACHE(SIZE_IN_CELLS {DICTIONARY_CELLS} {READ_EXPIRED})) LIFETIME(MIN 3600 MAX 7200)"
            for name, (table, attributes) in DICTIONARIES.items()]


def source_login(credentials: tuple[str, str]) -> str:
    """The SOURCE clause's login; its USER part is what a dictionary's create query shows (the password hidden)."""
    user, password = credentials
    return f"USER {quote(user)} PASSWORD {quote(password)}"


def upgrade(layout: Layout, version: int) -> list[str]:
    """Statements that bring data written under schema `version` up to date (after `ddl`): projections added
    since are built for the parts already there (a mutation in the background; until it is done those parts are
    read raw, so answers stay exact). Schema 3's dictionaries need nothing: `ddl` creates them over the tables as
    they are."""
    on = f" ON CLUSTER '{layout.cluster}'" if layout.cluster and layout.on_cluster else ""
    out = []
    if version < 2:
        suffix = "_local" if layout.cluster else ""
        proj = PROJECTIONS["profiles"][0]
        out.append(f"ALTER TABLE {layout.database}.profiles{suffix}{on} MATERIALIZE PROJECTION {proj}")
    return out


def _engine(kind: str, db: str, table: str, cluster: str | None) -> str:
    if not cluster:
        return kind if "(" in kind else f"{kind}()"
    name, _, args = kind.partition("(")
    extra = f", {args.rstrip(')')}" if args.rstrip(")") else ""
    return f"Replicated{name}('/clickhouse/tables/{{shard}}/{db}/{table}', '{{replica}}'{extra})"
