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
