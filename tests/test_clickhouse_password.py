"""A ClickHouse whose users have passwords: the schema's dictionaries log in to their source (the server itself)
with the store's own user and password, so a pod's flame graph stays two statements there, instead of the
dictionaries being refused (their source runs as `default` unless its SOURCE names a user) and the store falling
back to the tables.

The engine checks that login itself: chDB started with a users config (a user `podflame` with a password holding
quote characters), behind the HTTP stand-in in its own process (chDB takes one config per process). The stand-in
does not check the HTTP login; the dictionaries' login is the engine's, which is what is tested."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote as urlquote

import pytest

from tests.builders import put
from tests.test_clickhouse_replicas import T0, H, S, counted, profiles, total, tree
from web.server.app import create_app
from web.store import clickhouse
from web.store.clickhouse import ClickHouseStore
from web.store.clickhouse_schema import DICTIONARIES, dictionaries
from web.store.dsn import open_store

PASSWORD = "pf'p\\w&\"x"  # a quote, a backslash, XML's specials: each must reach the engine as typed
PARAMS = {"from": str(T0 // S), "to": str((T0 + H) // S), "query": '{pod="p0"}'}
USERS = """<clickhouse>
  <profiles><default/></profiles>
  <quotas><default/></quotas>
  <users>
    <default><password></password><networks><ip>::/0</ip></networks><profile>default</profile>
      <quota>default</quota><access_management>1</access_management></default>
    <podflame><password>{password}</password><networks><ip>::/0</ip></networks><profile>default</profile>
      <quota>default</quota></podflame>
  </users>
</clickhouse>
"""


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The stand-in on a chDB whose users config has `podflame` with PASSWORD (its own process: one config each)."""
    d = tmp_path_factory.mktemp("chpw")
    escaped = PASSWORD.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    (d / "users.xml").write_text(USERS.format(password=escaped))
    (d / "config.xml").write_text(f"<clickhouse><users_config>{d / 'users.xml'}</users_config></clickhouse>")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "tests.clickhouse_standin", str(d / "data"),
                             "--config", str(d / "config.xml")], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline() if proc.stdout else "0")
    finally:
        proc.terminate()
        proc.wait(60)


def dsn(port: int, db: str, password: str = PASSWORD) -> str:
    return f"clickhouse://podflame:{urlquote(password, safe='')}@127.0.0.1:{port}/{db}"


def sources(store: ClickHouseStore) -> list[str]:
    """The dictionaries' create queries as ClickHouse shows them (the password hidden)."""
    rows = store.transport.query(f"SELECT create_table_query AS q FROM system.tables WHERE database = "
                                 f"'{store.layout.database}' AND name LIKE '%_dict' ORDER BY name").to_pylist()
    return [r["q"] for r in rows]


def pod_answer(port: int, db: str, tmp_path: Path) -> tuple[dict, list[str], ClickHouseStore]:
    """A fresh server's pod flame graph, with the statements it sent."""
    store = open_store(dsn(port, db))
    assert isinstance(store, ClickHouseStore)
    sent = counted(store)
    got = tree(create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client(),
               PARAMS)
    return got, sent, store


@pytest.fixture
def names_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that holds no stack's names at start (a store past `_HELD_STACKS` whose latest hour lacks them): its
    first pod names them through the dictionaries, the path these tests are about."""
    monkeypatch.setattr(clickhouse, "_HELD_STACKS", 0)


@pytest.mark.usefixtures("names_not_held")
def test_the_dictionaries_log_in_as_the_store_and_a_pod_is_two_statements(standin: int, tmp_path: Path) -> None:
    db = f"pw_{uuid.uuid4().hex[:10]}"
    writer = open_store(dsn(standin, db))
    ps = profiles(T0, 30, "p0", 1) + profiles(T0, 30, "p1", 2)
    put(writer, ps)
    assert isinstance(writer, ClickHouseStore)
    made = sources(writer)
    assert len(made) == len(DICTIONARIES)
    assert all("USER 'podflame' PASSWORD '[HIDDEN]'" in q for q in made), made
    writer.close()
    got, sent, store = pod_answer(standin, db, tmp_path)
    try:
        assert got["total"] == total([p for p in ps if p.labels["pod"] == "p0"])
        assert len(sent) == 2 and "stacks_dict" in sent[1], sent  # (the selection's labels: the catalogue)
        assert store._dicts
    finally:
        store.close()


@pytest.mark.usefixtures("names_not_held")
def test_dictionaries_made_with_another_login_are_made_again_with_the_stores(standin: int, tmp_path: Path) -> None:
    """A schema-3 podflame made them with no login (the source ran as `default`), or a password was changed
    since: the next server start makes them again with its own login, and reads stay two statements."""
    for old in (None, ("podflame", "an old password")):
        db = f"pw_{uuid.uuid4().hex[:10]}"
        writer = open_store(dsn(standin, db))
        assert isinstance(writer, ClickHouseStore)
        ps = profiles(T0, 20, "p0", 3)
        put(writer, ps)
        for stmt in dictionaries(writer.layout, old, replace=True):
            writer.transport.command(stmt)
        if old:
            # the old login is refused by the engine
            with pytest.raises(Exception, match="516"):
                writer.transport.query(f"SELECT dictGet('{db}.functions_dict', 'name', toUInt64(rand64())) AS x")
        else:
            assert not any("USER" in q for q in sources(writer))
        writer.close()
        got, sent, store = pod_answer(standin, db, tmp_path)
        try:
            assert got["total"] == total(ps)
            assert len(sent) == 2 and "stacks_dict" in sent[1], (old, sent)
            assert all("USER 'podflame'" in q for q in sources(store))
        finally:
            store.close()


def test_a_login_the_engine_refuses_leaves_the_tables_and_the_same_answer(standin: int, tmp_path: Path) -> None:
    """A store whose password the engine refuses for the dictionaries (here the stand-in lets its HTTP login
    through, so only the dictionaries' own login fails): made again once with it, refused again, then the pod's
    answer comes from the tables, exact."""
    db = f"pw_{uuid.uuid4().hex[:10]}"
    writer = open_store(dsn(standin, db, password="wrong"))
    ps = profiles(T0, 20, "p0", 4)
    put(writer, ps)
    writer.close()
    store = open_store(dsn(standin, db, password="wrong"))
    assert isinstance(store, ClickHouseStore)
    sent = counted(store)
    try:
        got = tree(create_app({"DATA_DIR": str(tmp_path), "STORE": store, "MAINTENANCE_SECONDS": 0}).test_client(),
                   PARAMS)
        assert got["total"] == total(ps)
        assert not store._dicts
        assert not any("dictGet" in sql for sql in sent), sent
    finally:
        store.close()
