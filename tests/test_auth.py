"""Access control (web/server/auth.py): tokens for ingest and reads, rotation by file, Host and Origin
checks, the read cookie, and the refusal to listen beyond loopback without tokens.

Each refusal is checked twice: the status and JSON error, and that the store holds nothing after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from podflame import pprof
from podflame.errors import InvalidInput
from podflame.model import Frame, FrameKind, Line, Profile
from web.server.app import create_app, serving_config
from web.server.auth import TokenFile, TokenFileError

INGEST = "ingest-token-0123456789abcdef"
READ = "read-token-0123456789abcdef01"
READ_NEXT = "read-token-rotated-0123456789"
H = 3_600_000_000_000


def _body() -> bytes:
    frame = Frame(0x1000, None, FrameKind.NATIVE, (Line("main", "main.c", 3),))
    return pprof.encode([Profile({"comm": "app"}, time.time_ns() - 60 * 10**9, 10**9, 10_000_000,
                                 {(frame,): 7})])


def _write(path: Path, *tokens: str) -> Path:
    """Replace the file the way a Secret volume does: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# podflame tokens\n" + "\n".join(tokens) + "\n")
    os.replace(tmp, path)
    return path


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0,
                      "INGEST_TOKEN_FILE": str(_write(tmp_path / "ingest", INGEST)),
                      "READ_TOKEN_FILE": str(_write(tmp_path / "read", READ))})
    yield app
    app.extensions["podflame.store"].close()


def _stored(app: Flask) -> list[tuple[str, str]]:
    return app.extensions["podflame.store"].types(0, 2**62)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_ingest_without_or_with_a_wrong_token_is_401_and_stores_nothing(app: Flask) -> None:
    client = app.test_client()
    for headers in ({}, _bearer("wrong-token-0123456789abcdef"), _bearer(READ), {"Authorization": INGEST}):
        r = client.post("/api/v1/ingest", data=_body(), headers=headers)
        assert r.status_code == 401, headers
        assert "token" in r.json["error"]
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="podflame"'
    assert _stored(app) == []
    r = client.post("/api/v1/ingest", data=_body(), headers=_bearer(INGEST))
    assert r.status_code == 200 and r.json["profiles"] >= 1
    assert ("samples", "count") in _stored(app)


def test_reads_need_the_read_token_and_not_the_ingest_one(app: Flask) -> None:
    client = app.test_client()
    assert client.post("/api/v1/ingest", data=_body(), headers=_bearer(INGEST)).status_code == 200
    for path in ("/api/v1/labels", "/api/v1/label/comm/values", "/api/v1/flamegraph", "/api/v1/pprof", "/metrics"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=_bearer(INGEST)).status_code == 401, path
        assert client.get(path, headers=_bearer(READ)).status_code == 200, path
    r = client.get("/api/v1/label/comm/values", headers=_bearer(READ), query_string={"from": "now-1h"})
    assert r.json == {"values": ["app"]}
    # public: probes, the API document, the page and its scripts (no profile data in them)
    for path in ("/healthz", "/readyz", "/api/v1/openapi.json", "/", "/ui/static/app.js"):
        assert client.get(path).status_code == 200, path


def test_metrics_can_be_made_public(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0, "METRICS_PUBLIC": True,
                      "READ_TOKEN_FILE": str(_write(tmp_path / "read", READ))})
    try:
        assert app.test_client().get("/metrics").status_code == 200
        assert app.test_client().get("/api/v1/labels").status_code == 401
    finally:
        app.extensions["podflame.store"].close()


def test_token_files_rotate_without_a_restart_and_hold_several_tokens(app: Flask, tmp_path: Path) -> None:
    client = app.test_client()
    assert client.get("/api/v1/labels", headers=_bearer(READ)).status_code == 200
    _write(tmp_path / "read", READ, READ_NEXT)  # rotation step 1: both valid
    assert client.get("/api/v1/labels", headers=_bearer(READ)).status_code == 200
    assert client.get("/api/v1/labels", headers=_bearer(READ_NEXT)).status_code == 200
    _write(tmp_path / "read", READ_NEXT)  # step 2: the old one is gone
    assert client.get("/api/v1/labels", headers=_bearer(READ)).status_code == 401
    assert client.get("/api/v1/labels", headers=_bearer(READ_NEXT)).status_code == 200
    (tmp_path / "read").unlink()  # mid-swap or removed: the last good tokens stay
    assert client.get("/api/v1/labels", headers=_bearer(READ_NEXT)).status_code == 200
    _write(tmp_path / "read", "short")  # a weak token in a rotated file is ignored, not accepted
    assert client.get("/api/v1/labels", headers=_bearer("short")).status_code == 401
    assert client.get("/api/v1/labels", headers=_bearer(READ_NEXT)).status_code == 401  # the file has none now


def test_a_kubernetes_secret_volume_swap_is_picked_up(tmp_path: Path) -> None:
    """The kubelet writes a new ..YYYY folder and swaps the ..data symlink; the key is a symlink into it."""
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "tokens").write_text(READ + "\n")
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "tokens").symlink_to("..data/tokens")
    tokens = TokenFile(tmp_path / "tokens")
    assert tokens.accepts(READ) and not tokens.accepts(READ_NEXT)
    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "tokens").write_text(READ_NEXT + "\n")
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert tokens.accepts(READ_NEXT) and not tokens.accepts(READ)
    assert not tokens.accepts("") and not tokens.accepts(None)


