"""How the ClickHouse store reaches the engine: one thin adapter per transport, the SQL is shared.

`HttpTransport` talks to a ClickHouse server with clickhouse-connect (the `podflame[clickhouse]`
extra); `ChdbTransport` runs the same SQL in-process with chDB (ClickHouse compiled as a library),
which is how the tests exercise the real engine. Both take SQL text and Arrow tables, nothing else,
so the store cannot depend on which one it has.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from podflame.errors import InvalidInput, PodflameError, Unavailable
from web.store import deadline

log = logging.getLogger(__name__)
MAX_QUERY_BYTES = 64 << 20  # id lists go into the SQL text: past the 256 KiB default for wide queries


class ClickHouseUnavailable(Unavailable):
    """ClickHouse cannot be reached or refused the work (the server answers 503; agents keep their batches)."""


class ClickHouseError(PodflameError, RuntimeError):
    """ClickHouse rejected a statement podflame wrote (a bug or an incompatible server)."""


TIMEOUT_EXCEEDED = "Code: 159."  # ClickHouse stopped a query at max_execution_time
# Where a statement reads the id list passed beside it (`Transport.query(sql, ids)`): a table of one column
# `id UInt64`, sent as data, not as SQL text (a node's 14k stack ids as literals cost 50-90 ms of parsing).
IDS = "__PODFLAME_IDS__"
IDS_SET = f"(SELECT id FROM {IDS})"  # how a statement names the list as a set (`x IN IDS_SET`)


class Transport(ABC):
    """SQL in, Arrow out; safe to call from many threads."""

    where: str  # for messages: which ClickHouse

    @abstractmethod
    def command(self, sql: str) -> None: ...

    def query(self, sql: str, ids: Sequence[int] | None = None) -> pa.Table:
        """Run a SELECT under the request's deadline (web/store/deadline.py), as the SQLite store does: past it
        the query is not sent, and ClickHouse itself stops one that runs past it (max_execution_time), so a
        slow query answers the same 503 on either backend instead of holding a server thread. `ids`: the rows
        of the table the SQL names as `IDS` (`SELECT id FROM __PODFLAME_IDS__`)."""
        left = deadline.remaining()
        if left is None:
            return self._query(sql, {}, ids)
        if left <= 0:
            raise deadline.expired()
        try:
            return self._query(sql, {"max_execution_time": round(max(left, 0.001), 3),
                                     "timeout_overflow_mode": "throw"}, ids)
        except ClickHouseError as e:
            if TIMEOUT_EXCEEDED in str(e) or "TIMEOUT_EXCEEDED" in str(e):
                raise deadline.expired() from None
            raise

    @abstractmethod
    def _query(self, sql: str, settings: Mapping[str, str | int | float], ids: Sequence[int] | None) -> pa.Table: ...

    @abstractmethod
    def insert(self, table: str, data: pa.Table, settings: Mapping[str, str | int]) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Release the connection or session."""

    def credentials(self) -> tuple[str, str] | None:
        """The user and password this transport logs in with, when they are not ClickHouse's passwordless `default`
        (then the schema's dictionaries log in with them too: web/store/clickhouse_schema.py `dictionaries`)."""
        return None

    def writes(self) -> int | None:
        """How many writes (inserts, DDL, mutations) every client of this engine has made, when every writer is in
        this process and goes through a transport (chDB locks its data directory to one process); None when other
        processes may write (a ClickHouse server): then only the engine can say what changed."""
        return None

    def table_writes(self, table: str) -> int | None:
        """How many writes may have changed `table` (a database-qualified name), for every client of this engine,
        when every writer is in this process (chDB): its inserts plus every other statement that may write (DDL,
        mutations, INSERT ... SELECT). None: writers elsewhere (a ClickHouse server), so the caller must ask it."""
        return None

    def hour_writes(self, table: str, t0: int, t1: int) -> tuple[int, ...] | None:
        """When every writer is in this process (chDB): per hour of [t0, t1) (ns), how many inserts into `table`
        (a database-qualified name) held rows whose `start_ns` lies in it, then every other write that may have written
        it (DDL, mutations, INSERT ... SELECT, an insert into it without `start_ns`). Equal marks mean no row of
        `table` starting in [t0, t1) was written, nor what its materialized views fill from them. None: writers
        elsewhere (a ClickHouse server)."""
        return None

    def insert_seq(self, table: str) -> int | None:
        """When every writer is in this process (chDB): how many inserts into `table` this engine has taken (the
        position `inserts_since` counts from). None: writers elsewhere."""
        return None

    def inserts_since(self, table: str, seq: int) -> list[pa.Table] | None:
        """When every writer is in this process (chDB): the rows of every insert into `table` after the first `seq`,
        each known to have been stored whole (not dropped as a repeated token), in order. None when one of them is
        no longer held or its rows were not seen stored (then the caller reads the table), or writers elsewhere."""
        return None

    def settle(self) -> None:
        """After a put's inserts: return once the engine's merges they started are done, where the engine runs in
        this process (chDB), so that their CPU is the put's and not that of the request that follows. Nothing to
        wait for when the engine is elsewhere (a ClickHouse server merges in its own process)."""
        return None


