"""The flame-graph payload as columns of binary numbers (`/api/v1/flamegraph?format=binary`), for the page.

The JSON payload of 100k nodes is ~6.6 MB: the browser spends longer parsing its 400k strings and numbers and
copying the interleaved `[start, total, self, name]` lists into typed arrays than drawing them. Here each
level's columns are little-endian arrays the page views in place (`Float64Array` over the buffer, no copy),
each node's parent is sent rather than searched for, names travel as one UTF-8 blob split on NUL, and the
per-name `kinds`/`modules`/`locations` as indices into small tables. The same content as the JSON; layout
(all sections 8-byte aligned, docs/api.md):

    b"PFT1", u32 header length, header JSON (every scalar key of the payload, plus `levels`: node counts,
    `columns`: f64 column names per node, `tables`: {kinds, modules, locations: distinct values},
    `names_bytes`), then the names blob, then u32 indices for kinds, modules and locations (one per name),
    then per level its f64 columns, then its i32 `name` and `parent` columns. The request's own keys
    (`from`, `to`) follow as a JSON object, then its length as u32: the last four bytes
(web/query/treecache.py's `BinaryAnswer`).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

MAGIC = b"PFT1"
MEDIA_TYPE = "application/vnd.podflame.tree"
TABLES = ("kinds", "modules", "locations")
_PER_NAME = {"names", "levels", *TABLES}


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 8)


def _table(values: list[str], count: int) -> tuple[list[str], np.ndarray]:
    """Distinct values (first-seen order) and each item's index; a missing list is all ""."""
    if not values:
        return [""], np.zeros(count, np.uint32)
    index: dict[str, int] = {}
    idx = np.fromiter((index.setdefault(v, len(index)) for v in values), np.uint32, len(values))
    return list(index), idx


def _parents(up_start: np.ndarray, up_total: np.ndarray, start: np.ndarray) -> np.ndarray:
    """For each node, the node one level up whose span [start, start + total) holds its start, else -1."""
    p = np.searchsorted(up_start, start, side="right") - 1
    ok = p >= 0
    ok[ok] = start[ok] < up_start[p[ok]] + up_total[p[ok]]
    return np.where(ok, p, -1).astype(np.int32)


def encode(payload: dict[str, Any]) -> bytes:
    """The payload (web/query/flamegraph.py's, with its metadata) without the request's tail."""
    names: list[str] = payload["names"]
    # NUL separates names in the blob; a name holding one (never a real symbol) shows U+FFFD there instead.
    blob = "\0".join(n.replace("\0", "\ufffd") for n in names).encode("utf-8", "surrogatepass")
    diff = "base_total" in payload
    columns = ["start", "total", "self"] + (["base_total", "base_self", "comp_total", "comp_self"] if diff else [])
    stride = len(columns) + 1  # + name
    tables: dict[str, list[str]] = {}
    parts: list[bytes] = []
    for key in TABLES:
        tables[key], idx = _table(payload.get(key) or [], len(names))
        parts += [idx.astype("<u4").tobytes(), _pad(idx.size * 4)]
    counts: list[int] = []
    up: tuple[np.ndarray, np.ndarray] | None = None
    for flat in payload["levels"]:
        nodes = np.asarray(flat, dtype=np.float64).reshape(-1, stride)
        counts.append(len(nodes))
        start, total = nodes[:, 0], nodes[:, 1]
        parent = np.full(len(nodes), -1, np.int32) if up is None else _parents(up[0], up[1], start)
        up = (start, total)
        for k in range(len(columns)):
            parts.append(np.ascontiguousarray(nodes[:, [0, 1, 2, 4, 5, 6, 7][k]], "<f8").tobytes())
        parts += [nodes[:, 3].astype("<i4").tobytes(), parent.astype("<i4").tobytes(), _pad(len(nodes) * 8)]
    header = {k: v for k, v in payload.items() if k not in _PER_NAME}
    header.update(levels=counts, columns=columns, tables=tables, names_bytes=len(blob))
    head = json.dumps(header, separators=(",", ":")).encode()
    first = MAGIC + struct.pack("<I", len(head)) + head
    return b"".join([first, _pad(len(first)), blob, _pad(len(blob)), *parts])


def decode(data: bytes) -> dict[str, Any]:
    """The JSON payload again (tests and tools; the page reads the buffer in place)."""
    if data[:4] != MAGIC:
        raise ValueError("not a podflame binary tree")
    (hlen,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8:8 + hlen])
    pos = 8 + hlen
    pos += -pos % 8
    nb = header.pop("names_bytes")
    text = data[pos:pos + nb].decode("utf-8", "surrogatepass")
    names = text.split("\0") if nb or header["levels"] else []
    pos += nb + (-nb % 8)
    out: dict[str, Any] = {"names": names}
    tables = header.pop("tables")
    for key in TABLES:
        idx = np.frombuffer(data, "<u4", len(names), pos)
        out[key] = [tables[key][i] for i in idx.tolist()]
        pos += idx.nbytes + (-idx.nbytes % 8)
    columns = header.pop("columns")
    levels = []
    for n in header.pop("levels"):
        cols = []
        for _ in columns:
            cols.append(np.frombuffer(data, "<f8", n, pos))
            pos += 8 * n
        name = np.frombuffer(data, "<i4", n, pos)
        pos += 8 * n + (-(8 * n) % 8)  # name and parent
        order = [cols[0], cols[1], cols[2], name.astype(np.float64), *cols[3:]]
        levels.append(np.stack(order, axis=1).reshape(-1).astype(np.int64).tolist())
    (tlen,) = struct.unpack_from("<I", data, len(data) - 4)
    out.update(header, levels=levels, **json.loads(data[len(data) - 4 - tlen:len(data) - 4]))
    return out
