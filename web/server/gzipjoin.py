"""gzip a kept answer plus a per-request tail without compressing the kept part again.

A deflate stream ended by a sync flush stops on a byte boundary with no final block, so another raw
deflate stream can follow it directly (as pigz joins blocks compressed in parallel); the gzip trailer's
CRC-32 continues from the kept part's. A flame-graph answer of megabytes (web/query/treecache.py) is then
compressed once, and each request compresses only its few bytes of `from`/`to`.
"""

from __future__ import annotations

import struct
import zlib

_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no flags, mtime 0, no extra flags, OS unknown


def accepts_gzip(header: str) -> bool:
    """True when Accept-Encoding allows gzip (present, and not q=0)."""
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and float(q[2:] or 0) == 0)
    return False


def gzip_join(head: tuple[bytes, int, int], tail: bytes) -> bytes:
    """One gzip member of head + tail: `head` is (raw deflate ended by Z_SYNC_FLUSH, crc32, length) of the
    kept bytes, `tail` the bytes that follow them."""
    deflated, crc, length = head
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    rest = c.compress(tail) + c.flush()
    trailer = struct.pack("<II", zlib.crc32(tail, crc), (length + len(tail)) & 0xFFFFFFFF)
    return b"".join((_HEADER, deflated, rest, trailer))
