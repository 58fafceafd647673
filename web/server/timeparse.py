"""Times in query strings: RFC 3339, unix seconds, `now`, `now-15m`, `-1h`, `now+1m`.

Everything becomes integer unix nanoseconds, the unit profiles are stored in, so range
checks are exact. `now` is passed in, so one request sees one instant and tests are exact.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from decimal import Decimal, InvalidOperation

from podflame.errors import InvalidInput
from podflame.limits import MAX_TIME_NS

UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
           "d": 86_400_000_000_000, "w": 7 * 86_400_000_000_000}
# ASCII only: `\d` alone also takes other scripts' digits, which int() and Decimal() accept too.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", re.ASCII)
_RELATIVE = re.compile(r"(?:now)?\s*([+-])\s*(.+)|now", re.IGNORECASE | re.ASCII)
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+", re.ASCII)
_SIGNED_NUMBER = re.compile(r"-\s*(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?", re.ASCII | re.IGNORECASE)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})", re.ASCII)
# Every time is an int64 of nanoseconds in [0, MAX_TIME_NS] (1970 to 2200): what the store's columns and
# SQLite integers hold with room for a range end plus a step. Anything else is a 400, never an overflow.
MAX_UNIX_SECONDS = MAX_TIME_NS // 1_000_000_000
MAX_TEXT = 100  # characters of one time or duration: longer texts are not times
MIN_STEP_NS, MAX_STEP_NS = 1_000_000, 366 * UNIT_NS["d"]


class TimeError(InvalidInput):
    """The time text is invalid; the message says what was expected."""


def parse_duration(text: str) -> int:
    """`15m`, `1h30m`, `1.5h`, `30s`, `2d` -> nanoseconds."""
    s = text.strip()
    if len(s) > MAX_TEXT:
        raise TimeError(f"bad duration: longer than {MAX_TEXT} characters")
    pos, total = 0, Decimal(0)
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if not m:
            raise TimeError(f"bad duration {text!r}: expected a number and a unit ms, s, m, h, d or w "
                            "(e.g. 15m, 1h30m)")
        total += Decimal(m.group(1)) * UNIT_NS[m.group(2)]
        pos = m.end()
    if not s:
        raise TimeError("empty duration")
    if total > MAX_TIME_NS:
        raise TimeError(f"bad duration {text!r}: longer than the {MAX_TIME_NS // UNIT_NS['d']} days times can span")
    return int(total)


def parse_step(text: str) -> int:
    """A query step: seconds (`30`, `0.5`) or a duration (`1m`), in [1ms, 366d], as nanoseconds."""
    s = text.strip()
    try:
        step = int(Decimal(s) * 1_000_000_000) if _NUMBER.fullmatch(s) and len(s) <= MAX_TEXT else parse_duration(s)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise TimeError(f"bad step {text!r}") from None
    if step <= 0:
        raise TimeError(f"step {text!r} must be positive")
    if not MIN_STEP_NS <= step <= MAX_STEP_NS:
        raise TimeError(f"step {text!r} is outside [1ms, 366d]")
    return step


def parse_time(text: str, now_ns: int | None = None) -> int:
    """Parse one time to unix nanoseconds; `now_ns` anchors relative times (default: the clock)."""
    if now_ns is None:
        now_ns = time.time_ns()
    ns = _parse_time(text, now_ns)
    if not 0 <= ns <= MAX_TIME_NS:
        raise TimeError(f"time {text[:MAX_TEXT]!r} is outside 1970-01-01 .. 2200-01-01 (unix 0 .. {MAX_UNIX_SECONDS})")
    return ns


def _parse_time(text: str, now_ns: int) -> int:
    s = text.strip()
    if not s:
        raise TimeError("empty time: expected RFC 3339, unix seconds, now or now-<N><unit>")
    if len(s) > MAX_TEXT:
        raise TimeError(f"bad time: longer than {MAX_TEXT} characters")
    if _NUMBER.fullmatch(s):
        try:
            seconds = Decimal(s)
        except InvalidOperation:  # pragma: no cover - the regex admits only decimals
            raise TimeError(f"bad unix time {text!r}") from None
        if seconds > MAX_UNIX_SECONDS:
            raise TimeError(f"unix time {text!r} is too large: give seconds, not milliseconds or nanoseconds")
        return int(seconds * 1_000_000_000)
    m = _RELATIVE.fullmatch(s)
    if m:
        if m.group(1) is None:
            return now_ns
        if _SIGNED_NUMBER.fullmatch(s):  # "-5": read as a unit-less duration, the error would name only "5"
            raise TimeError(f"bad time {text[:MAX_TEXT]!r}: unix times are not negative (for a time before now "
                            "give a unit: now-15m, -1h)")
        offset = parse_duration(m.group(2))
        return now_ns - offset if m.group(1) == "-" else now_ns + offset
    if _RFC3339.fullmatch(s):
        return _rfc3339(s, text)
    raise TimeError(f"bad time {text!r}: expected RFC 3339 (2026-11-24T12:00:00Z), unix seconds, "
                    "now, or now-<N><unit> with unit ms, s, m, h, d or w (now-15m)")


def _rfc3339(s: str, text: str) -> int:
    s = s[:10] + "T" + s[11:]
    s = s[:-1] + "+00:00" if s[-1] in "Zz" else s
    frac_ns = 0
    m = re.search(r"\.(\d+)", s)
    if m:  # datetime keeps microseconds only: keep nanoseconds ourselves
        digits = m.group(1)
        frac_ns = int(digits[:9].ljust(9, "0"))
        s = s[:m.start()] + s[m.end():]
    try:
        dt = datetime.fromisoformat(s)
        seconds = int(dt.timestamp())
    except (ValueError, OverflowError) as e:  # 0001-01-01T00:00:00+01:00 is before datetime's year 1
        raise TimeError(f"bad RFC 3339 time {text!r}: {e}") from None
    return seconds * 1_000_000_000 + frac_ns


def format_seconds(ns: int) -> float:
    """Nanoseconds as float unix seconds, the form the JSON API returns."""
    return ns / 1e9