def quote(s: str) -> str:
    """A ClickHouse string literal (backslash escapes, as its lexer reads them)."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


_CAUSE = re.compile(r"\[Errno -?\d+\] [^'\")]+|timed out|Read timed out|Name or service not known")


def _reason(e: BaseException) -> str:
    """The cause a person can act on ("[Errno 111] Connection refused"), not urllib3's nested reprs."""
    text = str(e)
    found = _CAUSE.search(text)
    return found.group(0).strip() if found else text.splitlines()[0][:200] if text else type(e).__name__


class _DropRetries(logging.Filter):
    """urllib3 logs each retry of the client's pool as a WARNING; the transport reports the failure itself
    (a 503 and one log line when ClickHouse goes away), so a down server is not two lines per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying")


_quieted = False


def _quiet_client_logs() -> None:
    global _quieted
    if not _quieted:
        _quieted = True
        logging.getLogger("urllib3.connectionpool").addFilter(_DropRetries())
        # clickhouse-connect logs "Unexpected Http Driver Exception" before raising what the transport reports
        logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)


class HttpTransport(Transport):
    """A ClickHouse server over HTTP(S) with clickhouse-connect; connects lazily, so a server can start
    (and answer 503) while ClickHouse is down, and recovers without a restart."""

    def __init__(self, host: str, port: int, *, username: str = "default", password: str = "",
                 secure: bool = False, connect_timeout: float = 5.0, **extra: Any) -> None:
        try:
            import clickhouse_connect  # noqa: F401
        except ImportError:
            raise InvalidInput("the ClickHouse store needs clickhouse-connect: pip install 'podflame[clickhouse]'") \
                from None
        self.where = f"{'https' if secure else 'http'}://{host}:{port}"
        self._args = dict(host=host, port=port, username=username, password=password, secure=secure,
                          connect_timeout=connect_timeout, settings={"max_query_size": MAX_QUERY_BYTES}, **extra)
        self._client: Any = None
        self._lock = threading.Lock()
        self._down: str | None = None  # the reason last logged while ClickHouse is unreachable
        _quiet_client_logs()
        # pyarrow loads its pandas shim (~0.5 s when pandas is installed) at its first array operation: at a
        # server's start, not in its first query's answer.
        pa.array([0], pa.uint64()).to_numpy()

    def credentials(self) -> tuple[str, str] | None:
        user, password = str(self._args["username"]), str(self._args["password"])
        return None if user == "default" and not password else (user, password)

    def _get(self) -> Any:
        import clickhouse_connect

        with self._lock:
            if self._client is None:
                try:
                    self._client = clickhouse_connect.get_client(**self._args)
                except Exception as e:
                    raise self._unreachable(e) from None
            return self._client

    def _unreachable(self, e: BaseException) -> ClickHouseUnavailable:
        """The error to raise, logged once when ClickHouse goes away (not once per request)."""
        reason = _reason(e)
        if self._down is None:
            log.warning("ClickHouse at %s is unreachable: %s (answering 503 until it is back)", self.where, reason)
        self._down = reason
        return ClickHouseUnavailable(f"ClickHouse at {self.where} is unreachable: {reason}")

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

        client = self._get()
        try:
            out = getattr(client, fn)(*args, **kwargs)
        except OperationalError as e:  # connection refused, timeout, server gone: try a new client next time
            with self._lock:
                self._client = None
                raise self._unreachable(e) from None
        except DatabaseError as e:
            raise ClickHouseError(f"ClickHouse at {self.where}: {e}") from None
        if self._down is not None:
            self._down = None
            log.warning("ClickHouse at %s answers again", self.where)
        return out

    def command(self, sql: str) -> None:
        self._call("command", sql)

    def _query(self, sql: str, settings: Mapping[str, str | int | float], ids: Sequence[int] | None) -> pa.Table:
        extra: dict[str, Any] = {}
        if ids is not None:  # an external table sent with the query (HTTP multipart), named in the SQL
            from clickhouse_connect.driver.external import ExternalData

            extra["external_data"] = ExternalData(file_name="podflame_ids", data="\n".join(map(str, ids)).encode(),
                                                  fmt="TSV", structure="id UInt64")
            sql = sql.replace(IDS, "podflame_ids")
        table: pa.Table = self._call("query_arrow", sql, use_strings=True, settings=dict(settings) or None, **extra)
        return table

    def insert(self, table: str, data: pa.Table, settings: Mapping[str, str | int]) -> None:
        self._call("insert_arrow", table, data, settings=dict(settings))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


_VALUES_ROWS = 512
_LITERAL_IDS = 1000  # ids written into the SQL up to this many (~5 us each to parse; Python() costs ~2.5 ms)


def _literal(v: object) -> str:
    """A ClickHouse literal of an Arrow value as `to_pylist` gives it: int, str, list, map (list of pairs)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, list):
        if v and isinstance(v[0], tuple):
            return "map(" + ",".join(f"{_literal(k)},{_literal(x)}" for k, x in v) + ")"
        return "[" + ",".join(map(_literal, v)) + "]"
    if v is None:
        return "NULL"
    raise TypeError(f"no ClickHouse literal for {type(v).__name__}")


