"""StackMemo's per-process memo of symbolized stacks and frames: hits, bounds, drops on exit and on
changed maps, and output identical to symbolizing every stack afresh (no BPF needed)."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Unresolved, collapse_unmapped, user_pc_is_exact
from profiler.agent import NATIVE_TRUNCATED, Context, StackMemo, build_profiles, stack_of
from profiler.procmaps import MapsCache, parse_exec_maps, parse_maps
from profiler.sampler import MAX_STACK_DEPTH, RawSample
from symbolizer import Symbolizer
from tests.test_agent import FakeCgroups, drain_of, raw
from tests.test_dwarf_corpus import addr2line
from tests.test_procmaps import MAPS, FakeProc, line
from tests.test_symbolizer_build import Binaries, built, nm_functions, running

EXE = Mapping(0x400000, 0x500000, 0, "/opt/app/bin/app", "ab" * 20)


class VersionedMaps:
    """Maps of pid 42 (EXE) that say when they change, like MapsCache.version."""

    def __init__(self) -> None:
        self.versions: dict[int, int | None] = {42: 1}
        self.lookups = 0

    def refresh(self, pids) -> None:
        pass

    def lookup(self, pid, address):
        self.lookups += 1
        return EXE if self.versions.get(pid) and EXE.start <= address < EXE.limit else None

    def maps_lost(self, pid) -> bool:
        return self.versions.get(pid) is None

    def version(self, pid):
        return self.versions.get(pid)

    def prefetch(self, pids) -> None:
        pass


class FrameCountingSymbolizer:
    """Names frames in EXE `fn_<address>`, kernel frames `k_<address>`; counts the frames it resolves."""

    def __init__(self) -> None:
        self.frames = 0
        self.generation = 0

    def _one(self, f: Frame, leaf: bool) -> Frame:
        self.frames += 1
        if f.kind is FrameKind.KERNEL:  # every other address a syscall entry: the user PC under it is not exact
            entry = "entry_SYSCALL_64_" if f.address % 32 == 0 else ""
            return replace(f, lines=(Line(f"{entry}k_{f.address:x}{'_leaf' if leaf else ''}"),))
        if f.mapping is None:
            return replace(f, reason=Unresolved.NO_MAPPING)
        return replace(f, lines=(Line(f"fn_{f.address:x}{'_leaf' if leaf else ''}"),))

    def for_process(self, pid):
        return self

    def frame(self, f: Frame, leaf: bool) -> Frame:
        return self._one(f, leaf)


def ctx(maps) -> Context:
    return Context(node="n1", maps=maps, cgroups=FakeCgroups(), comm_cache={42: "app", 50: "other"})


def run(memo: StackMemo, c: Context, *samples) -> dict:
    memo.begin_drain()
    return {p.labels["pid"]: dict(p.name_stacks()) for p in build_profiles(drain_of(*samples), c, 10, memo)}


def test_a_new_stack_of_a_known_process_resolves_only_its_new_frames() -> None:
    sym, maps = FrameCountingSymbolizer(), VersionedMaps()
    c = ctx(maps)
    memo = StackMemo(c, sym)
    first = run(memo, c, raw(user=(0x401000, 0x400200, 0x400100), kernel=(0xffff0020,)))
    assert sym.frames == 4
    # a deeper call through the same functions: only the new frame is resolved
    second = run(memo, c, raw(user=(0x401000, 0x400300, 0x400200, 0x400100), kernel=(0xffff0020,)))
    assert sym.frames == 5 and memo.frame_hits == 4
    assert first["42"] == {("fn_400100", "fn_400200", "fn_401000", "entry_SYSCALL_64_k_ffff0020_leaf"): 1}
    assert second["42"] == {("fn_400100", "fn_400200", "fn_400300", "fn_401000", "entry_SYSCALL_64_k_ffff0020_leaf"): 1}
    # the same stack again: one lookup of the whole stack, no frame work, no maps lookup
    lookups = maps.lookups
    run(memo, c, raw(user=(0x401000, 0x400300, 0x400200, 0x400100), kernel=(0xffff0020,)))
    assert sym.frames == 5 and maps.lookups == lookups and memo.hits == 1


def test_the_leaf_is_resolved_apart_from_the_same_address_as_a_caller() -> None:
    """A leaf's address is the instruction itself, a caller's a return address: both keys are kept. Under a
    kernel stack entered by a syscall the user PC is the next instruction (a return address); under one entered
    by a fault or an interrupt it is the instruction itself (a leaf)."""
    sym, maps = FrameCountingSymbolizer(), VersionedMaps()
    c = ctx(maps)
    memo = StackMemo(c, sym)
    out = run(memo, c, raw(user=(0x400100,)), raw(user=(0x400200, 0x400100)),
              raw(user=(0x400100,), kernel=(0xffff0020,)), raw(user=(0x400300,), kernel=(0xffff0010,)))
    assert out["42"] == {("fn_400100_leaf",): 1, ("fn_400100", "fn_400200_leaf"): 1,
                         ("fn_400100", "entry_SYSCALL_64_k_ffff0020_leaf"): 1,
                         ("fn_400300_leaf", "k_ffff0010_leaf"): 1}


def test_frames_without_a_mapping_are_kept_only_while_the_maps_are_known() -> None:
    sym, maps = FrameCountingSymbolizer(), VersionedMaps()
    c = ctx(maps)
    memo = StackMemo(c, sym)
    garbage = raw(user=(0x7777, 0x400100))  # a frame-pointer walk through code without frame pointers
    for _ in range(3):
        out = run(memo, c, garbage)
    # the maps were read: outside them is [no mapping] without asking the symbolizer, and nothing is
    # resolved again each drain
    assert sym.frames == 1 and memo.frame_misses == 2
    assert out["42"] == {("fn_400100", "[no mapping]"): 1}
    maps.versions[42] = 2  # e.g. a dlopen: the process's frames are looked up again (the binary's
    run(memo, c, garbage)  # frame comes from the frames shared by build id)
    assert sym.frames == 1 and memo.frame_misses == 4
    # a process whose maps could not be read: its unmapped frames are asked of the symbolizer every drain
    maps.versions[50] = None
    unknown = raw(cgroup_id=9, tgid=50, pid=50, user=(0x7777,))
    for _ in range(2):
        out = run(memo, c, unknown)
    assert sym.frames == 3 and out["50"] == {("[no mapping]",): 1}


def test_a_process_memo_is_dropped_when_it_exits_or_its_maps_change() -> None:
    sym, maps = FrameCountingSymbolizer(), VersionedMaps()
    c = ctx(maps)
    memo = StackMemo(c, sym)
    maps.versions[50] = 7
    run(memo, c, raw(user=(0x401000, 0x400100)), raw(cgroup_id=9, tgid=50, pid=50, user=(0x1234,)))
    assert set(memo.processes) == {42, 50} and memo.entries > 0
    maps.versions[50] = None  # the maps cache let it go (exited, past its grace period)
    run(memo, c, raw(user=(0x401000, 0x400100)))
    assert set(memo.processes) == {42}
    pm = memo.processes[42]
    assert memo.entries == len(pm) == len(pm.stacks) + len(pm.frames) + len(pm.callers) == 4
    maps.versions[42] = 3  # exec or pid reuse: a new image
    before, old_memo = sym.frames, memo.processes[42]
    run(memo, c, raw(user=(0x401000, 0x400100)))
    # the process's memo is new; its frames are those of a binary (by build id) known from before
    assert memo.processes[42] is not old_memo and memo.entries == 4
    assert sym.frames == before and memo.shared_hits == 2


def test_the_memo_is_bounded() -> None:
    sym, maps = FrameCountingSymbolizer(), VersionedMaps()
    c = ctx(maps)
    memo = StackMemo(c, sym, max_entries=50)
    rng = random.Random(1)
    for _ in range(20):
        samples = [raw(user=tuple(0x400000 + rng.randrange(0x1000) for _ in range(5))) for _ in range(10)]
        out = run(memo, c, *samples)
        assert memo.entries <= 50 + 5 + 2  # over by at most one stack's frames, its callers and the stack
        assert memo.entries == sum(len(pm.stacks) + len(pm.frames) + len(pm.callers)
                                   for pm in memo.processes.values())
        assert sum(out["42"].values()) == 10
    kernel = StackMemo(c, sym, max_kernel_frames=8)
    for i in range(10):
        run(kernel, c, raw(user=(0x400100,), kernel=tuple(0xffff0000 + 16 * (4 * i + j) for j in range(4))))
        assert len(kernel.kernel_frames) <= 8 and len(kernel.kernel_stacks) <= 8


def test_a_debug_file_arriving_drops_the_frames_too() -> None:
    sym, maps = FrameCountingSymbolizer(), VersionedMaps()
    c = ctx(maps)
    memo = StackMemo(c, sym)
    run(memo, c, raw(user=(0x401000, 0x400100), kernel=(0xffff0010,)))
    sym.generation = 1
    run(memo, c, raw(user=(0x401000, 0x400200, 0x400100), kernel=(0xffff0010,)))
    assert sym.frames == 3 + 4


def _random_samples(rng: random.Random, tgid: int, spans: list[tuple[int, int]], kernel: list[int]) -> list:
    """Stacks over real mappings of `tgid`, with some garbage and kernel frames and lost stacks."""
    out = []
    for _ in range(40):
        user = []
        for _ in range(rng.randrange(1, 12)):
            if rng.random() < 0.1:
                user.append(rng.randrange(1, 1 << 20))  # no mapping there
            else:
                lo, hi = rng.choice(spans)
                user.append(rng.randrange(lo, hi))
        kstack = tuple(rng.sample(kernel, rng.randrange(0, 4))) if kernel else ()
        err = rng.choice((0, 0, 0, -14, -12))
        out.append(raw(tgid=tgid, pid=tgid, cgroup_id=1, user=tuple(user) if err == 0 else (), user_error=err,
                       kernel=kstack, kernel_error=0 if kstack else rng.choice((0, -14, -12)),
                       count=rng.randrange(1, 5)))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_memoized_profiles_equal_symbolizing_every_stack_afresh(seed: int) -> None:
    """The real symbolizer and maps cache on this test process: libc, python, a vDSO, kernel frames,
    addresses outside every mapping; drain after drain, memoized stacks equal `Symbolizer.symbolize`."""
    pid = os.getpid()
    spans = [(e.start, e.end) for e in parse_exec_maps(Path(f"/proc/{pid}/maps").read_text())]
    try:
        kernel = [int(ln.split()[0], 16) for ln in Path("/proc/kallsyms").read_text().splitlines()[:20000:500]]
        kernel = [a + 3 for a in kernel if a]
    except OSError:
        kernel = []
    rng = random.Random(seed)
    maps = MapsCache()
    c = Context(node="n1", maps=maps, cgroups=FakeCgroups())
    sym = Symbolizer(maps)
    memo = StackMemo(c, sym)
    repeated = _random_samples(rng, pid, spans, kernel)
    for _ in range(4):
        drain = drain_of(*repeated, *_random_samples(rng, pid, spans, kernel))
        memo.begin_drain()
        memoized = build_profiles(drain, c, 10, memo)
        plain = [sym.symbolize(p) for p in build_profiles(drain, c, 10)]
        assert [p.samples for p in memoized] == [p.samples for p in plain]
        assert [p.labels for p in memoized] == [p.labels for p in plain]
    assert memo.hits and memo.frame_hits and memo.frame_misses


def _afresh(s: RawSample, c: Context, sym: FrameCountingSymbolizer) -> tuple[Frame, ...]:
    """What Symbolizer.symbolize does to `stack_of`'s stack: every frame resolved, the last one as the leaf, and
    the user frame under a kernel stack too unless a syscall entry is that stack's root."""
    stack = stack_of(s, c)
    last = k = len(stack) - 1
    while k >= 0 and stack[k].kind is FrameKind.KERNEL:
        k -= 1
    exact = 0 <= k < last and stack[k].kind is FrameKind.NATIVE and user_pc_is_exact(sym.frame(stack[k + 1],
                                                                                                k + 1 == last))
    return collapse_unmapped(tuple(f if f.lines or f.reason else sym.frame(f, i == last or (exact and i == k))
                                   for i, f in enumerate(stack)))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_stacks_sharing_callers_with_other_leaves_equal_resolving_each_afresh(seed: int) -> None:
    """Most 99 Hz samples repeat their callers under another leaf: the memo answers the callers once per
    process and the kernel stack once for all. Each stack must equal resolving all its frames afresh: the
    leaf is a leaf only without a kernel tail (the names say which), a leaf outside every mapping joins
    callers that end outside one into one `[no mapping]`, and a process whose maps were not read
    (pid 50) keeps nothing that waits for them."""
    rng = random.Random(seed)
    sym, maps = FrameCountingSymbolizer(), VersionedMaps()
    maps.versions[50] = None
    c = ctx(maps)
    memo = StackMemo(c, sym)

    def address() -> int:
        return 0x1000 + rng.randrange(0x100) if rng.random() < 0.2 else 0x400000 + 16 * rng.randrange(0x40)

    chains = [tuple(address() for _ in range(rng.randrange(0, 8))) for _ in range(5)]
    chains.append(tuple(address() for _ in range(MAX_STACK_DEPTH - 1)))  # filled every slot: truncated
    kernels = [tuple(0xffff0000 + 16 * rng.randrange(64) for _ in range(rng.randrange(1, 5))) for _ in range(3)]
    for _ in range(4):
        samples = []
        for _ in range(60):
            kernel = rng.choice([(), *kernels])
            user_error = rng.choice((0, 0, 0, 0, -14, -12))
            samples.append(raw(tgid=rng.choice((42, 42, 50)), pid=rng.choice((42, 43)),
                               user=() if user_error else (address(), *rng.choice(chains)), user_error=user_error,
                               kernel=kernel, kernel_error=0 if kernel else rng.choice((0, -14, -12)),
                               count=rng.randrange(1, 4)))
        drain = drain_of(*samples)
        memo.begin_drain()
        memoized = build_profiles(drain, c, 10, memo)
        plain = build_profiles(drain, c, 10, lambda s: _afresh(s, c, sym))
        assert [p.samples for p in memoized] == [p.samples for p in plain]
        assert sum(p.total() for p in memoized) == drain.total()
    # pid 50's answers wait for its maps: nothing of it is kept past its drain
    gone = memo.processes[50]
    assert not gone.callers and not gone.frames and all(not user for user, *_ in gone.stacks)
    assert memo.processes[42].callers and memo.kernel_stacks
    assert any(stack and stack[0] is NATIVE_TRUNCATED for p in memoized for stack in p.samples)


