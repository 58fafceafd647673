"""Times: RFC 3339, unix seconds, now and relative offsets, all to exact nanoseconds."""

from __future__ import annotations

import pytest

from web.server.timeparse import TimeError, parse_duration, parse_time

NOW = 1_795_000_000_123_456_789
S = 1_000_000_000


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("NOW", NOW),
    ("now-15m", NOW - 15 * 60 * S),
    ("now - 15m", NOW - 15 * 60 * S),
    ("-1h", NOW - 3600 * S),
    ("-2d", NOW - 2 * 86400 * S),
    ("-30s", NOW - 30 * S),
    ("now+1m", NOW + 60 * S),
    ("now-1h30m", NOW - 5400 * S),
    ("now-1.5h", NOW - 5400 * S),
    ("now-500ms", NOW - S // 2),
    ("1795000000", 1_795_000_000 * S),
    ("1795000000.25", 1_795_000_000 * S + S // 4),
    ("0", 0),
    ("2026-11-24T12:00:00Z", 1_795_521_600 * S),
    ("2026-11-24t12:00:00z", 1_795_521_600 * S),
    ("2026-11-24 12:00:00Z", 1_795_521_600 * S),
    ("2026-11-24T13:00:00+01:00", 1_795_521_600 * S),
    ("2026-11-24T12:00:00.123456789Z", 1_795_521_600 * S + 123_456_789),
    ("2026-11-24T12:00:00.5-00:30", 1_795_523_400 * S + S // 2),
])
def test_times(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


def test_now_defaults_to_the_clock() -> None:
    import time

    before = time.time_ns()
    assert before <= parse_time("now") <= time.time_ns()


@pytest.mark.parametrize("text, message", [
    ("", "empty time"),
    ("yesterday", "bad time 'yesterday'"),
    ("now-15", "expected a number and a unit"),
    ("now-15x", "expected a number and a unit"),
    ("now-", "bad time"),
    ("2026-11-24T12:00:00", "bad time"),  # RFC 3339 needs an offset: no guessing the zone
    ("2026-13-24T12:00:00Z", "bad RFC 3339 time"),
    ("1795000000000", "give seconds, not milliseconds"),
])
def test_errors(text: str, message: str) -> None:
    with pytest.raises(TimeError, match=message):
        parse_time(text, NOW)


def test_durations() -> None:
    assert parse_duration("1d2h3m4s") == (86400 + 7200 + 180 + 4) * S
    assert parse_duration("1w") == 7 * 86400 * S
