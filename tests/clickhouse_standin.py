"""A ClickHouse HTTP interface in front of chDB, for tests of the network path with the real client.

No ClickHouse server that clickhouse-connect accepts runs on these machines (Debian's is 18.16), so this serves
the part of ClickHouse's HTTP interface the client uses (docs: "HTTP Interface") over a real socket: the query
in the `query` parameter and/or the POST body, settings as the other parameters, `FORMAT` answered by the
engine itself, INSERT data in the body (Arrow, as `insert_arrow` sends it), external tables as multipart form
files with `<name>_structure`/`<name>_format`, and errors as HTTP 500 with ClickHouse's `Code: N.` text and
the `X-ClickHouse-Exception-Code` header. Every statement runs on the real engine (chDB: the same SQL engine a
server runs), so what is left untested is the server process itself, not the client, the wire or the SQL.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import re
import signal
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa

from web.store.clickhouse_transport import ChdbTransport

# Parameters of the HTTP interface that are not settings.
_NOT_SETTINGS = {"query", "database", "default_format", "session_id", "session_timeout", "session_check", "query_id",
                 "compress", "decompress", "user", "password", "quota_key", "buffer_size", "wait_end_of_query"}
_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_TYPES = {"UInt64": pa.uint64(), "Int64": pa.int64(), "String": pa.string(), "UInt32": pa.uint32()}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as ClickHouse sets it: without it the answer's body waits for the ACK of its headers, which
    # the client delays (40 ms a statement on Linux).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads `requests`
        return

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path == "/ping":
            self._answer(200, b"Ok.\n", {})
            return
        self._run(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._run(self.rfile.read(length))

    def _run(self, body: bytes) -> None:
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query, keep_blank_values=True))
        tables: dict[str, pa.Table] = {}
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + body)
            for part in form.iter_parts():
                name = str(part.get_param("name", header="content-disposition"))
                value = part.get_payload(decode=True)
                assert isinstance(value, bytes)
                if name == "query":
                    params["query"] = value.decode()
                    continue
                tables[name] = _external(value, params.get(f"{name}_structure", ""),
                                         params.get(f"{name}_format", "TabSeparated"))
            body = b""
        sql = params.get("query", "")
        data: pa.Table | None = None
        if sql.lstrip().upper().startswith("INSERT") and body:
            data = pa.ipc.open_stream(body).read_all() if body[:4] == b"\xff\xff\xff\xff" \
                else pa.ipc.open_file(body).read_all()
        elif body:
            sql = f"{sql}\n{body.decode()}" if sql else body.decode()
        settings = {k: v for k, v in params.items() if k not in _NOT_SETTINGS
                    and not k.endswith(("_structure", "_format", "_types")) and not k.startswith("param_")}
        self.server.requests.append((sql, settings, sorted(tables)))
        try:
            out, fmt = self.server.execute(sql, settings, params.get("default_format", "TabSeparated"), tables, data)
        except Exception as e:
            text = str(e).removeprefix("chDB: ")
            code = re.search(r"Code: (\d+)\.", text)
            self._answer(500, text.encode(), {"X-ClickHouse-Exception-Code": code.group(1) if code else "1000"})
            return
        self._answer(200, out, {"X-ClickHouse-Format": fmt, "X-ClickHouse-Timezone": "UTC"})

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in {"Content-Type": "application/octet-stream", "X-ClickHouse-Server-Display-Name": "chdb-standin",
                     "X-ClickHouse-Summary": '{"read_rows":"0","written_rows":"0"}', **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _external(raw: bytes, structure: str, fmt: str) -> pa.Table:
    """An external table's rows (TabSeparated or CSV of integers and strings) as Arrow."""
    names, types = [], []
    for col in structure.split(","):
        name, typ = col.strip().split(" ", 1)
        names.append(name)
        types.append(_TYPES[typ.strip()])
    sep = "\t" if fmt.startswith("T") else ","
    rows = [line.split(sep) for line in raw.decode().splitlines() if line]
    return pa.table({n: pa.array([r[i] if pa.types.is_string(t) else int(r[i]) for r in rows], t)
                     for i, (n, t) in enumerate(zip(names, types, strict=True))})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, transport: ChdbTransport, record: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.transport = transport
        self.requests: list[tuple[str, dict[str, str], list[str]]] = [] if record else _Forget()

    def execute(self, sql: str, settings: dict[str, str], default: str, tables: dict[str, pa.Table],
                data: pa.Table | None) -> tuple[bytes, str]:
        match = _FORMAT.search(sql)
        fmt = match.group(1) if match else default
        if match:
            sql = sql[:match.start()]
        for k, name in enumerate(tables):  # an external table is read where the SQL names it
            sql = re.sub(rf"\b{re.escape(name)}\b", f"Python(podflame_t{k})", sql)
        sets = ", ".join(f"{k} = {v if re.fullmatch(r'-?[0-9.]+', v) else repr(v)}" for k, v in settings.items())
        if data is not None:
            head = re.match(r"\s*INSERT\s+INTO\s+([\w.`\"]+)\s*(\([^)]*\))?", sql, re.IGNORECASE)
            assert head is not None, sql
            cols = ", ".join(data.column_names)
            sql = f"INSERT INTO {head.group(1)} ({cols}) {'SETTINGS ' + sets if sets else ''} SELECT {cols} FROM " \
                  "Python(podflame_t0)"
            return self.transport.execute(sql, "TabSeparated", [data]), fmt
        if sets and re.match(r"\s*(SELECT|WITH|\()", sql, re.IGNORECASE):  # a query's; commands carry their own
            sql = f"{sql} SETTINGS {sets}"
        return self.transport.execute(sql, fmt, list(tables.values())), fmt


class _Forget(list):  # type: ignore[type-arg]
    """The request log of a long-lived stand-in: keeps nothing (a bench sends thousands)."""

    def append(self, item: object) -> None:
        return


@contextmanager
def clickhouse_http(chdb_path: str, record: bool = True, config: str | None = None
                    ) -> Iterator[tuple[int, list[tuple[str, dict[str, str], list[str]]]]]:
    """A stand-in ClickHouse HTTP server on chDB at `chdb_path`: (port, the requests it served; none kept
    unless `record`). `config`: a ClickHouse config for the engine (e.g. users with passwords, which the engine
    checks where it logs in itself: a dictionary's source). The stand-in does not check the HTTP login."""
    transport = ChdbTransport(chdb_path, config=config)
    server = _Server(transport, record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.requests
    finally:
        server.shutdown()
        server.server_close()
        transport.close()


def main(argv: list[str] | None = None) -> None:
    """A long-lived stand-in in its own process, as a deployed ClickHouse server runs apart from podflame's
    servers (bench/store_backends.py): prints its port on a line, serves until SIGTERM or SIGINT."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path", help="chDB data directory")
    ap.add_argument("--config", help="a ClickHouse config file for the engine (users, passwords)")
    args = ap.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # taken by sigwait below
    with clickhouse_http(args.path, record=False, config=args.config) as (port, _):
        # chDB's Python() table function (how external tables are read here) costs ~250 ms the first time in a
        # process: paid at start, as a server's own start-up, not by the first query that sends an id list.
        warm = ChdbTransport(args.path)
        try:
            warm.execute("SELECT count() FROM Python(podflame_t0)", "TabSeparated",
                         [pa.table({"id": pa.array([1], pa.uint64())})])
        finally:
            warm.close()  # the engine closes with its last transport: one left open crashes chDB at exit
        print(port, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    sys.exit(0)


if __name__ == "__main__":
    main()
