"""StackMemo on real processes against a fresh symbolization of each sample: processes of one program at
other ASLR bases (whose frames come from the frames shared by build id, rebased), a binary without a build
id, addresses outside every mapping, kernel tails, a library loaded after the maps were read, exec into
another program (pid reuse: tests/test_agent_memo.py's FakeProc case). Names equal; each frame has the
fresh one's file offset (address - mapping start + mapping offset), and is the fresh frame itself where
nothing is shared (no build id, kernel, no mapping)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from podflame.model import FrameKind, Profile
from profiler.agent import Context, StackMemo, build_profiles
from profiler.procmaps import MapsCache, parse_exec_maps
from profiler.sampler import RawSample
from symbolizer import Symbolizer
from tests.test_agent import FakeCgroups, drain_of, raw
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


class Memo:
    """A StackMemo on the real maps and symbolizer, checked drain by drain against a fresh symbolization."""

    def __init__(self) -> None:
        self.maps = MapsCache()
        self.c = Context(node="n1", maps=self.maps, cgroups=FakeCgroups())
        self.sym = Symbolizer(self.maps)
        self.memo = StackMemo(self.c, self.sym)

    def drain(self, samples: list[RawSample]) -> list[Profile]:
        drain = drain_of(*samples)
        self.memo.begin_drain()
        got = build_profiles(drain, self.c, 10, self.memo)
        fresh = [self.sym.symbolize(p) for p in build_profiles(drain, self.c, 10)]
        assert [p.labels for p in got] == [p.labels for p in fresh]
        for g, f in zip(got, fresh, strict=True):
            assert dict(g.name_stacks()) == dict(f.name_stacks())
            assert len(g.samples) == len(f.samples)
            for gs, fs in zip(g.samples, f.samples, strict=True):
                for x, y in zip(gs, fs, strict=True):
                    if y.mapping is not None and y.mapping.build_id is not None and y.kind is FrameKind.NATIVE:
                        assert x.mapping is not None and (x.mapping.path, x.mapping.offset) == \
                            (y.mapping.path, y.mapping.offset)
                        assert x.address - x.mapping.start == y.address - y.mapping.start
                        assert (x.lines, x.reason) == (y.lines, y.reason)
                    else:
                        assert x == y
        return got


@pytest.mark.parametrize("seed", [1, 2])
def test_memoized_stacks_of_real_processes_equal_a_fresh_symbolization(seed: int, programs: Binaries,
                                                                       no_build_id: Path) -> None:
    rng = random.Random(seed)
    kernel = kernel_addresses()
    memo = Memo()
    with ExitStack() as stack:
        a = stack.enter_context(controlled())
        b = stack.enter_context(controlled())
        c = stack.enter_context(running(programs.pie))
        d = stack.enter_context(running(programs.pie))
        e = stack.enter_context(running(no_build_id))
        assert spans(a.pid) != spans(b.pid)  # ASLR: one program's libraries at other bases (python3 is not PIE)

        # first drain: a, c and the program without a build id; a's samples twice (memo hits); stacks in c's
        # executable alone, which d gets at the same file offsets next
        (c_lo, c_hi), (d_lo, _) = ((lo, hi) for p in (c, d) for lo, hi, path in spans(p.pid)
                                   if path == str(programs.pie))
        in_c = [raw(tgid=c.pid, pid=c.pid, cgroup_id=1,
                    user=tuple(rng.randrange(c_lo, c_hi) for _ in range(rng.randrange(1, 8)))) for _ in range(20)]
        first = stacks(rng, a.pid, kernel, 40) + stacks(rng, c.pid, kernel, 20) + stacks(rng, e.pid, kernel, 20)
        memo.drain(first + first[:20] + in_c)
        # second drain: b and d, new processes of known programs: d's frames at c's offsets come from the frames
        # shared by build id (rebased into c's layout)
        hits = memo.memo.shared_hits
        moved = [raw(tgid=d.pid, pid=d.pid, cgroup_id=1, user=tuple(x - c_lo + d_lo for x in s.user_stack))
                 for s in in_c]
        memo.drain(stacks(rng, b.pid, kernel, 40) + stacks(rng, d.pid, kernel, 20) + moved + first[:10])
        assert memo.memo.shared_hits > hits

        # a loads a library after its maps were read: each stack holds an address in it, in the middle, so
        # the lookup there re-reads the maps in the middle of the callers
        lib = str(programs.lib)
        tell(a, f"dlopen {lib}")
        lo, hi, _ = next(r for r in spans(a.pid) if r[2] == lib)
        version = memo.maps.version(a.pid)
        memo.drain(stacks(rng, a.pid, kernel, 30, must=lo + (hi - lo) // 3))
        assert memo.maps.version(a.pid) != version
        memo.drain(stacks(rng, a.pid, kernel, 30, must=lo + (hi - lo) // 2))  # the next drain: a new memo

        # b execs another program (the pie's image under b's pid): the old frames are not used
        tell(b, f"exec {programs.pie}", until="ready")
        got = memo.drain(stacks(rng, b.pid, kernel, 40) + stacks(rng, c.pid, kernel, 10))
        (after,) = [p for p in got if p.labels.get("pid") == str(b.pid)]
        paths = {f.mapping.path for stack in after.samples for f in stack if f.mapping is not None}
        assert str(programs.pie) in paths and not any("python3" in path for path in paths)


def test_a_new_process_of_a_known_program_resolves_nothing_again() -> None:
    """The same stacks, at the same file offsets, in a second python3: every frame comes from the frames
    shared by build id, with no symbolizer call, and equals the first one's (rebased into its layout)."""
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
        asked = sym.stats()
        memo.begin_drain()
        second = [memo(sample(b.pid, p)) for p in picks]
        # every frame from the shared frames: no symbolizer call; a's frames, rebased into a's layout (a was
        # the first process seen mapping those files)
        assert sym.stats() == asked
        assert second == first
        assert all(f.kind is FrameKind.NATIVE and f.mapping is not None for stack in second for f in stack)
        assert memo.shared_hits >= sum(map(len, picks))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
