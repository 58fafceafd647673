"""The network path (clickhouse-connect over HTTP) end to end: the real client, a real socket, ClickHouse's HTTP
interface as tests/clickhouse_standin.py serves it, and the real engine (chDB) behind it.

The contract suite runs every store behaviour on chDB in-process; what this adds is everything between the
store and a ClickHouse server: the client's connect, DDL as commands, Arrow inserts with the dedup token as
settings, queries answered in Arrow, reads named through the dictionaries, the stack and frame id lists as an
external table (multipart), the deadline as `max_execution_time`, ClickHouse's errors, and the generation read
from system.parts (on a server other processes write, so the count of writes is not known here)."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.builders import put
from tests.clickhouse_standin import clickhouse_http
from tests.test_clickhouse_replicas import T0, H, S, profiles, total, tree
from web.server.app import create_app
from web.store.clickhouse import ClickHouseStore
from web.store.clickhouse_transport import ClickHouseError, HttpTransport
from web.store.dsn import open_store

pytest.importorskip("clickhouse_connect")


def test_a_store_over_http_writes_reads_and_keeps_answers_exact(tmp_path: Path, chdb_dir: Path) -> None:
    db = f"http_{uuid.uuid4().hex[:12]}"
    with clickhouse_http(str(chdb_dir)) as (port, requests):
        a = open_store(f"clickhouse://127.0.0.1:{port}/{db}")
        b = open_store(f"clickhouse://127.0.0.1:{port}/{db}")
        assert isinstance(a, ClickHouseStore) and isinstance(a.transport, HttpTransport)
        try:
            first = profiles(T0, 30, "p0", 1)
            put(a, first)
            put(a, first)  # an agent's retry: the insert's token (an HTTP setting) makes it count once
            client = create_app({"DATA_DIR": str(tmp_path), "STORE": a, "MAINTENANCE_SECONDS": 0}).test_client()
            params = {"from": str(T0 // S), "to": str((T0 + H) // S)}
            answer = tree(client, params)
            assert answer["total"] == total(first)
            names = Counter(n for n in answer["names"] if n.startswith("fn"))
            assert names and all(v == 1 for v in names.values())
            # a fresh store names what it summed through the dictionaries, in the same statement
            assert any("stacks_dict" in sql and "functions_dict" in sql for sql, _, _ in requests)
            assert a.transport.writes() is None  # other processes may write: the engine says what changed
            g = a.generation()
            assert tree(client, params)["total"] == total(first)
            late = profiles(T0 + 30 * 60 * S, 10, "p1", 2)
            put(b, late)  # another server
            assert a.generation() != g
            n = len(requests)
            assert tree(client, params)["total"] == total(first) + total(late)
            # a store that knows stacks reads the new ones with their ids as an external table, not as SQL text
            assert any(tables == ["podflame_ids"] and "FROM podflame_ids" in sql for sql, _, tables in requests[n:])
            with pytest.raises(ClickHouseError, match="Code: 60"):  # an unknown table: ClickHouse's own error
                a.transport.query(f"SELECT * FROM {db}.nothing_here")
            r = client.get("/api/v1/flamegraph", query_string={**params, "query": "{pod=~\"(\"}"})
            assert r.status_code == 400  # a bad selector never reaches ClickHouse
        finally:
            a.close()
            b.close()


def test_a_fresh_servers_first_query_reads_no_generation_and_later_answers_stay_exact(tmp_path: Path,
                                                                                       chdb_dir: Path) -> None:
    """Before its first selection a store has kept nothing under a generation, so the first flame graph of a
    fresh server sends no statement over system.parts; from the second on the generation is read (and serves
    a repeat with that one statement), and another server's write is still seen."""
    db = f"http_{uuid.uuid4().hex[:12]}"
    with clickhouse_http(str(chdb_dir)) as (port, requests):
        writer = open_store(f"clickhouse://127.0.0.1:{port}/{db}")
        a = open_store(f"clickhouse://127.0.0.1:{port}/{db}")
        try:
            first = profiles(T0, 30, "p0", 1)
            put(writer, first)
            client = create_app({"DATA_DIR": str(tmp_path), "STORE": a, "MAINTENANCE_SECONDS": 0}).test_client()
            params = {"from": str(T0 // S), "to": str((T0 + H) // S)}
            assert a.generation() is None
            n = len(requests)
            assert tree(client, params)["total"] == total(first)
            sent = [sql for sql, _, _ in requests[n:]]
            assert sent and not any("system.parts" in sql for sql in sent)
            g = a.generation()
            assert g is not None
            late = profiles(T0 + 30 * 60 * S, 10, "p1", 2)
            put(writer, late)  # another server
            assert a.generation() != g
            assert tree(client, params)["total"] == total(first) + total(late)
            n = len(requests)
            assert tree(client, params)["total"] == total(first) + total(late)
            sent = [sql for sql, _, _ in requests[n:]]
            assert len(sent) == 1 and "system.parts" in sent[0]  # the kept answer, after one statement
        finally:
            a.close()
            writer.close()


def test_the_stand_in_runs_as_its_own_process_and_keeps_what_it_was_sent(tmp_path: Path) -> None:
    """`python -m tests.clickhouse_standin DIR` (what bench/store_backends.py queries as a deployed ClickHouse):
    prints its port, serves the store over a socket, stops on SIGTERM with exit code 0, and what it stored is
    there for the next stand-in on the same directory."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    params = {"from": str(T0 // S), "to": str((T0 + H) // S)}
    ps = profiles(T0, 20, "p0", 3)
    totals = []
    for step in ("write", "read"):
        proc = subprocess.Popen([sys.executable, "-m", "tests.clickhouse_standin", str(tmp_path / "standin")],
                                cwd=root, stdout=subprocess.PIPE, text=True)
        try:
            port = int(proc.stdout.readline() if proc.stdout else "0")
            store = open_store(f"clickhouse://127.0.0.1:{port}/kept")
            if step == "write":
                put(store, ps)
            client = create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client()
            totals.append(tree(client, params)["total"])
            store.close()
        finally:
            proc.terminate()
            code = proc.wait(60)
        assert code == 0
    assert totals == [total(ps), total(ps)]
