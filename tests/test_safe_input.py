"""Issue 15 part A through the API: each finding reproduced as it was reported, and refused (4xx JSON
naming the limit, nothing stored) or answered. The live-server findings (memory, chunked bodies, a query
next to /healthz) are in tests/test_safe_input_live.py."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from podflame import pprof
from podflame.limits import INT64_MAX, MAX_TIME_NS, MAX_VALUE
from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import ingest
from web.server.app import create_app

S = 1_000_000_000
T0 = 1_795_000_000 * S
EXE = Mapping(0x1000, 0x9000, 0, "/app/bin", "b1")
MAIN = Frame(0x1100, EXE, FrameKind.NATIVE, (Line("main", "main.c", 1),))
HOT = Frame(0x1200, EXE, FrameKind.NATIVE, (Line("hot", "main.c", 2),))
EVERYTHING = {"from": "0", "to": str(MAX_TIME_NS // S)}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0})
    yield app
    app.extensions["podflame.store"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def raw_pprof(samples: list[tuple[list[int], list[int], list[tuple[str, str]]]], *, time_nanos: int = T0,
              duration: int = 10 * S, period: int = 10_000_000) -> bytes:
    """A pprof written field by field, so values and labels the encoder would never make can be sent."""
    msg = pprof.PprofProfile()
    strings = {"": 0}

    def s(text: str) -> int:
        return strings.setdefault(text, len(strings))

    msg.sample_type.add(type=s("samples"), unit=s("count"))
    msg.mapping.add(id=1, memory_start=0x1000, memory_limit=0x9000, filename=s("/app/bin"))
    for fid, name in ((1, "main"), (2, "hot")):
        msg.function.add(id=fid, name=s(name), filename=s("main.c"))
        msg.location.add(id=fid, mapping_id=1, address=0x1000 + fid).line.add(function_id=fid, line=fid)
    for locations, values, labels in samples:
        sample = msg.sample.add(location_id=locations, value=values)
        for k, v in labels:
            sample.label.add(key=s(k), str=s(v))
    msg.time_nanos, msg.duration_nanos, msg.period = time_nanos, duration, period
    msg.string_table.extend(strings)  # in insertion order: index i holds the i-th string
    return gzip.compress(msg.SerializeToString())


def stored(client: FlaskClient) -> Any:
    return client.get("/api/v1/series", query_string=EVERYTHING).json["series"]


def refused(client: FlaskClient, body: bytes, status: int, *words: str, query: str = "") -> str:
    before = stored(client)
    r = client.post(f"/api/v1/ingest{query}", data=body)
    assert r.status_code == status, r.json
    message: str = r.json["error"]
    for w in words:
        assert w in message, message
    assert stored(client) == before, "a refused ingest stored something"
    return message


# -- values, sums and times (finding 3) ------------------------------------------------------------


def test_out_of_range_values_and_times_are_400_and_store_nothing(client: FlaskClient) -> None:
    ok = raw_pprof([([1], [5], [("pod", "a")])])
    cases = [
        (raw_pprof([([1], [-1], [])]), "sample value -1", "MAX_VALUE"),
        # two samples of 2^63-1 on one stack: was a 500 (int64 overflow in the store)
        (raw_pprof([([1], [INT64_MAX], []), ([1], [INT64_MAX], [])]), "MAX_VALUE"),
        # two of 2^62 on different stacks: was stored with a total wrapped negative
        (raw_pprof([([1], [1 << 62], []), ([2, 1], [1 << 62], [])]), "MAX_VALUE"),
        # each value in range, their sum per series not
        (raw_pprof([([1], [MAX_VALUE], []), ([2, 1], [1], [])]), "sum past", "MAX_VALUE"),
        (raw_pprof([([1], [1], [])], time_nanos=INT64_MAX), "time_nanos", "MAX_TIME_NS"),
        (raw_pprof([([1], [1], [])], time_nanos=-5), "time_nanos"),
        (raw_pprof([([1], [1], [])], time_nanos=MAX_TIME_NS, duration=S), "duration_nanos", "MAX_TIME_NS"),
        (raw_pprof([([1], [1], [])], period=-1), "period"),
    ]
    for body, *words in cases:
        refused(client, body, 400, *words)
    assert client.post("/api/v1/ingest", data=ok).status_code == 200
    assert [s["labels"] for s in stored(client)] == [{"pod": "a"}]
    # the largest accepted value is stored exactly
    assert client.post("/api/v1/ingest?pod=max", data=raw_pprof([([1], [MAX_VALUE], [])])).status_code == 200
    cpu = client.get("/api/v1/cpu", query_string={**EVERYTHING, "query": '{pod="max"}',
                                                  "from": str(T0 // S), "to": str(T0 // S + 60)}).json
    assert sum(cpu["values"]) == MAX_VALUE
    refused(client, ok, 400, "MAX_TIME_NS", query=f"?time={MAX_TIME_NS // S}")


# -- labels (finding 5) ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "with space", 'x"}y', "k\nnl", "__name__", "time", "1x", "é"])
def test_bad_sample_label_names_are_refused(client: FlaskClient, key: str) -> None:
    refused(client, raw_pprof([([1], [1], [(key, "v")])]), 400, "label name")


def test_a_sample_label_cannot_override_the_requests(client: FlaskClient) -> None:
    body = raw_pprof([([1], [1], [("node", "other"), ("pod", "p")])])
    refused(client, body, 400, "node='other'", "contradicts", query="?node=n1")
    # repeating the request's value is no contradiction (the agent leaves it off anyway)
    same = raw_pprof([([1], [1], [("node", "n1"), ("namespace", "shop"), ("pod", "p")])])
    assert client.post("/api/v1/ingest?node=n1", data=same).status_code == 200
    # what the agent sends: one request per drain, many pods, their reserved labels on the samples
    agent = Profile(labels={"node": "n1", "namespace": "shop", "pod": "cart-1", "container": "app",
                            "pod_uid": "u1", "container_id": "c1", "workload": "Deployment/cart",
                            "cgroup": "/kubepods.slice/x.scope", "comm": "cart", "pid": "7"},
                    start_ns=T0, duration_ns=10 * S, period_ns=10_000_000)
    agent.add((MAIN, HOT), 3)
    body = pprof.encode([agent], common_labels={"node": "n1"}, compresslevel=1)
    assert client.post("/api/v1/ingest?node=n1", data=body).status_code == 200
    labels = [s["labels"] for s in stored(client)]
    assert agent.labels in labels and {"node": "n1", "namespace": "shop", "pod": "p"} in labels
    assert not any(lab.get("node") == "other" for lab in labels)


def test_url_label_names_are_checked_too(client: FlaskClient) -> None:
    refused(client, raw_pprof([([1], [1], [])]), 400, "label name", query="?__name__=x")
    refused(client, raw_pprof([([1], [1], [])]), 400, "MAX_LABEL_VALUE_BYTES", query="?pod=" + "a" * 5000)


def test_100k_distinct_label_values_are_refused_fast(client: FlaskClient) -> None:
    body = raw_pprof([([1], [1], [("req", f"id-{i}")]) for i in range(100_000)])
    t = time.perf_counter()
    message = refused(client, body, 413, "MAX_SERIES", "20000")
    took = time.perf_counter() - t
    print(f"100k distinct label values: refused in {took:.2f} s: {message}")
    # (before: 11 s to store, and /series at 2.7 s after)


def test_labels_per_sample_and_value_length_are_bounded(client: FlaskClient) -> None:
    many = [(f"k{i}", "v") for i in range(65)]
    refused(client, raw_pprof([([1], [1], many)]), 413, "65 labels", "MAX_LABELS_PER_SAMPLE")
    refused(client, raw_pprof([([1], [1], [("k", "v" * 4097)])]), 413, "MAX_LABEL_VALUE_BYTES")


def test_limits_come_from_the_server_config(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0, "MAX_SAMPLES": 2, "MAX_STRINGS": 20})
    try:
        client = app.test_client()
        assert client.post("/api/v1/ingest", data=raw_pprof([([1], [1], [])] * 2)).status_code == 200
        refused(client, raw_pprof([([1], [1], [])] * 3), 413, "over 2 samples", "MAX_SAMPLES")
        refused(client, raw_pprof([([1], [1], [(f"k{i}", "v") for i in range(20)])]), 413, "over 20 strings",
                "MAX_STRINGS")
    finally:
        app.extensions["podflame.store"].close()


def test_limits_from_the_environment_are_checked_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md sets every limit from `PODFLAME_<KEY>`: `PODFLAME_MAX_BODY_BYTES` was not read at all, and
    `PODFLAME_MAX_SAMPLES=abc` (or 0) started the server and then answered every ingest with a 500."""
    from podflame.errors import InvalidInput

    for key, value in [("MAX_SAMPLES", "abc"), ("MAX_SAMPLES", "0"), ("MAX_BODY_BYTES", "1e6"),
                       ("RETENTION_SECONDS", "x")]:
        monkeypatch.setenv(f"PODFLAME_{key}", value)
        with pytest.raises(InvalidInput, match=f"PODFLAME_{key}='{value}'"):
            create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0})
        monkeypatch.delenv(f"PODFLAME_{key}")
    monkeypatch.setenv("PODFLAME_MAX_BODY_BYTES", "100")
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0})
    try:
        refused(app.test_client(), raw_pprof([([1], [1], [])] * 20), 413, "over the 100 byte limit", "MAX_BODY_BYTES")
    finally:
        app.extensions["podflame.store"].close()


