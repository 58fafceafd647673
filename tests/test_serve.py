"""The production server as `podflame server` runs it: waitress on a real socket, TLS with a certificate
made here (openssl), the agent's uploader verifying it with --ca and sending its token from a file,
chunked bodies, and liveness/readiness that say the truth.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Profile
from profiler.upload import Uploader
from web.server.app import create_app, serve

INGEST = "ingest-token-0123456789abcdef"
READ = "read-token-0123456789abcdef01"


def _profile(comm: str) -> Profile:
    frame = Frame(0x1000, None, FrameKind.NATIVE, (Line("main", "main.c", 3),))
    return Profile({"comm": comm}, time.time_ns() - 60 * 10**9, 10**9, 10_000_000, {(frame,): 7})


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, its own CA (as a private CA's leaf would be verified)."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is required to make the test certificate"
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "ingest").write_text(INGEST + "\n")
    (tmp_path / "read").write_text(READ + "\n")
    return tmp_path / "ingest", tmp_path / "read"


@pytest.fixture
def https_server(tmp_path: Path, tokens: tuple[Path, Path]) -> Iterator[tuple[str, Path]]:
    """`podflame server` itself, with TLS and both token files, on a free loopback port."""
    cert, key = _self_signed(tmp_path, "server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODFLAME_")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "podflame"), "server", f"--listen=127.0.0.1:{port}",
                             f"--data={tmp_path / 'data'}", f"--tls-cert={cert}", f"--tls-key={key}",
                             f"--ingest-token-file={tokens[0]}", f"--read-token-file={tokens[1]}", "--threads=4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(f"{url}/readyz", context=context)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield url, cert
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "listening on https://127.0.0.1" in out, (out, err)
    assert "4 threads, tokens required" in out


def test_agent_uploads_over_tls_verified_with_ca_and_its_token_file(https_server: tuple[str, Path],
                                                                    tokens: tuple[Path, Path], tmp_path: Path) -> None:
    url, cert = https_server
    context = ssl.create_default_context(cafile=str(cert))
    uploader = Uploader(url, node="n1", token_file=str(tokens[0]), ca_file=str(cert))
    try:
        uploader([_profile("tls-app")])
        assert uploader.flush(timeout=20), "the batch was not delivered"
    finally:
        uploader.close(timeout=5)
    status, body = _get(f"{url}/api/v1/label/comm/values?from=now-1h", READ, context)
    assert status == 200 and json.loads(body) == {"values": ["tls-app"]}
    assert _get(f"{url}/api/v1/label/comm/values?from=now-1h", None, context)[0] == 401
    # plain HTTP to the TLS port gets no answer it could mistake for data
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(url.replace("https", "http") + "/readyz", timeout=5).read()


def test_agent_refuses_a_server_its_ca_did_not_sign_and_keeps_the_batch(https_server: tuple[str, Path],
                                                                         tokens: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    url, cert = https_server
    other_ca, _ = _self_signed(tmp_path, "other")
    uploader = Uploader(url, node="n2", token_file=str(tokens[0]), ca_file=str(other_ca))
    try:
        uploader([_profile("mitm")])
        assert not uploader.flush(timeout=2)  # certificate verify failed: retried, never sent
        assert len(uploader.backlog) == 1
    finally:
        uploader.close(timeout=0.1)
    context = ssl.create_default_context(cafile=str(cert))
    assert json.loads(_get(f"{url}/api/v1/label/comm/values?from=now-1h", READ, context)[1]) == {"values": []}


def test_a_wrong_agent_token_keeps_the_batch_until_the_file_is_fixed(tmp_path: Path, tokens: tuple[Path, Path]) -> None:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0,
                      "INGEST_TOKEN_FILE": str(tokens[0]), "READ_TOKEN_FILE": str(tokens[1])})
    server = serve(app, "127.0.0.1", 0, threads=2)
    agent_token = tmp_path / "agent-token"
    agent_token.write_text("stale-token-0123456789abcdef\n")
    uploader = Uploader(server.url, node="n3", token_file=str(agent_token))
    try:
        uploader([_profile("late")])
        assert not uploader.flush(timeout=1.5)  # 401: retried, not dropped
        assert app.extensions["podflame.store"].types(0, 2**62) == []
        agent_token.write_text(INGEST + "\n")  # the Secret is fixed: the next retry uses the new token
        assert uploader.flush(timeout=20)
        assert ("samples", "count") in app.extensions["podflame.store"].types(0, 2**62)
    finally:
        uploader.close(timeout=5)
        server.shutdown()
        app.extensions["podflame.store"].close()


def test_the_server_takes_chunked_bodies_and_answers_json_errors(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0})
    server = serve(app, "127.0.0.1", 0, threads=2)
    try:
        body = pprof.encode([_profile("chunked")])
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        conn.request("POST", "/api/v1/ingest", body=iter([body[:100], body[100:]]),
                     headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 200, r.read()
        assert json.loads(r.read())["profiles"] >= 1
        conn.close()
        status, answer = _get(f"{server.url}/api/v1/label/comm/values?from=now-1h")
        assert status == 200 and json.loads(answer) == {"values": ["chunked"]}
        status, answer = _get(f"{server.url}/api/v1/nope")
        assert status == 404 and "error" in json.loads(answer)
    finally:
        server.shutdown()
        app.extensions["podflame.store"].close()


def test_liveness_and_readiness_tell_the_truth(tmp_path: Path) -> None:
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 3600})
    client = app.test_client()
    store, maintenance = app.extensions["podflame.store"], app.extensions["podflame.maintenance"]
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ok"}
    # a write held longer than the probe waits: not ready (busy), still alive
    assert store._lock.acquire(timeout=5)
    import threading

    answer: dict[str, object] = {}
    t = threading.Thread(target=lambda: answer.update(r=client.get("/readyz")))
    t.start()
    t.join(timeout=10)
    store._lock.release()
    assert answer["r"].status_code == 503 and "write lock" in answer["r"].json["reason"]  # type: ignore[attr-defined]
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    maintenance.stop()  # retention would no longer run: a restart helps
    r = client.get("/healthz")
    assert r.status_code == 503 and "maintenance" in r.json["reason"]
    store.close()
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").json["reason"] == "the store is closed"


def test_ingests_beyond_the_concurrency_limit_get_503_and_leave_threads_to_reads(tmp_path: Path) -> None:
    import threading

    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0, "INGEST_CONCURRENCY": 1,
                      "INGEST_WAIT_SECONDS": 0.3})
    store = app.extensions["podflame.store"]
    body = pprof.encode([_profile("gated")])
    first: dict[str, object] = {}
    assert store._lock.acquire(timeout=5)  # the one writer is busy: the first ingest waits inside put
    try:
        t = threading.Thread(target=lambda: first.update(r=app.test_client().post("/api/v1/ingest", data=body)))
        t.start()
        deadline = time.monotonic() + 10
        while app.extensions["podflame.ingest_slots"]._value != 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the first ingest holds the only slot
        r = app.test_client().post("/api/v1/ingest", data=body)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert "busy storing other ingests" in r.json["error"]
        assert app.test_client().get("/healthz").status_code == 200  # probes do not queue behind ingest
    finally:
        store._lock.release()
    t.join(timeout=10)
    assert first["r"].status_code == 200  # type: ignore[attr-defined]
    assert store.label_values("comm", 0, 2**62) == ["gated"]
    assert app.test_client().post("/api/v1/ingest", data=body).status_code == 200  # the slot was given back
    store.close()


def test_slow_senders_hold_no_ingest_turn(tmp_path: Path) -> None:
    """Two clients that send headers and a trickle of body (a slow link, or a byte every 29 s on purpose)
    used to hold both ingest turns while their bodies arrived: every agent's ingest then got 503 "busy
    storing" while nothing was stored. A turn is now taken once the body is here."""
    app = create_app({"DATA_DIR": str(tmp_path), "MAINTENANCE_SECONDS": 0, "INGEST_CONCURRENCY": 2,
                      "INGEST_WAIT_SECONDS": 1})
    server = serve(app, "127.0.0.1", 0, threads=4)
    slow: list[socket.socket] = []
    try:
        body, slow_body = pprof.encode([_profile("fast")]), pprof.encode([_profile("slow")])
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
            s.sendall(b"POST /api/v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(slow_body) + slow_body[:2])
            slow.append(s)
        time.sleep(0.5)  # both slow requests are in their handlers, reading
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        conn.request("POST", "/api/v1/ingest", body=body, headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        assert r.status == 200, r.read()
        conn.close()
        for s in slow:  # the slow ones finish too, and are stored like any other
            s.sendall(slow_body[2:])
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        status, answer = _get(f"{server.url}/api/v1/label/comm/values?from=now-1h")
        assert status == 200 and json.loads(answer) == {"values": ["fast", "slow"]}
    finally:
        for s in slow:
            s.close()
        server.shutdown()
        app.extensions["podflame.store"].close()


def _slow_client(port: int, payload: bytes, context: ssl.SSLContext | None) -> socket.socket:
    s: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
    if context is not None:
        s = context.wrap_socket(s, server_hostname="127.0.0.1")
    s.sendall(payload)
    return s


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_slow_clients_hold_no_request_thread(tmp_path: Path, scheme: str) -> None:
    """More clients than request threads trickle their headers or their bodies (a slow link, or a byte
    every few seconds on purpose). Under cheroot each held a thread until --timeout (here 120 s), and a
    probe or a query behind them waited that long. Requests are now read whole before a thread takes one:
    the normal request is answered while every slow one is still open, and the slow bodies, finished
    later, are stored like any other."""
    threads = 2
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0})
    context = None
    tls = None
    if scheme == "https":
        cert, key = _self_signed(tmp_path, "server")
        tls = (str(cert), str(key))
        context = ssl.create_default_context(cafile=str(cert))
    server = serve(app, "127.0.0.1", 0, threads=threads, timeout=120, tls=tls)
    slow: list[socket.socket] = []
    try:
        body = pprof.encode([_profile("slow-body")])
        for _ in range(threads + 2):
            slow.append(_slow_client(server.server_port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow:",
                                     context))
        bodies = []
        for _ in range(threads + 2):
            bodies.append(_slow_client(server.server_port, b"POST /api/v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                       b"Content-Length: %d\r\n\r\n" % len(body) + body[:3], context))
        slow += bodies
        time.sleep(0.5)  # every slow request has arrived as far as it goes
        # the client gives up long before the server would time the slow ones out (120 s)
        status, answer = _get(f"{server.url}/healthz", context=context)
        assert status == 200 and json.loads(answer) == {"status": "ok"}
        for s in bodies:  # nothing is lost: the slow bodies, once whole, are answered and stored
            s.sendall(body[3:])
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        status, answer = _get(f"{server.url}/api/v1/label/comm/values?from=now-1h", context=context)
        assert status == 200 and json.loads(answer) == {"values": ["slow-body"]}
    finally:
        for s in slow:
            s.close()
        server.shutdown()
        app.extensions["podflame.store"].close()


def _read_until_closed(sock: socket.socket) -> bytes:
    answered = b""
    with sock:
        while part := sock.recv(4096):
            answered += part
    return answered


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_oversize_bodies_are_refused_whole_or_chunked(tmp_path: Path, scheme: str) -> None:
    """A declared oversize body is refused (413) before it is read; a chunked one is read only up to the
    limit (it has no length to check first), then refused; neither stores anything. A client still writing
    its body when the refusal comes reads the 413 (a reset would lose it), through the TLS front too."""
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0, "MAX_BODY_BYTES": 1000})
    tls, context = None, None
    if scheme == "https":
        cert, key = _self_signed(tmp_path, "server")
        tls = (str(cert), str(key))
        context = ssl.create_default_context(cafile=str(cert))
    server = serve(app, "127.0.0.1", 0, threads=2, tls=tls)

    def post(body: object, chunked: bool = False) -> tuple[int, dict[str, str]]:
        conn = (http.client.HTTPSConnection("127.0.0.1", server.server_port, timeout=10, context=context)
                if context else http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10))
        try:
            conn.request("POST", "/api/v1/ingest", body=body, encode_chunked=chunked)  # type: ignore[arg-type]
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    try:
        assert post(b"\0" * 2000) == (413, {"error": "body is over the 1000 byte limit (MAX_BODY_BYTES)"})
        # written the ordinary way, chunk by chunk or bigger than the socket buffers
        for body, chunked in ((iter([b"\0" * 600] * 10), True), (b"\0" * (8 << 20), False)):
            status, answer = post(body, chunked)
            assert status == 413 and "MAX_BODY_BYTES" in answer["error"]
        if context is None:  # a malformed chunk: JSON too
            bad = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
            bad.sendall(b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            head, _, raw = _read_until_closed(bad).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head and "error" in json.loads(raw)
        assert app.extensions["podflame.store"].types(0, 2**62) == []
    finally:
        server.shutdown()
        app.extensions["podflame.store"].close()
