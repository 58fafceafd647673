"""Line numbers from a code object's line table, for each format CPython 2.7 and 3.6-3.13 use.

Everything is in bytes of instructions from the start of the code (`offsets.instr_offset`), so one
call works for every version. A table is decoded once into the byte offsets where each line starts
(`decode`; tables are short: a few bytes per line of source), and an offset's line is a binary search
in that (`LineStarts.line`): a code object read once is asked for the line of many offsets.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from profiler.python.offsets import LINETABLE_310, LNOTAB, LNOTAB_27, LOCATIONS


@dataclass(frozen=True, slots=True)
class LineStarts:
    """A decoded line table: from byte offset `starts[i]` on (up to the next start), the line is `lines[i]`
    (None: no line there, or past the end of the table)."""

    firstlineno: int
    starts: tuple[int, ...]
    lines: tuple[int | None, ...]

    def line(self, offset: int) -> int | None:
        """Source line of the instruction at byte `offset`; a negative offset is a frame that has not run
        its first instruction: CPython says co_firstlineno."""
        if offset < 0:
            return self.firstlineno
        i = bisect_right(self.starts, offset) - 1
        return self.lines[i] if i >= 0 else None


def decode(table: bytes, fmt: int, firstlineno: int) -> LineStarts:
    """Every line start of a line table, in the order the interpreter's own reading applies them (where two
    start at one offset, the later one holds, as when the table is walked up to an offset)."""
    if fmt in (LNOTAB, LNOTAB_27):
        pairs = _lnotab(table, firstlineno, signed=fmt == LNOTAB)
    elif fmt == LINETABLE_310:
        pairs = _linetable_310(table, firstlineno)
    elif fmt == LOCATIONS:
        pairs = _locations(table, firstlineno)
    else:
        raise ValueError(f"unknown line table format {fmt}")
    return LineStarts(firstlineno, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))


_SHARED: dict[tuple[bytes, int, int], LineStarts] = {}
SHARED_MAX = 16384  # distinct line tables kept (a few hundred bytes each); cleared whole when full


def shared_decode(table: bytes, fmt: int, firstlineno: int) -> LineStarts:
    """`decode`, once per distinct (table, format, first line) for all processes.

    On a node starting python3 ten times a second, each new process's code objects are read anew (other
    addresses), but their line tables are the same bytes: the key is the table itself, so two code
    objects share a decoding only when the interpreter would read the same lines from both."""
    key = (table, fmt, firstlineno)
    got = _SHARED.get(key)
    if got is None:
        got = decode(table, fmt, firstlineno)
        if len(_SHARED) >= SHARED_MAX:
            _SHARED.clear()
        _SHARED[key] = got
    return got


def line_for(table: bytes, fmt: int, firstlineno: int, offset: int) -> int | None:
    """Source line of the instruction at byte `offset`, or None when the table gives none there
    (one-off: `decode` once and ask `LineStarts.line` for many offsets)."""
    return decode(table, fmt, firstlineno).line(offset)


def _lnotab(table: bytes, line: int, signed: bool = True) -> list[tuple[int, int | None]]:
    """3.6-3.9 co_lnotab (Objects/lnotab_notes.txt): pairs of (byte increment, signed line increment);
    the line of an offset is the one in force at the last pair starting at or before it. 2.7's increments
    are unsigned (a line 200 below the last one is 200, not -56)."""
    out: list[tuple[int, int | None]] = [(0, line)]
    addr = 0
    for i in range(0, len(table) - 1, 2):
        addr += table[i]
        delta = table[i + 1]
        line += delta - 256 if signed and delta >= 128 else delta
        out.append((addr, line))
    return out


def _linetable_310(table: bytes, line: int) -> list[tuple[int, int | None]]:
    """3.10 co_linetable (PEP 626): (byte length, signed line delta) per range; -128 means no line.
    Past the last range there is no line."""
    out: list[tuple[int, int | None]] = []
    start = 0
    for i in range(0, len(table) - 1, 2):
        delta = table[i + 1]
        delta = delta - 256 if delta >= 128 else delta
        here: int | None = None
        if delta != -128:
            line += delta
            here = line
        out.append((start, here))
        start += table[i]
    out.append((start, None))
    return out


def _locations(table: bytes, line: int) -> list[tuple[int, int | None]]:
    """3.11+ location table (Objects/locations.md): entries of 1-8 code units, each starting with
    a byte 1cccclll (code c, length l+1) and followed by bytes with the top bit clear; the line
    changes by the delta the entry carries. Past the last entry there is no line."""
    out: list[tuple[int, int | None]] = []
    pos, addr, n = 0, 0, len(table)
    while pos < n:
        first = table[pos]
        code = (first >> 3) & 15
        here: int | None = line
        if code == 15:  # no location
            here = None
        elif code in (13, 14):  # no columns / long form: a signed varint line delta comes first
            line += _svarint(table, pos + 1)
            here = line
        elif code in (10, 11, 12):  # one line form: delta code-10
            line += code - 10
            here = line
        # codes 0-9: short form, same line
        out.append((2 * addr, here))  # code units of 2 bytes
        addr += (first & 7) + 1
        pos += 1
        while pos < n and not table[pos] & 128:
            pos += 1
    out.append((2 * addr, None))
    return out


def _svarint(table: bytes, pos: int) -> int:
    value, shift = 0, 0
    while pos < len(table):
        b = table[pos]
        pos += 1
        value |= (b & 63) << shift
        shift += 6
        if not b & 64:
            break
    return -(value >> 1) if value & 1 else value >> 1
