"""A Profile as a compact flame-graph tree: each name once, nodes as integer quadruples.

The payload (docs/api.md) is `names` plus `levels`: `levels[d]` lists the nodes at depth d as
`[start, total, self, name]` with absolute starts, siblings sorted by name, so a renderer
can draw level by level without building objects, and each name travels once however
often it appears (the same idea as Pyroscope's flamebearer).
"""

from __future__ import annotations

from typing import Any

from podflame.model import Profile

ROOT = "total"


# A tree node is a list [total, self, {child name: node}]: cheaper than objects at 10^5 nodes.
_TOTAL, _SELF, _CHILDREN = 0, 1, 2


def _tree(profile: Profile) -> list:
    root: list = [0, 0, {}]
    for names, value in profile.name_stacks():
        root[_TOTAL] += value
        node = root
        for name in names:
            children = node[_CHILDREN]
            child = children.get(name)
            if child is None:
                child = children[name] = [0, 0, {}]
            child[_TOTAL] += value
            node = child
        node[_SELF] += value
    return root


def to_flamegraph(profile: Profile) -> dict[str, Any]:
    """Function-name stacks (inline frames are nodes of their own) -> the flame-graph JSON object."""
    root = _tree(profile)
    names: list[str] = [ROOT]
    index: dict[str, int] = {ROOT: 0}
    levels: list[list[int]] = []
    max_self = 0
    current: list[tuple[int, list, int]] = [(0, root, 0)]  # (start, node, name index)
    while current:
        level: list[int] = []
        following: list[tuple[int, list, int]] = []
        for start, (total, self_value, children), name_idx in current:
            level.extend((start, total, self_value, name_idx))
            if self_value > max_self:
                max_self = self_value
            offset = start
            for name in sorted(children):
                child = children[name]
                i = index.get(name)
                if i is None:
                    i = index[name] = len(names)
                    names.append(name)
                following.append((offset, child, i))
                offset += child[_TOTAL]
        levels.append(level)
        current = following
    return {"names": names, "levels": levels, "total": root[_TOTAL], "max_self": max_self,
            "unit": profile.unit, "type": profile.sample_type, "period_ns": profile.period_ns}


def decode_tree(fg: dict[str, Any]) -> dict[str, Any]:
    """The payload back as nested `{name: {"total", "self", "children"}}`, checking the layout rules.

    Used by tests and tools to compare whole trees; raises ValueError on a malformed payload.
    """
    names, levels = fg["names"], fg["levels"]
    if not levels or len(levels[0]) != 4 or names[levels[0][3]] != ROOT:
        raise ValueError("level 0 must hold exactly the root node 'total'")
    root_start, root_total, root_self, _ = levels[0]
    root: dict[str, Any] = {"total": root_total, "self": root_self, "children": {}}
    parents: list[tuple[int, int, dict[str, Any]]] = [(root_start, root_total, root)]
    for depth, level in enumerate(levels[1:], start=1):
        if len(level) % 4:
            raise ValueError(f"level {depth} length is not a multiple of 4")
        nodes: list[tuple[int, int, dict[str, Any]]] = []
        p = 0
        last: tuple[int, str] | None = None
        for i in range(0, len(level), 4):
            start, total, self_value, name_idx = level[i:i + 4]
            while p < len(parents) and not parents[p][0] <= start < parents[p][0] + max(parents[p][1], 1):
                p += 1
                last = None
            if p == len(parents) or start + total > parents[p][0] + parents[p][1]:
                raise ValueError(f"node at depth {depth}, start {start} lies outside every parent")
            name = names[name_idx]
            if last is not None and last[0] == p and last[1] >= name:
                raise ValueError(f"siblings at depth {depth} are not sorted by name: {last[1]!r}, {name!r}")
            last = (p, name)
            node = {"total": total, "self": self_value, "children": {}}
            parents[p][2]["children"][name] = node
            nodes.append((start, total, node))
        parents = nodes
    return root
