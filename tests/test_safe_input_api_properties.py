"""Untrusted profiles through the real ingest API into a real store (hypothesis, derandomized, bounded counts).

The inputs: the real pprof files of other projects in /work/shared/corpus (tests/fixtures/corpus's copies when
absent) with bytes flipped, cut, repeated or inserted, plain or gzip (also gzip in gzip); and well-formed
profiles built field by field with what no profiler writes: huge string tables, deep stacks, a location listed
again and again in one stack, duplicate ids, values at and past int64, zero and negative values, no sample
type, no period type, unknown fields of every wire type, truncated varints, decompression bombs.

Whatever comes, each request gets either a 2xx whose stored samples are exactly what the profile holds, or a 4xx
with a JSON error and nothing stored: never a 5xx; within a bounded time; and with a bounded peak of Python
heap allocated while it is handled (tracemalloc: `_MEMORY_BOUND`, from the inflated-size limit set here).
"""

from __future__ import annotations

import gzip
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.test_safe_input_properties import mutate
from web.server.app import create_app
from web.store.selector import MATCH_ALL

CORPUS = Path("/work/shared/corpus/pprof")
S = 1_000_000_000
INFLATED = 2 << 20  # MAX_INFLATED_BYTES in this app: a bomb stops here
# Peak Python heap while one request is handled: the body, its inflated bytes, the parsed message and the
# store's columns are each a few times the inflated size at most.
_MEMORY_BOUND = 24 * INFLATED + (16 << 20)
CASES = settings(max_examples=60, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


# -- a protobuf writer, so the profiles can hold what the encoder would never write ------------------------

def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(n: int, v: int | bytes) -> bytes:
    if isinstance(v, int):
        return _varint(n << 3) + _varint(v)
    return _varint(n << 3 | 2) + _varint(len(v)) + v


def _packed(n: int, vs: list[int]) -> bytes:
    return _field(n, b"".join(_varint(v) for v in vs))


def build(*, strings: list[str], sample_types: list[tuple[int, int]], samples: list[tuple[list[int], list[int]]],
          locations: list[tuple[int, int, list[tuple[int, int]]]], functions: list[tuple[int, int]],
          period_type: tuple[int, int] | None = (1, 2), period: int = 10_000_000, time_ns: int = 0,
          extra: bytes = b"") -> bytes:
    """A pprof Profile message: locations (id, address, [(function id, line)]), functions (id, name index)."""
    out = bytearray()
    for t, u in sample_types:
        out += _field(1, _field(1, t) + _field(2, u))
    for locs, values in samples:
        out += _field(2, _packed(1, locs) + _packed(2, values))
    for lid, address, lines in locations:
        body = _field(1, lid) + _field(3, address)
        for fid, line in lines:
            body += _field(4, _field(1, fid) + _field(2, line))
        out += _field(4, body)
    for fid, name in functions:
        out += _field(5, _field(1, fid) + _field(2, name))
    for s in strings:
        out += _field(6, s.encode())
    if time_ns:
        out += _field(9, time_ns)
    out += _field(10, 10 * S)
    if period_type is not None:
        out += _field(11, _field(1, period_type[0]) + _field(2, period_type[1]))
    out += _field(12, period)
    return bytes(out + extra)


def _base_strings() -> list[str]:
    return ["", "cpu", "nanoseconds", "samples", "count", "main", "work"]


# -- the app and what it stored ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("safe")), "MAINTENANCE_SECONDS": 0,
                      "MAX_INFLATED_BYTES": INFLATED, "MAX_STRINGS": 50_000, "MAX_SAMPLES": 20_000,
                      "MAX_LOCATIONS": 20_000, "MAX_FUNCTIONS": 20_000, "TREE_CACHE_BYTES": 0})
    yield app
    app.extensions["podflame.store"].close()


_T = {"n": 0}


def _stored(store: Any) -> dict[tuple[str, str], int]:
    """(sample type, unit) -> the sum of every stored profile's total."""
    out: dict[tuple[str, str], int] = {}
    for t, u in store.types(0, 1 << 62):
        out[(t, u)] = sum(g.value for g in store.totals_by(MATCH_ALL, 0, 1 << 62, [], t, u))
    return out


