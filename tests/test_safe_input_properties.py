"""Property-based tests (hypothesis) of the three parsers that take text or bytes from anyone: the pprof
decoder, the selector parser and the time parser. Whatever they are given, they answer or raise their own
InvalidInput kind (a 4xx), never anything else, and within a bounded time. Case counts are bounded so CI
stays fast (derandomized: the same cases every run)."""

from __future__ import annotations

import gzip
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from podflame import pprof
from podflame.errors import InvalidInput
from podflame.limits import MAX_TIME_NS, DecodeLimits
from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from web.server.timeparse import TimeError, parse_duration, parse_step, parse_time
from web.store.selector import SelectorError, parse_selector

CASES = settings(max_examples=200, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = DecodeLimits(inflated_bytes=1 << 20, strings=2000, samples=2000, locations=2000, functions=2000,
                     mappings=200, top_fields=20_000, series=200)
S = 1_000_000_000
NOW = 1_795_000_000 * S


def _valid_pprof() -> bytes:
    exe = Mapping(0x1000, 0x9000, 0, "/bin/x", "b1")
    frames = [Frame(0x1000 + i, exe, FrameKind.NATIVE, (Line(f"f{i}", "x.c", i),)) for i in range(6)]
    profiles = []
    for pod in ("a", "b"):
        p = Profile(labels={"pod": pod, "comm": "x"}, start_ns=NOW, duration_ns=10 * S, period_ns=10_000_000)
        for i in range(5):
            p.add(tuple(frames[: i + 1]), i + 1)
        profiles.append(p)
    return pprof.encode(profiles, compress=False)


VALID = _valid_pprof()


def _decode_or_refuse(data: bytes) -> None:
    t = time.perf_counter()
    try:
        d = pprof.decode_ids(data, {"node": "n"}, limits=SMALL)
    except pprof.PprofError:
        pass
    else:
        for p in d.decoded:  # what was accepted holds the documented bounds
            assert all(0 < v <= SMALL.value for v in p.samples.values())
            assert sum(p.samples.values()) <= SMALL.value
            assert p.labels.get("node") == "n"
        assert 0 <= d.start_ns <= MAX_TIME_NS and 0 <= d.start_ns + d.duration_ns <= MAX_TIME_NS
    assert time.perf_counter() - t < 10  # bounded: no input makes the decoder run away


@CASES
@given(st.binary(max_size=4096))
@example(b"\x32\x01a" * 3000)
@example(b"\x12\x00" * 3000)
@example(b"\x0a\xff\xff\xff\xff\x0f")
@example(b"\x48" + b"\xff" * 11)
def test_decoder_takes_any_bytes(data: bytes) -> None:
    _decode_or_refuse(data)
    _decode_or_refuse(gzip.compress(data))


def mutate(data: st.DataObject, valid: bytes, ops: tuple[str, ...] = ("flip", "cut", "insert", "repeat"),
           most: int = 8) -> bytes:
    """A valid body with bytes flipped, cut, inserted or repeated (or the rest cut off, `truncate`): the
    nearest misses of a valid input."""
    body = bytearray(valid)
    for _ in range(data.draw(st.integers(1, most))):
        op = data.draw(st.sampled_from(ops))
        at = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del body[at:at + data.draw(st.integers(1, 64))]
        elif op == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            body[at:at] = body[at:at + data.draw(st.integers(1, 32))] * data.draw(st.integers(1, 50))
        elif op == "truncate":
            del body[at:]
    return bytes(body)


@CASES
@given(st.data())
def test_decoder_takes_mutated_profiles(data: st.DataObject) -> None:
    """Real profiles with bytes flipped, cut, repeated or inserted: the nearest misses of a valid input."""
    body = mutate(data, VALID)
    _decode_or_refuse(bytes(body))
    _decode_or_refuse(gzip.compress(bytes(body), compresslevel=1))


_SELECTOR_ATOMS = st.sampled_from(['{', '}', ',', '=', '!=', '=~', '!~', '"', "'", '`', '\\', 'pod', '__name__',
                                   '(a+)+$', '.*', '[', ']', '(?=', '\\1', ' ', '\n', 'é', '\\x41', '\\u00e9', '\\377'])


@CASES
@given(st.one_of(st.text(max_size=300), st.lists(_SELECTOR_ATOMS, max_size=40).map("".join)))
@example('{comm=~"(a+)+$"}')
@example('{a=~"' + "(" * 3000 + '"}')
def test_selector_parser_answers_or_refuses(text: str) -> None:
    t = time.perf_counter()
    try:
        sel = parse_selector(text)
    except SelectorError:
        return
    for m in sel.matchers:  # a parsed selector matches anything in linear time
        assert isinstance(m.matches("a" * 5000 + "!"), bool)
        assert isinstance(m.matches(text), bool)
    assert time.perf_counter() - t < 5


@CASES
@given(st.one_of(st.text(max_size=120),
                 st.from_regex(r"\A(now)?[+-]?[0-9]{0,25}(\.[0-9]{0,5})?(ms|s|m|h|d|w){0,2}\Z"),
                 st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})\Z")))
@example("0001-01-01T00:00:00+01:00")
@example("9999-12-31T23:59:59Z")
@example("now-100000w")
@example("²")
def test_time_parsers_answer_in_range_or_refuse(text: str) -> None:
    try:
        ns = parse_time(text, NOW)
    except TimeError:
        pass
    else:
        assert 0 <= ns <= MAX_TIME_NS
    for parse in (parse_duration, parse_step):
        try:
            d = parse(text)
        except TimeError:
            continue
        assert 0 <= d <= MAX_TIME_NS


def test_errors_are_the_input_kind() -> None:
    """What the properties above allow is exactly the 4xx kinds."""
    assert issubclass(pprof.PprofError, InvalidInput) and issubclass(SelectorError, InvalidInput)
    assert issubclass(TimeError, InvalidInput)
