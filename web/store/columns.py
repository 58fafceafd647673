"""The column codec: a profile's samples as two integer columns (stack id, value) in one zstd frame.

Stack ids are sorted and stored as deltas, values in the narrowest integer type that holds them, so
zstd compresses them well and numpy sums them without Python objects. Blocks keep a timeline of the
profiles they sum in the same way. `group_sum`/`sum_by` are the exact int64 aggregations over columns.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from podflame.errors import PodflameError

_FRAME_MAGIC = b"PFS1"
_HEADER = struct.Struct("<4sBBI")  # magic, stack dtype code, value dtype code, rows
_DTYPES = [np.dtype(t) for t in ("<u1", "<u2", "<u4", "<u8", "<i1", "<i2", "<i4", "<i8")]
_TIMELINE_MAGIC = b"PFT1"
_TIMELINE_HEADER = struct.Struct("<4sBBBI")  # magic, start delta, total, period dtype codes; rows


class CorruptData(PodflameError, ValueError):
    """A stored frame or timeline that does not decode: the store's files were changed behind its back."""


def _narrowest(a: np.ndarray) -> int:
    if a.size == 0:
        return 0
    lo, hi = int(a.min()), int(a.max())
    for code, dt in enumerate(_DTYPES):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return code
    raise ValueError("value out of int64 range")


def encode_columns(stack: np.ndarray, value: np.ndarray, level: int = 3,
                   compressor: zstandard.ZstdCompressor | None = None) -> bytes:
    """Two columns -> one zstd frame. Stack ids must be unique."""
    order = np.argsort(stack, kind="stable")
    stack, value = stack[order].astype(np.int64), value[order].astype(np.int64)
    delta = np.diff(stack, prepend=0)
    sc, vc = _narrowest(delta), _narrowest(value)
    raw = b"".join((_HEADER.pack(_FRAME_MAGIC, sc, vc, stack.size),
                    delta.astype(_DTYPES[sc]).tobytes(), value.astype(_DTYPES[vc]).tobytes()))
    return (compressor or zstandard.ZstdCompressor(level=level)).compress(raw)


def decode_columns(frame: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One zstd frame -> (stack ids, values) as int64."""
    delta, value = frame_columns(zstandard.ZstdDecompressor().decompress(frame))
    return np.cumsum(delta, dtype=np.int64), value.astype(np.int64)


def frame_columns(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A decompressed sample frame -> (stack-id deltas, values), as views in their stored integer types."""
    magic, sc, vc, n = _HEADER.unpack_from(raw)
    if magic != _FRAME_MAGIC or sc >= len(_DTYPES) or vc >= len(_DTYPES):
        raise CorruptData("corrupt sample frame")
    sdt, vdt = _DTYPES[sc], _DTYPES[vc]
    off = _HEADER.size
    return np.frombuffer(raw, sdt, n, off), np.frombuffer(raw, vdt, n, off + n * sdt.itemsize)


def encode_timeline(start: np.ndarray, total: np.ndarray, period: np.ndarray, origin: int) -> bytes:
    """A block's constituent profiles as (start, total, period) rows, sorted by start, as one zstd frame."""
    order = np.argsort(start, kind="stable")
    start, total, period = start[order], total[order].astype(np.int64), period[order].astype(np.int64)
    delta = np.diff(start.astype(np.int64), prepend=np.int64(origin))
    codes = [_narrowest(delta), _narrowest(total), _narrowest(period)]
    raw = b"".join((_TIMELINE_HEADER.pack(_TIMELINE_MAGIC, *codes, start.size),
                    *(a.astype(_DTYPES[c]).tobytes() for a, c in zip((delta, total, period), codes, strict=True))))
    return zstandard.ZstdCompressor(level=3).compress(raw)


def decode_timeline(frame: bytes, origin: int, dctx: zstandard.ZstdDecompressor | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`dctx`: a decompressor to reuse (one thread's): making one costs half of a small timeline's decode."""
    raw = (dctx or zstandard.ZstdDecompressor()).decompress(frame)
    magic, *codes, n = _TIMELINE_HEADER.unpack_from(raw)
    if magic != _TIMELINE_MAGIC or any(c >= len(_DTYPES) for c in codes):
        raise CorruptData("corrupt timeline")
    off = _TIMELINE_HEADER.size
    cols = []
    for c in codes:
        dt = _DTYPES[c]
        cols.append(np.frombuffer(raw, dt, n, off).astype(np.int64))
        off += n * dt.itemsize
    return np.cumsum(cols[0]) + np.int64(origin), cols[1], cols[2]


def group_sum(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys (sorted) and the exact int64 sum of values for each."""
    if keys.size == 0:
        return keys, values
    lo, hi = int(keys.min()), int(keys.max())
    if hi - lo <= 4 * keys.size + 4096:  # dense keys (stack ids): sums in a table over their range, no sort
        idx = keys - lo
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[idx] = True
        sums = np.zeros(hi - lo + 1, dtype=np.int64)
        np.add.at(sums, idx, values)
        at = np.flatnonzero(present)
        return at + lo, sums[at]
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    return k[starts], np.add.reduceat(v, starts)


def sum_by(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Exact int64 sums of `values` rows per group id in [0, n) (bincount would go through float64)."""
    out = np.zeros((n, *values.shape[1:]), dtype=np.int64)
    if values.ndim == 1:
        np.add.at(out, groups, values)  # unbuffered, exact, no sort (numpy's fast path is for 1-d)
    else:
        for c in range(values.shape[1]):
            np.add.at(out[:, c], groups, values[:, c])
    return out
