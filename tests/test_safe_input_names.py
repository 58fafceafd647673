"""Hostile names through every view and download: function and file names, mapping paths, label values and
sample types with markup, script, SVG, control characters, RTL overrides and great length, ingested through the
API like any agent's profile.

Each answer keeps every name exactly as data (JSON strings, pprof strings) or, in a text format, as text that
cannot be read as more than one name or line; headers stay well-formed; nothing is a 5xx. The page draws names
client-side as text (tests/test_ui_escaping.py checks the JS has no HTML sinks); no answer here is HTML.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile

S = 1_000_000_000
T = 1_795_000_000
HOSTILE = [
    "<script>alert(1)</script>",
    "\"'><svg onload=alert(1)><img src=x onerror=alert(2)>",
    "</script><!--<style>*{}</style>",
    "a;b;c",  # the folded format's frame separator
    "two\nlines\r\nand a tab\t",
    "\u202egnp.exe\u202c and \u2066isolate\u2069",  # RTL override, isolates
    "\x00nul \x01\x07\x1b[31mansi\x7f",
    "{{7*7}} ${7*7} %s %n",
    "&amp; &lt; &#x3c; \\u003c",
    "🔥 émoji \uff1cfullwidth\uff1e",
    "javascript:alert(1)",
    "x" * 20_000,
]


def _profiles() -> list[Profile]:
    exe = Mapping(0x1000, 0x90000, 0, "/usr/bin/<svg onload=alert(1)>\n\u202e", "b1")
    frames = [Frame(0x1000 + 16 * i, exe, FrameKind.NATIVE, (Line(name, f"<{i}>.c\n", i + 1),))
              for i, name in enumerate(HOSTILE)]
    out = []
    for j, (label, stype) in enumerate([("<b>pod</b>\u202e", "samples"), ("p\";\n", 'cpu"\r\nX-Evil: 1')]):
        p = Profile(labels={"pod": label, "comm": "</script>"}, start_ns=T * S, duration_ns=10 * S,
                    period_ns=10_000_000, sample_type=stype, unit="count")
        for i in range(len(frames)):
            p.add(tuple(frames[: i + 1]), i + 1 + j)
        p.add((frames[0], frames[3], frames[4]), 5)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from web.server.app import create_app

    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("names")), "MAINTENANCE_SECONDS": 0})
    c = app.test_client()
    for p in _profiles():
        r = c.post(f"/api/v1/ingest?node=%3Cnode%3E&time={T}", data=pprof.encode([p]))
        assert r.status_code == 200, r.json
    yield c
    app.extensions["podflame.store"].close()


RANGE = {"from": str(T - 60), "to": str(T + 60)}


def _names(obj: Any) -> set[str]:
    """Every string anywhere in a JSON value."""
    if isinstance(obj, str):
        return {obj}
    if isinstance(obj, dict):
        return set().union(*(_names(v) | _names(k) for k, v in obj.items())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_names(v) for v in obj)) if obj else set()
    return set()


def _json(r: Any) -> Any:
    assert r.status_code == 200, r.data[:300]
    assert r.mimetype == "application/json"
    assert r.headers.get("X-Content-Type-Options") == "nosniff"
    return json.loads(r.data)


@pytest.mark.parametrize("stype", ["samples", 'cpu"\r\nX-Evil: 1'])
def test_json_views_keep_every_name_exactly(client: Any, stype: str) -> None:
    q = {**RANGE, "type": stype}
    flame = _json(client.get("/api/v1/flamegraph", query_string=q))
    assert set(HOSTILE) <= _names(flame)
    speed = _json(client.get("/api/v1/speedscope", query_string=q))
    assert set(HOSTILE) <= {f["name"] for f in speed["shared"]["frames"]}
    diff = _json(client.get("/api/v1/diff", query_string={**q, "base_from": RANGE["from"], "base_to": RANGE["to"]}))
    assert set(HOSTILE) <= _names(diff)
    table = _json(client.get("/api/v1/series", query_string={**q, "by": "pod,comm"}))
    assert {"<b>pod</b>\u202e", "p\";\n", "</script>"} & _names(table)
    values = _json(client.get("/api/v1/label/pod/values", query_string=RANGE))["values"]
    assert set(values) == {"<b>pod</b>\u202e", "p\";\n"}
    types = _json(client.get("/api/v1/types", query_string=RANGE))["types"]
    assert {"samples", 'cpu"\r\nX-Evil: 1'} <= {t["type"] for t in types}


@pytest.mark.parametrize("stype", ["samples", 'cpu"\r\nX-Evil: 1', "<svg onload=alert(1)>"])
def test_pprof_download_keeps_names_and_a_well_formed_header(client: Any, stype: str) -> None:
    r = client.get("/api/v1/pprof", query_string={**RANGE, "type": stype})
    assert r.status_code == 200, r.data[:300]
    disposition = r.headers["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition and "<" not in disposition
    assert disposition.startswith('attachment; filename="podflame-') and disposition.count('"') == 2
    if stype == "<svg onload=alert(1)>":
        return  # no such type stored: an empty profile
    names = {ln.function for p in pprof.decode(gzip.decompress(r.data)) for stack in p.samples
             for f in stack for ln in f.lines}
    assert set(HOSTILE) <= names


def test_folded_text_is_one_stack_per_line_with_a_count(client: Any) -> None:
    """Newlines would split a stack and `;` would add frames: each name is one frame of one line."""
    r = client.get("/api/v1/folded", query_string={**RANGE, "type": "samples"})
    assert r.status_code == 200 and r.mimetype == "text/plain"
    lines = r.data.decode().splitlines()
    assert len(lines) == len(HOSTILE) + 1  # the stacks of _profiles(), each once
    for line in lines:
        stack, _, count = line.rpartition(" ")
        assert int(count) > 0 and stack
    depths = sorted(len(line.rpartition(" ")[0].split(";")) for line in lines)
    assert depths == sorted([*range(1, len(HOSTILE) + 1), 3])
    for diffed in (client.get("/api/v1/folded", query_string={**RANGE, "type": "samples", "base_from": RANGE["from"],
                                                             "base_to": RANGE["to"]}),):
        assert diffed.status_code == 200
        for line in diffed.data.decode().splitlines():
            stack, base, comp = line.rsplit(" ", 2)
            assert int(base) >= 0 and int(comp) >= 0


def test_the_page_with_hostile_parameters_is_not_an_injection(client: Any) -> None:
    for text in HOSTILE[:4]:
        r = client.get("/", query_string={"query": f'{{pod="{text}"}}', "type": text})
        assert r.status_code == 200
        assert text.encode() not in r.data or not any(c in text for c in "<>\"'")


def test_names_survive_in_the_store_for_a_second_look(client: Any) -> None:
    """The same answers twice (the second from the query caches) keep the names."""
    q = {**RANGE, "type": "samples"}
    first = client.get("/api/v1/flamegraph", query_string=q).data
    assert client.get("/api/v1/flamegraph", query_string=q).data == first