def post(app: Any, body: bytes, *, gzip_header: bool = False) -> tuple[int, dict[str, Any], dict, dict]:
    """POST to the ingest API at a fresh time (so each case's data is its own); returns (status, answer,
    stored sums before, after). Checks what every answer must be."""
    store = app.extensions["podflame.store"]
    _T["n"] += 1
    before = _stored(store)
    headers = {"Content-Encoding": "gzip"} if gzip_header else {}
    tracemalloc.start()
    t = time.perf_counter()
    try:
        r = app.test_client().post(f"/api/v1/ingest?node=fuzz&time={1_700_000_000 + _T['n'] * 20}",
                                   data=body, headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    took = time.perf_counter() - t
    after = _stored(store)
    assert took < 30, f"{took:.1f} s for one request"  # a hang guard, not a timing
    assert peak < _MEMORY_BOUND, f"{peak >> 20} MiB of Python heap for a {len(body)}-byte body"
    assert r.status_code < 500, r.data[:300]
    answer = r.get_json()
    assert isinstance(answer, dict), r.data[:300]
    if r.status_code >= 400:
        assert isinstance(answer.get("error"), str) and answer["error"], answer
        assert after == before, "a refused request changed the store"
    else:
        assert r.status_code == 200 and answer["profiles"] >= 0
    return r.status_code, answer, before, after


def _added(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


# -- mutated real profiles ---------------------------------------------------------------------------------

def _corpus() -> list[bytes]:
    files = sorted(CORPUS.glob("*.pb.gz")) if CORPUS.is_dir() else []
    if not files:
        files = sorted((Path(__file__).parent / "fixtures").rglob("*.pb.gz"))
    return [gzip.decompress(f.read_bytes()) for f in files]


REAL = _corpus()


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: the test's own reading, independent of podflame.pprof."""
    i = 0

    def varint() -> int:
        nonlocal i
        v = shift = 0
        while True:
            b = data[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v
    while i < len(data):
        key = varint()
        wire = key & 7
        if wire == 0:
            yield key >> 3, varint()
        elif wire == 2:
            n = varint()
            yield key >> 3, data[i:i + n]
            i += n
        else:
            i += 8 if wire == 1 else 4


def _sums(raw: bytes) -> dict[tuple[str, str], int]:
    """The profile's sample values summed per (type, unit), as the store must hold them."""
    types, values, strings = [], [], []
    for n, v in _fields(raw):
        if n == 1 and isinstance(v, bytes):
            f = dict(_fields(v))
            types.append((int(f.get(1, 0)), int(f.get(2, 0))))
        elif n == 2 and isinstance(v, bytes):
            vals: list[int] = []
            for m, w in _fields(v):
                if m == 2:
                    vals += [w] if isinstance(w, int) else _unpack(w)
            values.append(vals)
        elif n == 6 and isinstance(v, bytes):
            strings.append(v.decode())
    out: dict[tuple[str, str], int] = {}
    for i, (t, u) in enumerate(types):
        total = sum(v[i] for v in values)
        if total:
            out[(strings[t], strings[u])] = out.get((strings[t], strings[u]), 0) + total
    return out


def _unpack(packed: bytes) -> list[int]:
    return [int(v) for _, v in _fields(b"".join(_varint(1 << 3) + v for v in _varint_raw(packed)))]


def _varint_raw(packed: bytes) -> list[bytes]:
    """Each varint of a packed field, as its bytes."""
    out, start = [], 0
    for j, b in enumerate(packed):
        if not b & 0x80:
            out.append(packed[start:j + 1])
            start = j + 1
    return out


def test_the_corpus_is_there_and_stored_whole(app: Any) -> None:
    """Each real profile unchanged is accepted, and the store gains exactly its values' sums (checked against
    the test's own reading of the protobuf, independent of the server's decoder)."""
    assert len(REAL) >= 5
    for raw in REAL:
        status, answer, before, after = post(app, gzip.compress(raw))
        assert status == 200, answer
        assert _added(before, after) == _sums(raw)


@CASES
@given(st.data())
def test_mutated_real_profiles_are_stored_or_refused(app: Any, data: st.DataObject) -> None:
    body = mutate(data, data.draw(st.sampled_from(REAL)), ("flip", "cut", "insert", "repeat", "truncate"), 6)
    wrap = data.draw(st.sampled_from(["plain", "gzip", "gzip-in-gzip"]))
    out = bytes(body)
    if wrap != "plain":
        out = gzip.compress(out, compresslevel=1)
    if wrap == "gzip-in-gzip":
        out = gzip.compress(out, compresslevel=1)
    status, answer, _, _ = post(app, out, gzip_header=wrap != "plain" and data.draw(st.booleans()))
    event(f"{status} {answer.get('error', '')[:40]}")


# -- well-formed profiles no profiler writes ---------------------------------------------------------------

def _values() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-3, 1000),
                     st.sampled_from([0, -1, (1 << 63) - 1, -(1 << 63), 1 << 62, (1 << 64) - 1, 1 << 53]))


@st.composite
def hostile(draw: st.DrawFn) -> tuple[bytes, dict[tuple[str, str], int] | None]:
    """A built profile, and what the store must gain if it is accepted (None: the answer is not predicted)."""
    strings = _base_strings()
    n_types = draw(st.integers(0, 3))
    type_pairs = [draw(st.sampled_from([(1, 2), (3, 4)])) for _ in range(n_types)]
    huge = draw(st.sampled_from(["no", "no", "many", "long"]))
    if huge == "many":
        strings += [f"s{i}" for i in range(draw(st.sampled_from([1000, 49_000, 60_000])))]
    elif huge == "long":
        strings += ["x" * draw(st.sampled_from([100_000, 3 << 20]))]
    functions = [(1, 5), (2, 6)]
    if draw(st.booleans()):
        functions.append((draw(st.sampled_from([1, 2, 77])), draw(st.integers(0, len(strings) + 2))))
    locations = [(1, 0x1000, [(1, 3)]), (2, 0x2000, [(2, 7)]), (3, 0x3000, [(1, 1), (2, 2)])]
    if draw(st.booleans()):  # a duplicate id, or a line naming a function that is not there
        locations.append((draw(st.sampled_from([1, 3, 9])), 0x9000, [(draw(st.sampled_from([1, 2, 55])), 1)]))
    samples = []
    for _ in range(draw(st.integers(0, 6))):
        shape = draw(st.sampled_from(["plain", "plain", "deep", "cycle", "missing", "empty"]))
        locs = {"plain": lambda: draw(st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=8)),
                "deep": lambda: [1, 2, 3] * draw(st.sampled_from([50, 2000, 8000])),
                "cycle": lambda: [1, 2, 1, 2, 1, 2, 3, 3, 3],
                "missing": lambda: [1, 404],
                "empty": lambda: []}[shape]()
        n_values = n_types if draw(st.integers(0, 9)) else draw(st.integers(0, 4))
        samples.append((locs, [draw(_values()) for _ in range(n_values)]))
    period_type = draw(st.sampled_from([(1, 2), (3, 4), None, (0, 0), (99, 99)]))
    extra = b""
    for _ in range(draw(st.integers(0, 3))):  # unknown fields, every wire type
        n = draw(st.integers(20, 2000))
        extra += draw(st.sampled_from([_field(n, 7), _field(n, b"junk"), _varint(n << 3 | 1) + b"12345678",
                                       _varint(n << 3 | 5) + b"1234"]))
    body = build(strings=strings, sample_types=type_pairs, samples=samples, locations=locations,
                 functions=functions, period_type=period_type, period=draw(st.sampled_from([10_000_000] * 4 + [0, -5])),
                 time_ns=draw(st.sampled_from([0] * 3 + [1_700_000_000 * S] * 3 + [-1, (1 << 63) - 1])), extra=extra)
    tail = draw(st.sampled_from(["none"] * 6 + ["varint", "cut"]))
    if tail == "varint":
        body += b"\x48\xff\xff"  # a varint field whose value never ends
    elif tail == "cut":
        body = body[:draw(st.integers(0, max(len(body) - 1, 0)))]
    clean = tail == "none" and huge == "no" and len(functions) == 2 and len(locations) == 3
    want: dict[tuple[str, str], int] | None = None
    if clean and all(len(v) == n_types and all(0 < x < 1 << 40 for x in v) and all(lc in (1, 2, 3) for lc in locs)
                     for locs, v in samples):
        want = {}
        for i, (t, u) in enumerate(type_pairs):
            total = sum(v[i] for locs, v in samples if locs)
            if total:
                key = (strings[t], strings[u])
                want[key] = want.get(key, 0) + total
    return body, want


