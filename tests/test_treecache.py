"""The kept flame-graph answers (web/query/treecache.py) and their gzip (web/server/gzipjoin.py): a hit is the
same tree with this request's range, new data misses, and the joined gzip decodes to the exact JSON."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import ingest
from web.query.flamegraph import decode_tree
from web.query.merge import module_of
from web.query.treecache import Answer, TreeCache
from web.server.app import create_app
from web.server.gzipjoin import gzip_join
from web.store.base import Store

S = 1_000_000_000
T0 = 1_795_000_000 * S
EXE = Mapping(0x555500000000, 0x555500010000, 0x1000, "/usr/bin/shop", "abcdef0123")
LIBC = Mapping(0x7F0000000000, 0x7F0000100000, 0, "/usr/lib/x86_64-linux-gnu/libc.so.6", None)
MAIN = Frame(0x555500001100, EXE, FrameKind.NATIVE, (Line("main", "shop.c", 3),))
WRITE = Frame(0x7F0000001000, LIBC, FrameKind.NATIVE, (Line("write"),))
KWRITE = Frame(0xFFFFFFFF81000000, None, FrameKind.KERNEL, (Line("ksys_write"),))
PY = Frame(0x10, None, FrameKind.PYTHON, (Line("render", "/srv/venv/lib/site-packages/jinja2/env.py", 7),))


def prof(start: int, *stacks: tuple[tuple[Frame, ...], int]) -> Profile:
    p = Profile(labels={"pod": "shop-1", "namespace": "prod"}, start_ns=start, duration_ns=10 * S, period_ns=10**7)
    for stack, value in stacks:
        p.add(stack, value)
    return p


@pytest.fixture
def app(tmp_path: Path, make_store: Callable[[Path], Store]) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "TESTING": True, "STORE": make_store(tmp_path / "data")})
    yield app
    app.extensions["podflame.store"].close()


def fg(app: Flask, frm: int, to: int, **headers: str) -> tuple[dict[str, Any], bytes, Any]:
    r = app.test_client().get("/api/v1/flamegraph", headers=headers,
                              query_string={"query": '{pod="shop-1"}', "from": str(frm), "to": str(to)})
    assert r.status_code == 200, r.data
    raw = r.get_data()
    body = gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" else raw
    return json.loads(body), body, r


def test_gzip_join_decodes_to_head_and_tail() -> None:
    rng = random.Random(7)
    head = json.dumps({"names": [f"fn_{rng.randrange(10**6)}" for _ in range(20000)]}).encode()[:-1]
    answer = Answer(head)
    for tail in ({"from": 1.5, "to": 2.5}, {}, {"x": "é" * 3000}):
        joined = gzip_join(answer.deflated(), answer.tail_bytes(tail))
        assert gzip.decompress(joined) == answer.body(tail)
        assert json.loads(answer.body(tail))["names"][0].startswith("fn_")
    assert len(gzip_join(answer.deflated(), b"}")) < len(head) // 2  # the kept part is compressed once, for real


def test_same_profiles_hit_with_this_requests_range_and_new_data_misses(app: Flask) -> None:
    client = app.test_client()
    ingest(client, [prof(T0, ((MAIN, WRITE), 5), ((MAIN,), 2))])
    first, _, _ = fg(app, T0 // S - 60, T0 // S + 600)
    cache: TreeCache = app.extensions["podflame.tree_cache"]
    store = app.extensions["podflame.store"]
    again, _, _ = fg(app, T0 // S - 120, T0 // S + 300)  # other range text, the same stored profiles
    assert (again["from"], again["to"]) == (T0 // S - 120, T0 // S + 300)
    assert decode_tree(again) == decode_tree(first) and again["total"] == 7
    if store.immutable_refs:
        assert cache.hits == 1 and len(cache) == 1
    else:
        assert cache.hits == 0 and len(cache) == 0
    ingest(client, [prof(T0 + 100 * S, ((MAIN, WRITE), 4))])  # new data in range: different refs, a new tree
    later, _, _ = fg(app, T0 // S - 120, T0 // S + 300)
    assert later["total"] == 11 and decode_tree(later)["children"]["main"]["children"]["write"]["total"] == 9
    zipped, _, r = fg(app, T0 // S - 120, T0 // S + 300, **{"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in r.headers["Vary"]
    assert zipped == later


def test_cache_is_bounded_by_bytes() -> None:
    cache = TreeCache(max_bytes=10_000)
    for k in range(10):
        cache.put(k, Answer(b"x" * 1500))
    assert len(cache) < 10 and cache.get(9) is not None and cache.get(0) is None
    cache.put("huge", Answer(b"x" * 6000))  # over half the budget: never kept
    assert cache.get("huge") is None


def test_kinds_and_modules_from_the_stores_frame_rows(app: Flask) -> None:
    """SQLite names kinds and modules from its frame rows (`frame_origins`), without building Frames: the same
    as `module_of` on the Frames themselves, for native, kernel and Python frames."""
    ingest(app.test_client(), [prof(T0, ((MAIN, WRITE, KWRITE), 5), ((MAIN, PY), 3))])
    payload, _, _ = fg(app, T0 // S - 60, T0 // S + 600)
    got = {n: (k, m) for n, k, m in zip(payload["names"], payload["kinds"], payload["modules"], strict=True)}
    assert got["main"] == ("native", module_of(MAIN)) == ("native", "shop")
    assert got["write"] == ("native", "libc.so.6")
    assert got["ksys_write"] == ("kernel", module_of(KWRITE)) == ("kernel", "[kernel]")
    assert got["render"] == ("python", module_of(PY)) == ("python", "jinja2")