def test_parse_exec_maps_reads_what_parse_maps_reads() -> None:
    texts = [MAPS, "7f00-7f10 r-xp 00000000 00:00 0 \n\n  \nx\n7f40-7f50 r-xs zz 00:05 77\n"]
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                texts.append(Path(f"/proc/{d}/maps").read_text(errors="surrogateescape"))
    for text in texts:
        assert parse_exec_maps(text) == [e for e in parse_maps(text) if e.executable]


def test_maps_version_moves_only_when_the_maps_change(tmp_path: Path) -> None:
    fake = FakeProc(tmp_path / "proc")
    fake.add(10, line(0x1000, 0x2000, "/bin/true"))
    maps = MapsCache(str(fake.root))
    assert maps.version(10) is None
    maps.refresh([10])
    v1 = maps.version(10)
    assert v1 is not None
    maps.refresh([10])
    assert maps.lookup(10, 0x9000) is None  # outside every mapping: re-read, nothing new
    assert maps.version(10) == v1
    fake.add(10, line(0x1000, 0x2000, "/bin/true") + line(0x9000, 0xA000, "/bin/false"))
    maps.refresh([10])
    assert maps.lookup(10, 0x9800) is not None  # dlopen: the re-read finds it, and the version moves
    v2 = maps.version(10)
    assert v2 != v1
    fake.add(10, line(0x1000, 0x2000, "/bin/true"), starttime=555)  # pid reused
    maps.refresh([10])
    assert maps.version(10) not in (None, v1, v2)
    fake.remove(10)
    for _ in range(4):
        maps.refresh([])
    assert maps.version(10) is None  # exited and let go


