"""HTTPS in front of waitress: an asyncio loop that ends TLS and pipes bytes to waitress's private Unix socket.

waitress reads each request whole (headers and a bounded body) in its event loop before a request thread
takes it, and buffers answers for clients that read slowly, so a slow client never holds a thread; but it
has no TLS. This front keeps that property under TLS: it parses no HTTP, it only relays bytes, each
connection in a coroutine (a stalled or silent TLS client costs a socket, not a thread), with the
standard `ssl` module's handshake timeout, and backpressure both ways (a client that does not read stops
this relay, and waitress buffers the answer). waitress's own idle timeout closes a stalled connection,
which closes the client's here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading

from web.server.connlimits import DEFAULT_PER_CLIENT, refusal
from web.server.jsonerrors import LINGER_SECONDS

LINGER_IDLE_SECONDS = 0.25  # a client that sends nothing this long after the answer is not writing a body


class TlsFront:
    """Accepts TLS on `sock` (bound and listening) and relays each connection to the Unix socket `upstream`."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, upstream: str, handshake_timeout: float,
                 per_client: int = DEFAULT_PER_CLIENT) -> None:
        self._sock, self._context, self._upstream = sock, context, upstream
        self._handshake_timeout = handshake_timeout
        self._per_client = per_client
        self._clients: dict[str, int] = {}  # open relays per client address (waitress sees only this front)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podflame-tls", daemon=True)
        self._thread.start()
        self._started.wait(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(
            self._relay, sock=self._sock, ssl=self._context, ssl_handshake_timeout=self._handshake_timeout))
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._clients[host] = self._clients.get(host, 0) + 1
        try:
            if self._clients[host] > self._per_client:
                writer.write(refusal("503 Service Unavailable", f"too many connections from {host} "
                                     f"(at most {self._per_client} at once)"))
                with contextlib.suppress(OSError, ssl.SSLError):
                    await asyncio.wait_for(writer.drain(), self._handshake_timeout)
                writer.close()
                return
            await self._relay_up(reader, writer)
        finally:
            self._clients[host] -= 1
            if not self._clients[host]:
                del self._clients[host]

    async def _relay_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self._upstream)
        except OSError:
            writer.close()
            return
        relayed = [0]  # bytes the request side has relayed so far
        request = asyncio.ensure_future(_pipe(reader, up_writer, half_close=True, relayed=relayed))
        try:
            await _pipe(up_reader, writer, close=False)  # the answer side ends with waitress's connection
            # waitress may have answered before the body was read (a 413) and be discarding the rest of it
            # (web/server/jsonerrors.py): a TLS connection has no half-close, so closing the client's now
            # would reset a client still writing before it reads the answer. Relay its bytes while they keep
            # coming (a client that waits for the end of the answer sends none: it gets it at once)
            deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
            while not request.done() and asyncio.get_running_loop().time() < deadline:
                before = relayed[0]
                await asyncio.wait({request}, timeout=LINGER_IDLE_SECONDS)
                if relayed[0] == before:
                    break
        finally:  # also when stop() cancels this relay
            request.cancel()
            for w in (up_writer, writer):
                w.close()
                with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
                    await w.wait_closed()  # takes the connection's end (a reset) so asyncio does not log it

    def stop(self) -> None:
        """Closes the listener and every open relay, then the loop."""
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _close_all(self) -> None:
        relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in relays:
            t.cancel()
        await asyncio.gather(*relays, return_exceptions=True)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, half_close: bool = False,
                close: bool = True, relayed: list[int] | None = None) -> None:
    """Bytes from src to dst until src ends (counted in `relayed`); then dst gets end-of-file (the request
    side: waitress still answers) or is closed (unless `close` is false: the caller closes it)."""
    try:
        while data := await src.read(1 << 16):
            dst.write(data)
            await dst.drain()
            if relayed is not None:
                relayed[0] += len(data)
        if half_close and dst.can_write_eof():
            dst.write_eof()
            return
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass  # a reset or a bad TLS record ends this connection, and only it
    if close:
        with contextlib.suppress(OSError):
            dst.close()