@settings(CASES, max_examples=150)
@given(hostile(), st.sampled_from(["plain", "gzip", "gzip-in-gzip"]))
def test_built_hostile_profiles_are_stored_exactly_or_refused(app: Any, case: tuple[bytes, dict | None],
                                                               wrap: str) -> None:
    body, want = case
    if wrap != "plain":
        body = gzip.compress(body, compresslevel=1)
    if wrap == "gzip-in-gzip":
        body = gzip.compress(body, compresslevel=1)
    status, answer, before, after = post(app, body)
    event(f"{status} {answer.get('error', '')[:40]}")  # pytest --hypothesis-show-statistics: what was tried
    if want is not None and wrap != "gzip-in-gzip":
        assert status == 200, answer
    if status == 200 and want is not None:
        assert _added(before, after) == want


@pytest.mark.parametrize("inflated", [INFLATED + 1, 64 * INFLATED])
def test_gzip_bombs_are_refused_before_they_are_inflated(app: Any, inflated: int) -> None:
    """Repeated bytes compress ~1000:1: a body of a few KiB that would inflate past the limit is refused (413), its
    inflated bytes never held (the memory bound in `post`)."""
    # A well-formed start (one string-table entry) so that no early check refuses it before its size does.
    z = gzip.compress(_varint(6 << 3 | 2) + _varint(inflated) + b"a" * inflated, compresslevel=9)
    status, answer, _, _ = post(app, z)
    assert status == 413 and "inflates past" in answer["error"], answer
    status, answer, _, _ = post(app, gzip.compress(z))  # a bomb inside a gzip: read as the pprof it is not
    assert 400 <= status < 500, answer