# -- bounded decode (finding 2) through the test client; memory is measured on a live server --------


def test_counts_are_refused_before_the_profile_is_parsed(tmp_path: Path, client: FlaskClient) -> None:
    # 5 M one-byte strings in 14 KB: over 50x the body and the 1 MiB floor, refused at 1 MiB inflated
    body = gzip.compress(b"\x32\x01a" * 5_000_000, compresslevel=9)
    refused(client, body, 413, "inflates past its 1048576 byte limit", "INFLATE_RATIO")
    # without the ratio cap, the count stops it at the 1,000,001st string (3 MB inflated)
    app = create_app({"DATA_DIR": str(tmp_path / "noratio"), "MAINTENANCE_SECONDS": 0, "INFLATE_RATIO": 10**6})
    try:
        lax = app.test_client()
        refused(lax, body, 413, "over 1000000 strings", "MAX_STRINGS")
        refused(lax, gzip.compress(b"\x12\x00" * 2_000_000, compresslevel=9), 413, "samples", "MAX_SAMPLES")
        refused(lax, gzip.compress(b"\x48\x00" * 5_000_000, compresslevel=9), 413, "MAX_TOP_FIELDS")
    finally:
        app.extensions["podflame.store"].close()
    # one 2 MiB string from a ~2 KB body: the ratio cap stops it inside the field
    big = gzip.compress(b"\x32\x80\x80\x80\x01" + b"a" * (2 << 20), compresslevel=9)
    refused(client, big, 413, "inflates past its 1048576 byte limit", "INFLATE_RATIO")
    refused(client, big[:-20], 413, "inflates past")  # the cap holds before the stream's end is seen
    fill = gzip.compress(b"\x32\x80\x40" + b"a" * 8192 * 200, compresslevel=9)  # a string of 8 KiB, 200 times
    refused(client, fill, 413, "inflates past its 1048576 byte limit", "INFLATE_RATIO")


