"""The flame-graph payload: whole trees compared after decoding, layout rules, names kept verbatim."""

from __future__ import annotations

import json
import random

import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from tests.builders import flamegraph_of
from web.query.flamegraph import (
    OTHER,
    decode_tree,
    diff_tree_from_stacks,
    flamegraph_from_stacks,
)
from web.query.stacks import NameStacks

EXE = Mapping(0x1000, 0x9000, 0, "/usr/bin/app", "b1d")


def fn(name: str, addr: int, *inlined: str) -> Frame:
    """A frame at `addr` whose lines are `inlined...` (innermost first) then `name`."""
    return Frame(addr, EXE, FrameKind.NATIVE, tuple(Line(n) for n in (*inlined, name)))


def prof(*stacks: tuple[tuple[Frame, ...], int]) -> Profile:
    p = Profile(labels={}, start_ns=0, duration_ns=1, period_ns=52_631_578)
    for stack, value in stacks:
        p.add(stack, value)
    return p


def leaf(total: int, self_value: int | None = None, **children: dict) -> dict:
    return {"total": total, "self": total if self_value is None else self_value, "children": children}


def test_docs_example_payload_exactly() -> None:
    main, hot_a = fn("main", 0x1100), fn("hot_a", 0x1200)
    fg = flamegraph_of(prof(((main, hot_a), 70), ((main,), 5), ((main, fn("hot_b", 0x1300)), 25)))
    assert fg == {"names": ["total", "main", "hot_a", "hot_b"],
                  "levels": [[0, 100, 0, 0], [0, 100, 5, 1], [0, 70, 70, 2, 70, 25, 25, 3]],
                  "total": 100, "max_self": 70, "unit": "count", "type": "samples", "period_ns": 52_631_578}


def test_whole_tree_with_inlines_shared_names_and_sorted_siblings() -> None:
    main = fn("main", 0x1100)
    # One address that is `checkout` with `hash_step` inlined into it: two nodes.
    inl = fn("checkout", 0x1200, "hash_step")
    # A different address of the same function merges into the same node.
    checkout2 = fn("checkout", 0x1210)
    zeta, alpha = fn("zeta", 0x1300), fn("alpha", 0x1400)
    fg = flamegraph_of(prof(((main, inl), 30), ((main, checkout2), 4), ((main, zeta, alpha), 6),
                            ((main, alpha), 2), ((main, zeta), 1)))
    assert decode_tree(fg) == leaf(43, 0, main=leaf(43, 0,
        alpha=leaf(2),
        checkout=leaf(34, 4, hash_step=leaf(30)),
        zeta=leaf(7, 1, alpha=leaf(6))))
    # siblings in name order with contiguous starts; each name listed once
    assert fg["levels"][2] == [0, 2, 2, fg["names"].index("alpha"), 2, 34, 4, fg["names"].index("checkout"),
                               36, 7, 1, fg["names"].index("zeta")]
    assert len(fg["names"]) == len(set(fg["names"])) == 6
    assert fg["max_self"] == 30


def test_unresolved_frames_use_module_offsets() -> None:
    bare = Frame(0x1234, EXE, FrameKind.NATIVE)
    fg = flamegraph_of(prof(((fn("main", 0x1100), bare), 3)))
    assert decode_tree(fg) == leaf(3, 0, main=leaf(3, 0, **{"app+0x234": leaf(3)}))


def test_empty_profile_and_empty_stacks() -> None:
    fg = flamegraph_of(prof())
    assert fg["names"] == ["total"] and fg["levels"] == [[0, 0, 0, 0]] and fg["total"] == 0
    fg = flamegraph_of(prof(((), 4), ((fn("main", 0x1100),), 1)))
    assert decode_tree(fg) == leaf(5, 4, main=leaf(1))
    assert fg["max_self"] == 4


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", 'say "hi"', "it's", "a&b", "</script><!--",
                                  "\u2028line", "naïve ünïcode", "back\\slash"])
def test_dangerous_names_survive_json_unchanged(name: str) -> None:
    fg = flamegraph_of(prof(((fn("main", 0x1100), fn(name, 0x1200)), 1)))
    back = json.loads(json.dumps(fg))
    assert back["names"] == ["total", "main", name]
    assert decode_tree(back) == leaf(1, 0, main=leaf(1, 0, **{name: leaf(1)}))


def test_decode_tree_rejects_broken_layouts() -> None:
    good = flamegraph_of(prof(((fn("main", 0x1100), fn("a", 0x1200)), 1), ((fn("main", 0x1100), fn("b", 0x1300)), 1)))
    unsorted = json.loads(json.dumps(good))
    unsorted["levels"][2] = [0, 1, 1, 3, 1, 1, 1, 2]  # b before a
    with pytest.raises(ValueError, match="not sorted"):
        decode_tree(unsorted)
    outside = json.loads(json.dumps(good))
    outside["levels"][2][0] = 5
    with pytest.raises(ValueError, match="outside every parent"):
        decode_tree(outside)


