"""The HTTP API through Flask's test client: ingest -> query -> flame graph, errors, exports, metrics."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import ingest
from web.query.flamegraph import decode_tree
from web.query.merge import module_of
from web.server.app import create_app
from web.store.base import Store

S = 1_000_000_000
T0 = 1_795_000_000 * S
EXE = Mapping(0x555500000000, 0x555500010000, 0x1000, "/usr/bin/shop", "abcdef0123")
PERIOD = 52_631_578  # 19 Hz


def fr(name: str, addr: int, *inlined: str) -> Frame:
    return Frame(addr, EXE, FrameKind.NATIVE, tuple(Line(n, "shop.c", 1) for n in (*inlined, name)))


MAIN, HOT_A, HOT_B = fr("main", 0x1100), fr("hot_a", 0x1200), fr("hot_b", 0x1300)
INLINED = fr("checkout", 0x1400, "hash_step")


def prof(labels: dict[str, str], start: int = T0, *stacks: tuple[tuple[Frame, ...], int]) -> Profile:
    p = Profile(labels=labels, start_ns=start, duration_ns=10 * S, period_ns=PERIOD)
    for stack, value in stacks:
        p.add(stack, value)
    return p


@pytest.fixture
def app(tmp_path: Path, make_store: Callable[[Path], Store]) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "TESTING": True, "STORE": make_store(tmp_path / "data")})
    yield app
    app.extensions["podflame.store"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


RANGE = {"from": str(T0 // S - 60), "to": str(T0 // S + 3600)}


def get(client: FlaskClient, path: str, **params: str) -> Any:
    r = client.get(f"/api/v1/{path}", query_string={**RANGE, **params})
    assert r.status_code == 200, r.json
    return r.json


def leaf(total: int, self_value: int | None = None, **children: dict) -> dict:
    return {"total": total, "self": total if self_value is None else self_value, "children": children}


def test_ingest_query_flame_graph_whole_tree(client: FlaskClient) -> None:
    answer = ingest(client, [
        prof({"pod": "cart", "comm": "shop"}, T0, ((MAIN, HOT_A), 30), ((MAIN, HOT_B), 10), ((MAIN,), 2)),
        prof({"pod": "cart", "comm": "shop"}, T0 + 10 * S, ((MAIN, HOT_A), 6), ((MAIN, INLINED), 4)),
        prof({"pod": "api", "comm": "srv"}, T0, ((MAIN, HOT_B), 100)),
    ], node="n1")
    # One pprof is one time window: the two cart profiles arrive as one series' profile.
    # (2 label sets x 2 types), rows = distinct stacks; `time`: where it was filed (the window's start)
    assert answer == {"profiles": 4, "samples": 10, "time": T0 / 1e9}
    fg = get(client, "flamegraph", query='{pod="cart"}')
    assert decode_tree(fg) == leaf(52, 0, main=leaf(52, 2,
        checkout=leaf(4, 0, hash_step=leaf(4)), hot_a=leaf(36), hot_b=leaf(10)))
    assert (fg["total"], fg["max_self"], fg["period_ns"]) == (52, 36, PERIOD)
    assert (fg["type"], fg["unit"]) == ("samples", "count")
    assert fg["names"][0] == "total" and len(set(fg["names"])) == len(fg["names"])
    everything = decode_tree(get(client, "flamegraph", query='{node="n1"}'))
    assert everything["total"] == 152 and everything["children"]["main"]["children"]["hot_b"]["total"] == 110
    cpu = get(client, "flamegraph", query='{pod="cart"}', type="cpu")
    assert (cpu["total"], cpu["unit"]) == (52 * PERIOD, "nanoseconds")


def test_time_range_is_half_open_over_profile_start(client: FlaskClient) -> None:
    for i in range(5):
        ingest(client, [prof({"pod": "p"}, T0 + i * 10 * S, ((MAIN,), i + 1))])
    t = T0 // S
    fg = get(client, "flamegraph", **{"from": str(t + 10), "to": str(t + 40)})
    assert fg["total"] == 2 + 3 + 4
    rfc = get(client, "flamegraph", **{"from": "2026-11-18T11:06:50Z", "to": "2026-11-18T12:07:10+01:00"})
    assert rfc["total"] == 2 + 3


def test_time_override_and_receive_time(client: FlaskClient) -> None:
    ingest(client, [prof({"pod": "override"}, T0, ((MAIN,), 1))], time=str(T0 // S - 86400))
    before = time.time_ns()
    ingest(client, [prof({"pod": "received"}, 0, ((MAIN,), 1))])  # time_nanos = 0: no time of its own
    after = time.time_ns()
    assert get(client, "label/pod/values") == {"values": []}
    day_before = {"from": str(T0 // S - 86400), "to": str(T0 // S - 86399)}
    assert get(client, "label/pod/values", **day_before) == {"values": ["override"]}
    around = {"from": str(before / S - 1), "to": str(after / S + 1)}
    assert get(client, "label/pod/values", **around) == {"values": ["received"]}
    assert get(client, "label/pod/values", **{"from": "now-1m", "to": "now+1m"}) == {"values": ["received"]}


def test_labels_values_types_and_default_type(client: FlaskClient) -> None:
    heap = prof({"pod": "p2", "ns": "b"}, T0, ((MAIN,), 7))
    heap.sample_type, heap.unit = "alloc_space", "bytes"
    ingest(client, [heap])
    assert get(client, "types") == {"types": [{"type": "alloc_space", "unit": "bytes"}]}
    fg = get(client, "flamegraph")
    assert (fg["type"], fg["unit"], fg["total"]) == ("alloc_space", "bytes", 7)  # the first type when no samples
    ingest(client, [prof({"pod": "p1", "ns": "a"}, T0, ((MAIN,), 1))])
    assert get(client, "flamegraph")["type"] == "samples"  # samples wins when present
    assert get(client, "labels") == {"labels": ["ns", "pod"]}
    assert get(client, "label/pod/values") == {"values": ["p1", "p2"]}
    assert get(client, "label/pod/values", query='{ns="b"}') == {"values": ["p2"]}
    assert get(client, "types", query='{pod="p1"}')["types"] == [
        {"type": "cpu", "unit": "nanoseconds"}, {"type": "samples", "unit": "count"}]


def test_series_grouping_cpu_seconds_and_share(client: FlaskClient) -> None:
    ingest(client, [prof({"pod": "a", "pid": "1"}, T0, ((MAIN,), 100)),
                    prof({"pod": "a", "pid": "2"}, T0, ((MAIN,), 50)),
                    prof({"pod": "b", "pid": "3"}, T0, ((MAIN,), 200))])
    window = {"from": str(T0 // S), "to": str(T0 // S + 60)}
    by_pod = get(client, "series", by="pod", **window)
    assert by_pod["total"] == 350 and (by_pod["type"], by_pod["unit"]) == ("samples", "count")
    assert (by_pod["from"], by_pod["to"]) == (T0 / S, T0 / S + 60)
    assert [(s["labels"], s["value"]) for s in by_pod["series"]] == [({"pod": "b"}, 200), ({"pod": "a"}, 150)]
    b = by_pod["series"][0]
    assert b["cpu_seconds"] == pytest.approx(200 * PERIOD / 1e9)
    assert b["cpu_share"] == pytest.approx(200 * PERIOD / 1e9 / 60)
    every = get(client, "series", **window)["series"]
    assert [s["labels"] for s in every] == [
        {"pid": "3", "pod": "b"}, {"pid": "1", "pod": "a"}, {"pid": "2", "pod": "a"}]
    cpu = get(client, "series", by="pod", type="cpu", **window)["series"]
    assert cpu[0]["cpu_seconds"] == pytest.approx(200 * PERIOD / 1e9)


def test_html_dangerous_names_and_labels_survive_unchanged(client: FlaskClient) -> None:
    evil = '<script>alert("x")</script>'
    quoted = "it's \"quoted\" & <b>"
    ingest(client, [prof({"comm": evil}, T0, ((MAIN, fr(evil, 0x1500)), 3), ((MAIN, fr(quoted, 0x1600)), 1))])
    fg = get(client, "flamegraph", query='{comm="<script>alert(\\"x\\")</script>"}')
    assert set(fg["names"]) == {"total", "main", evil, quoted}
    assert decode_tree(fg) == leaf(4, 0, main=leaf(4, 0, **{evil: leaf(3), quoted: leaf(1)}))
    assert get(client, "label/comm/values") == {"values": [evil]}
    assert get(client, "series")["series"][0]["labels"] == {"comm": evil}
    folded = client.get("/api/v1/folded", query_string=RANGE).data.decode()
    assert f"main;{evil} 3\n" in folded and f"main;{quoted} 1\n" in folded


def test_pprof_and_folded_downloads(client: FlaskClient) -> None:
    ingest(client, [prof({"pod": "a"}, T0, ((MAIN, INLINED), 3)), prof({"pod": "b"}, T0, ((MAIN, HOT_A), 4))])
    r = client.get("/api/v1/pprof", query_string=RANGE)
    assert r.status_code == 200 and r.mimetype == "application/octet-stream" and r.data[:2] == b"\x1f\x8b"
    back = {p.labels["pod"]: p for p in pprof.decode(r.data) if p.sample_type == "samples"}
    assert dict(back["a"].name_stacks()) == {("main", "checkout", "hash_step"): 3}
    assert dict(back["b"].name_stacks()) == {("main", "hot_a"): 4}
    (frame,) = {f for p in back.values() for s in p.samples for f in s if f.address == INLINED.address}
    assert frame == INLINED  # mapping, build id, file:line and inline lines kept
    r = client.get("/api/v1/folded", query_string=RANGE)
    assert r.mimetype == "text/plain" and r.data.decode() == "main;checkout;hash_step 3\nmain;hot_a 4\n"
    empty = client.get("/api/v1/pprof", query_string={**RANGE, "query": '{pod="none"}'})
    assert empty.status_code == 200 and pprof.decode(empty.data) == []


def test_invalid_bodies_are_400_and_store_nothing(client: FlaskClient) -> None:
    for body, message in [(b"\x1f\x8b\x08\x00garbage", "corrupt gzip"), (b"\xff\xff\xff\xff", "not a pprof"),
                          (b"", "empty body")]:
        r = client.post("/api/v1/ingest?pod=x", data=body)
        assert r.status_code == 400 and message in r.json["error"], r.json
    dangling = pprof.PprofProfile()
    dangling.string_table.extend(["", "samples", "count"])
    dangling.sample_type.add(type=1, unit=2)
    dangling.sample.add(location_id=[1], value=[5])
    dangling.sample.add(location_id=[99], value=[1])
    r = client.post("/api/v1/ingest?pod=x", data=dangling.SerializeToString())
    assert r.status_code == 400 and "unknown location" in r.json["error"]
    assert get(client, "labels", **{"from": "0", "to": "now+1h"}) == {"labels": []}


def test_size_limits_are_413(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": str(tmp_path), "MAX_BODY_BYTES": 64 << 10, "MAX_INFLATED_BYTES": 1 << 20})
    client = app.test_client()
    try:
        r = client.post("/api/v1/ingest", data=b"\0" * (65 << 10))
        assert r.status_code == 413 and str(64 << 10) in r.json["error"]
        bomb = gzip.compress(b"\x32\x00" * (8 << 20), compresslevel=9)  # 8 Mi empty string_table entries
        assert len(bomb) < 64 << 10
        r = client.post("/api/v1/ingest", data=bomb)
        assert r.status_code == 413 and "limit" in r.json["error"]
    finally:
        app.extensions["podflame.store"].close()


@pytest.mark.parametrize("params, message", [
    ("?pod=a&pod=b", "given 2 times"),
    ("?bad-name=x", "bad label name 'bad-name'"),
    ("?time=tomorrow", "bad time"),
])
def test_bad_ingest_parameters(client: FlaskClient, params: str, message: str) -> None:
    r = client.post(f"/api/v1/ingest{params}", data=pprof.encode([prof({}, T0, ((MAIN,), 1))]))
    assert r.status_code == 400 and message in r.json["error"]


@pytest.mark.parametrize("path", ["labels", "label/pod/values", "types", "series", "flamegraph", "pprof", "folded",
                                  "cpu", "diff", "speedscope"])
@pytest.mark.parametrize("params, message", [
    ({"query": '{pod="x"'}, "bad query: bad selector at column"),
    ({"query": '{pod=~"("}'}, "bad regex"),
    ({"from": "yesterday"}, "bad from"),
    ({"to": "now-15"}, "bad to"),
    ({"from": "now", "to": "now-1h"}, "bad range"),
])
def test_bad_queries_are_400_json(client: FlaskClient, path: str, params: dict[str, str], message: str) -> None:
    r = client.get(f"/api/v1/{path}", query_string=params)
    assert r.status_code == 400 and r.is_json and message in r.json["error"], r.json


def test_bad_by_and_unknown_routes(client: FlaskClient) -> None:
    r = client.get("/api/v1/series", query_string={"by": "pod,bad-name"})
    assert r.status_code == 400 and "bad by" in r.json["error"]
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and "error" in r.json
    r = client.get("/api/v1/ingest")
    assert r.status_code == 405 and "error" in r.json


def test_metrics_healthz_and_page(app: Flask, client: FlaskClient) -> None:
    def metric(name: str) -> float:
        for line in client.get("/metrics").data.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = metric("podflame_server_ingested_profiles_total")
    rejected = metric('podflame_server_rejected_requests_total{reason="invalid"}')
    ingest(client, [prof({"pod": "a"}, T0, ((MAIN,), 1))])
    client.post("/api/v1/ingest", data=b"junk")
    get(client, "flamegraph")
    assert metric("podflame_server_ingested_profiles_total") == before + 2
    assert metric('podflame_server_rejected_requests_total{reason="invalid"}') == rejected + 1
    assert metric('podflame_server_query_seconds_count{endpoint="flamegraph"}') >= 1
    assert client.get("/healthz").json == {"status": "ok"}
    assert "ui" in app.blueprints and client.get("/").status_code == 200


# -- cpu over time, node budget, diffs, speedscope, two-column folded, numeric labels ------------------


def test_cpu_time_series_per_step(client: FlaskClient) -> None:
    for i in range(6):
        ingest(client, [prof({"pod": "a"}, T0 + i * 10 * S, ((MAIN, HOT_A), i + 1)),
                        prof({"pod": "b"}, T0 + i * 10 * S + 1, ((MAIN,), 10))])
    t = T0 // S
    r = get(client, "cpu", query='{pod="a"}', step="20", **{"from": str(t), "to": str(t + 60)})
    assert r["timestamps"] == [t, t + 20, t + 40] and r["step"] == 20
    assert r["values"] == [1 + 2, 3 + 4, 5 + 6] and (r["type"], r["unit"]) == ("samples", "count")
    assert r["cores"] == pytest.approx([v * PERIOD / 1e9 / 20 for v in r["values"]])
    every = get(client, "cpu", step="30s", **{"from": str(t), "to": str(t + 60)})
    assert every["values"] == [1 + 2 + 3 + 30, 4 + 5 + 6 + 30]
    heap = get(client, "cpu", type="cpu", step="1m", **{"from": str(t), "to": str(t + 60)})
    assert heap["values"] == [(21 + 60) * PERIOD] and heap["unit"] == "nanoseconds"
    auto = get(client, "cpu", **{"from": str(t), "to": str(t + 3600)})
    assert auto["step"] == 15 and len(auto["values"]) == 240
    for bad, message in [("0", "positive"), ("soon", "bad step"), ("0.001", "points")]:
        r = client.get("/api/v1/cpu", query_string={**RANGE, "step": bad})
        assert r.status_code == 400 and message in r.json["error"], r.json


def test_flame_graph_node_budget(client: FlaskClient) -> None:
    stacks = [((MAIN, fr(f"f{i:02d}", 0x2000 + i * 16)), 100 - i) for i in range(40)]
    ingest(client, [prof({"pod": "a"}, T0, *stacks)])
    fg = get(client, "flamegraph", max_nodes="10")
    tree = decode_tree(fg)
    assert fg["total"] == sum(v for _, v in stacks) and fg["folded_nodes"] == 42 - 9
    main = tree["children"]["main"]
    kept = sorted(k for k in main["children"] if k != "[other]")
    assert kept == [f"f{i:02d}" for i in range(7)]  # the 7 largest, plus [other] and main and total
    assert main["children"]["[other]"]["total"] == sum(100 - i for i in range(7, 40))
    assert fg["names"][fg["other"]] == "[other]"
    assert "other" not in get(client, "flamegraph")  # without a budget the payload is as documented
    r = client.get("/api/v1/flamegraph", query_string={**RANGE, "max_nodes": "1"})
    assert r.status_code == 400 and "max_nodes" in r.json["error"]


def test_diff_of_two_ranges_and_of_two_selectors(client: FlaskClient) -> None:
    ingest(client, [prof({"pod": "a"}, T0, ((MAIN, HOT_A), 30), ((MAIN, HOT_B), 10))])
    ingest(client, [prof({"pod": "a"}, T0 + 60 * S, ((MAIN, HOT_A), 10), ((MAIN, HOT_B), 50)),
                    prof({"pod": "b"}, T0 + 60 * S, ((MAIN, HOT_B), 7))])
    t = T0 // S
    r = get(client, "diff", query='{pod="a"}', **{"from": str(t + 60), "to": str(t + 120),
                                                   "base_from": str(t), "base_to": str(t + 60)})
    assert (r["base_total"], r["comp_total"]) == (40, 60)
    rows = {row["name"]: row for row in r["functions"]}
    assert (rows["hot_b"]["base_flat"], rows["hot_b"]["comp_flat"]) == (10, 50)
    assert rows["hot_b"]["change"] == pytest.approx(50 / 60 - 10 / 40)
    assert [row["name"] for row in r["regressions"]] == ["hot_b"] and r["improvements"][0]["name"] == "hot_a"
    assert r["rule"]["min_samples"] == 20
    tree = decode_tree(r)
    assert tree["children"]["main"]["children"]["hot_a"] == {
        "total": 40, "self": 40, "children": {}, "base_total": 30, "base_self": 30, "comp_total": 10, "comp_self": 10}
    by_selector = get(client, "diff", query='{pod="b"}', base_query='{pod="a"}',
                      **{"from": str(t + 60), "to": str(t + 120)})
    assert (by_selector["base_total"], by_selector["comp_total"]) == (60, 7)
    r = client.get("/api/v1/diff", query_string={**RANGE, "base_query": "{pod="})
    assert r.status_code == 400 and "bad base_query" in r.json["error"]
    r = client.get("/api/v1/diff", query_string={**RANGE, "base_from": "now", "base_to": "now-1h"})
    assert r.status_code == 400 and "bad range: base_from" in r.json["error"]


def test_two_column_folded_diff(client: FlaskClient) -> None:
    ingest(client, [prof({"pod": "a"}, T0, ((MAIN, HOT_A), 30), ((MAIN, HOT_B), 10))])
    ingest(client, [prof({"pod": "a"}, T0 + 60 * S, ((MAIN, HOT_A), 10), ((MAIN, INLINED), 20))])
    t = T0 // S
    params = {"from": str(t + 60), "to": str(t + 120), "base_from": str(t), "base_to": str(t + 60)}
    text = client.get("/api/v1/folded", query_string=params).data.decode()
    assert text == "main;checkout;hash_step 0 20\nmain;hot_a 30 10\nmain;hot_b 10 0\n"
    normalized = client.get("/api/v1/folded", query_string={**params, "normalize": "1"}).data.decode()
    assert normalized == "main;checkout;hash_step 0 20\nmain;hot_a 23 10\nmain;hot_b 8 0\n"  # x 30/40


def test_speedscope_export(client: FlaskClient) -> None:
    ingest(client, [prof({"pod": "a"}, T0, ((MAIN, HOT_A), 3), ((MAIN, INLINED), 2), ((MAIN,), 1))])
    r = client.get("/api/v1/speedscope", query_string=RANGE)
    assert r.status_code == 200 and "speedscope.json" in r.headers["Content-Disposition"]
    doc = r.json
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    (p,) = doc["profiles"]
    assert (p["type"], p["unit"], p["startValue"], p["endValue"]) == ("sampled", "none", 0, 6)
    frames = [f["name"] for f in doc["shared"]["frames"]]
    stacks = {tuple(frames[i] for i in s): w for s, w in zip(p["samples"], p["weights"], strict=True)}
    assert stacks == {("main", "hot_a"): 3, ("main", "checkout", "hash_step"): 2, ("main",): 1}
    cpu = client.get("/api/v1/speedscope", query_string={**RANGE, "type": "cpu"}).json
    assert cpu["profiles"][0]["unit"] == "nanoseconds" and cpu["profiles"][0]["endValue"] == 6 * PERIOD


def _with_numeric_label() -> bytes:
    msg = pprof.PprofProfile()
    msg.ParseFromString(pprof.decompress(pprof.encode([prof({"pod": "a"}, T0, ((MAIN,), 5), ((MAIN, HOT_A), 7))])))
    strings = list(msg.string_table)
    msg.string_table.extend(["bytes"])
    for i, sample in enumerate(msg.sample):
        sample.label.add(key=len(strings), num=1024 * (i + 1))
    return msg.SerializeToString()


def test_numeric_labels_stay_off_series_unless_asked(client: FlaskClient, tmp_path: Path) -> None:
    answer = client.post("/api/v1/ingest", data=_with_numeric_label()).json
    assert {k: answer[k] for k in ("profiles", "samples")} == {"profiles": 2, "samples": 4}
    assert get(client, "labels") == {"labels": ["pod"]}
    assert get(client, "flamegraph")["total"] == 12
    app = create_app({"DATA_DIR": str(tmp_path / "keep"), "KEEP_NUMERIC_LABELS": True, "MAINTENANCE_SECONDS": 0})
    try:
        keep = app.test_client()
        assert keep.post("/api/v1/ingest", data=_with_numeric_label()).json["profiles"] == 4
        assert get(keep, "label/bytes/values") == {"values": ["1024", "2048"]}
    finally:
        app.extensions["podflame.store"].close()


# -- kept flame-graph answers (web/query/treecache.py) ----------------------------------------------

LIBC = Mapping(0x7F0000000000, 0x7F0000100000, 0, "/usr/lib/x86_64-linux-gnu/libc.so.6", None)
WRITE = Frame(0x7F0000001000, LIBC, FrameKind.NATIVE, (Line("write"),))
KWRITE = Frame(0xFFFFFFFF81000000, None, FrameKind.KERNEL, (Line("ksys_write"),))
PY_RENDER = Frame(0x10, None, FrameKind.PYTHON, (Line("render", "/srv/venv/lib/site-packages/jinja2/env.py", 7),))
SHOP = {"pod": "shop-1", "namespace": "prod"}


def shop_graph(app: Flask, frm: int, to: int, **headers: str) -> tuple[dict[str, Any], Any]:
    r = app.test_client().get("/api/v1/flamegraph", headers=headers,
                              query_string={"query": '{pod="shop-1"}', "from": str(frm), "to": str(to)})
    assert r.status_code == 200, r.data
    raw = r.get_data()
    return json.loads(gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" else raw), r


def test_same_profiles_hit_the_kept_tree_with_this_requests_range_and_new_data_misses(app: Flask) -> None:
    client = app.test_client()
    ingest(client, [prof(SHOP, T0, ((MAIN, WRITE), 5), ((MAIN,), 2))])
    first, _ = shop_graph(app, T0 // S - 60, T0 // S + 600)
    cache = app.extensions["podflame.tree_cache"]
    again, _ = shop_graph(app, T0 // S - 120, T0 // S + 300)  # other range text, the same stored profiles
    assert (again["from"], again["to"]) == (T0 // S - 120, T0 // S + 300)
    assert decode_tree(again) == decode_tree(first) and again["total"] == 7
    store = app.extensions["podflame.store"]
    if store.immutable_refs:
        assert cache.hits == 1  # by the stored profiles read
        selects = []
        real_select = store.select
        store.select = lambda *a, **k: selects.append(a) or real_select(*a, **k)  # type: ignore[method-assign]
        same, _ = shop_graph(app, T0 // S - 120, T0 // S + 300)  # the same absolute range, nothing written since
        assert cache.hits == 2 and not selects and decode_tree(same) == decode_tree(first)  # index not even read
        store.select = real_select  # type: ignore[method-assign]
    else:  # a backend whose refs may read other samples later keeps nothing
        assert cache.hits == 0 and len(cache) == 0
    ingest(client, [prof(SHOP, T0 + 100 * S, ((MAIN, WRITE), 4))])  # new data in range: new refs, a new tree
    later, _ = shop_graph(app, T0 // S - 120, T0 // S + 300)
    assert later["total"] == 11 and decode_tree(later)["children"]["main"]["children"]["write"]["total"] == 9
    zipped, r = shop_graph(app, T0 // S - 120, T0 // S + 300, **{"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in r.headers["Vary"]
    assert zipped == later


def test_kinds_and_modules_without_building_frames(app: Flask) -> None:
    """Kinds and modules come from the store's frame rows (`Store.frame_origins`) where it has them: the same
    as `module_of` on the Frames themselves, for native, kernel and Python frames."""
    ingest(app.test_client(), [prof(SHOP, T0, ((MAIN, WRITE, KWRITE), 5), ((MAIN, PY_RENDER), 3))])
    payload, _ = shop_graph(app, T0 // S - 60, T0 // S + 600)
    got = {n: (k, m) for n, k, m in zip(payload["names"], payload["kinds"], payload["modules"], strict=True)}
    assert got["main"] == ("native", module_of(MAIN)) == ("native", "shop")
    assert got["write"] == ("native", "libc.so.6")
    assert got["ksys_write"] == ("kernel", module_of(KWRITE)) == ("kernel", "[kernel]")
    assert got["render"] == ("python", module_of(PY_RENDER)) == ("python", "jinja2")


def test_a_name_two_functions_share_is_coloured_as_the_one_in_the_query(app: Flask) -> None:
    """A C `main` and a Python `main` on one node are two functions with one name: each pod's graph colours
    `main` as its own, whichever the server saw first (it kept the first kind per name: a C program's `main`
    was drawn as Python beside pytest's)."""
    py_main = Frame(0x20, None, FrameKind.PYTHON, (Line("main", "/srv/venv/lib/site-packages/pytest/cli.py", 3),))
    client = app.test_client()
    ingest(client, [prof({"pod": "runner", "namespace": "prod"}, T0, ((py_main, PY_RENDER), 4))])
    ingest(client, [prof(SHOP, T0, ((MAIN, WRITE), 5))])
    for pod, want in (("shop-1", ("native", "shop")), ("runner", ("python", "pytest"))):
        r = client.get("/api/v1/flamegraph", query_string={"query": f'{{pod="{pod}"}}', "from": str(T0 // S - 60),
                                                           "to": str(T0 // S + 600)})
        assert r.status_code == 200, r.data
        raw = r.get_data()
        payload = json.loads(gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" else raw)
        got = {n: (k, m) for n, k, m in zip(payload["names"], payload["kinds"], payload["modules"], strict=True)}
        assert got["main"] == want, (pod, got)


def test_a_bad_ingest_time_is_said_once(client: FlaskClient) -> None:
    r = client.post("/api/v1/ingest?time=yesterday", data=b"\x08\x01")
    assert r.status_code == 400
    assert r.get_json()["error"].startswith("bad time 'yesterday': expected RFC 3339"), r.get_json()
