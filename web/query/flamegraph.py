"""Flame-graph payloads: each name once, nodes as integer arrays, built with numpy level by level.

The payload (docs/api.md) is `names` plus `levels`: `levels[d]` lists the nodes at depth d as
`[start, total, self, name]` with absolute starts, siblings sorted by name, so a renderer can
draw level by level without building objects, and each name travels once however often it
appears (the same idea as Pyroscope's flamebearer). A diff adds the baseline and comparison
values to every node.

The tree is built from stacks of name ids (root first) without Python objects per node: at
depth d every stack still that deep maps (parent node, name) to a node with one `np.unique`,
so half a million nodes cost a few dozen array passes, not half a million dict walks. A node
budget keeps the largest nodes (a parent is never smaller than its child, so the kept set is
a tree) and folds what it drops under each parent into one explicit `[other]` node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from web.query.stacks import NameStacks
from web.store.columns import sum_by

ROOT = "total"
OTHER = "[other]"  # bracketed like [no mapping]/[kernel]: no symbol can be named this
_SHIFT = np.int64(32)
_MASK = np.int64(0xFFFFFFFF)


@dataclass(slots=True)
class _Nodes:
    """All nodes of a tree as parallel arrays; node 0 is the root.

    `start` is set when the nodes are already in layout order (by depth, then parent's place, then
    name), as `_build` makes them: then laying out is a slice per depth, not a sort.
    """

    depth: np.ndarray
    parent: np.ndarray
    name: np.ndarray  # index into NameStacks.names (-1: the root, -2: [other])
    total: np.ndarray  # (nodes, columns)
    self: np.ndarray
    start: np.ndarray | None = None


def _name_ranks(names: Sequence[str], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each name id's place in the sorted order of the names among `ids` (siblings are laid out by name),
    and the name id at each place."""
    rank = np.zeros(len(names), dtype=np.int64)
    used = np.zeros(len(names), dtype=bool)
    used[ids] = True
    present = np.flatnonzero(used).tolist()
    present.sort(key=lambda i: (names[i], i))
    rank[present] = np.arange(len(present))
    return rank, np.array(present, dtype=np.int64)


def _build(ns: NameStacks) -> _Nodes:
    """The tree, built and laid out together: at each depth one sort of the stacks still that deep by
    (parent node, name rank) groups them into nodes *in layout order*, so node ids are layout places and
    the next depth sorts by them. Each node's start is its parent's plus its earlier siblings' widths."""
    n, cols = ns.values.shape
    rank, name_of_rank = _name_ranks(ns.names, ns.flat)
    root_total = ns.values.sum(axis=0, keepdims=True) if n else np.zeros((1, cols), np.int64)
    depth, parent, name = [np.zeros(1, np.int64)], [np.full(1, -1, np.int64)], [np.full(1, -1, np.int64)]
    total = [root_total]
    self_ = [ns.values[ns.lengths == 0].sum(axis=0, keepdims=True) if n else np.zeros((1, cols), np.int64)]
    start = [np.zeros(1, np.int64)]
    node_start = start[0]
    base = 0  # id of the previous depth's first node
    current = np.zeros(n, dtype=np.int64)  # each stack's node at the previous depth
    alive = np.flatnonzero(ns.lengths > 0)
    next_id = 1
    d = 0
    while alive.size:
        key = (current[alive] << _SHIFT) | rank[ns.flat[ns.offsets[alive] + d]]
        order = np.argsort(key)
        key, members = key[order], alive[order]
        first = np.concatenate(([True], key[1:] != key[:-1]))
        local = np.cumsum(first) - 1  # each member's node, counted from this depth's first
        m = int(local[-1]) + 1
        vals = ns.values[members]
        node_key = key[first]
        par = node_key >> _SHIFT
        tot = np.add.reduceat(vals, np.flatnonzero(first), axis=0)  # members are grouped by node
        ends = ns.lengths[members] == d + 1
        depth.append(np.full(m, d + 1, np.int64))
        parent.append(par)
        name.append(name_of_rank[node_key & _MASK])
        total.append(tot)
        self_.append(sum_by(local[ends], vals[ends], m))
        # Siblings are consecutive (same parent): start = parent's start + widths of those before.
        width = tot.sum(axis=1)
        cs = np.cumsum(width)
        group_first = np.concatenate(([True], par[1:] != par[:-1]))
        group_start = np.maximum.accumulate(np.where(group_first, np.arange(m), 0))
        before = cs - width - np.where(group_start > 0, cs[np.maximum(group_start - 1, 0)], 0)
        node_start = node_start[par - base] + before
        start.append(node_start)
        base = next_id
        current[members] = next_id + local
        next_id += m
        d += 1
        alive = members[~ends]
    return _Nodes(np.concatenate(depth), np.concatenate(parent), np.concatenate(name),
                  np.concatenate(total), np.concatenate(self_), np.concatenate(start))


