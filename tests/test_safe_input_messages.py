"""A new user's wrong requests, each answered with the status that fits and a message that says what to do:
a profile sent as a form upload or with `curl -d`, a label name that cannot exist, a time unit typo."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from web.server.app import create_app

EVERYTHING = {"from": "0", "to": "now+1h"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0})
    yield app
    app.extensions["podflame.store"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


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
