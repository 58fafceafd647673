"""The chDB transport: what the engine answers after a statement it refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from web.store.clickhouse_transport import ChdbTransport, ClickHouseError


def test_a_statement_after_a_failed_one_gets_its_own_answer_in_its_own_format(chdb_dir: Path) -> None:
    """chDB 26.9 answers the statement after a failed one in the failed one's format (an Arrow answer to a TSV
    query, an empty Arrow one): a dictionary refused by its login, then the server-version query of the HTTP
    stand-in's next client, read Arrow bytes as a version."""
    t = ChdbTransport(str(chdb_dir))
    try:
        for k in range(2):
            with pytest.raises(ClickHouseError, match="395"):
                t.query("SELECT throwIf(1) AS x")  # Arrow
            assert t.execute(f"SELECT {k + 7}", "TabSeparated") == f"{k + 7}\n".encode()
            with pytest.raises(ClickHouseError, match="395"):
                t.execute("SELECT throwIf(1)", "TabSeparated")
            assert t.query(f"SELECT {k + 8} AS x").column("x").to_pylist() == [k + 8]
            with pytest.raises(ClickHouseError, match="395"):
                t.query("SELECT throwIf(1) AS x")
            assert t.query(f"SELECT {k + 9} AS x").column("x").to_pylist() == [k + 9]
    finally:
        t.close()


def test_a_store_started_while_clickhouse_was_down_migrates_warms_and_answers_on_the_first_call(
        chdb_dir: Path, tmp_path: Path) -> None:
    """The start's work (DDL, the warm-up reads, the series catalogue, the names held) runs on the first call that
    reaches ClickHouse when it was down at start: once, and without waiting on itself (its reads take the store's
    lock, which the first call's migration must not hold)."""
    import threading
    import uuid

    from tests.builders import put
    from tests.test_clickhouse_replicas import T0, profiles, total
    from web.store.clickhouse import ClickHouseStore
    from web.store.clickhouse_schema import Layout
    from web.store.clickhouse_transport import ClickHouseUnavailable

    class Flaky(ChdbTransport):
        down = True

        def command(self, sql: str) -> None:
            if self.down:
                raise ClickHouseUnavailable("ClickHouse at test is unreachable: down")
            super().command(sql)

    layout = Layout(f"t_{uuid.uuid4().hex}")
    writer = ClickHouseStore(ChdbTransport(str(chdb_dir)), layout)
    ps = profiles(T0, 20, "p0", 1)
    put(writer, ps)
    flaky = Flaky(str(chdb_dir))
    store = ClickHouseStore(flaky, layout)  # down: starts anyway
    assert not store._ready and not store._stack_frames
    flaky.down = False
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(store.types(T0, T0 + 3600 * 10**9)), daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # (main at stop 21: the migration held the lock the catalogue's read waits for)
        pytest.fail("the first call waited on itself")
    try:
        assert got == [[("samples", "count")]]
        assert store._ready and store._stack_frames and store._cat_on  # warmed, names and series held
        from web.store.selector import parse_selector

        sel = store.select(parse_selector('{pod="p0"}'), T0, T0 + 3600 * 10**9)
        assert sum(p.total for p in sel) == total(ps)
    finally:
        store.close()
        writer.close()
