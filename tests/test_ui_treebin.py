"""The flame graph's binary form (`format=binary`, web/query/treebin.py), which the page reads in place:
the same content as the JSON answer, through the real server, kept and gzipped like it, parents right."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from podflame.model import Frame, Line, Profile
from tests.builders import served
from web.query import treebin
from web.query.flamegraph import diff_tree_from_stacks
from web.query.stacks import NameStacks


def _profile() -> Profile:
    p = Profile(labels={"cgroup": "/x.slice"}, start_ns=0, duration_ns=10**10, period_ns=10**7)
    main = Frame(0x1000, lines=(Line("main", "main.c", 10),))
    for i in range(40):
        mid = Frame(0x2000 + i, lines=(Line(f"handler_{i % 7}", "h.c", 20 + i),))
        leaf = Frame(0x9000 + i, lines=(Line(f"leaf_\u00e9\u4e2d_{i}", None, None),))  # non-ASCII names
        p.add((main, mid, leaf), i + 1)
        p.add((main, mid), 3)
    p.add((main, Frame(0x8000, lines=(Line("inline_inner", "x.c", 5), Line("inline_outer", "x.c", 9)))), 11)
    return p


@pytest.fixture
def client(tmp_path: Path):
    with served(tmp_path / "data", [_profile()], time="1000") as client:
        yield client


@pytest.mark.parametrize("max_nodes", [None, 30])
def test_binary_answer_is_the_json_answer(client, max_nodes: int | None) -> None:
    params = {"from": "900", "to": "1100", **({"max_nodes": str(max_nodes)} if max_nodes else {})}
    as_json = client.get("/api/v1/flamegraph", query_string=params)
    as_bin = client.get("/api/v1/flamegraph", query_string={**params, "format": "binary"})
    assert as_json.status_code == as_bin.status_code == 200
    assert as_bin.mimetype == "application/vnd.podflame.tree"
    decoded = treebin.decode(as_bin.data)
    assert decoded == as_json.json
    assert decoded["total"] == sum(i + 1 + 3 for i in range(40)) + 11
    assert any("\u4e2d" in n for n in decoded["names"])
    assert "inline_outer" in decoded["names"] or max_nodes  # a small budget may fold it
    if max_nodes:
        assert decoded["folded_nodes"] > 0 and "[other]" in decoded["names"]
    # Asked again: the kept answer, gzipped by joining its kept stream, same bytes once unzipped.
    again = client.get("/api/v1/flamegraph", query_string={**params, "format": "binary"},
                       headers={"Accept-Encoding": "gzip"})
    assert again.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(again.data) == as_bin.data


def test_binary_layout_parents_and_tail(client) -> None:
    data = client.get("/api/v1/flamegraph", query_string={"from": "900", "to": "1100", "format": "binary"}).data
    assert data[:4] == b"PFT1"
    (tlen,) = struct.unpack_from("<I", data, len(data) - 4)
    assert data[len(data) - 4 - tlen:len(data) - 4] == b'{"from":900.0,"to":1100.0}'
    fg = treebin.decode(data)
    # Each node's parent, as the binary form sends it, is the node one level up whose span holds it.
    levels = [np.asarray(lv, dtype=np.int64).reshape(-1, 4) for lv in fg["levels"]]
    for d in range(1, len(levels)):
        up, lv = levels[d - 1], levels[d]
        parents = treebin._parents(up[:, 0].astype(float), up[:, 1].astype(float), lv[:, 0].astype(float))
        for (start, total, _, _), p in zip(lv, parents, strict=True):
            assert p >= 0 and up[p, 0] <= start and start + total <= up[p, 0] + up[p, 1]


def test_diff_payload_round_trips() -> None:
    names = ["main", "serve", "parse", "new_fn"]
    paths = [[0, 1, 2], [0, 1], [0, 3]]
    values = np.array([[30, 10], [5, 5], [0, 40]], dtype=np.int64)  # baseline, comparison; new_fn is new
    payload = diff_tree_from_stacks(NameStacks.from_lists(names, paths, values, columns=2))
    data = treebin.encode(payload) + b"{}" + struct.pack("<I", 2)
    empty = [""] * len(payload["names"])
    assert treebin.decode(data) == {**payload, "kinds": empty, "modules": empty, "locations": empty}


def test_unknown_format_is_a_clear_400(client) -> None:
    resp = client.get("/api/v1/flamegraph", query_string={"format": "xml"})
    assert resp.status_code == 400 and "format must be json or binary" in resp.json["error"]


def _header(data: bytes) -> dict:
    import json

    (hlen,) = struct.unpack_from("<I", data, 4)
    return json.loads(data[8:8 + hlen])


@pytest.mark.parametrize(("values", "value_type"), [
    ([[30, 10], [5, 5], [0, 40]], "u4"),                     # counts: 4 bytes per value
    ([[3 * 2**31, 10], [5, 5], [0, 40]], "f8"),              # a heap's bytes past 2**32
])
def test_values_travel_in_the_narrowest_type_that_holds_them(values: list, value_type: str) -> None:
    names = ["main", "serve", "parse", "new_fn"]
    payload = diff_tree_from_stacks(NameStacks.from_lists(names, [[0, 1, 2], [0, 1], [0, 3]],
                                                          np.array(values, dtype=np.int64), columns=2))
    body = treebin.encode(payload)
    header = _header(body)
    assert header["value_type"] == value_type and header["index_type"] == "u1"
    empty = [""] * len(payload["names"])
    assert treebin.decode(body + b"{}" + struct.pack("<I", 2)) == {**payload, "kinds": empty, "modules": empty,
                                                                   "locations": empty}


def _flat_payload(n: int, value: float) -> dict:
    names = [f"f{i}" for i in range(n)]
    return {"names": ["total", *names], "total": n * value, "kinds": [""] * (n + 1), "locations": [""] * (n + 1),
            "modules": ["", *names],
            "levels": [[0, n * value, 0, 0], [x for i in range(n) for x in (i * value, value, value, i + 1)]]}


def test_a_large_table_gets_wider_indices_and_fractions_stay_exact() -> None:
    payload = _flat_payload(300, 1)
    body = treebin.encode(payload)
    assert _header(body)["index_type"] == "u2" and _header(body)["value_type"] == "u4"
    decoded = treebin.decode(body + b"{}" + struct.pack("<I", 2))
    assert decoded["modules"] == payload["modules"] and decoded["levels"] == payload["levels"]
    halves = treebin.encode(_flat_payload(3, 0.5))
    assert _header(halves)["value_type"] == "f8"
    raw = np.frombuffer(halves, "<f8", 3, len(halves) - 2 * 12 - 3 * 8)  # the last level's `self` (then name, parent)
    assert raw.tolist() == [0.5, 0.5, 0.5]
