"""StackMemo's translation of a process's addresses into keys of the shared frames (`_Layout`): on real
processes, the frames it gives equal those the frame-by-frame path gives (maps lookup, rebasing, shared
frames) bit for bit, and name what a fresh symbolization names. Processes of one program at other ASLR
bases, a binary without a build id, addresses outside every mapping, a library loaded after the maps were
read (the re-read in the middle of a stack), exec into another program; pid reuse is
tests/test_agent_memo.py's FakeProc case, which goes through the layout as well."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from podflame.model import FrameKind, Mapping
from profiler.agent import _NO_LAYOUT, Context, StackMemo, _Layout, build_profiles
from profiler.procmaps import MapsCache, parse_exec_maps
from profiler.sampler import RawSample
from symbolizer import Symbolizer
from symbolizer.elf import ElfSymbols
from tests.test_agent import FakeCgroups, drain_of, raw
from tests.test_procmaps import FakeProc, line
from tests.test_symbolizer_build import Binaries, built, gcc, need_tools, running

CONTROL = r"""
import ctypes, os, sys
sys.stdout.write("ready\n"); sys.stdout.flush()
held = []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "dlopen":
        held.append(ctypes.CDLL(arg))
    elif cmd == "exec":
        os.execv(arg, [arg])
    sys.stdout.write("ok\n"); sys.stdout.flush()
"""


class FrameByFrame(MapsCache):
    """The same maps without `layout`: StackMemo resolves every frame through lookup, as before layouts."""

    layout = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    return built(tmp_path_factory)


@pytest.fixture(scope="module")
def no_build_id(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("gcc")
    src = Path(__file__).parent / "fixtures" / "symprog.c"
    return gcc(tmp_path_factory.mktemp("nobid") / "nobid", "-fPIE", "-pie", str(src), "-Wl,--build-id=none")


@contextmanager
def controlled() -> Iterator[subprocess.Popen]:
    """A python3 that loads a library or execs another program when told to (stdin), printing ok."""
    p = subprocess.Popen(["/usr/bin/python3", "-c", CONTROL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        yield p
    finally:
        p.kill()
        p.wait()


def tell(p: subprocess.Popen, line: str, until: str = "ok") -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(line + "\n")
    p.stdin.flush()
    for got in p.stdout:
        if got.strip() == until:
            return
    raise AssertionError(f"{line!r}: the process ended")


def spans(pid: int) -> list[tuple[int, int, str]]:
    return [(e.start, e.end, e.path) for e in parse_exec_maps(Path(f"/proc/{pid}/maps").read_text())]


def stacks(rng: random.Random, pid: int, kernel: list[int], n: int, *, must: int | None = None) -> list[RawSample]:
    """Random user stacks over `pid`'s executable mappings (one in ten frames outside every one), some with
    a kernel tail (the leaf is then a return address); `must` placed in the middle of each stack."""
    regions = spans(pid)
    out = []
    for _ in range(n):
        user = []
        for _ in range(rng.randrange(1, 14)):
            if rng.random() < 0.1:
                user.append(rng.randrange(0x1000, 0x100000))  # a garbage frame-pointer walk
            else:
                lo, hi, _ = rng.choice(regions)
                user.append(rng.randrange(lo, hi))
        if must is not None:
            user.insert(len(user) // 2, must)
        kstack = tuple(rng.sample(kernel, rng.randrange(1, 3))) if kernel and rng.random() < 0.3 else ()
        out.append(raw(tgid=pid, pid=pid, cgroup_id=1, user=tuple(user), kernel=kstack))
    return out


def kernel_addresses() -> list[int]:
    try:
        lines = Path("/proc/kallsyms").read_text().splitlines()[:20000:700]
    except OSError:
        return []
    return [int(ln.split()[0], 16) + 3 for ln in lines if int(ln.split()[0], 16)]


class Pair:
    """A memo with layouts and one frame by frame, each with its own maps cache and symbolizer, fed alike."""

    def __init__(self, proc: str = "/proc") -> None:
        self.maps = MapsCache(proc)
        self.c = Context(node="n1", maps=self.maps, cgroups=FakeCgroups())
        self.sym = Symbolizer(self.maps, proc=proc)
        self.memo = StackMemo(self.c, self.sym)
        self.plain_maps = FrameByFrame(proc)
        plain_c = Context(node="n1", maps=self.plain_maps, cgroups=FakeCgroups())
        self.plain = StackMemo(plain_c, Symbolizer(self.plain_maps, proc=proc))
        self.plain_c = plain_c

    def drain(self, samples: list[RawSample]) -> list:
        """One drain through both: every sample's frames equal (rebased addresses and mappings included),
        and their names equal a fresh symbolization of the sample's frames."""
        drain = drain_of(*samples)
        self.memo.begin_drain()
        self.plain.begin_drain()
        got = build_profiles(drain, self.c, 10, self.memo)
        want = build_profiles(drain, self.plain_c, 10, self.plain)
        assert [p.labels for p in got] == [p.labels for p in want]
        for g, w in zip(got, want, strict=True):
            assert list(g.samples.items()) == list(w.samples.items())
        plain = [self.sym.symbolize(p) for p in build_profiles(drain, self.c, 10)]
        assert [dict(p.name_stacks()) for p in got] == [dict(p.name_stacks()) for p in plain]
        return got


