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
