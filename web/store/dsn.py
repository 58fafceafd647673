"""A store from one option: `--store` names the backend and where it lives.

    (none)                                   the embedded SQLite + zstd store in --data (the default)
    clickhouse://[user@]host:8123/db         a ClickHouse server over HTTP (clickhouses:// for TLS)
        ?cluster=NAME                        replicated + distributed tables, DDL ON CLUSTER
        ?on_cluster=0                        ... but the DDL run on this node only (applied per node)
        ?replicated=0                        ... shards without replicas: MergeTree under Distributed
        ?retention_seconds=N                 TTL on samples (else $PODFLAME_RETENTION_SECONDS)
    chdb:///path/to/dir?database=db          the same SQL in-process with chDB (tests, one machine)
        ?config=/path/config.xml             a ClickHouse config for chDB (remote_servers, macros, keeper):
                                             with ?cluster=NAME the cluster DDL runs here, without ON CLUSTER

Credentials come from $PODFLAME_CLICKHOUSE_USER / $PODFLAME_CLICKHOUSE_PASSWORD (a Secret in
Kubernetes) unless the DSN carries them: a password in a command line shows in `ps`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from podflame.errors import InvalidInput
from web.store.base import Store
from web.store.clickhouse_schema import Layout


class StoreDsnError(InvalidInput):
    """The --store value is not a store this podflame knows."""


def layout_of(dsn: str) -> Layout:
    """The database, cluster and retention a ClickHouse DSN names."""
    parts = urlsplit(dsn)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    database = query.get("database", "podflame") if parts.scheme == "chdb" else (parts.path.strip("/") or "podflame")
    retention = query.get("retention_seconds") or os.environ.get("PODFLAME_RETENTION_SECONDS") or None
    try:
        seconds = int(float(retention)) if retention else None
    except ValueError:
        raise StoreDsnError(f"retention_seconds must be a number, not {retention!r}") from None
    on_cluster = query.get("on_cluster", "0" if parts.scheme == "chdb" else "1")  # chDB: no distributed DDL
    if on_cluster not in ("0", "1"):
        raise StoreDsnError(f"on_cluster must be 0 or 1, not {on_cluster!r}")
    replicated = query.get("replicated", "1")
    if replicated not in ("0", "1"):
        raise StoreDsnError(f"replicated must be 0 or 1, not {replicated!r}")
    return Layout(database, query.get("cluster") or None, seconds, on_cluster == "1", replicated == "1")


def open_store(dsn: str | None, data_dir: str | os.PathLike[str] = "./podflame-data",
               synchronous: str = "FULL") -> Store:
    """The store a DSN names; None or '' is the default embedded SQLite store in `data_dir`."""
    if not dsn or dsn.startswith("sqlite:"):
        from web.store.sqlite import SqliteStore

        path = dsn.partition("sqlite://")[2] if dsn else ""
        return SqliteStore(Path(path or data_dir), synchronous=synchronous)
    parts = urlsplit(dsn)
    from web.store.clickhouse import ClickHouseStore
    from web.store.clickhouse_transport import ChdbTransport, HttpTransport, Transport

    layout = layout_of(dsn)
    transport: Transport
    if parts.scheme == "chdb":
        path = dsn[len("chdb://"):].partition("?")[0]
        if not path:
            raise StoreDsnError("chdb:// needs a directory: chdb:///var/lib/podflame-ch")
        config = {k: v[-1] for k, v in parse_qs(parts.query).items()}.get("config")
        transport = ChdbTransport(str(Path(path).resolve()), config=str(Path(config).resolve()) if config else None)
    elif parts.scheme in ("clickhouse", "clickhouses"):
        if not parts.hostname:
            raise StoreDsnError(f"{dsn!r} names no host: clickhouse://host:8123/db")
        secure = parts.scheme == "clickhouses"
        transport = HttpTransport(
            parts.hostname, parts.port or (8443 if secure else 8123), secure=secure,
            username=unquote(parts.username or "") or os.environ.get("PODFLAME_CLICKHOUSE_USER", "default"),
            password=unquote(parts.password or "") or os.environ.get("PODFLAME_CLICKHOUSE_PASSWORD", ""))
    else:
        raise StoreDsnError(f"unknown store {dsn!r}: use clickhouse://host:8123/db, chdb:///dir or nothing (SQLite)")
    return ClickHouseStore(transport, layout)


def print_ddl_of(dsn: str | None) -> str:
    """The statements `open_store(dsn)` applies at start, as a script (for a DBA to review or run)."""
    from web.store.clickhouse_schema import ddl

    if not dsn or not dsn.startswith(("clickhouse://", "clickhouses://", "chdb://")):
        raise StoreDsnError("--print-ddl needs a ClickHouse --store (clickhouse://host:8123/db)")
    return ";\n".join(ddl(layout_of(dsn))) + ";"
