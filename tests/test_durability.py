"""Durability: SIGKILL the server in the middle of a stream of ingests, restart, and check the data.

Every ingest the server acknowledged (HTTP 200) must be queryable after the restart, exactly; an
ingest that was in flight must be entirely there or entirely absent (nothing half-written).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.synthetic import PERIOD_NS, S, drain, make_node
from podflame import pprof
from tests.conftest import ROOT

PODS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The real server process (`podflame server`), its output in a file so a full pipe never stalls it."""
    port = _free_port()
    log = data.parent / f"server-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from podflame.cli import main; main()", "server",
                                 "--listen", f"127.0.0.1:{port}", "--data", str(data)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PODFLAME_MAINTENANCE_SECONDS": "0"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if f"127.0.0.1:{port}/" in log.read_text(errors="replace"):
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text(errors='replace')[-2000:]}")


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_ingest_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pods = make_node(pods=PODS, stacks_per_pod=150)
    t0 = 1_795_000_000 * S
    sent: dict[int, int] = {}  # seq -> samples total
    acked: set[int] = set()
    seq = 0
    rng = random.Random(0)
    for cycle in range(3):
        proc, port = _start(data)
        stop = threading.Event()

        def stream(port: int = port, stop: threading.Event = stop) -> None:
            nonlocal seq
            while not stop.is_set():
                seq += 1
                profiles = drain(pods, t0 + seq * 10 * S, seed=seq)
                sent[seq] = sum(p.total() for p in profiles)
                try:
                    status, _ = _request(port, "POST", f"/api/v1/ingest?node=n1&seq={seq}", pprof.encode(profiles))
                except OSError:
                    return  # the server died with this request in flight
                assert status == 200
                acked.add(seq)

        writer = threading.Thread(target=stream)
        writer.start()
        # Let a few ingests land (however loaded the machine is), then kill at a random moment.
        target = len(acked) + 6 + rng.randint(0, 20)
        deadline = time.monotonic() + 120
        while len(acked) < target and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.random() * 0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        writer.join(30)
        assert not writer.is_alive()
        assert len(acked) > 5 * (cycle + 1), "too few ingests before the kill to mean anything"

    proc, port = _start(data)
    try:
        status, body = _request(port, "GET", "/api/v1/label/seq/values?from=0&to=now%2B1h")
        assert status == 200
        present = {int(v) for v in json.loads(body)["values"]}
        assert acked <= present, f"acknowledged but lost: {sorted(acked - present)}"
        print(f"{len(sent)} sent, {len(acked)} acknowledged, in flight at the kills and stored: "
              f"{sorted(present - acked)}, not stored: {sorted(set(sent) - present)}")
        assert present <= set(sent)
        for n in sorted(present):
            for sample_type, factor in (("samples", 1), ("cpu", PERIOD_NS)):
                status, body = _request(port, "GET", f"/api/v1/series?from=0&to=now%2B1h&by=seq&type={sample_type}"
                                                     f"&query=%7Bseq%3D%22{n}%22%7D")
                rows = json.loads(body)["series"]
                assert [r["value"] for r in rows] == [sent[n] * factor], (n, sample_type)
            status, body = _request(port, "GET", f"/api/v1/label/pod/values?from=0&to=now%2B1h"
                                                 f"&query=%7Bseq%3D%22{n}%22%7D")
            assert len(json.loads(body)["values"]) == PODS, n
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    # Every blob file on disk is one the index points at (orphans of the kills were swept at open).
    db = sqlite3.connect(data / "index.sqlite")
    known = {r[0] for r in db.execute("SELECT id FROM blobs")}
    db.close()
    on_disk = {int(f.stem) for f in (data / "blobs").rglob("*.pfz")}
    assert on_disk <= known
