"""pprof.encode builds each distinct frame's location once and adds mappings main-first at the end:
the wire content is what the decoder and `go tool pprof` expect (ids, order, values, labels)."""

from __future__ import annotations

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile, Unresolved

LIB = Mapping(0x7F0000000000, 0x7F0000100000, 0, "/usr/lib/libc.so.6", "aa" * 20)
EXE = Mapping(0x555500000000, 0x555500010000, 0x1000, "/opt/app", "bb" * 20)
MAIN = Frame(0x555500000100, EXE, FrameKind.NATIVE, (Line("main", "app.c", 3),))
WORK = Frame(0x555500000200, EXE, FrameKind.NATIVE, (Line("inlined", "app.h", 9), Line("work", "app.c", 7)))
READ = Frame(0x7F0000000300, LIB, FrameKind.NATIVE, (Line("read"),))
LOST = Frame(0x7F0000000400, LIB, FrameKind.NATIVE, (), Unresolved.NO_SYMBOLS)
KERNEL = Frame(0xFFFFFFFF81000000, None, FrameKind.KERNEL, (Line("vfs_read"),))


def test_locations_once_mappings_main_first_values_and_labels() -> None:
    a = Profile(labels={"node": "n1", "pid": "1", "comm": "app"}, start_ns=10, duration_ns=5, period_ns=100)
    a.add((MAIN, WORK, READ, KERNEL), 3)
    a.add((MAIN, WORK, LOST), 2)
    b = Profile(labels={"node": "n1", "pid": "2"}, start_ns=12, duration_ns=8, period_ns=200)
    b.add((MAIN, WORK), 1)
    msg = pprof.PprofProfile()
    msg.ParseFromString(pprof.encode([a, b], common_labels={"node": "n1"}, compress=False))
    strings = list(msg.string_table)
    # mappings are met leaf first (the kernel, libc), the executable goes first with its id kept
    assert [strings[m.filename] for m in msg.mapping] == ["/opt/app", "[kernel.kallsyms]", "/usr/lib/libc.so.6"]
    assert [m.id for m in msg.mapping] == [3, 1, 2]
    assert len(msg.location) == 5  # five distinct frames, each once, ids in the order met (leaf first)
    assert [loc.id for loc in msg.location] == [1, 2, 3, 4, 5]
    by_id = {loc.id: loc for loc in msg.location}
    functions = {f.id: strings[f.name] for f in msg.function}
    assert [functions[ln.function_id] for ln in by_id[3].line] == ["inlined", "work"]
    assert [functions[ln.function_id] for ln in by_id[5].line] == ["libc.so.6+0x400"]
    assert [(list(s.location_id), list(s.value)) for s in msg.sample] == [
        ([1, 2, 3, 4], [3, 300]), ([5, 3, 4], [2, 200]), ([3, 4], [1, 200])]
    assert [{strings[lb.key]: strings[lb.str] for lb in s.label} for s in msg.sample] == [
        {"comm": "app", "pid": "1"}, {"comm": "app", "pid": "1"}, {"pid": "2"}]
    back = {p.labels["pid"]: p.samples for p in pprof.decode(pprof.encode([a, b])) if p.sample_type == "samples"}
    assert back["1"][(MAIN, WORK, READ, KERNEL)] == 3 and back["2"] == {(MAIN, WORK): 1}


def _copy(f: Frame) -> Frame:
    """An equal frame that is another object (what a rebuilt or unpickled frame is)."""
    return Frame(f.address, f.mapping, f.kind, f.lines, f.reason)


def test_equal_frames_that_are_distinct_objects_share_one_location_as_shared_objects_do() -> None:
    """Locations are found by the frame object first, then by value: copies of a frame (equal, not the same
    object) must still be one location, and the bytes must not depend on which objects the stacks hold."""
    shared = Profile(labels={"pid": "1"}, start_ns=0, duration_ns=5, period_ns=100)
    copies = Profile(labels={"pid": "1"}, start_ns=0, duration_ns=5, period_ns=100)
    stacks = [((MAIN, WORK, READ, KERNEL), 3), ((MAIN, WORK, LOST), 2), ((MAIN, READ), 1), ((LOST, LOST), 4)]
    for stack, n in stacks:
        shared.add(stack, n)
        copies.add(tuple(_copy(f) for f in stack), n)
    assert all(a is not b for a, b in zip(next(iter(copies.samples)), next(iter(shared.samples)), strict=True))
    body = pprof.encode([shared], compress=False)
    assert pprof.encode([copies], compress=False) == body
    mixed = Profile(labels={"pid": "1"}, start_ns=0, duration_ns=5, period_ns=100)
    for i, (stack, n) in enumerate(stacks):  # some stacks share objects, others hold copies
        mixed.add(stack if i % 2 else tuple(_copy(f) for f in stack), n)
    assert pprof.encode([mixed], compress=False) == body
    msg = pprof.PprofProfile()
    msg.ParseFromString(body)
    assert len(msg.location) == 5
    assert [list(s.location_id) for s in msg.sample] == [[1, 2, 3, 4], [5, 3, 4], [2, 4], [5, 5]]


def test_unresolved_frames_are_functions_named_by_their_fallback_shared_with_equal_names() -> None:
    """A frame without lines but with a reason is a location with one line: a function named as
    `Frame.fallback_name` says, no file, no line number; a function of that name and no file is one
    function, whether a fallback or a symbolizer's answer names it."""
    gone = Frame(0x7777, None, FrameKind.NATIVE, (), Unresolved.PROCESS_GONE)
    kernel = Frame(0xFFFFFFFFC0001234, None, FrameKind.KERNEL, (), Unresolved.KERNEL_UNKNOWN)
    same_name = Frame(0x7F0000000999, LIB, FrameKind.NATIVE, (Line("libc.so.6+0x400"),))  # LOST's fallback
    bare = Frame(0x1234, None, FrameKind.NATIVE)  # no reason: no line at all
    p = Profile(labels={"pid": "1"}, start_ns=0, duration_ns=5, period_ns=100)
    p.add((MAIN, LOST, gone), 1)
    p.add((MAIN, kernel, same_name, bare), 2)
    msg = pprof.PprofProfile()
    msg.ParseFromString(pprof.encode([p], compress=False))
    strings = list(msg.string_table)
    functions = {f.id: (strings[f.name], strings[f.system_name], strings[f.filename]) for f in msg.function}
    lines = {loc.address: [(functions[ln.function_id], ln.line) for ln in loc.line] for loc in msg.location}
    assert lines[LOST.address] == [(("libc.so.6+0x400",) * 2 + ("",), 0)]
    assert lines[gone.address] == [(("[process gone]+0x7777",) * 2 + ("",), 0)]
    assert lines[kernel.address] == [(("[kernel]+0xffffffffc0001234",) * 2 + ("",), 0)]
    assert lines[bare.address] == []
    by_address = {loc.address: loc for loc in msg.location}
    assert by_address[LOST.address].line[0].function_id == by_address[same_name.address].line[0].function_id
    assert len(msg.function) == 4  # main, the shared libc.so.6+0x400, the gone and the kernel frames
    (back,) = (q for q in pprof.decode(pprof.encode([p])) if q.sample_type == "samples")
    assert sorted(tuple(n for f in s for n in f.names()) for s in back.samples) == sorted(
        tuple(n for f in s for n in f.names()) for s in p.samples)
