"""The flame-graph payload as columns of binary numbers (`/api/v1/flamegraph?format=binary`), for the page.

The JSON payload of 100k nodes is ~6.6 MB: the browser spends longer parsing its 400k strings and numbers and
copying the interleaved `[start, total, self, name]` lists into typed arrays than drawing them. Here each
level's columns are little-endian arrays the page views in place (`Float64Array` over the buffer, no copy),
each node's parent is sent rather than searched for, names travel as one UTF-8 blob split on NUL, and the
per-name `kinds`/`modules`/`locations` as indices into small tables. The same content as the JSON; layout
(all sections 8-byte aligned, docs/api.md):

    b"PFT1", u32 header length, header JSON (every scalar key of the payload, plus `levels`: node counts,
    `columns`: value column names per node, `value_type`: "u4" or "f8", `tables`: {kinds, modules,
    locations: distinct values}, `index_type`: "u1", "u2" or "u4", `names_bytes`), then the names blob, then
    the indices for kinds, modules and locations (one per name, `index_type`), then per level its value
    columns (`value_type`), then its i32 `name` and `parent` columns. The request's own keys
    (`from`, `to`) follow as a JSON object, then its length as u32: the last four bytes
(web/query/treecache.py's `BinaryAnswer`).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

# The narrowest type that holds every value: values are u4 when all are integers below 2**32 (sample and
# object counts; not a day of CPU nanoseconds or a heap's bytes), table indices u1/u2 for small tables. A 100k-node
# profile's answer is 5.5 MB instead of 7.6 MB: less for the browser to inflate and hand to the page's thread.
_INDEX_TYPES = ((1 << 8, "u1"), (1 << 16, "u2"), (1 << 32, "u4"))
_SIZE = {"u1": 1, "u2": 2, "u4": 4, "f8": 8}


def _index_type(tables: dict[str, list[str]]) -> str:
    most = max(len(v) for v in tables.values())
    return next(t for limit, t in _INDEX_TYPES if most <= limit)


def _value_type(levels: list[np.ndarray]) -> str:
    for nodes in levels:
        values = np.delete(nodes, 3, axis=1)  # all but the name column
        if values.size and (values.min() < 0 or values.max() >= 1 << 32
                            or not np.array_equal(values, np.floor(values))):
            return "f8"
    return "u4"

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
    indices: list[np.ndarray] = []
    for key in TABLES:
        tables[key], idx = _table(payload.get(key) or [], len(names))
        indices.append(idx)
    index_type = _index_type(tables)
    parts: list[bytes] = []
    for idx in indices:
        parts += [idx.astype("<" + index_type).tobytes(), _pad(idx.size * _SIZE[index_type])]
    levels = [np.asarray(flat, dtype=np.float64).reshape(-1, stride) for flat in payload["levels"]]
    value_type = _value_type(levels)
    counts: list[int] = []
    up: tuple[np.ndarray, np.ndarray] | None = None
    for nodes in levels:
        counts.append(len(nodes))
        start, total = nodes[:, 0], nodes[:, 1]
        parent = np.full(len(nodes), -1, np.int32) if up is None else _parents(up[0], up[1], start)
        up = (start, total)
        for k in range(len(columns)):
            parts.append(np.ascontiguousarray(nodes[:, [0, 1, 2, 4, 5, 6, 7][k]], "<" + value_type).tobytes())
        parts += [_pad(len(nodes) * len(columns) * _SIZE[value_type]),
                  nodes[:, 3].astype("<i4").tobytes(), parent.astype("<i4").tobytes(), _pad(len(nodes) * 8)]
    header = {k: v for k, v in payload.items() if k not in _PER_NAME}
    header.update(levels=counts, columns=columns, value_type=value_type, tables=tables, index_type=index_type,
                  names_bytes=len(blob))
    head = json.dumps(header, separators=(",", ":")).encode()
    first = MAGIC + struct.pack("<I", len(head)) + head
    return b"".join([first, _pad(len(first)), blob, _pad(len(blob)), *parts])


def decode(data: bytes) -> dict[str, Any]:
    """The JSON payload again (tests and tools; the page reads the buffer in place)."""
    header, blob, indices, columns, _ = _sections(data)
    names = blob.decode("utf-8", "surrogatepass").split("\0") if header["names_bytes"] or header["levels"] else []
    out: dict[str, Any] = {"names": names}
    for key, idx in zip(TABLES, indices, strict=True):
        out[key] = [header["tables"][key][i] for i in idx.tolist()]
    levels = []
    for cols in columns:  # values..., name, parent
        values = [c.astype(np.float64) for c in cols[:-2]]
        order = [values[0], values[1], values[2], cols[-2].astype(np.float64), *values[3:]]
        levels.append(np.stack(order, axis=1).reshape(-1).astype(np.int64).tolist())
    for key in ("names_bytes", "tables", "index_type", "value_type", "columns", "levels"):
        del header[key]
    (tlen,) = struct.unpack_from("<I", data, len(data) - 4)
    out.update(header, levels=levels, **json.loads(data[len(data) - 4 - tlen:len(data) - 4]))
    return out


# static/flamegraph.js's MIN_WIDTH: a frame narrower than this many CSS pixels is not drawn on its own but as part
# of a merged run with its narrow neighbours (its name, colour and numbers never reach the screen at that zoom).
MIN_WIDTH_PX = 0.3
# A preview of more than this share of the nodes is not made (the whole answer is sent, no second request): its
# bytes saved on the way to the first picture no longer pay for the whole tree's second trip. bench/store.py's node
# day at 1920 px keeps 34% (16k frames and 25k runs between frames with self time); a 100k-leaf profile 2%.
PREVIEW_MAX_SHARE = 0.25


def _sections(data: bytes) -> tuple[dict[str, Any], bytes, list[np.ndarray], list[list[np.ndarray]], int]:
    """The parts of an encoded tree, viewed in place: header, names blob, the per-name table indices, per level
    its columns (values..., name, parent), and where the request's tail would start."""
    if data[:4] != MAGIC:
        raise ValueError("not a podflame binary tree")
    (hlen,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8:8 + hlen])
    pos = 8 + hlen
    pos += -pos % 8
    nb = header["names_bytes"]
    blob = data[pos:pos + nb]
    count = blob.count(b"\0") + 1 if nb or header["levels"] else 0
    pos += nb + (-nb % 8)
    it, vt = header["index_type"], header["value_type"]
    indices = []
    for _ in TABLES:
        idx = np.frombuffer(data, "<" + it, count, pos)
        indices.append(idx)
        pos += idx.nbytes + (-idx.nbytes % 8)
    levels = []
    for n in header["levels"]:
        cols = []
        for _ in header["columns"]:
            cols.append(np.frombuffer(data, "<" + vt, n, pos))
            pos += _SIZE[vt] * n
        pos += -pos % 8
        cols += [np.frombuffer(data, "<i4", n, pos), np.frombuffer(data, "<i4", n, pos + 4 * n)]
        pos += 8 * n + (-(8 * n) % 8)
        levels.append(cols)
    return header, blob, indices, levels, pos