def _values(data: pa.Table) -> str:
    cols = [data.column(i).to_pylist() for i in range(data.num_columns)]
    return ",".join("(" + ",".join(_literal(c[r]) for c in cols) + ")" for r in range(data.num_rows))


class _Engine:
    """chDB's embedded server on one path, shared by every transport on it, with its count of writes."""

    def __init__(self, session: Any, first: int) -> None:
        self.session = session
        self.users = 0
        self.writes = first  # never a count an earlier engine of this process gave (kept answers may hold it)
        self.inserts: dict[str, int] = {}  # table -> inserts through `insert` (the rest are `writes - inserted`)
        self.inserted = 0
        # (table, hour) -> inserts whose rows start in that hour (`start_ns`); table -> inserts counted so
        self.hours: dict[tuple[str, int], int] = {}
        self.timed: dict[str, int] = {}
        # Tables whose inserts are held (`log`): table -> (seq of the first held, [(rows, stored whole)]), the rows
        # a server folds into the answers it keeps (write-through), within `LOG_BYTES`; and each one's row count
        # after its last insert (what tells a stored insert from one dropped as a repeated token).
        self.logged: set[str] = set()
        self.log: dict[str, tuple[int, list[tuple[pa.Table | None, bool]]]] = {}
        self.log_bytes = 0
        self.rows_after: dict[str, int] = {}
        self.inflight = 0  # logged inserts running (their rows may be visible before they are counted)
        self.insert_lock = threading.Lock()  # a logged table's inserts one at a time, with their row counts
        self._lock = threading.Lock()

    def wrote(self, table: str | None = None, hours: Sequence[int] = ()) -> None:
        """A write; an insert into `table` whose rows start in `hours` (hour numbers: start_ns // HOUR_NS)."""
        with self._lock:
            self.writes += 1
            if table is not None:
                self.inserts[table] = self.inserts.get(table, 0) + 1
                self.inserted += 1
                if hours:
                    self.timed[table] = self.timed.get(table, 0) + 1
                    for h in hours:
                        self.hours[(table, h)] = self.hours.get((table, h), 0) + 1

    def table_writes(self, table: str) -> int:
        """Inserts into `table` plus every write that was not an insert (any of them may have written it)."""
        with self._lock:
            return self.inserts.get(table, 0) + self.writes - self.inserted

    def hour_writes(self, table: str, t0: int, t1: int) -> tuple[int, ...]:
        """`Transport.hour_writes`: inserts into `table` per hour of [t0, t1), then every other write that may have
        written it (inserts into it without `start_ns`, every statement that is not an insert)."""
        with self._lock:
            marks = [self.hours.get((table, h), 0) for h in range(t0 // _HOUR_NS, -(-t1 // _HOUR_NS))]
            marks.append(self.writes - self.inserted + self.inserts.get(table, 0) - self.timed.get(table, 0))
        return tuple(marks)

    def hold(self, table: str, data: pa.Table | None, stored: bool) -> None:
        """Hold an insert into a logged `table` (None: not held), dropping the oldest past `LOG_BYTES`."""
        with self._lock:
            _, entries = self.log.setdefault(table, (self.inserts.get(table, 0) - 1, []))
            entries.append((data, stored))
            if data is not None:
                self.log_bytes += data.nbytes
            while self.log_bytes > LOG_BYTES:
                oldest = min((t for t in self.log if self.log[t][1]), key=lambda t: self.log[t][0], default=None)
                if oldest is None:
                    break
                f, e = self.log[oldest]
                gone = e.pop(0)[0]
                self.log_bytes -= gone.nbytes if gone is not None else 0
                self.log[oldest] = (f + 1, e)

    def since(self, table: str, seq: int) -> list[pa.Table] | None:
        with self._lock:
            first, entries = self.log.get(table, (self.inserts.get(table, 0), []))
            if seq < first or first + len(entries) != self.inserts.get(table, 0):
                return None
            out = entries[seq - first:]
            if not all(ok and t is not None for t, ok in out):
                return None
            return [t for t, _ in out]  # type: ignore[misc]


# chDB runs one embedded server per process, on one path: stores on the same path share it (one
# database each); a second path in the same process is refused by chDB itself, and a second process
# on the same path too (the server's `status` file lock), so every write to it passes through here.
_SESSIONS: dict[str, _Engine] = {}
_SESSIONS_LOCK = threading.Lock()
_NEXT_WRITES = [0]  # where the next engine's count starts: past every count given before
_HOUR_NS = 3600 * 10**9
LOG_BYTES = 64 << 20  # rows of inserts an engine holds for write-through (`_Engine.hold`): past it the oldest go
# `ChdbTransport.settle`: an insert's parts are merged by the engine's background threads, which start that merge 2-25
# ms after the insert (its merge selection runs on another pool first) and run it for 30-60 ms of wall time on a node's
# drain; a put waits for merges of up to `SETTLE_BYTES` of compressed parts (those of recent inserts: a node-hour of
# samples is ~6 MB), polling the engine's list of merges (~1.5 ms of CPU a look), for at most `SETTLE_SECONDS`.
SETTLE_FIRST = 0.015
SETTLE_POLL = 0.01
SETTLE_SECONDS = 2.0
SETTLE_BYTES = 64 << 20


def _hours(data: pa.Table) -> list[int]:
    """The hours (start_ns // hour) an insert's rows start in; none when it has no `start_ns`."""
    if "start_ns" not in data.column_names or not data.num_rows:
        return []
    return np.unique(data.column("start_ns").to_numpy() // _HOUR_NS).tolist()  # type: ignore[no-any-return]


class ChdbTransport(Transport):
    """The same SQL in this process with chDB (`chdb-core`): for tests and single-process use."""

    def __init__(self, path: str, config: str | None = None) -> None:
        try:
            from chdb import session
        except ImportError:
            raise InvalidInput("the chdb:// store needs chDB: pip install chdb-core") from None
        self.where = f"chdb://{path}"
        self._path = path
        with _SESSIONS_LOCK:
            engine = _SESSIONS.get(path)
            if engine is None:
                try:
                    s = session.Session(f"{path}?config-file={config}" if config else path)
                except Exception as e:
                    raise ClickHouseUnavailable(f"cannot open chDB at {path}: {e}") from None
                s.query(f"SET max_query_size = {MAX_QUERY_BYTES}")
                engine = _SESSIONS[path] = _Engine(s, _NEXT_WRITES[0])
            engine.users += 1
        self._engine = engine
        self._session = engine.session
        self._lock = threading.Lock()  # one statement at a time through the embedded session
        self._closed = False
        # As HttpTransport: pyarrow's first array from Python loads its pandas shim (~0.2 s), at a server's start
        # rather than in its first query (answers come as Arrow from chDB's C++ side, which does not load it).
        pa.array([0], pa.uint64()).to_numpy()

    def _session_query(self, sql: str, fmt: str) -> Any:
        """One statement on the session (caller holds the lock). chDB 26.9 answers the statement after a failed one
        in the failed one's output format (an Arrow answer to a TSV query, or an empty one): a throwaway
        statement after each failure takes that answer, so the next real one gets its own."""
        try:
            return self._session.query(sql, fmt)
        except Exception:
            with contextlib.suppress(Exception):
                self._session.query("SELECT 1", "CSV")
            raise

    def _run(self, sql: str, fmt: str = "CSV", ids: pa.Table | None = None) -> Any:
        podflame_ids = ids  # noqa: F841  (chDB's Python() table function reads this frame's local by name)
        if self._closed:
            raise ClickHouseUnavailable(f"{self.where} is closed")
        with self._lock:
            try:
                return self._session_query(sql, fmt)
            except Exception as e:
                raise ClickHouseError(f"chDB: {e}") from None

    def command(self, sql: str) -> None:
        try:
            self._run(sql)
        finally:  # counted after it ran (or failed halfway): an answer read before it is kept under the old count
            self._engine.wrote()

    def writes(self) -> int | None:
        return self._engine.writes

    def table_writes(self, table: str) -> int | None:
        return self._engine.table_writes(table)

    def hour_writes(self, table: str, t0: int, t1: int) -> tuple[int, ...] | None:
        return self._engine.hour_writes(table, t0, t1)

    def insert_seq(self, table: str) -> int | None:
        """(None while a logged insert runs on any transport of the engine: a read then may see rows not counted.)"""
        with self._engine._lock:
            self._engine.logged.add(table)
            return None if self._engine.inflight else self._engine.inserts.get(table, 0)

    def inserts_since(self, table: str, seq: int) -> list[pa.Table] | None:
        return self._engine.since(table, seq)

    def settle(self) -> None:
        """chDB merges in this process: a merge running while a request is answered is counted in that request's CPU
        (a running server's pod flame graph 0.94-1.85x SQLite's with a put before each, against 0.77-0.94 without:
        docs/benchmarks.md "Stop 23 ch23"). So a put waits for the merges of small parts (the ones its inserts
        start, and their cascade) before it returns: first the time the engine takes to pick them, then while one
        runs. A merge of bigger parts (rare: the day's parts grown past `SETTLE_BYTES`) is not waited for."""
        if self._closed:
            return
        time.sleep(SETTLE_FIRST)
        until = time.monotonic() + SETTLE_SECONDS
        sql = f"SELECT count() FROM system.merges WHERE total_size_bytes_compressed <= {SETTLE_BYTES}"
        while time.monotonic() < until:
            try:
                if not int(self._run(sql).bytes().strip() or 0):
                    return
            except (ClickHouseError, ClickHouseUnavailable):
                return  # (closed meanwhile, or the engine refused: the put is done, merges are not its result)
            time.sleep(SETTLE_POLL)

    def _rows(self, table: str) -> int:
        """The rows of `table`'s active parts (caller holds the lock)."""
        db, _, name = table.rpartition(".")
        got = self._session_query(f"SELECT toInt64(sum(rows)) FROM system.parts WHERE database = {quote(db)} AND "
                                  f"table = {quote(name)} AND active", "CSV").bytes().strip()
        return int(got or 0)

    def _query(self, sql: str, settings: Mapping[str, str | int | float], ids: Sequence[int] | None) -> pa.Table:
        if settings:
            sql += " SETTINGS " + ", ".join(f"{k} = {quote(v) if isinstance(v, str) else v}"
                                            for k, v in settings.items())
        data = None
        if ids is not None and len(ids) <= _LITERAL_IDS and IDS_SET in sql:
            # a pod's few hundred: parsing them costs less than Python()
            sql = sql.replace(IDS_SET, f"({','.join(str(int(i)) for i in ids)})" if ids else "(SELECT 0 WHERE 0)")
        elif ids is not None:
            data = pa.table({"id": pa.array(ids, pa.uint64())})
            sql = sql.replace(IDS, "Python(podflame_ids)")
        table: pa.Table = self._run(sql, "ArrowTable", data)
        return table

    def insert(self, table: str, data: pa.Table, settings: Mapping[str, str | int]) -> None:
        cols = ", ".join(data.column_names)
        sets = ", ".join(f"{k} = {quote(v) if isinstance(v, str) else int(v)}" for k, v in settings.items())
        # chDB's Python() table function reads `data` from this frame: no serialization step. A few rows (a put's
        # new dictionary rows) go as VALUES instead: Python() costs ~2.5 ms a statement, parsing them far less.
        sql = f"INSERT INTO {table} ({cols}) {'SETTINGS ' + sets if sets else ''} " + (
            f"VALUES {_values(data)}" if data.num_rows <= _VALUES_ROWS else f"SELECT {cols} FROM Python(data)")
        # A table whose inserts a server folds into its kept answers (`insert_seq` asked: logged) has each insert held
        # with whether its rows were stored whole, which the table's row count says (one statement on `system.parts`,
        # ~3 ms, as the insert costs 80-200 ms): a block whose token repeats one the engine remembers is dropped
        # silently, and nothing else adds rows (every writer is here; a merge keeps them; TTL or a mutation takes
        # some and the count says so). Other tables' inserts run without it, and without the engine's insert lock.
        engine = self._engine
        logged = table in engine.logged
        with engine.insert_lock if logged else contextlib.nullcontext(), self._lock:
            if self._closed:
                raise ClickHouseUnavailable(f"{self.where} is closed")
            stored = False
            if logged:
                with engine._lock:
                    engine.inflight += 1
            try:
                before = engine.rows_after.get(table) if logged else None
                if logged and before is None:
                    before = self._rows(table)
                self._session_query(sql, "CSV")
                if before is not None:
                    after = engine.rows_after[table] = self._rows(table)
                    stored = after - before == data.num_rows
            except Exception as e:
                engine.rows_after.pop(table, None)
                raise ClickHouseError(f"chDB: {e}") from None
            finally:
                engine.wrote(table, _hours(data))
                if logged or table in engine.logged:  # (made logged meanwhile: this one is not held)
                    engine.hold(table, data if stored else None, stored)
                if logged:
                    with engine._lock:
                        engine.inflight -= 1

    def execute(self, sql: str, fmt: str, tables: Sequence[pa.Table] = ()) -> bytes:
        """Any statement, its answer in ClickHouse output format `fmt` as bytes; `tables` are read where the SQL
        names Python(podflame_t0), Python(podflame_t1). For a front that speaks ClickHouse's wire formats (the
        tests' HTTP stand-in); counted as a write, since it may be one."""
        if len(tables) > 2:
            raise InvalidInput("at most two tables travel with a statement")
        # chDB's Python() reads these locals by name
        podflame_t0 = tables[0] if tables else None  # noqa: F841
        podflame_t1 = tables[1] if len(tables) > 1 else None  # noqa: F841
        if self._closed:
            raise ClickHouseUnavailable(f"{self.where} is closed")
        try:
            with self._lock:
                try:
                    out: bytes = self._session_query(sql, fmt).bytes()
                except Exception as e:
                    raise ClickHouseError(f"chDB: {e}") from None
            return out
        finally:
            self._engine.wrote()

    def close(self) -> None:
        with _SESSIONS_LOCK:
            if self._closed:
                return
            self._closed = True
            engine = self._engine
            engine.users -= 1
            if engine.users <= 0:
                del _SESSIONS[self._path]
                _NEXT_WRITES[0] = max(_NEXT_WRITES[0], engine.writes + 1)
                engine.session.close()