def _budget(nodes: _Nodes, max_nodes: int) -> tuple[_Nodes, int]:
    """Keep the largest nodes so that kept + [other] nodes <= max_nodes; returns (nodes, folded count).

    Ranking by (total desc, depth asc) ranks every parent before its children (a parent's total is
    at least its child's, for non-negative values), so any prefix of the ranking is a tree.
    """
    count = nodes.depth.size
    max_nodes = max(max_nodes, 2)
    if count <= max_nodes:
        return nodes, 0
    weight = np.abs(nodes.total).sum(axis=1)
    order = np.lexsort((nodes.depth, -weight))
    rank = np.empty(count, np.int64)
    rank[order] = np.arange(count)
    child = np.arange(1, count)
    child_parent = nodes.parent[1:]

    def cost(k: int) -> int:
        dropped = child[rank[child] >= k]
        parents = child_parent[dropped - 1]
        return k + np.unique(parents[rank[parents] < k]).size

    lo, hi = 1, max_nodes  # cost(k) >= k, so k <= max_nodes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= max_nodes:
            lo = mid
        else:
            hi = mid - 1
    k = lo
    while k > 1 and cost(k) > max_nodes:
        k -= 1
    keep = rank < k
    kept = np.flatnonzero(keep)
    new_id = np.full(count, -1, np.int64)
    new_id[kept] = np.arange(kept.size)
    dropped = child[~keep[child]]
    dropped_parent = child_parent[dropped - 1]
    under_kept = keep[dropped_parent]
    dropped, dropped_parent = dropped[under_kept], dropped_parent[under_kept]
    oparents, inv = np.unique(dropped_parent, return_inverse=True)
    other_total = sum_by(inv.reshape(-1), nodes.total[dropped], oparents.size)
    parent = np.where(nodes.parent[kept] >= 0, new_id[np.maximum(nodes.parent[kept], 0)], -1)
    out = _Nodes(
        depth=np.concatenate((nodes.depth[kept], nodes.depth[oparents] + 1)),
        parent=np.concatenate((parent, new_id[oparents])),
        name=np.concatenate((nodes.name[kept], np.full(oparents.size, -2, np.int64))),
        total=np.concatenate((nodes.total[kept], other_total)),
        self=np.concatenate((nodes.self[kept], other_total)),
    )
    return out, count - kept.size