def test_unusable_token_files_fail_the_start(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenFile(tmp_path / "missing")
    with pytest.raises(TokenFileError, match="holds no token"):
        TokenFile(_write(tmp_path / "empty"))
    with pytest.raises(TokenFileError, match="shorter than 16"):
        TokenFile(_write(tmp_path / "weak", "hunter2"))


def test_read_cookie_login_for_the_page(app: Flask) -> None:
    client = app.test_client()
    assert client.post("/api/v1/session", json={"token": "wrong-token-0123456789abcdef"}).status_code == 401
    assert client.get_cookie("podflame_read") is None
    r = client.post("/api/v1/session", json={"token": READ})
    assert r.status_code == 204
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/v1/labels").status_code == 200  # the cookie now carries the read token
    assert client.post("/api/v1/ingest", data=_body()).status_code == 401  # never the ingest one
    assert client.delete("/api/v1/session").status_code == 204
    assert client.get("/api/v1/labels").status_code == 401


def test_cross_origin_writes_are_refused_and_store_nothing(tmp_path: Path) -> None:
    """No tokens (the `make run` case): a page on another origin must still not write."""
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0})
    client = app.test_client()
    try:
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": "http://localhost", "Content-Type": "text/plain"},  # same origin, simple type
                        {"Origin": "http://localhost"}):  # no content type: a no-cors fetch can send that too
            r = client.post("/api/v1/ingest", data=_body(), headers=headers)
            assert r.status_code == 403, headers
            assert "error" in r.json
        assert client.post("/api/v1/session", json={"token": READ}, headers={"Origin": "http://evil.example"}
                           ).status_code == 403
        assert _stored(app) == []
        # the page's own origin with a non-simple type, the agent and curl (no Origin) still write
        assert client.post("/api/v1/ingest", data=_body(), headers={
            "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin",
            "Content-Type": "application/octet-stream"}).status_code == 200
        assert client.post("/api/v1/ingest", data=_body(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 200
        # cross-origin reads are answered (no CORS headers: the browser does not hand them to the page)
        r = client.get("/api/v1/labels", headers={"Origin": "http://evil.example"})
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    finally:
        app.extensions["podflame.store"].close()


def test_allowed_origins_may_write(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0,
                      "ALLOWED_ORIGINS": ["https://podflame.example"]})
    try:
        r = app.test_client().post("/api/v1/ingest", data=_body(), headers={
            "Origin": "https://podflame.example", "Content-Type": "application/octet-stream"})
        assert r.status_code == 200
    finally:
        app.extensions["podflame.store"].close()


def test_host_check_stops_dns_rebinding_on_loopback(tmp_path: Path) -> None:
    config = serving_config(str(tmp_path), "127.0.0.1")
    assert config["ALLOWED_HOSTS"] is not None and "localhost" in config["ALLOWED_HOSTS"]
    app = create_app({**config, "MAINTENANCE_SECONDS": 0})
    client = app.test_client()
    try:
        r = client.post("/api/v1/ingest", data=_body(), headers={"Host": "rebind.evil.example:7070"})
        assert r.status_code == 403 and "rebind.evil.example" in r.json["error"]
        assert client.get("/api/v1/labels", headers={"Host": "rebind.evil.example"}).status_code == 403
        assert _stored(app) == []
        for host in ("localhost:7070", "127.0.0.1:7070", "[::1]:7070", "LOCALHOST"):
            assert client.get("/api/v1/labels", headers={"Host": host}).status_code == 200, host
        assert client.get("/healthz", headers={"Host": "10.1.2.3:7070"}).status_code == 200  # probes
    finally:
        app.extensions["podflame.store"].close()
    # beyond loopback, any Host unless --allowed-hosts names them
    assert serving_config(str(tmp_path), "0.0.0.0", insecure=True)["ALLOWED_HOSTS"] is None
    assert serving_config(str(tmp_path), "0.0.0.0", insecure=True,
                          allowed_hosts="podflame.example")["ALLOWED_HOSTS"] == ["podflame.example"]


def test_exposure_needs_both_tokens_or_insecure(tmp_path: Path) -> None:
    ingest, read = _write(tmp_path / "i", INGEST), _write(tmp_path / "r", READ)
    with pytest.raises(InvalidInput, match="--ingest-token-file and --read-token-file"):
        serving_config(str(tmp_path), "0.0.0.0")
    with pytest.raises(InvalidInput, match="--read-token-file"):
        serving_config(str(tmp_path), "10.0.0.5", ingest_token_file=str(ingest))
    serving_config(str(tmp_path), "0.0.0.0", ingest_token_file=str(ingest), read_token_file=str(read))
    serving_config(str(tmp_path), "0.0.0.0", insecure=True)
    serving_config(str(tmp_path), "::1")


def test_server_command_refuses_a_non_loopback_listen_without_tokens(tmp_path: Path) -> None:
    """The real command, as an operator runs it: exits at once with the reason, binds nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODFLAME_")}
    out = subprocess.run([str(Path(sys.executable).parent / "podflame"), "server", "--listen", "0.0.0.0:7399",
                          "--data", str(tmp_path / "data")], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out
    assert "refusing to listen on 0.0.0.0 without access control" in out.stderr
    assert "--insecure" in out.stderr
    assert not (tmp_path / "data").exists()  # refused before the store was created