def preview(data: bytes, width: int) -> bytes | None:
    """The tree as a `width`-pixel-wide view of the whole graph draws it, or None when that saves little.

    A node narrower than MIN_WIDTH_PX at `width` (and so at any narrower canvas) is drawn only as part of a merged
    run. Such nodes are dropped; each maximal sequence of them in a level (no kept node between, gaps a run would
    bridge at `width`) becomes one *run* node: name and parent -1, its `total` the span it covers, `self` 0. The
    page draws a run node as a merged run whatever its width, so the first picture is the same pixels as the whole
    tree's, from a fraction of the bytes (a 100k-node profile at 1920 px: ~4k nodes); the header's `preview`
    ({width, nodes, pruned}) tells the page to fetch the whole tree (table, search, zoom, sandwich) next.
    Flame graphs only (not diffs)."""
    header, blob, indices, levels, _ = _sections(data)
    if header["columns"] != ["start", "total", "self"] or not levels or not header["levels"][0]:
        return None
    root = float(levels[0][1][0])
    if root <= 0:
        return None
    limit = MIN_WIDTH_PX * root / width
    full = sum(header["levels"])
    out_levels: list[tuple[np.ndarray, ...]] = []
    kept_names: list[np.ndarray] = []
    up_pos = np.zeros(0, np.int64)  # the previous level's old index -> new index (kept nodes)
    pruned = 0
    for start_c, total_c, self_c, name_c, parent_c in levels:
        start, total = start_c.astype(np.float64), total_c.astype(np.float64)
        keep = total >= limit * (1 - 1e-9)  # kept when it might be drawn on its own (conservative)
        small = ~keep
        pruned += int(small.sum())
        first = small.copy()  # a pruned node that starts a run node
        if small.any():
            prev_small = np.concatenate(([False], small[:-1]))
            prev_end = np.concatenate(([0.0], start[:-1] + total[:-1]))
            bridged = (start - prev_end) <= limit * (1 - 1e-9)  # a gap a run bridges at `width` (and narrower)
            first &= ~(prev_small & bridged)
        item = keep | first
        items = np.flatnonzero(item)
        run_of = np.cumsum(first) - 1  # each pruned node's run
        run_end = np.zeros(int(first.sum()), np.float64)
        np.maximum.at(run_end, run_of[small], (start + total)[small])
        new_pos = np.cumsum(item) - 1
        is_run = first[items]
        s = start[items]
        t = np.where(is_run, 0.0, total[items])
        t[is_run] = run_end[run_of[items[is_run]]] - s[is_run]
        sf = np.where(is_run, 0.0, self_c[items].astype(np.float64))
        nm = np.where(is_run, -1, name_c[items]).astype(np.int64)
        par = parent_c[items].astype(np.int64)
        par = np.where(is_run | (par < 0), -1, up_pos[np.maximum(par, 0)] if up_pos.size else -1)
        out_levels.append((s, t, sf, nm, par))
        kept_names.append(nm[nm >= 0])
        up_pos = np.where(keep, new_pos, -1)
    if not pruned:
        return None
    names_used = np.unique(np.concatenate(kept_names)) if kept_names else np.zeros(0, np.int64)
    nodes = sum(lv[0].size for lv in out_levels)
    if nodes > PREVIEW_MAX_SHARE * full:
        return None
    # The kept names' bytes, found by the blob's separators (no split of every name).
    raw = np.frombuffer(blob, np.uint8)
    seps = np.flatnonzero(raw == 0)
    begins = np.concatenate(([0], seps + 1))
    ends = np.concatenate((seps, [len(blob)]))
    new_blob = b"\0".join(blob[begins[i]:ends[i]] for i in names_used.tolist())
    vt, it = header["value_type"], header["index_type"]
    parts: list[bytes] = []
    for idx in indices:
        sub = idx[names_used]
        parts += [sub.astype("<" + it).tobytes(), _pad(sub.nbytes)]
    counts = []
    for s, t, sf, nm, par in out_levels:
        counts.append(s.size)
        name = np.where(nm >= 0, np.searchsorted(names_used, nm), -1)
        for col in (s, t, sf):
            parts.append(col.astype("<" + vt).tobytes())
        parts += [_pad(s.size * 3 * _SIZE[vt]), name.astype("<i4").tobytes(), par.astype("<i4").tobytes(),
                  _pad(s.size * 8)]
    head = dict(header, levels=counts, names_bytes=len(new_blob),
                preview={"width": width, "nodes": full, "pruned": pruned})
    text = json.dumps(head, separators=(",", ":")).encode()
    first_part = MAGIC + struct.pack("<I", len(text)) + text
    return b"".join([first_part, _pad(len(first_part)), new_blob, _pad(len(new_blob)), *parts])