def _layout(nodes: _Nodes, names: Sequence[str]) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """Output names (first appearance, root first), per-level node indices in layout order, and starts."""
    if nodes.start is not None:
        return _layout_ordered(nodes, names)
    count = nodes.depth.size
    present = np.zeros(len(names), dtype=bool)
    present[nodes.name[nodes.name >= 0]] = True
    used = np.flatnonzero(present)
    label = {-1: ROOT, -2: OTHER}
    text = [names[i] for i in used.tolist()]
    # Sibling order is by name: give each node its name's rank ([other] sorted in among them).
    rank = {t: i for i, t in enumerate(sorted({*text, OTHER}))}
    rank_of_used = np.fromiter((rank[t] for t in text), dtype=np.int64, count=len(text))
    name_rank = np.zeros(count, dtype=np.int64)
    named = nodes.name >= 0
    rank_of_name = np.zeros(len(names), dtype=np.int64)
    rank_of_name[used] = rank_of_used
    name_rank[named] = rank_of_name[nodes.name[named]]
    name_rank[nodes.name == -2] = rank[OTHER]
    n_ranks = np.int64(len(rank))
    width = nodes.total.sum(axis=1)
    start = np.zeros(count, dtype=np.int64)
    position = np.zeros(count, dtype=np.int64)  # a node's index within its level, in layout order
    levels = [np.zeros(1, np.int64)]
    max_depth = int(nodes.depth.max()) if count else 0
    by_depth = np.argsort(nodes.depth, kind="stable")
    bounds = np.searchsorted(nodes.depth[by_depth], np.arange(max_depth + 2))
    for d in range(1, max_depth + 1):
        idx = by_depth[bounds[d]:bounds[d + 1]]
        par = nodes.parent[idx]
        order = np.argsort(position[par] * n_ranks + name_rank[idx])  # by parent's place, then name
        idx, par = idx[order], par[order]
        w = width[idx]
        cs = np.cumsum(w)
        first = np.concatenate(([True], par[1:] != par[:-1]))
        group_start = np.maximum.accumulate(np.where(first, np.arange(idx.size), 0))
        before = cs - w - np.where(group_start > 0, cs[group_start - 1], 0)
        start[idx] = start[par] + before
        position[idx] = np.arange(idx.size)
        levels.append(idx)
    # Output names in order of first appearance, level by level.
    seq = np.concatenate(levels) if levels else np.zeros(0, np.int64)
    seq_names = nodes.name[seq]
    out_names: list[str] = [ROOT]
    out_index: dict[str, int] = {ROOT: 0}
    node_out = np.zeros(count, np.int64)
    keys, first_at, inv = np.unique(seq_names, return_index=True, return_inverse=True)
    out_of_key = np.zeros(keys.size, np.int64)
    for j in np.argsort(first_at, kind="stable").tolist():
        key = int(keys[j])
        s = label[key] if key < 0 else names[key]
        i = out_index.get(s)
        if i is None:
            i = out_index[s] = len(out_names)
            out_names.append(s)
        out_of_key[j] = i
    node_out[seq] = out_of_key[inv.reshape(-1)]
    return out_names, levels, np.stack((start, node_out), axis=1)


def _layout_ordered(nodes: _Nodes, names: Sequence[str]) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """`_layout` of nodes already in layout order (`_build`'s): levels are slices, names need no sort of nodes."""
    assert nodes.start is not None
    count = nodes.depth.size
    bounds = np.searchsorted(nodes.depth, np.arange(int(nodes.depth[-1]) + 2))
    levels = [np.arange(bounds[d], bounds[d + 1]) for d in range(bounds.size - 1)]
    # Output names in order of first appearance, level by level: the node order itself.
    named = np.flatnonzero(nodes.name >= 0)
    first = np.full(len(names), count, dtype=np.int64)
    np.minimum.at(first, nodes.name[named], named)
    used = np.flatnonzero(first < count)
    out_names: list[str] = [ROOT]
    out_index: dict[str, int] = {ROOT: 0}
    out_of_name = np.zeros(len(names), dtype=np.int64)
    for i in used[np.argsort(first[used])].tolist():
        s = names[i]
        j = out_index.get(s)
        if j is None:
            j = out_index[s] = len(out_names)
            out_names.append(s)
        out_of_name[i] = j
    node_out = np.zeros(count, dtype=np.int64)
    node_out[named] = out_of_name[nodes.name[named]]
    return out_names, levels, np.stack((nodes.start, node_out), axis=1)


