"""The server's per-connection limits (web/server/connlimits.py): a request read whole within a deadline, and a
share of the connections per client address, so trickling clients cannot hold the server."""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_serve import _self_signed
from web.server.app import CONNECTION_LIMIT, create_app, serve


def _answer(s: socket.socket, within: float) -> bytes:
    """What the server sends until it closes the connection (or `within` seconds pass)."""
    s.settimeout(within)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _said_something(s: socket.socket) -> bool:
    """Whether the server answered or closed (select() cannot take the descriptors past 1024 a full run has)."""
    s.settimeout(0)  # with a timeout, Python waits for readability first
    try:
        s.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _status_and_error(data: bytes) -> tuple[int, str]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_request_trickled_past_its_deadline_gets_408_and_is_closed(tmp_path: Path, scheme: str) -> None:
    """A byte every 0.2 s is never idle (the idle timeout here is 120 s), so before the deadline such a
    request held its connection for ever; now it gets a JSON 408 once the deadline passes, while a normal
    request is answered at once."""
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0})
    tls = context = None
    if scheme == "https":
        cert, key = _self_signed(tmp_path, "server")
        tls, context = (str(cert), str(key)), ssl.create_default_context(cafile=str(cert))
    server = serve(app, "127.0.0.1", 0, threads=2, timeout=120, tls=tls, request_deadline=2)
    try:
        s: socket.socket = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
        if context is not None:
            s = context.wrap_socket(s, server_hostname="127.0.0.1")
        payload = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        t = time.monotonic()
        data = b""
        s.settimeout(0.2)
        for i in range(len(payload)):
            s.sendall(payload[i:i + 1])
            try:  # (a TLS socket is readable on a session ticket too: only bytes of an answer count)
                data = s.recv(4096)
            except TimeoutError:
                continue
            break  # the server answered (or closed): stop sending
        data += _answer(s, 10)
        took = time.monotonic() - t
        s.close()
        assert data, f"no answer after {took:.1f} s of trickling"
        status, error = _status_and_error(data)
        assert status == 408 and "within 2 s" in error
        assert 2 <= took < 15
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10, context=context) as r:
            assert r.status == 200
    finally:
        server.shutdown()
        app.extensions["podflame.store"].close()


def test_one_address_cannot_fill_the_connection_limit(tmp_path: Path) -> None:
    """512 connections from one address, each part of a request: waitress stopped accepting at its connection
    limit, and a client from another address waited in the backlog (here until it gave up). Now one address
    holds at most its share: the rest are answered 503 at once, and the other client is served."""
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0})
    server = serve(app, "127.0.0.1", 0, threads=2, timeout=120)
    held: list[socket.socket] = []
    try:
        for _ in range(CONNECTION_LIMIT):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))  # the attacker's address (all of 127/8 is loopback)
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", server.server_port))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            except OSError:  # refused, or reset by a refusal already
                s.close()
                continue
            held.append(s)
        time.sleep(1)
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
        refused = []
        for s in held:
            if _said_something(s):
                refused.append(_answer(s, 5))
        assert len(held) - len(refused) <= 128  # the default share: a quarter of the limit
        answered = [_status_and_error(d) for d in refused if d]
        assert answered and all(code == 503 and "too many connections from 127.0.0.2" in e for code, e in answered)
    finally:
        for s in held:
            s.close()
        server.shutdown()
        app.extensions["podflame.store"].close()


def test_the_tls_front_caps_connections_per_address(tmp_path: Path) -> None:
    """Behind TLS waitress sees only the front's Unix socket, so the front counts client addresses itself."""
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "MAINTENANCE_SECONDS": 0})
    cert, key = _self_signed(tmp_path, "server")
    context = ssl.create_default_context(cafile=str(cert))
    server = serve(app, "127.0.0.1", 0, threads=2, timeout=120, tls=(str(cert), str(key)), per_client=3)
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(5):
            s = context.wrap_socket(socket.create_connection(("127.0.0.1", server.server_port), timeout=10),
                                    server_hostname="127.0.0.1")
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            held.append(s)
        time.sleep(0.5)
        over = [_answer(s, 5) for s in held[3:]]
        assert all(_status_and_error(d)[0] == 503 for d in over), over
        for s in held[:3]:  # the first three are still open, unanswered
            s.settimeout(0.2)
            with pytest.raises(TimeoutError):
                s.recv(4096)
        for s in held[:3]:
            s.close()
        time.sleep(0.5)
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10, context=context) as r:
            assert r.status == 200
    finally:
        for s in held:
            s.close()
        server.shutdown()
        app.extensions["podflame.store"].close()
