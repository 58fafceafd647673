"""Symbolizer against real binaries and processes: gcc-built fixtures, binutils as the oracle."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from podflame.model import Frame, FrameKind, Mapping, Profile, Unresolved
from profiler.procmaps import MapsCache
from symbolizer import Symbolizer
from symbolizer.demangle import demangle as default_demangle
from symbolizer.elf import ElfSymbols
from symbolizer.normalize import elf_address
from tests.realsys import dwarf_libpython
from tests.test_symbolizer_build import LIB_BASE, Binaries, addr2line_functions, build_id, built, nm_functions, running

OWN_FUNCS = ("static_leaf", "global_work", "main")
LIB_FUNCS = ("lib_static_leaf", "lib_global_work")


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    return built(tmp_path_factory)


def profile(pid: int | None, *stacks: tuple[Frame, ...]) -> Profile:
    p = Profile(labels={"pid": str(pid)} if pid is not None else {}, start_ns=0, duration_ns=1, period_ns=1)
    for s in stacks:
        p.add(s, 1)
    return p


def resolve(sym: Symbolizer, pid: int | None, frames: list[Frame]) -> list[Frame]:
    """Symbolize frames as one stack and return them in order."""
    out = sym.symbolize(profile(pid, tuple(frames)))
    (stack,) = out.samples
    return list(stack)


def resolve_each(sym: Symbolizer, pid: int | None, frames: list[Frame]) -> list[Frame]:
    """Symbolize each frame alone, as a leaf (its exact address is looked up)."""
    return [resolve(sym, pid, [f])[0] for f in frames]


def native(maps: MapsCache, pid: int, address: int) -> Frame:
    return Frame(address, maps.lookup(pid, address), FrameKind.NATIVE)


@pytest.mark.parametrize("which", ["pie", "nopie", "lib"])
def test_elf_symbols_agree_with_nm_and_addr2line(binaries: Binaries, which: str) -> None:
    path: Path = getattr(binaries, which)
    elf = ElfSymbols(str(path))
    funcs = {n: (a, s) for n, (a, s) in nm_functions(path).items() if s > 0}
    probes: list[int] = []
    for name, (addr, size) in funcs.items():
        for addr_in in {addr, addr + size // 2, addr + size - 1}:
            got = elf.lookup(addr_in)
            same_start = {n for n, (a, _) in funcs.items() if a == addr}
            assert got in same_start, f"{which}: {addr_in:#x} -> {got}, nm says {name}"
            probes.append(addr_in)
    assert elf.lookup(elf.segments[0].vaddr) is None  # the ELF header: no function there
    # DWARF (addr2line) agrees for the fixture's own, non-inlined functions
    ours = [a for a in probes if elf.lookup(a) in OWN_FUNCS + LIB_FUNCS]
    assert ours
    assert addr2line_functions(path, ours) == [elf.lookup(a) for a in ours]


@pytest.mark.parametrize("which", ["pie", "nopie"])
def test_runtime_addresses_of_a_live_process_resolve(binaries: Binaries, which: str) -> None:
    exe: Path = getattr(binaries, which)
    nm = nm_functions(exe)
    maps = MapsCache()
    sym = Symbolizer(maps)
    with running(exe) as r:
        maps.refresh([r.pid])
        for name in OWN_FUNCS:
            runtime = r.addresses[name]
            m = maps.lookup(r.pid, runtime)
            assert m is not None and m.path == str(exe) and m.build_id == build_id(exe)
            elf = ElfSymbols(m.path)
            assert elf_address(runtime, m, elf.elf_type, elf.segments) == nm[name][0]
            if which == "nopie":
                assert runtime == nm[name][0]  # ET_EXEC: runtime addresses are link addresses
            inside = runtime + nm[name][1] // 2
            frames = resolve_each(sym, r.pid, [native(maps, r.pid, runtime), native(maps, r.pid, inside)])
            assert [f.names() for f in frames] == [(name,), (name,)]
            assert all(f.reason is None and f.mapping == m and f.address in (runtime, inside) for f in frames)


def test_shared_library_linked_away_from_zero(binaries: Binaries) -> None:
    """A library whose code segment's vaddr differs from its file offset: symbols need the
    PT_LOAD translation, not `address - start + offset` alone."""
    nm = nm_functions(binaries.lib)
    maps = MapsCache()
    sym = Symbolizer(maps)
    with running(binaries.with_lib) as r:
        maps.refresh([r.pid])
        stack = [native(maps, r.pid, r.addresses[n] + 1) for n in (*OWN_FUNCS, *LIB_FUNCS)]
        assert all(f.mapping is not None for f in stack)
        lib_mapping = stack[-1].mapping
        assert lib_mapping.path == str(binaries.lib) and lib_mapping.build_id == build_id(binaries.lib)
        for name in LIB_FUNCS:
            file_off = r.addresses[name] - lib_mapping.start + lib_mapping.offset
            assert file_off != nm[name][0] and nm[name][0] - file_off == LIB_BASE
        names = [f.names() for f in resolve(sym, r.pid, stack)]
    assert names == [(n,) for n in (*OWN_FUNCS, *LIB_FUNCS)]


def test_exited_process_still_resolves_within_the_grace_period(binaries: Binaries) -> None:
    maps = MapsCache(grace_drains=2)
    sym = Symbolizer(maps)
    with running(binaries.pie) as r:
        maps.refresh([r.pid])  # drain 1 sees the process
        pid, addr = r.pid, r.addresses["static_leaf"] + 2
        r.stop()
    maps.refresh([pid])  # drain 2: its late samples arrive after it exited
    assert maps.stats["exits"] == 1 and not maps.maps_lost(pid)
    (f,) = resolve(sym, pid, [native(maps, pid, addr)])
    assert f.names() == ("static_leaf",)  # opened through the plain path: map_files died with it
    (f,) = resolve(sym, pid, [native(maps, pid, 0x10)])
    assert f.reason is Unresolved.NO_MAPPING  # outside the maps read before the exit: not "process gone"
    maps.refresh([])  # drain 3: still within the grace of 2 drains counted from the one that saw the exit
    assert maps.lookup(pid, addr) is not None
    maps.refresh([])  # drain 4: forgotten
    assert maps.lookup(pid, addr) is None and maps.maps_lost(pid)
    (f,) = resolve(sym, pid, [native(maps, pid, addr)])
    assert f.reason is Unresolved.PROCESS_GONE


def test_an_exited_process_is_never_named_by_another_file_at_its_path(binaries: Binaries, tmp_path: Path) -> None:
    """A process's file read after it exited (its map_files and /proc/PID/root gone): the plain path may now hold
    another file (a package upgrade, or the host's file under a container's path), whose symbols would name its
    frames wrongly. Seen under load: a pod's `leaf_work` named `hot_b` by a host decoy
    (tests/test_fidelity_containers_bpf.py). Only the file the maps were read with is used."""
    decoy_src = tmp_path / "decoy.c"
    decoy_src.write_text('__attribute__((used, noinline)) void decoy(void) { __asm__(".fill 65536, 1, 0x90"); }\n'
                         "int main(void) { decoy(); return 0; }\n")
    decoy = tmp_path / "decoy"
    subprocess.run(["gcc", "-O1", "-Wl,--build-id", "-o", str(decoy), str(decoy_src)], check=True)
    for which in ("build id", "no build id"):
        app = tmp_path / f"app-{which.replace(' ', '-')}"
        shutil.copy(binaries.pie, app)
        if which == "no build id":  # the identity is then the file's (device, inode, mtime)
            subprocess.run(["objcopy", "--remove-section=.note.gnu.build-id", str(app)], check=True)
        maps = MapsCache(grace_drains=2)
        sym = Symbolizer(maps)
        with running(app) as r:
            maps.refresh([r.pid])
            pid, addr = r.pid, r.addresses["static_leaf"] + 2
            frame = native(maps, pid, addr)
            assert frame.mapping is not None and (frame.mapping.build_id is None) == (which == "no build id")
            r.stop()
        maps.refresh([pid])  # its late samples arrive after it exited
        shutil.copy(decoy, app.with_name(app.name + ".new"))
        os.rename(app.with_name(app.name + ".new"), app)  # another file at the path it ran from
        there = ElfSymbols(str(app))
        assert there.lookup(elf_address(addr, frame.mapping, there.elf_type, there.segments) or 0) == "decoy"
        (f,) = resolve(sym, pid, [frame])
        assert f.reason is Unresolved.UNREADABLE and not f.lines, (which, f.names())
        assert f.fallback_name() == f"{app.name}+{addr - frame.mapping.start + frame.mapping.offset:#x}"


def test_unresolved_frames_say_why(binaries: Binaries, tmp_path: Path) -> None:
    maps = MapsCache()
    sym = Symbolizer(maps, debug_dirs=())
    with running(binaries.stripped) as stripped, running(binaries.pie) as live:
        gone = subprocess.Popen(["true"])
        gone.wait()
        maps.refresh([stripped.pid, live.pid, gone.pid])
        s_addr = stripped.addresses["static_leaf"]
        (f,) = resolve(sym, stripped.pid, [native(maps, stripped.pid, s_addr + 2)])
        m = f.mapping
        assert m is not None and f.reason is None  # no symbol: named by its FDE's start (test_symbolizer_fde_names)
        assert f.names() == (f"pie-stripped+{s_addr - m.start + m.offset:#x}",)

        (f,) = resolve(sym, live.pid, [native(maps, live.pid, 0x1000)])  # below every mapping
        assert f.mapping is None and f.reason is Unresolved.NO_MAPPING and f.fallback_name() == "[no mapping]"

        anon = Mapping(0x7000_0000_0000, 0x7000_0001_0000, 0, "[anon]")  # JIT code without a perf map
        (f,) = resolve(sym, live.pid, [Frame(0x7000_0000_0100, anon)])
        assert f.reason is Unresolved.JIT_NO_MAP

        (f,) = resolve(sym, gone.pid, [native(maps, gone.pid, 0x401000)])
        assert f.reason is Unresolved.PROCESS_GONE

    missing = Mapping(0x400000, 0x500000, 0x1000, str(tmp_path / "vanished"))
    not_elf = tmp_path / "not-elf"
    not_elf.write_bytes(b"#!/bin/sh\n" * 100)
    junk = Mapping(0x400000, 0x500000, 0, str(not_elf))
    frames = resolve(Symbolizer(None), None, [Frame(0x400100, missing), Frame(0x400200, junk),
                                              Frame(0x10, None, FrameKind.KERNEL)])
    assert [f.reason for f in frames] == [Unresolved.UNREADABLE, Unresolved.UNREADABLE, Unresolved.KERNEL_UNKNOWN]
    assert [f.fallback_name() for f in frames] == ["vanished+0x1100", "not-elf+0x200", "[kernel]+0x10"]


def test_stripped_binary_resolves_through_a_debug_file_found_by_build_id(binaries: Binaries, tmp_path: Path) -> None:
    bid = build_id(binaries.pie)
    assert bid
    debug = tmp_path / "debug" / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
    debug.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(binaries.pie), str(debug)], check=True)
    elf = ElfSymbols(str(binaries.stripped), debug_dirs=[str(tmp_path / "debug")])
    addr, size = nm_functions(binaries.pie)["static_leaf"]
    assert elf.lookup(addr + size // 2) == "static_leaf" and elf.symbol_source == str(debug)


def test_symbol_tables_come_from_the_disk_cache_until_a_debug_file_arrives(binaries: Binaries,
                                                                          tmp_path: Path) -> None:
    """A restarted agent reads a binary's table from the cache (by build id), not from the file; a table
    read without a debug file is read again once the debug file is there."""
    from symbolizer.diskcache import DiskCache

    cache = DiskCache(str(tmp_path / "cache"))
    debug_dir = tmp_path / "debug"
    addr, size = nm_functions(binaries.pie)["static_leaf"]

    def table() -> ElfSymbols:
        elf = ElfSymbols(str(binaries.stripped), debug_dirs=[str(debug_dir)])
        elf.load_symbols = cache.symbols_loader(elf)
        return elf

    first = table()
    assert first.lookup(addr + size // 2) is None and first.symbol_source == "dynsym"  # static_leaf is static
    again = table()
    assert again.lookup(addr + size // 2) is None and again.symbol_source == "cache (dynsym)"
    assert cache.stats["symbols_hits"] == 1
    bid = build_id(binaries.pie)
    debug = debug_dir / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
    debug.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(binaries.pie), str(debug)], check=True)
    fresh = table()  # the cached .dynsym table is not used: the debug file has the static functions
    assert fresh.lookup(addr + size // 2) == "static_leaf" and fresh.symbol_source == str(debug)
    cached = table()
    assert cached.lookup(addr + size // 2) == "static_leaf" and cached.symbol_source == f"cache ({debug})"
    assert cache.stats["symbols_hits"] == 2

    maps = MapsCache()  # the agent's symbolizer uses the same cache
    sym = Symbolizer(maps, disk_cache=cache, debug_dirs=[str(debug_dir)])
    with running(binaries.stripped) as r:
        maps.refresh([r.pid])
        (f,) = resolve(sym, r.pid, [native(maps, r.pid, r.addresses["static_leaf"] + 1)])
    assert f.names()[-1] == "static_leaf" and cache.stats["symbols_hits"] == 3


def test_minidebuginfo_symbols_of_a_stripped_binary(binaries: Binaries, tmp_path: Path) -> None:
    """Fedora-style .gnu_debugdata: an xz-compressed ELF holding the static function symbols."""
    if not shutil.which("xz"):
        pytest.skip("needs xz")
    mini = tmp_path / "mini"
    subprocess.run(["objcopy", "--only-keep-debug", str(binaries.pie), str(mini)], check=True)
    subprocess.run(["objcopy", "--strip-debug", "--remove-section=.comment", str(mini)], check=True)
    subprocess.run(["xz", "-k", str(mini)], check=True)
    exe = tmp_path / "with-minidebuginfo"
    shutil.copy(binaries.stripped, exe)
    subprocess.run(["objcopy", f"--add-section=.gnu_debugdata={mini}.xz", str(exe)], check=True)
    elf = ElfSymbols(str(exe))
    addr, _ = nm_functions(binaries.pie)["static_leaf"]
    assert elf.lookup(addr + 1) == "static_leaf" and elf.symbol_source == "minidebuginfo"


def test_vdso_frames_resolve_from_the_process_memory(binaries: Binaries, tmp_path: Path) -> None:
    maps = MapsCache()
    sym = Symbolizer(maps)
    with running(binaries.pie) as r:
        maps.refresh([r.pid])
        vdso = next(m for m in maps._procs[r.pid].mappings if m.path == "[vdso]")
        with open(f"/proc/{r.pid}/mem", "rb", buffering=0) as f:  # the oracle: nm on a dump of it
            f.seek(vdso.start)
            image = tmp_path / "vdso.so"
            image.write_bytes(f.read(vdso.limit - vdso.start))
        funcs = nm_functions(image) | {n: v for n, v in nm_functions(image, dynamic=True).items()}
        addr, size = next(v for n, v in funcs.items() if "clock_gettime" in n)
        aliases = {n for n, (a, _) in funcs.items() if a == addr}
        (f,) = resolve(sym, r.pid, [native(maps, r.pid, vdso.start + addr + size // 2)])
    assert f.mapping == vdso and f.names()[0] in aliases, (f, aliases)


def test_perf_map_names_jit_frames(binaries: Binaries) -> None:
    maps = MapsCache()
    sym = Symbolizer(maps)
    with running(binaries.pie) as r:
        maps.refresh([r.pid])
        perf_map = Path(f"/tmp/perf-{r.pid}.map")
        try:
            perf_map.write_text("7f0000001000 40 LazyCompile:~hot /app/x.js:3\n7f0000002000 0x20 py::work:/a.py\n")
            anon = Mapping(0x7F00_0000_0000, 0x7F00_0001_0000, 0, "[anon]")
            frames = resolve_each(sym, r.pid, [Frame(0x7F00_0000_1010, anon), Frame(0x7F00_0000_2000, None),
                                          Frame(0x7F00_0000_3000, anon)])
            assert [f.names() for f in frames[:2]] == [("LazyCompile:~hot /app/x.js:3",), ("py::work:/a.py",)]
            assert [f.kind for f in frames[:2]] == [FrameKind.JIT, FrameKind.JIT]
            assert frames[2].reason is Unresolved.JIT_NO_MAP
            # the JIT appends: the next symbolize call sees the new entry
            with perf_map.open("a") as fh:
                fh.write("7f0000003000 100 Interpreted:later\n")
            (f,) = resolve(sym, r.pid, [Frame(0x7F00_0000_3000, anon)])
            assert f.names() == ("Interpreted:later",)
        finally:
            perf_map.unlink(missing_ok=True)


def test_kernel_frames_match_proc_kallsyms() -> None:
    rng = random.Random(7)
    with open("/proc/kallsyms") as f:
        rows = [line.split() for line in f]
    starts: dict[int, list[str]] = {}
    for row in rows:
        if len(row) >= 3 and row[1] in "tTwW" and int(row[0], 16):
            starts.setdefault(int(row[0], 16), []).append(row[2] if len(row) == 3 else f"{row[2]} {row[3]}")
    if not starts:
        pytest.skip("kallsyms addresses are hidden (kptr_restrict)")
    ordered = sorted(starts)
    picks = rng.sample(range(len(ordered) - 1), 50)
    sym = Symbolizer()
    frames = []
    for i in picks:
        start, nxt = ordered[i], ordered[i + 1]
        frames += [Frame(start, None, FrameKind.KERNEL), Frame(start + (nxt - start) // 2, None, FrameKind.KERNEL)]
    got = resolve_each(sym, None, frames)
    for i, pair in zip(picks, zip(got[0::2], got[1::2], strict=True), strict=True):
        names = starts[ordered[i]]
        assert pair[0].names()[0] in names and pair[1].names()[0] in names, (hex(ordered[i]), names, pair)
    assert all(f.mapping is None and f.kind is FrameKind.KERNEL for f in got)


def test_each_distinct_frame_is_resolved_once_and_counted(binaries: Binaries) -> None:
    maps = MapsCache()
    lookups: list[str] = []  # the names each lookup gives pass through the symbolizer's demangler, once per lookup
    sym = Symbolizer(maps, demangle=lambda name: lookups.append(name) or default_demangle(name))
    with running(binaries.pie) as r:
        maps.refresh([r.pid])
        leaf = native(maps, r.pid, r.addresses["static_leaf"] + 1)
        caller = native(maps, r.pid, r.addresses["global_work"] + 1)
        root = native(maps, r.pid, r.addresses["main"] + 1)
        p = profile(r.pid, (root, caller, leaf), (root, leaf), (root, Frame(0x10, None)))
        out = sym.symbolize(p)
        assert sorted(lookups) == ["global_work", "main", "static_leaf"]
        assert sym.symbolize(p).samples == out.samples and len(lookups) == 3  # cached across calls
    assert out is not p and all(not f.lines for s in p.samples for f in s)  # pure: input untouched
    assert {tuple(n) for n, _ in out.name_stacks()} == {
        ("main", "global_work", "static_leaf"), ("main", "static_leaf"), ("main", "[no mapping]")}
    stats = sym.stats()
    assert stats["resolved"] == 6 and stats["no_mapping"] == 2 and stats["binaries_loaded"] == 1
    assert set(Unresolved) <= {Unresolved(k) for k in stats if k in Unresolved._value2member_map_}


def test_single_frames_answer_as_symbolize_does_and_leave_keeping_them_to_their_caller(binaries: Binaries) -> None:
    """The agent's per-frame path (`for_process(pid).frame`, what StackMemo asks, keeping every answer itself)
    gives what `symbolize` gives for the same stack, without writing the symbolizer's cross-call frame memo
    (`symbolize`'s own callers have no memo of theirs and still fill it)."""
    maps = MapsCache()
    sym = Symbolizer(maps)
    with running(binaries.pie) as r:
        maps.refresh([r.pid])
        frames = [native(maps, r.pid, r.addresses[name] + 1) for name in ("main", "global_work", "static_leaf")]
        assert all(f.mapping is not None and f.mapping.build_id for f in frames)  # what the memo would keep
        one = sym.for_process(r.pid)
        single = [one.frame(f, i == len(frames) - 1) for i, f in enumerate(frames)]
        assert len(sym._resolved) == 0
        whole = sym.symbolize(profile(r.pid, tuple(frames)))
    assert single == list(next(iter(whole.samples)))
    assert [f.names() for f in single] == [("main",), ("global_work",), ("static_leaf",)]
    assert len(sym._resolved) == 3


def test_callers_are_looked_up_as_return_addresses(binaries: Binaries) -> None:
    """A caller's address is the instruction after its call; when that call ends the function
    (a noreturn call) the address is the next function's first byte, so callers are looked up
    one byte earlier. The leaf is the interrupted instruction itself and is looked up as is."""
    nm = nm_functions(binaries.pie)
    maps = MapsCache()
    sym = Symbolizer(maps)
    with running(binaries.pie) as r:
        maps.refresh([r.pid])
        bias = r.addresses["main"] - nm["main"][0]
        # two adjacent functions (no padding between them): the first ends where the next begins
        pairs = [(a, b) for a, (sa, za) in nm.items() for b, (sb, _) in nm.items() if za and sa + za == sb]
        if not pairs:
            pytest.skip("no two functions without padding between them in this build")
        before, after = pairs[0]
        caller = native(maps, r.pid, bias + nm[after][0])
        stack = resolve(sym, r.pid, [native(maps, r.pid, r.addresses["main"] + 1), caller, caller])
    assert [f.names() for f in stack] == [("main",), (before,), (after,)]
    assert stack[1].address == stack[2].address == caller.address  # addresses are kept as sampled



def test_a_return_address_no_call_pushed_names_the_function_it_starts(binaries: Binaries) -> None:
    """A signal handler returns into __restore_rt, a coroutine into __start_context: the kernel or makecontext
    pushed the function's first byte, and the byte before it is padding. A caller's lookup at address - 1 finds
    no symbol there; the function that starts at the address names the frame. A return address in the padding
    itself stays unnamed: only a function's first byte is such an entry."""
    nm = nm_functions(binaries.pie)
    sized = [(a, z) for a, z in nm.values() if z]
    def named(x: int) -> bool:
        return any(b <= x < b + y for b, y in sized)

    padded = [n for n, (a, z) in nm.items() if z and not named(a - 1) and not named(a - 2)]
    assert padded, "the test program has a function after padding"
    name = padded[0]
    maps = MapsCache()
    sym = Symbolizer(maps)
    with running(binaries.pie) as r:
        maps.refresh([r.pid])
        bias = r.addresses["main"] - nm["main"][0]
        entry = native(maps, r.pid, bias + nm[name][0])
        inside = native(maps, r.pid, bias + nm[name][0] + 1)
        # root first: main's return address, the pushed entry, a frame one byte into it, the leaf at the entry
        stack = resolve(sym, r.pid, [native(maps, r.pid, r.addresses["main"] + 1), entry, inside, entry])
        assert [f.names() for f in stack] == [("main",), (name,), (name,), (name,)]
        assert stack[1].address == entry.address
        # again, from the cache: the same answer
        assert resolve(sym, r.pid, [entry, entry])[0].names() == (name,)
        padding = resolve(sym, r.pid, [native(maps, r.pid, bias + nm[name][0] - 1), entry])[0]
        assert padding.lines == () and padding.reason is Unresolved.NO_SYMBOLS


def test_the_user_pc_under_a_fault_is_the_instruction_under_a_syscall_the_next_one(binaries: Binaries) -> None:
    """A sample in the kernel carries the user PC where the kernel was entered. A page fault (a prologue's first
    push touching a new stack page) or an interrupt leaves the faulting instruction itself: a function's first
    byte is that function. A syscall leaves the instruction after it, looked up one byte back like a return
    address. The kernel stack's root (from kallsyms) says which."""
    kallsyms = {p[2]: int(p[0], 16) for p in (ln.split() for ln in Path("/proc/kallsyms").read_text().splitlines())
                if len(p) >= 3}
    assert kallsyms.get("asm_exc_page_fault") and kallsyms.get("entry_SYSCALL_64_after_hwframe"), "root's kallsyms"
    nm = nm_functions(binaries.pie)
    pairs = [(a, b) for a, (sa, za) in nm.items() for b, (sb, _) in nm.items() if za and sa + za == sb]
    assert pairs, "the test program has two functions without padding between them"
    before, after = pairs[0]
    maps = MapsCache()
    sym = Symbolizer(maps)
    with running(binaries.pie) as r:
        maps.refresh([r.pid])
        bias = r.addresses["main"] - nm["main"][0]
        user = [native(maps, r.pid, r.addresses["main"] + 1), native(maps, r.pid, bias + nm[after][0])]
        leaf = Frame(kallsyms["handle_mm_fault"] + 3, None, FrameKind.KERNEL)
        names = {}
        for entry in ("asm_exc_page_fault", "entry_SYSCALL_64_after_hwframe"):
            root = Frame(kallsyms[entry] + 0x10, None, FrameKind.KERNEL)
            stack = resolve(sym, r.pid, [*user, root, leaf])
            assert [f.names() for f in stack][2:] == [(entry,), ("handle_mm_fault",)]
            names[entry] = stack[1].names()
    assert names == {"asm_exc_page_fault": (after,), "entry_SYSCALL_64_after_hwframe": (before,)}

def test_demangle_hook_applies_to_elf_names(binaries: Binaries) -> None:
    maps = MapsCache()
    sym = Symbolizer(maps, demangle=str.upper)
    with running(binaries.pie) as r:
        maps.refresh([r.pid])
        (f,) = resolve(sym, r.pid, [native(maps, r.pid, r.addresses["main"])])
    assert f.names() == ("MAIN",)


def test_big_real_library_resolves_like_nm(tmp_path: Path) -> None:
    """libc (symbols from libc6-dbg's debug file when installed, else .dynsym) and pyenv's libpython."""
    libs = [p for p in (Path("/lib/x86_64-linux-gnu/libc.so.6"), dwarf_libpython()) if p and p.exists()]
    if not libs:
        pytest.skip("no big shared library to read")
    rng = random.Random(3)
    for lib in libs:
        elf = ElfSymbols(os.path.realpath(lib), debug_dirs=["/usr/lib/debug"])
        assert len(elf) > 1000
        source = elf.symbol_source
        assert source is not None
        oracle = Path(source) if "/" in source else lib  # a debug file, or the library itself
        funcs = nm_functions(oracle, dynamic=source == "dynsym")
        sized = {n: v for n, v in funcs.items() if v[1] > 0}
        by_start: dict[int, set[str]] = {}
        for n, (a, _) in sized.items():
            by_start.setdefault(a, set()).add(n)
        for name in rng.sample(sorted(sized), min(200, len(sized))):
            addr, size = sized[name]
            got = elf.lookup(addr + rng.randrange(size))
            assert got in by_start[addr], (lib, source, name, got)