@pytest.mark.parametrize("seed", [1, 2])
def test_layouts_give_the_frames_frame_by_frame_gives(seed: int, programs: Binaries, no_build_id: Path) -> None:
    rng = random.Random(seed)
    kernel = kernel_addresses()
    pair = Pair()
    with ExitStack() as stack:
        a = stack.enter_context(controlled())
        b = stack.enter_context(controlled())
        c = stack.enter_context(running(programs.pie))
        d = stack.enter_context(running(programs.pie))
        e = stack.enter_context(running(no_build_id))
        assert spans(a.pid) != spans(b.pid)  # ASLR: one program's libraries at other bases (python3 is not PIE)

        # first drain: a, c and the program without a build id; a's samples twice (memo hits)
        first = stacks(rng, a.pid, kernel, 40) + stacks(rng, c.pid, kernel, 20) + stacks(rng, e.pid, kernel, 20)
        pair.drain(first + first[:20])
        # second drain: b and d, new processes of known programs (c's stacks moved to d's base too): their
        # frames come from the shared frames through their layouts
        hits = pair.memo.shared_hits
        moved = [raw(tgid=d.pid, pid=d.pid, cgroup_id=1, kernel=s.kernel_stack,
                     user=tuple(x - spans(c.pid)[0][0] + spans(d.pid)[0][0] for x in s.user_stack))
                 for s in first[40:60] if all(spans(c.pid)[0][0] <= x < spans(c.pid)[-1][1] for x in s.user_stack)]
        pair.drain(stacks(rng, b.pid, kernel, 40) + stacks(rng, d.pid, kernel, 20) + moved + first[:10])
        assert pair.memo.shared_hits > hits
        for pid in (b.pid, d.pid):
            assert isinstance(pair.memo.processes[pid].layout, _Layout)
            assert pair.memo.processes[pid].layout is not _NO_LAYOUT

        # a loads a library after its maps were read: each stack holds an address in it, in the middle, so
        # the lookup there re-reads the maps in the middle of the callers (found changed: frame by frame on)
        lib = str(programs.lib)
        tell(a, f"dlopen {lib}")
        lo, hi, _ = next(r for r in spans(a.pid) if r[2] == lib)
        pair.drain(stacks(rng, a.pid, kernel, 30, must=lo + (hi - lo) // 3))
        assert pair.memo.processes[a.pid].layout is _NO_LAYOUT
        pair.drain(stacks(rng, a.pid, kernel, 30, must=lo + (hi - lo) // 2))  # the next drain: a new layout
        assert isinstance(pair.memo.processes[a.pid].layout, _Layout)
        assert pair.memo.processes[a.pid].layout is not _NO_LAYOUT

        # b execs another program (the pie's image under b's pid): the old frames and layout are not used
        tell(b, f"exec {programs.pie}", until="ready")
        got = pair.drain(stacks(rng, b.pid, kernel, 40) + stacks(rng, c.pid, kernel, 10))
        (after,) = [p for p in got if p.labels.get("pid") == str(b.pid)]
        paths = {f.mapping.path for stack in after.samples for f in stack if f.mapping is not None}
        assert str(programs.pie) in paths and not any("python3" in path for path in paths)


def test_a_new_process_of_a_known_program_resolves_no_frame_of_its_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same stacks, at the same file offsets, in a second python3: its callers are translated and found
    in the shared frames, with no maps lookup and no symbolizer call, and equal the first one's frames."""
    with controlled() as a, controlled() as b:
        maps = MapsCache()
        c = Context(node="n1", maps=maps, cgroups=FakeCgroups())
        memo = StackMemo(c, Symbolizer(maps))
        regions = {pid: [(lo, hi, path) for lo, hi, path in spans(pid) if path.startswith("/")]
                   for pid in (a.pid, b.pid)}
        assert [p for *_, p in regions[a.pid]] == [p for *_, p in regions[b.pid]]
        rng = random.Random(3)
        picks = [[(rng.randrange(len(regions[a.pid])), rng.random()) for _ in range(rng.randrange(2, 12))]
                 for _ in range(30)]

        def sample(pid: int, pick) -> RawSample:
            user = tuple(regions[pid][i][0] + int(f * (regions[pid][i][1] - regions[pid][i][0])) for i, f in pick)
            return raw(tgid=pid, pid=pid, cgroup_id=1, user=user)

        sym = memo.symbolizer
        assert isinstance(sym, Symbolizer)
        maps.refresh([a.pid, b.pid])
        memo.begin_drain()
        first = [memo(sample(a.pid, p)) for p in picks]
        lookups: list[int] = []
        real_lookup = maps.lookup

        def counted(pid: int, address: int) -> Mapping | None:
            lookups.append(address)
            return real_lookup(pid, address)

        monkeypatch.setattr(maps, "lookup", counted)
        asked = sym.stats()
        memo.begin_drain()
        second = [memo(sample(b.pid, p)) for p in picks]
        # every frame from the shared frames: no maps lookup, no symbolizer call; a's frames, rebased into
        # a's layout (a was the first process seen mapping those files)
        assert lookups == [] and sym.stats() == asked
        assert second == first
        assert all(f.kind is FrameKind.NATIVE and f.mapping is not None for stack in second for f in stack)
        assert memo.shared_hits >= sum(map(len, picks))


def test_maps_changed_under_a_stack_are_read_as_frame_by_frame_reads_them(tmp_path: Path,
                                                                          programs: Binaries) -> None:
    """Two libraries replaced at the same addresses and one more mapped after the maps were read (in an
    earlier drain): a caller in the new mapping makes the lookup re-read the maps in the middle of the
    callers, and what follows it is read in the new maps, as frame by frame does: the first replaced
    library's frame at that address, in the shared frames through the old maps (another process resolved
    it), is not taken; the second library, never met before, is not placed from the old maps, so the next
    process mapping it is rebased into its own layout (as frame by frame chooses)."""
    fake = FakeProc(tmp_path / "proc")
    exe, a, b, a2, b2 = (str(p) for p in (programs.pie, programs.lib, programs.with_lib, programs.stripped,
                                          programs.nopie))
    text = {path: next(s for s in ElfSymbols(path).segments if s.executable) for path in (exe, a, b, a2, b2)}

    def at(start: int, path: str, frac: float) -> int:  # an address in the text of `path` mapped at `start`
        seg = text[path]
        return start + (seg.offset & 0xFFF) + int(frac * seg.filesz)

    def lines(*placed: tuple[int, str]) -> str:
        return "".join(line(start, start + ((text[p].offset & 0xFFF) + text[p].filesz + 0xFFF & ~0xFFF), p,
                            text[p].offset & ~0xFFF) for start, p in sorted(placed))

    E, G, LA, LB, LA2, LB2 = (0x555500000000, 0x555600000000, 0x7F0000000000, 0x7F0000800000, 0x7F2000000000,
                              0x7F1000000000)
    fake.add(10, lines((E, exe), (LA, a), (LB, b)))
    fake.add(12, lines((E, exe), (LA2, a)))
    pair = Pair(str(fake.root))
    # the first drain: 12 resolves a's frame at 0.3 (shared from then on), 10 meets a elsewhere, never b
    pair.drain([raw(tgid=12, pid=12, cgroup_id=1, user=(at(E, exe, 0.5), at(LA2, a, 0.3), at(E, exe, 0.2))),
                raw(tgid=10, pid=10, cgroup_id=1, user=(at(E, exe, 0.5), at(LA, a, 0.7), at(E, exe, 0.2)))])
    assert isinstance(pair.memo.processes[10].layout, _Layout)
    fake.add(10, lines((E, exe), (G, exe), (LA, a2), (LB, b2)))  # a, b replaced at their addresses; exe at G too
    same = at(LA, a, 0.3)  # the address whose frame the shared frames hold (a's): now in a2, at another offset
    assert at(LA, a2, 0) <= same < at(LA, a2, 1)
    user = (at(E, exe, 0.6), at(LB, b2, 0.4), same, at(G, exe, 0.4), at(E, exe, 0.2))
    got = pair.drain([raw(tgid=10, pid=10, cgroup_id=1, user=user)])  # root first: E, G (re-read), LA, LB, E
    (stack,) = got[0].samples
    assert [f.mapping.path if f.mapping else None for f in stack] == [exe, exe, a2, b2, exe]
    assert pair.memo.processes[10].layout is _NO_LAYOUT  # the rest of this drain frame by frame
    fake.add(11, lines((E, exe), (LB2, b)))  # another process maps b: b's frames in its own layout
    got = pair.drain([raw(tgid=11, pid=11, cgroup_id=1, user=(at(E, exe, 0.6), at(LB2, b, 0.3), at(E, exe, 0.2)))])
    (stack,) = got[0].samples
    assert stack[1].mapping is not None and stack[1].mapping.start == LB2


def test_overlapping_or_unsorted_maps_give_no_layout() -> None:
    """A layout needs disjoint mappings in order (what the kernel prints); anything else is looked up."""

    @dataclass
    class Line:
        build_id: str | None

    @dataclass
    class Maps:
        starts: list[int]
        ends: list[int]
        version: int = 1
        lines: Sequence = (Line("ab"), Line(None))

        def mapping(self, i: int) -> Mapping:
            raise AssertionError("a layout asks for a mapping only when a frame falls in it")

    assert _Layout.of(Maps([0x1000, 0x3000], [0x2000, 0x4000])) is not None
    assert _Layout.of(Maps([0x1000, 0x2000], [0x2000, 0x3000])) is not None  # adjacent
    assert _Layout.of(Maps([0x1000, 0x1800], [0x2000, 0x3000])) is None  # overlapping
    assert _Layout.of(Maps([0x1000, 0x3000], [0x1000, 0x4000])) is None  # empty
    layout = _Layout.of(Maps([0x1000, 0x2000], [0x2000, 0x3000]))
    assert layout is not None
    assert [layout.find(x) for x in (0xfff, 0x1000, 0x1fff, 0x2000, 0x2fff, 0x3000)] == [0, 1, 1, 3, 3, 4]
    assert [layout.deltas[j] < 0 for j in range(5)] == [True] * 5  # nothing placed; the second has no build id
    assert layout.deltas[1] != layout.deltas[3] == layout.deltas[0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