def test_processes_of_one_binary_share_its_frames_rebased_into_the_first_ones_layout() -> None:
    """Two real processes of the same binaries (ASLR puts them at different addresses): the second one's
    frames are the first one's frame objects, resolved once, with the same names as symbolizing its
    stacks afresh and the same file offsets (address - mapping start + mapping offset)."""
    code = "import sys, time; sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        a, b = (p.pid for p in procs)
        maps = MapsCache()
        maps.refresh([a, b])
        spans = {pid: {(e.path, e.offset): e for e in parse_exec_maps(Path(f"/proc/{pid}/maps").read_text())
                       if e.path.startswith("/")} for pid in (a, b)}
        common = sorted(set(spans[a]) & set(spans[b]))
        assert common and any(spans[a][k].start != spans[b][k].start for k in common)  # ASLR
        rng = random.Random(5)
        stacks = []  # the same file offsets in both processes
        for _ in range(30):
            picks = [(rng.choice(common), rng.random()) for _ in range(rng.randrange(1, 10))]
            stacks.append([(k, int(frac * (spans[a][k].end - spans[a][k].start))) for k, frac in picks])

        def sample(pid: int, stack) -> RawSample:
            return raw(tgid=pid, pid=pid, cgroup_id=1, user=tuple(spans[pid][k].start + off for k, off in stack))

        c = Context(node="n1", maps=maps, cgroups=FakeCgroups())
        sym = Symbolizer(maps)
        memo = StackMemo(c, sym)
        memo.begin_drain()
        build_profiles(drain_of(*(sample(a, s) for s in stacks)), c, 10, memo)
        misses = memo.frame_misses
        memo.begin_drain()
        drain = drain_of(*(sample(b, s) for s in stacks))
        (memoized,) = build_profiles(drain, c, 10, memo)
        (plain,) = [sym.symbolize(p) for p in build_profiles(drain, c, 10)]
        assert memo.shared_hits == memo.frame_misses - misses > 0  # nothing resolved again for b
        assert dict(memoized.name_stacks()) == dict(plain.name_stacks())
        for got, fresh in zip(memoized.samples, plain.samples, strict=True):
            for g, f in zip(got, fresh, strict=True):
                if f.kind is FrameKind.NATIVE and f.mapping is not None and f.mapping.build_id:
                    assert g.mapping is not None
                    assert (g.mapping.path, g.mapping.offset) == (f.mapping.path, f.mapping.offset)
                    assert g.address - g.mapping.start == f.address - f.mapping.start  # same file offset
                    assert g.mapping.start == spans[a][(f.mapping.path, f.mapping.offset)].start  # a's layout
                else:
                    assert g == f
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    return built(tmp_path_factory)


