"""The flame-graph payload: whole trees compared after decoding, layout rules, names kept verbatim."""

from __future__ import annotations

import json

import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from web.flamegraph import decode_tree, to_flamegraph

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
    fg = to_flamegraph(prof(((main, hot_a), 70), ((main,), 5), ((main, fn("hot_b", 0x1300)), 25)))
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
    fg = to_flamegraph(prof(((main, inl), 30), ((main, checkout2), 4), ((main, zeta, alpha), 6),
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
    fg = to_flamegraph(prof(((fn("main", 0x1100), bare), 3)))
    assert decode_tree(fg) == leaf(3, 0, main=leaf(3, 0, **{"app+0x234": leaf(3)}))


def test_empty_profile_and_empty_stacks() -> None:
    fg = to_flamegraph(prof())
    assert fg["names"] == ["total"] and fg["levels"] == [[0, 0, 0, 0]] and fg["total"] == 0
    fg = to_flamegraph(prof(((), 4), ((fn("main", 0x1100),), 1)))
    assert decode_tree(fg) == leaf(5, 4, main=leaf(1))
    assert fg["max_self"] == 4


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", 'say "hi"', "it's", "a&b", "</script><!--",
                                  "\u2028line", "naïve ünïcode", "back\\slash"])
def test_dangerous_names_survive_json_unchanged(name: str) -> None:
    fg = to_flamegraph(prof(((fn("main", 0x1100), fn(name, 0x1200)), 1)))
    back = json.loads(json.dumps(fg))
    assert back["names"] == ["total", "main", name]
    assert decode_tree(back) == leaf(1, 0, main=leaf(1, 0, **{name: leaf(1)}))


def test_decode_tree_rejects_broken_layouts() -> None:
    good = to_flamegraph(prof(((fn("main", 0x1100), fn("a", 0x1200)), 1), ((fn("main", 0x1100), fn("b", 0x1300)), 1)))
    unsorted = json.loads(json.dumps(good))
    unsorted["levels"][2] = [0, 1, 1, 3, 1, 1, 1, 2]  # b before a
    with pytest.raises(ValueError, match="not sorted"):
        decode_tree(unsorted)
    outside = json.loads(json.dumps(good))
    outside["levels"][2][0] = 5
    with pytest.raises(ValueError, match="outside every parent"):
        decode_tree(outside)