# -- the numpy builder against a plain reference, and the node budget -----------------------------

def _reference(paths: list[list[str]], values: list[int]) -> dict:
    root = leaf(0, 0)
    for path, v in zip(paths, values, strict=True):
        node = root
        node["total"] += v
        for name in path:
            node = node["children"].setdefault(name, leaf(0, 0))
            node["total"] += v
        node["self"] += v
    return root


def _random_stacks(seed: int, n: int = 400, names: int = 30) -> tuple[list[list[str]], list[int]]:
    rng = random.Random(seed)
    paths = [[f"f{int(rng.paretovariate(1.2)) % names}" for _ in range(rng.randint(0, 12))] for _ in range(n)]
    return paths, [rng.randint(1, 50) for _ in range(n)]


def _name_stacks(paths: list[list[str]], values: list[int], columns: int = 1) -> NameStacks:
    index: dict[str, int] = {}
    ids = [[index.setdefault(n, len(index)) for n in p] for p in paths]
    return NameStacks.from_lists(list(index), ids, values, columns)


@pytest.mark.parametrize("seed", range(5))
def test_numpy_builder_equals_a_plain_tree(seed: int) -> None:
    paths, values = _random_stacks(seed)
    fg = flamegraph_from_stacks(_name_stacks(paths, values))
    assert decode_tree(fg) == _reference(paths, values)
    assert len(fg["names"]) == len(set(fg["names"]))


def _paths(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], dict]:
    out = {prefix: tree}
    for name, child in tree["children"].items():
        out.update(_paths(child, (*prefix, name)))
    return out


@pytest.mark.parametrize("budget", [2, 3, 10, 57, 200])
def test_node_budget_keeps_the_largest_nodes_and_folds_the_rest_into_other(budget: int) -> None:
    paths, values = _random_stacks(7, n=600, names=60)
    full = _reference(paths, values)
    fg = flamegraph_from_stacks(_name_stacks(paths, values), max_nodes=budget)
    tree = decode_tree(fg)
    count = sum(len(level) // 4 for level in fg["levels"])
    assert count <= budget and fg["max_nodes"] == budget
    kept, every = _paths(tree), _paths(full)
    real = {p: n for p, n in kept.items() if p[-1:] != (OTHER,)}
    assert fg["folded_nodes"] == len(every) - len(real)
    assert tree["total"] == full["total"]
    # The kept nodes are the largest: nothing dropped is bigger than anything kept.
    dropped = [n["total"] for p, n in every.items() if p not in real]
    if dropped:
        assert min(n["total"] for n in real.values()) >= max(dropped)

    def check(kept: dict, orig: dict) -> None:
        # Every kept node has its original values; its children + [other] add up to its total - self.
        assert (kept["total"], kept["self"]) == (orig["total"], orig["self"])
        dropped = 0
        for name, child in orig["children"].items():
            if name in kept["children"]:
                check(kept["children"][name], child)
            else:
                dropped += child["total"]
        if dropped:
            other = kept["children"][OTHER]
            assert other == leaf(dropped)
        else:
            assert OTHER not in kept["children"]

    check(tree, full)
    assert fg["other"] == (fg["names"].index(OTHER) if OTHER in fg["names"] else -1)


def test_budget_larger_than_the_tree_changes_nothing() -> None:
    paths, values = _random_stacks(3)
    plain = flamegraph_from_stacks(_name_stacks(paths, values))
    budget = flamegraph_from_stacks(_name_stacks(paths, values), max_nodes=10**6)
    assert budget["levels"] == plain["levels"] and budget["folded_nodes"] == 0 and budget["other"] == -1


def test_diff_tree_has_both_sides_per_node() -> None:
    paths = [["main", "a"], ["main", "b"], ["main", "a"], ["main"]]
    values = [[10, 0], [5, 20], [0, 4], [1, 1]]
    fg = diff_tree_from_stacks(_name_stacks(paths, [v for pair in values for v in pair], columns=2))
    tree = decode_tree(fg)
    assert (fg["base_total"], fg["comp_total"]) == (16, 25)
    main = tree["children"]["main"]
    assert (main["total"], main["base_total"], main["comp_total"], main["base_self"], main["comp_self"]) == \
        (41, 16, 25, 1, 1)
    a, b = main["children"]["a"], main["children"]["b"]
    assert (a["base_total"], a["comp_total"], b["base_total"], b["comp_total"]) == (10, 4, 5, 20)
    assert a["total"] == 14 and b["total"] == 25