def _oracle(binary: Path, vaddrs: list[int]) -> list[list[str]]:
    """addr2line -f -i function names per ELF address, innermost first ([] where it knows none)."""
    return [[name for name, _ in block if name != "??"] for block in addr2line(binary, vaddrs)]


def _names(stack: tuple[Frame, ...]) -> list[list[str]]:
    """Function names per frame, leaf first (as the raw stack), innermost inline frame first."""
    return [[ln.function for ln in f.lines] for f in reversed(stack)]


def test_two_processes_of_one_binary_at_other_bases_get_addr2lines_names(programs: Binaries) -> None:
    """Two processes of one PIE (ASLR: other bases). The second one's frames come from the frames
    resolved for the first (rebased), and both get the names addr2line gives at the same ELF addresses:
    leaves looked up where they are, callers at the byte before their return address."""
    funcs = {n: v for n, v in nm_functions(programs.pie).items() if v[1] > 4}
    with running(programs.pie) as a, running(programs.pie) as b:
        names = sorted(n for n in a.addresses if n in funcs)
        assert len(names) >= 3 and all(a.addresses[n] != b.addresses[n] for n in names)  # ASLR
        rng = random.Random(11)
        stacks = [[(n, rng.randrange(1, funcs[n][1])) for n in rng.sample(names, rng.randrange(1, len(names) + 1))]
                  for _ in range(40)]  # leaf first: (function, offset in it)
        maps = MapsCache()
        c = Context(node="n1", maps=maps, cgroups=FakeCgroups())
        memo = StackMemo(c, Symbolizer(maps))
        got: dict[int, list[list[list[str]]]] = {}
        for proc in (a, b):
            maps.refresh([proc.pid])
            memo.begin_drain()
            misses, shared = memo.frame_misses, memo.shared_hits
            got[proc.pid] = [_names(memo(raw(tgid=proc.pid, pid=proc.pid, cgroup_id=1,
                                             user=tuple(proc.addresses[n] + off for n, off in s))))
                             for s in stacks]
        assert memo.shared_hits - shared == memo.frame_misses - misses > 0  # b resolved nothing itself
    vaddrs = [funcs[n][0] + off - (i > 0) for s in stacks for i, (n, off) in enumerate(s)]
    want = iter(_oracle(programs.pie, vaddrs))
    expected = [[next(want) for _ in s] for s in stacks]
    assert all(any(frame) for stack in expected for frame in stack)
    assert got[a.pid] == expected and got[b.pid] == expected


