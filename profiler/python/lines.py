"""Line numbers from a code object's line table, for each format CPython 3.9-3.13 uses.

Everything is in bytes of instructions from the start of the code (`offsets.instr_offset`), so one
call works for every version; each decoder walks the table once (tables are short: a few bytes per
line of source) and stops at the entry holding the offset.
"""

from __future__ import annotations

from profiler.python.offsets import LINETABLE_310, LNOTAB, LOCATIONS


def line_for(table: bytes, fmt: int, firstlineno: int, offset: int) -> int | None:
    """Source line of the instruction at byte `offset`, or None when the table gives none there.

    A negative offset is a frame that has not run its first instruction: CPython says co_firstlineno.
    """
    if offset < 0:
        return firstlineno
    if fmt == LNOTAB:
        return _lnotab(table, firstlineno, offset)
    if fmt == LINETABLE_310:
        return _linetable_310(table, firstlineno, offset)
    if fmt == LOCATIONS:
        return _locations(table, firstlineno, offset)
    raise ValueError(f"unknown line table format {fmt}")


def _lnotab(table: bytes, line: int, offset: int) -> int:
    """3.9 co_lnotab (Objects/lnotab_notes.txt): pairs of (byte increment, signed line increment);
    the line of an offset is the one in force at the last pair starting at or before it."""
    addr = 0
    for i in range(0, len(table) - 1, 2):
        addr += table[i]
        if addr > offset:
            break
        delta = table[i + 1]
        line += delta - 256 if delta >= 128 else delta
    return line


def _linetable_310(table: bytes, line: int, offset: int) -> int | None:
    """3.10 co_linetable (PEP 626): (byte length, signed line delta) per range; -128 means no line."""
    start = 0
    for i in range(0, len(table) - 1, 2):
        end = start + table[i]
        delta = table[i + 1]
        delta = delta - 256 if delta >= 128 else delta
        here: int | None = None
        if delta != -128:
            line += delta
            here = line
        if start <= offset < end:
            return here
        start = end
    return None


def _locations(table: bytes, line: int, offset: int) -> int | None:
    """3.11+ location table (Objects/locations.md): entries of 1-8 code units, each starting with
    a byte 1cccclll (code c, length l+1) and followed by bytes with the top bit clear; the line
    changes by the delta the entry carries."""
    unit = offset // 2
    pos, addr, n = 0, 0, len(table)
    while pos < n:
        first = table[pos]
        code = (first >> 3) & 15
        end = addr + (first & 7) + 1
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
        if addr <= unit < end:
            return here
        addr = end
        pos += 1
        while pos < n and not table[pos] & 128:
            pos += 1
    return None


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
