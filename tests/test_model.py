from __future__ import annotations

import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Profile, Unresolved

LIB = Mapping(0x7F0000000000, 0x7F0000100000, 0x2000, "/usr/lib/libfoo.so.1")


def test_unresolved_frames_name_their_module_and_offset() -> None:
    assert Frame(0x7F0000000100, LIB).names() == ("libfoo.so.1+0x2100",)
    assert Frame(0xFFFFFFFF81234567, None, FrameKind.KERNEL).names() == ("[kernel]+0xffffffff81234567",)


def test_inlined_lines_expand_outermost_first() -> None:
    f = Frame(1, LIB, lines=(Line("inner"), Line("middle"), Line("outer")))
    assert f.names() == ("outer", "middle", "inner")


def test_merge_sums_and_keeps_shared_labels() -> None:
    s = (Frame(1, LIB, lines=(Line("a"),)),)
    p1 = Profile({"pod": "x", "pid": "1"}, 100, 10, 5, {s: 2})
    p2 = Profile({"pod": "x", "pid": "2"}, 105, 20, 5, {s: 3})
    m = Profile.merge([p1, p2])
    assert m.labels == {"pod": "x"} and m.samples == {s: 5}
    assert (m.start_ns, m.end_ns) == (100, 125)


def test_merge_refuses_mixed_sample_types() -> None:
    a = Profile({}, 0, 1, 1, sample_type="cpu", unit="nanoseconds")
    b = Profile({}, 0, 1, 1, sample_type="alloc_space", unit="bytes")
    with pytest.raises(ValueError, match="cannot merge"):
        Profile.merge([a, b])


def test_runs_of_unmapped_frames_collapse_into_one_frame() -> None:
    from podflame.model import UNMAPPED, Unresolved, collapse_unmapped

    m = Mapping(0x400000, 0x500000, 0, "/bin/app", "ab" * 20)
    real = [Frame(0x400100 + i, m, lines=(Line(f"f{i}"),)) for i in range(3)]
    junk = [Frame(a, None, reason=Unresolved.NO_MAPPING) for a in (0x7777, 0x100010000, 0x10303)]
    gone = Frame(0x7F00, None, reason=Unresolved.PROCESS_GONE)
    stack = (junk[0], junk[1], real[0], junk[2], real[1], gone, real[2])
    assert collapse_unmapped(stack) == (UNMAPPED, real[0], UNMAPPED, real[1], gone, real[2])
    assert collapse_unmapped(tuple(real)) == tuple(real)
    assert UNMAPPED.names() == ("[no mapping]",) and gone.names() == ("[process gone]+0x7f00",)


def test_frames_built_positionally_by_keyword_replaced_or_unpickled_are_equal_frozen_and_hash_alike() -> None:
    """Frame's own __init__ (faster than the generated one) keeps what the dataclass promised: defaults,
    keywords, value equality and hashing, frozen fields, dataclasses.replace, pickling across processes."""
    import dataclasses
    import pickle

    m = Mapping(0x1000, 0x2000, 0x0, "/usr/lib/libc.so.6", "ab" * 20)
    a = Frame(0x1234, m, FrameKind.NATIVE, (Line("read", "read.c", 3),))
    b = Frame(address=0x1234, lines=(Line("read", "read.c", 3),), mapping=m)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert (a.kind, a.reason) == (FrameKind.NATIVE, None) and Frame(5).mapping is None and Frame(5).lines == ()
    gone = dataclasses.replace(a, lines=(), reason=Unresolved.PROCESS_GONE)
    assert gone == Frame(0x1234, m, FrameKind.NATIVE, (), Unresolved.PROCESS_GONE) and gone != a
    assert hash(gone) == hash(Frame(0x1234, m, FrameKind.NATIVE, (), Unresolved.PROCESS_GONE))
    back = pickle.loads(pickle.dumps(a))
    assert back == a and hash(back) == hash(a) and back.lines[0].function == "read"
    assert Frame(0x1234, m) != Frame(0x1235, m) and Frame(0, None, FrameKind.KERNEL) != Frame(0, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.address = 1  # type: ignore[misc]
    assert "_hash" not in repr(a) and repr(a).startswith("Frame(address=4660, mapping=Mapping(")


def test_add_sums_equal_stacks_and_skips_zero_values() -> None:
    """Profile.add inserts a new stack with one hash and sums a stack it has (by value, not by object)."""
    m = Mapping(0x1000, 0x2000, 0, "/bin/x", "ab" * 20)
    a = (Frame(0x1100, m, FrameKind.NATIVE, (Line("f"),)), Frame(0x1200, m))
    b = tuple(Frame(f.address, f.mapping, f.kind, f.lines, f.reason) for f in a)
    p = Profile(labels={}, start_ns=0, duration_ns=1, period_ns=1)
    p.add(a, 2)
    p.add(b, 3)
    p.add(a[:1], 0)
    p.add(a[:1], 1)
    p.add(b[:1], 4)
    assert p.samples == {a: 5, a[:1]: 5} and list(p.samples) == [a, a[:1]] and p.total() == 10