def test_a_pid_reused_by_another_binary_gets_that_binarys_names(tmp_path: Path, programs: Binaries) -> None:
    """Pid 10 runs the program, exits, and the pid comes back as a process mapping a library at the
    same address: the same raw addresses get the library's names (as addr2line says), not the memo's."""
    from symbolizer.elf import ElfSymbols

    fake = FakeProc(tmp_path / "proc")
    start = 0x7F0000001000

    def exec_line(binary: Path) -> tuple[str, int, int, int]:
        seg = next(s for s in ElfSymbols(str(binary)).segments if s.executable)
        offset = seg.offset & ~0xFFF
        end = start + ((seg.offset + seg.filesz - offset + 0xFFF) & ~0xFFF)
        return line(start, end, str(binary), offset), end, offset - seg.offset + seg.vaddr, seg.vaddr
    # runtime address of an ELF address v: start + (v - the vaddr at the mapping's first byte)
    lib_line, lib_end, lib_first, _ = exec_line(programs.lib)
    lib_funcs = {n: v for n, v in nm_functions(programs.lib).items() if v[1] > 4}
    addrs = [start + v + v_size // 2 - lib_first for v, v_size in lib_funcs.values()]
    assert len(addrs) >= 2 and all(start <= x < lib_end for x in addrs)
    prog_line, prog_end, prog_first, _ = exec_line(programs.pie)
    fake.add(10, prog_line, starttime=100, exe=str(programs.pie))
    maps = MapsCache(str(fake.root))
    c = Context(node="n1", maps=maps, cgroups=FakeCgroups())
    memo = StackMemo(c, Symbolizer(maps, proc=str(fake.root)))
    sample = raw(tgid=10, pid=10, cgroup_id=1, user=tuple(addrs))
    first = run_one(memo, maps, sample)
    expected_prog = [[] if x >= prog_end else names
                     for x, names in zip(addrs, _oracle(programs.pie, [x - start + prog_first - (i > 0)
                                                                       for i, x in enumerate(addrs)]), strict=True)]
    assert [n for n, x in zip(first, addrs, strict=True) if x < prog_end] == \
        [n for n, x in zip(expected_prog, addrs, strict=True) if x < prog_end]
    fake.add(10, lib_line, starttime=200, exe=str(programs.lib))  # the pid, reused
    second = run_one(memo, maps, sample)
    expected = _oracle(programs.lib, [x - start + lib_first - (i > 0) for i, x in enumerate(addrs)])
    assert second == expected and all(expected)
    assert second != first


def run_one(memo: StackMemo, maps: MapsCache, sample: RawSample) -> list[list[str]]:
    maps.refresh([sample.tgid])
    memo.begin_drain()
    return _names(memo(sample))
