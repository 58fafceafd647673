"""The server gzips JSON answers for clients that accept it (web/server/ui.py `_compress`), and only them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from podflame.model import Frame, Line, Profile
from tests.builders import ingest
from web.server.app import create_app


def _client(tmp_path: Path):
    app = create_app({"DATA_DIR": str(tmp_path / "data")})
    client = app.test_client()
    p = Profile(labels={"cgroup": "/x.slice"}, start_ns=0, duration_ns=10**10, period_ns=10**7)
    for i in range(300):  # enough distinct names for an answer over the 1 KiB threshold
        p.add((Frame(0x1000, lines=(Line("main"),)), Frame(0x2000 + i, lines=(Line(f"function_{i:04d}"),))), i + 1)
    ingest(client, [p], time="1000")
    return app, client


def test_json_is_gzipped_only_when_accepted(tmp_path: Path) -> None:
    app, client = _client(tmp_path)
    try:
        url = "/api/v1/flamegraph?from=900&to=1100"
        plain = client.get(url)
        assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
        zipped = client.get(url, headers={"Accept-Encoding": "br, gzip;q=0.8"})
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in zipped.headers["Vary"]
        assert len(zipped.data) < len(plain.data) / 3
        assert json.loads(gzip.decompress(zipped.data)) == plain.json
        assert plain.json["total"] == sum(range(1, 301))
        refused = client.get(url, headers={"Accept-Encoding": "gzip;q=0, identity"})
        assert "Content-Encoding" not in refused.headers and refused.data == plain.data
        # Small answers and errors stay as they are.
        small = client.get("/api/v1/types?from=900&to=1100", headers={"Accept-Encoding": "gzip"})
        assert "Content-Encoding" not in small.headers and small.json["types"]
        bad = client.get("/api/v1/flamegraph?query={", headers={"Accept-Encoding": "gzip"})
        assert bad.status_code == 400 and "error" in bad.json
    finally:
        app.extensions["podflame.store"].close()


def test_the_page_is_compressed_once_per_distinct_body(tmp_path: Path, monkeypatch) -> None:
    """The page (160 KB with its inlined scripts) is the same bytes on every visit: its gzip is kept, so a
    navigation's first byte does not wait on level-6 compression; a different page (another query) is its own."""
    from web.server import ui

    app, client = _client(tmp_path)
    calls: list[int] = []
    real = gzip.compress
    monkeypatch.setattr(ui.gzip, "compress", lambda data, **kw: calls.append(len(data)) or real(data, **kw))
    monkeypatch.setattr(ui, "_page_gzip", {})
    try:
        first = client.get("/", headers={"Accept-Encoding": "gzip"})
        again = client.get("/", headers={"Accept-Encoding": "gzip"})
        assert first.headers["Content-Encoding"] == "gzip" and first.data == again.data
        assert b"podflame-app" in gzip.decompress(again.data)
        assert len(calls) == 1
        other = client.get("/?query=%7Bpod%3D%22x%22%7D", headers={"Accept-Encoding": "gzip"})
        assert b'{pod=\\"x\\"}' in gzip.decompress(other.data) or b"pod=&#34;x&#34;" in gzip.decompress(other.data)
        assert len(calls) == 2
        # API answers are not kept this way (each is its own).
        client.get("/api/v1/flamegraph?from=900&to=1100&format=json", headers={"Accept-Encoding": "gzip"})
        assert len(ui._page_gzip) == 2
    finally:
        app.extensions["podflame.store"].close()