# -- times and steps on every query endpoint (finding 4) -------------------------------------------


ENDPOINTS = ["labels", "label/pod/values", "types", "series", "cpu", "flamegraph", "diff", "speedscope", "pprof",
             "folded"]
BAD_TIMES = [{"to": "99999999999"}, {"from": "0001-01-01T00:00:00Z"}, {"to": "9999-12-31T23:59:59Z"},
             {"from": "now-100000w"}, {"from": "0001-01-01T00:00:00+01:00"}, {"to": "now+" + "9" * 200 + "w"},
             {"from": "١٢٣"}]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_far_times_are_400_json_on_every_query_endpoint(client: FlaskClient, endpoint: str) -> None:
    ingest(client, [_profile({"pod": "a"})])
    for bad in BAD_TIMES:
        r = client.get(f"/api/v1/{endpoint}", query_string={"from": "now-1h", "to": "now", **bad})
        assert r.status_code == 400 and r.is_json, (bad, r.status_code, r.data[:200])
        assert "bad " in r.json["error"], r.json
    r = client.get(f"/api/v1/{endpoint}", query_string={"from": "0", "to": str(MAX_TIME_NS // S)})
    assert r.status_code == 200, r.data[:300]


def test_bad_steps_are_400(client: FlaskClient) -> None:
    for step in ["²", "99999999999999999999999w", "٣", "1e5", "-1", "0", "367d", "0.0001", "1" * 200]:
        r = client.get("/api/v1/cpu", query_string={**EVERYTHING, "step": step})
        assert r.status_code == 400 and "bad step" in r.json["error"], (step, r.data[:200])
    assert client.get("/api/v1/cpu", query_string={"from": "now-1h", "step": "366d"}).status_code == 200


def test_overlong_urls_and_headers_get_json(client: FlaskClient) -> None:
    r = client.get("/api/v1/series", query_string={"query": "{a=\"" + "x" * 40_000 + "\"}"})
    assert r.status_code == 414 and "URL" in r.json["error"]
    r = client.get("/api/v1/series", headers={f"X-H{i}": "v" * 1000 for i in range(70)})
    assert r.status_code == 431 and "headers" in r.json["error"]


# -- selectors (finding 1) ------------------------------------------------------------------------


def _profile(labels: dict[str, str]) -> Profile:
    p = Profile(labels=labels, start_ns=time.time_ns() - 60 * S, duration_ns=10 * S, period_ns=10_000_000)
    p.add((MAIN, HOT), 5)
    return p


def test_redos_selector_answers_in_linear_time(client: FlaskClient) -> None:
    ingest(client, [_profile({"comm": "a" * 29 + "!"}), _profile({"comm": "aaa"})])
    t = time.perf_counter()
    r = client.get("/api/v1/series", query_string={"query": '{comm=~"(a+)+$"}'})
    took = time.perf_counter() - t
    assert r.status_code == 200 and [s["labels"]["comm"] for s in r.json["series"]] == ["aaa"]
    print(f"{{comm=~\"(a+)+$\"}} against 29 a's and '!': {took * 1000:.1f} ms (Python re: 45 s)")
    for what in ["(a)\\\\1", "(?=a)", "(?<!a)b"]:  # backtracking-only syntax is refused, as in Prometheus
        r = client.get("/api/v1/series", query_string={"query": f'{{comm=~"{what}"}}'})
        assert r.status_code == 400 and "regex" in r.json["error"], r.json


def test_query_deadline_stops_a_long_query(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0, "QUERY_TIMEOUT_SECONDS": 1e-9})
    try:
        client = app.test_client()
        ingest(client, [_profile({"pod": f"p{i}"}) for i in range(300)])
        r = client.get("/api/v1/series", query_string={"query": '{pod=~"p.*9"}'})
        assert r.status_code == 503 and "QUERY_TIMEOUT_SECONDS" in r.json["error"], r.json
        assert client.post("/api/v1/ingest", data=pprof.encode([_profile({"pod": "x"})])).status_code == 200
    finally:
        app.extensions["podflame.store"].close()


# -- a new user's wrong requests: the status that fits, and a message that says what to do --


def _body() -> bytes:
    exe = Mapping(0x1000, 0x9000, 0, "/app/bin", "b1")
    main = Frame(0x1100, exe, FrameKind.NATIVE, (Line("main", "main.c", 1),))
    return pprof.encode([Profile({}, time.time_ns() - 10**9, 10**9, 10_000_000, {(main,): 5})])


def _stored(client: FlaskClient) -> list[dict[str, str]]:
    return [s["labels"] for s in client.get("/api/v1/series", query_string=EVERYTHING).json["series"]]


def test_a_form_upload_is_415_and_says_to_send_the_body(client: FlaskClient) -> None:
    """`curl -F file=@cpu.pb.gz` wraps the profile in multipart: it was 'wire type 7 at byte 102'."""
    from io import BytesIO

    r = client.post("/api/v1/ingest?service=x", data={"file": (BytesIO(_body()), "cpu.pb.gz")},
                    content_type="multipart/form-data")
    assert r.status_code == 415
    assert "--data-binary" in r.json["error"] and "form" in r.json["error"]
    assert _stored(client) == []


def test_curl_d_mangled_bodies_get_the_hint(client: FlaskClient) -> None:
    """`curl -d @cpu.pb.gz` drops the file's CR and LF bytes and sends it form-encoded: the error names the fix."""
    mangled = _body().replace(b"\n", b"").replace(b"\r", b"")
    r = client.post("/api/v1/ingest", data=mangled, content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400 and "invalid pprof" in r.json["error"] and "--data-binary" in r.json["error"]
    assert _stored(client) == []
    # the same type with intact bytes (curl --data-binary's default) is stored as usual
    r = client.post("/api/v1/ingest", data=_body(), content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200
    assert len(_stored(client)) == 1
    # other bad bodies carry no curl hint
    r = client.post("/api/v1/ingest", data=b"\x00garbage", content_type="application/octet-stream")
    assert r.status_code == 400 and "--data-binary" not in r.json["error"]


@pytest.mark.parametrize("name", ["bad name", "0abc", "a-b", "x.y"])
def test_values_of_an_impossible_label_name_are_400(client: FlaskClient, name: str) -> None:
    """A label name that no series can have was answered `{"values": []}`, as if the label were merely unused."""
    r = client.get(f"/api/v1/label/{name}/values", query_string=EVERYTHING)
    assert r.status_code == 400 and "label name" in r.json["error"] and "/api/v1/labels" in r.json["error"]
    assert client.get("/api/v1/label/unused_name/values", query_string=EVERYTHING).json == {"values": []}


@pytest.mark.parametrize("params", [{"from": "now-1x"}, {"from": "yesterday"}])
def test_time_errors_name_every_unit_the_parser_takes(client: FlaskClient, params: dict[str, str]) -> None:
    """The messages listed `s, m, h or d`; `ms` and `w` are accepted too (docs/api.md)."""
    r = client.get("/api/v1/labels", query_string=params)
    assert r.status_code == 400 and "ms, s, m, h, d or w" in r.json["error"]
    assert client.get("/api/v1/labels", query_string={"from": "now-1w"}).status_code == 200


def test_a_malformed_login_is_400_naming_the_shape(tmp_path: Path) -> None:
    """`POST /api/v1/session` with no JSON or no token string answered 401 "not valid", as if the token were
    wrong; it is a 400 that shows the body to send. A wrong token stays 401, and `curl -d` bodies work."""
    read = "read-token-0123456789abcdef01"
    (tmp_path / "read.tok").write_text(read + "\n")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0,
                      "READ_TOKEN_FILE": str(tmp_path / "read.tok")})
    try:
        client = app.test_client()
        form = "application/x-www-form-urlencoded"
        for body, ctype in [(b"notjson", "application/json"), (b'{"token": 5}', "application/json"),
                            (b"[1]", "application/json"), (b"token=" + read.encode(), form)]:
            r = client.post("/api/v1/session", data=body, content_type=ctype)
            assert r.status_code == 400 and '{"token": "READ_TOKEN"}' in r.json["error"], body
        r = client.post("/api/v1/session", json={"token": "wrong-token-0123456789abcdef"})
        assert r.status_code == 401
        r = client.post("/api/v1/session", data=b'{"token": "%s"}' % read.encode(),
                        content_type="application/x-www-form-urlencoded")
        assert r.status_code == 204 and "podflame_read=" in r.headers["Set-Cookie"]
    finally:
        app.extensions["podflame.store"].close()


def test_bytes_after_the_gzip_stream_are_refused_not_dropped(client: FlaskClient) -> None:
    """`cat a.pb.gz b.pb.gz | curl --data-binary @-` stored a and answered 200: b was silently lost (go tool
    pprof refuses such a file: "concatenated profiles detected"). Trailing bytes of any kind are a 400 now."""
    one = _body()
    for body, words in [(one + one, "second gzip stream"), (one + b"garbage\n", "follow the end of the gzip")]:
        r = client.post("/api/v1/ingest", data=body, content_type="application/octet-stream")
        assert r.status_code == 400 and words in r.json["error"], r.json
    assert _stored(client) == []
    assert client.post("/api/v1/ingest", data=one, content_type="application/octet-stream").status_code == 200


# -- stop 17's new-user walk: inputs that were taken as something else -------------------------------


@pytest.mark.parametrize("query", ["?service=%ff%fe", "?service=caf%e9", "?node=%c3"])
def test_a_label_value_that_is_not_utf8_is_refused_not_stored_as_escapes(client: FlaskClient, query: str) -> None:
    """`?service=%ff%fe` was stored as the six characters `%FF%FE` (Werkzeug re-escapes bytes it cannot
    decode): a label value the client never sent. The query string must be UTF-8."""
    refused(client, raw_pprof([([2, 1], [3], [])]), 400, "not UTF-8", query=query)
    assert client.post("/api/v1/ingest?service=caf%C3%A9", data=raw_pprof([([2, 1], [3], [])])).status_code == 200
    assert client.get("/api/v1/label/service/values", query_string=EVERYTHING).json["values"] == ["café"]


@pytest.mark.parametrize("path", ["/api/v1/flamegraph?query=%7Bpod%3D%22%ff%22%7D", "/api/v1/series?type=%ff",
                                  "/api/v1/label/pod/values?prefix=%e9"])
def test_a_query_that_is_not_utf8_is_400_not_a_search_for_escapes(client: FlaskClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 400 and "not UTF-8" in r.json["error"], r.json


@pytest.mark.parametrize("param", ["from", "to"])
@pytest.mark.parametrize("value", ["-5", "-1e30", "-0.5"])
def test_a_negative_time_says_times_are_not_negative(client: FlaskClient, param: str, value: str) -> None:
    """`from=-5` answered "bad duration '5': expected a number and a unit": a message about text the user
    never wrote."""
    r = client.get("/api/v1/series", query_string={"from": "now-1h", "to": "now", param: value})
    assert r.status_code == 400, r.json
    assert f"'{value}': unix times are not negative" in r.json["error"], r.json
    refused(client, raw_pprof([([2, 1], [3], [])]), 400, "not negative", query=f"?time={value}")


@pytest.mark.parametrize(("encoding", "body", "status", "words"), [
    ("gzip", b"xx", 400, "not gzip"),  # read as a (valid, empty) plain pprof and acknowledged with 200
    ("deflate", b"x\x9c" + b"\x00" * 8, 415, "'deflate' is not supported"),
    ("zstd", b"(\xb5/\xfd" + b"\x00" * 8, 415, "'zstd' is not supported"),
])
def test_a_declared_content_encoding_must_match_the_body(client: FlaskClient, encoding: str, body: bytes,
                                                         status: int, words: str) -> None:
    before = stored(client)
    r = client.post("/api/v1/ingest", data=body, headers={"Content-Encoding": encoding})
    assert r.status_code == status and words in r.json["error"], r.json
    assert stored(client) == before
    good = raw_pprof([([2, 1], [3], [])])
    assert client.post("/api/v1/ingest", data=good, headers={"Content-Encoding": "gzip"}).status_code == 200