def _payload(ns: NameStacks, max_nodes: int | None, diff: bool) -> dict[str, Any]:
    nodes = _build(ns)
    folded = 0
    if max_nodes is not None:
        nodes, folded = _budget(nodes, max_nodes)
    out_names, levels, pos = _layout(nodes, ns.names)
    width = nodes.total.sum(axis=1)
    self_w = nodes.self.sum(axis=1)
    out_levels = []
    for idx in levels:
        cols = [pos[idx, 0], width[idx], self_w[idx], pos[idx, 1]]
        if diff:
            cols += [nodes.total[idx, 0], nodes.self[idx, 0], nodes.total[idx, 1], nodes.self[idx, 1]]
        out_levels.append(np.stack(cols, axis=1).reshape(-1).tolist())
    max_self = int(self_w[nodes.name != -2].max())  # [other] is a fold, not a hot function
    payload: dict[str, Any] = {"names": out_names, "levels": out_levels, "total": int(width[0]),
                               "max_self": max(max_self, 0)}
    if diff:
        payload.update(base_total=int(nodes.total[0, 0]), comp_total=int(nodes.total[0, 1]))
    if max_nodes is not None:
        other = out_names.index(OTHER) if (nodes.name == -2).any() else -1
        payload.update(max_nodes=max_nodes, folded_nodes=folded, other=other)
    return payload


def flamegraph_from_stacks(ns: NameStacks, max_nodes: int | None = None) -> dict[str, Any]:
    """The flame-graph payload of name stacks with one value column (without type/unit metadata)."""
    return _payload(ns, max_nodes, diff=False)


def diff_tree_from_stacks(ns: NameStacks, max_nodes: int | None = None) -> dict[str, Any]:
    """A diff payload: `values` column 0 is the baseline, column 1 the comparison.

    Nodes are 8 integers: `start, total, self, name` laid out over baseline + comparison (as one flame
    graph of both), then `base_total, base_self, comp_total, comp_self`.
    """
    return _payload(ns, max_nodes, diff=True)


def decode_tree(fg: dict[str, Any]) -> dict[str, Any]:
    """The payload back as nested `{name: {"total", "self", "children"}}`, checking the layout rules.

    Used by tests and tools to compare whole trees; raises ValueError on a malformed payload. A diff
    payload's nodes also get `base_total`, `base_self`, `comp_total`, `comp_self`.
    """
    names, levels = fg["names"], fg["levels"]
    width = 8 if "base_total" in fg else 4
    if not levels or len(levels[0]) != width or names[levels[0][3]] != ROOT:
        raise ValueError("level 0 must hold exactly the root node 'total'")

    def node(values: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"total": values[1], "self": values[2], "children": {}}
        if width == 8:
            out.update(base_total=values[4], base_self=values[5], comp_total=values[6], comp_self=values[7])
        return out

    root = node(levels[0])
    parents: list[tuple[int, int, dict[str, Any]]] = [(levels[0][0], levels[0][1], root)]
    for depth, level in enumerate(levels[1:], start=1):
        if len(level) % width:
            raise ValueError(f"level {depth} length is not a multiple of {width}")
        nodes: list[tuple[int, int, dict[str, Any]]] = []
        p = 0
        last: tuple[int, str] | None = None
        for i in range(0, len(level), width):
            values = level[i:i + width]
            start, total, _, name_idx = values[:4]
            while p < len(parents) and not parents[p][0] <= start < parents[p][0] + max(parents[p][1], 1):
                p += 1
                last = None
            if p == len(parents) or start + total > parents[p][0] + parents[p][1]:
                raise ValueError(f"node at depth {depth}, start {start} lies outside every parent")
            name = names[name_idx]
            if last is not None and last[0] == p and last[1] >= name:
                raise ValueError(f"siblings at depth {depth} are not sorted by name: {last[1]!r}, {name!r}")
            last = (p, name)
            child = node(values)
            parents[p][2]["children"][name] = child
            nodes.append((start, total, child))
        parents = nodes
    return root
