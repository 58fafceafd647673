"""Slow clients against the server's request threads: how long a normal request waits behind them.

`--clients` (default 9, more than the 8 default threads) connect and then stall in one of three ways:
`headers` (a request line and part of a header, never finished), `body` (headers and 2 of 1,000 body bytes),
`noread` (a GET of an 8 MiB answer, never read, with a 4 KiB receive buffer). Then one normal GET is timed.
Each server runs a tiny Flask app in this process with 8 threads and a 30 s timeout; the peers are the
servers weighed for web/server/app.py (docs/architecture.md): cheroot (the server before stop 17) and
hypercorn's WSGI mode, each measured only when importable (`pip install cheroot hypercorn`).

    .venv/bin/python bench/slow_clients.py [--clients 9] [--give-up 40]
    .venv/bin/python bench/slow_clients.py --hold 512 --give-up 20    # one address trickling 512 connections

Prints ONE JSON object: seconds to the normal answer per server and stall (`give_up` when it never came),
and podflame's over each peer's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask import Flask, request  # noqa: E402

STALLS = {
    "headers": b"GET / HTTP/1.1\r\nHost: x\r\n",
    "body": b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab",
    "noread": b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
}


def _app() -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/", "root", lambda: "ok")
    app.add_url_rule("/big", "big", lambda: "x" * (8 << 20))
    app.add_url_rule("/up", "up", lambda: str(len(request.get_data())), methods=["POST"])
    return app


def _podflame(app: Flask) -> tuple[int, Callable[[], None]]:
    from web.server.app import serve

    srv = serve(app, "127.0.0.1", 0, threads=8, timeout=30)
    return srv.server_port, srv.shutdown


def _cheroot(app: Flask) -> tuple[int, Callable[[], None]]:
    from cheroot import wsgi  # type: ignore[import-not-found]

    s = wsgi.Server(("127.0.0.1", 0), app, numthreads=8, max=8, timeout=30)
    s.prepare()
    threading.Thread(target=s.serve, daemon=True).start()
    return s.bind_addr[1], s.stop


def _hypercorn(app: Flask) -> tuple[int, Callable[[], None]]:
    from hypercorn.asyncio import serve  # type: ignore[import-not-found]
    from hypercorn.config import Config  # type: ignore[import-not-found]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "ERROR"
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    threading.Thread(target=lambda: loop.run_until_complete(serve(app, config, mode="wsgi",  # type: ignore[arg-type]
                                                                   shutdown_trigger=stop.wait)), daemon=True).start()
    time.sleep(1)

    def shutdown() -> None:
        loop.call_soon_threadsafe(stop.set)
    return port, shutdown


def _wait(port: int, stall: str, clients: int, give_up: float) -> float | str:
    socks = []
    try:
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if stall == "noread":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(STALLS[stall])
            socks.append(s)
        time.sleep(1)  # every stalled request is as far as it goes
        t = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=give_up)
        try:
            conn.request("GET", "/")
            answer = conn.getresponse().read()
        except OSError:
            return "give_up"
        finally:
            conn.close()
        assert answer == b"ok", answer
        return round(time.monotonic() - t, 3)
    finally:
        for s in socks:
            s.close()


def _hold(port: int, clients: int, give_up: float, seconds: float) -> dict[str, Any]:
    """`clients` connections from another loopback address (127.0.0.2) trickle a request a byte a second (never
    idle, never finished); then one normal GET from 127.0.0.1 is timed. Also how many of them the server
    still held after `seconds`, and how many it answered (a refusal) or closed."""
    socks: list[socket.socket] = []
    stop = threading.Event()
    for _ in range(clients):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        socks.append(s)
    line = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100_000

    def trickle() -> None:
        i = 0
        while not stop.is_set() and i < len(line):
            for s in socks:
                with contextlib.suppress(OSError):  # not connected yet (a full backlog), or closed by the server
                    s.send(line[i:i + 1])
            i += 1
            stop.wait(1.0)
    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(seconds)
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=give_up)
        try:
            conn.request("GET", "/")
            answer: float | str = round(time.monotonic() - t0, 3) if conn.getresponse().read() == b"ok" else "wrong"
        except OSError:
            answer = "give_up"
        finally:
            conn.close()
        ended = 0
        for s in socks:
            try:
                ended += s.recv(1) == b"" or True  # an answer (a refusal) or the end: the server let it go
            except BlockingIOError:
                pass  # still open, nothing said: held
            except OSError:
                ended += 1
        return {"normal_s": answer, "held": clients - ended, "let_go": ended}
    finally:
        stop.set()
        t.join(timeout=5)
        for s in socks:
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=9)
    ap.add_argument("--give-up", type=float, default=40.0, help="seconds the normal request waits at most")
    ap.add_argument("--hold", type=int, default=0, help="instead: this many connections from one other address "
                    "trickle a byte a second (512 fills waitress's connection limit); then a normal GET")
    ap.add_argument("--hold-seconds", type=float, default=3.0, help="how long they trickle before the GET")
    args = ap.parse_args()
    if args.hold:
        port, stop = _podflame(_app())
        try:
            print(json.dumps({"hold": args.hold, "after_s": args.hold_seconds,
                              "podflame": _hold(port, args.hold, args.give_up, args.hold_seconds)}))
        finally:
            stop()
        return
    servers: dict[str, Callable[[Flask], tuple[int, Callable[[], None]]]] = {
        "podflame": _podflame, "cheroot": _cheroot, "hypercorn": _hypercorn}
    out: dict[str, Any] = {"clients": args.clients, "threads": 8}
    for name, start in servers.items():
        try:
            port, stop = start(_app())
        except ImportError:
            out[name] = "not installed"
            continue
        try:
            out[name] = {stall: _wait(port, stall, args.clients, args.give_up) for stall in STALLS}
        finally:
            stop()
    mine = out["podflame"]
    for peer in ("cheroot", "hypercorn"):
        if isinstance(out[peer], dict):
            out[f"podflame_over_{peer}"] = {
                stall: round(mine[stall] / theirs, 4) if isinstance(theirs, float) and isinstance(mine[stall], float)
                else f"{mine[stall]} vs {theirs}" for stall, theirs in out[peer].items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
