"""Symbolizer building blocks on synthetic inputs: ranges, alias choice, normalization, kallsyms, perf maps."""

from __future__ import annotations

import re
from pathlib import Path

from podflame.model import Frame, FrameKind, Mapping, Profile, Unresolved
from symbolizer import Symbolizer
from symbolizer.cache import LRU
from symbolizer.elf import ET_DYN, ET_EXEC, LoadSegment, build_ranges
from symbolizer.files import MappedFile, candidate_paths
from symbolizer.kallsyms import MAX_SYMBOL_SIZE, Kallsyms, parse_kallsyms
from symbolizer.normalize import elf_address
from symbolizer.perfmap import namespace_pid, parse_perf_map
from symbolizer.ranges import AddressRanges

GLOBAL_FUNC = (0, 0, False, 0)
LOCAL_FUNC = (0, 1, False, 0)
LABEL = (2, 1, True, 0)


def test_ranges_lookup_with_nesting_and_gaps() -> None:
    r = AddressRanges([(0x100, 0x200, "outer"), (0x120, 0x130, "inner"), (0x300, 0x310, "next")])
    assert [r.lookup(a) for a in (0xFF, 0x100, 0x125, 0x130, 0x1FF, 0x200, 0x305, 0x310)] == [
        None, "outer", "inner", "outer", "outer", None, "next", None]
    assert len(AddressRanges([(5, 5, "empty")])) == 0


def test_zero_size_symbols_reach_the_next_symbol_or_their_section_end() -> None:
    syms = [
        (0x1000, 0x1010, GLOBAL_FUNC, "sized"),
        (0x1020, -0x1100, LOCAL_FUNC, "asm_no_size"),  # size 0 in a section ending at 0x1100
        (0x1040, 0x1050, GLOBAL_FUNC, "after"),
        (0x1080, -0x1100, LABEL, "last_label"),
    ]
    r = build_ranges(syms)
    assert [r.lookup(a) for a in (0x1010, 0x1020, 0x103F, 0x1040, 0x1050, 0x1080, 0x10FF, 0x1100)] == [
        None, "asm_no_size", "asm_no_size", "after", None, "last_label", "last_label", None]


def test_one_name_per_address_prefers_exported_functions_with_plain_names() -> None:
    r = build_ranges([
        (0x10, 0x20, LOCAL_FUNC, "__libc_malloc_local"),
        (0x10, 0x20, (0, 0, False, 2), "__libc_malloc"),
        (0x10, 0x20, GLOBAL_FUNC, "malloc"),
        (0x40, -0x100, GLOBAL_FUNC, "free"),
        (0x40, 0x48, GLOBAL_FUNC, "cfree"),  # an alias that knows the size
        (0x60, 0x70, (1, 0, False, 0), "strchr"),  # IFUNC: the resolver's own name wins
        (0x60, 0x70, LOCAL_FUNC, "strchr_ifunc"),
    ])
    assert [r.lookup(a) for a in (0x18, 0x44, 0x48, 0x65)] == ["malloc", "free", None, "strchr_ifunc"]


def test_normalization_through_the_load_segment() -> None:
    # lld-style layout: code at file offset 0x1000 linked at vaddr 0x2000
    segments = [LoadSegment(0, 0, 0x800, 0x800, False), LoadSegment(0x1000, 0x2000, 0x3000, 0x3000, True)]
    lib = Mapping(0x7F00_0000_1000, 0x7F00_0000_4000, 0x1000, "/lib/x.so")
    assert elf_address(0x7F00_0000_1234, lib, ET_DYN, segments) == 0x2234
    assert elf_address(0x7F00_0000_1234, lib, ET_EXEC, segments) == 0x7F00_0000_1234  # ET_EXEC: as is
    assert elf_address(0x7F00_0000_5000, Mapping(0x7F00_0000_5000, 0x7F00_0000_6000, 0x9000, "/lib/x.so"),
                       ET_DYN, segments) is None  # no segment holds file offset 0x9000
    # a data segment starting mid-page: the mapping begins on the page below it
    unaligned = [LoadSegment(0x2DF0, 0x3DF0, 0x200, 0x300, False)]
    data = Mapping(0x5000, 0x6000, 0x2000, "/bin/x")
    assert elf_address(0x5E00, data, ET_DYN, unaligned) == 0x3E00
    assert elf_address(0x5100, data, ET_DYN, unaligned) == 0x3100


KALLSYMS = """\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t do_one_initcall
ffffffff81002000 D some_data
ffffffff81003000 W weak_fn
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0300000 t bpf_prog_6deef7357e7b4530_sd_fw_ingress\t[bpf]
"""
HIDDEN = re.sub(r"^[0-9a-f]{16}", "0" * 16, KALLSYMS, flags=re.M)


def test_kallsyms_parsing_types_aliases_modules_and_caps() -> None:
    r = parse_kallsyms(KALLSYMS)
    assert r.lookup(0xFFFFFFFF81000010) == "_stext"  # the first alias listed, as perf
    assert r.lookup(0xFFFFFFFF81002500) == "do_one_initcall"  # data symbols do not end functions
    assert r.lookup(0xFFFFFFFF81003001) == "weak_fn"
    assert r.lookup(0xFFFFFFFFC0201010) == "ftrace_trampoline [__builtin__ftrace]"
    assert r.lookup(0xFFFFFFFFC0300004) == "bpf_prog_6deef7357e7b4530_sd_fw_ingress [bpf]"
    assert r.lookup(0xFFFFFFFF80000000) is None
    assert r.lookup(0xFFFFFFFFC0300000 + MAX_SYMBOL_SIZE) is None  # far past the last symbol
    assert len(r) == 5 and len(parse_kallsyms(HIDDEN)) == 0  # kptr_restrict: every address reads as zero


def test_kallsyms_reloads_on_a_miss_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(KALLSYMS)
    now = [0.0]
    k = Kallsyms(str(path), min_reload_interval=30, clock=lambda: now[0])
    new_prog = 0xFFFFFFFFC0400000
    assert k.lookup(new_prog) is None and k.reloads == 1
    path.write_text(KALLSYMS + "ffffffffc0400000 t bpf_prog_abc_new\t[bpf]\n")
    now[0] = 10
    assert k.lookup(new_prog) is None and k.reloads == 1  # too soon
    now[0] = 31
    assert k.lookup(new_prog + 8) == "bpf_prog_abc_new [bpf]" and k.reloads == 2
    assert k.lookup(0xFFFFFFFF81000001) == "_stext" and k.reloads == 2


def test_kernel_frames_with_hidden_kallsyms_are_kernel_unknown(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(HIDDEN)
    sym = Symbolizer(kallsyms_path=str(path))
    p = Profile({}, 0, 1, 1, {(Frame(0xFFFFFFFF81000010, None, FrameKind.KERNEL),): 1})
    ((f,),) = sym.symbolize(p).samples
    assert f.reason is Unresolved.KERNEL_UNKNOWN and f.fallback_name() == "[kernel]+0xffffffff81000010"


def test_perf_map_parsing() -> None:
    r = parse_perf_map([
        "7f0000001000 40 LazyCompile:~hot /app/x.js:3\n",  # names keep their spaces
        "0x7f0000002000 0x20 py::work:/a.py\n",
        "7f0000003000 10 old\n",
        "7f0000003000 10 rejitted\n",  # the later entry at a start wins
        "garbage line\n",
        "7f0000004000 0 zero_size\n",
        "\n",
    ])
    assert [r.lookup(a) for a in (0x7F0000001000, 0x7F000000103F, 0x7F0000001040, 0x7F000000201F,
                                  0x7F0000003008, 0x7F0000004000)] == [
        "LazyCompile:~hot /app/x.js:3", "LazyCompile:~hot /app/x.js:3", None, "py::work:/a.py", "rejitted", None]


def test_namespace_pid_is_the_last_nspid(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "status").write_text("Name:\tnode\nTgid:\t4242\nNSpid:\t4242\t17\t1\n")
    assert namespace_pid(4242, str(tmp_path)) == 1
    assert namespace_pid(4343, str(tmp_path)) == 4343  # unreadable: assume the host namespace


def test_candidate_paths_prefer_map_files_and_never_trust_a_deleted_path() -> None:
    m = Mapping(0x55AA0000, 0x55AB0000, 0x1000, "/usr/bin/app")
    assert candidate_paths(7, m) == ("/proc/7/map_files/55aa0000-55ab0000", "/proc/7/root/usr/bin/app",
                                     "/usr/bin/app")
    assert candidate_paths(7, m, deleted=True) == ("/proc/7/map_files/55aa0000-55ab0000",)
    assert candidate_paths(None, m) == ("/usr/bin/app",)
    assert candidate_paths(7, Mapping(1, 2, 0, "[vdso]")) == ()


def test_frames_already_named_pass_through_and_labels_without_pid_work() -> None:
    from podflame.model import Line

    lost = Frame(0, None, FrameKind.UNKNOWN, (Line("[user stack lost: EEXIST]"),))

    class NoMaps:
        def file(self, pid: int, mapping: Mapping) -> MappedFile | None:
            raise AssertionError("not asked without a pid")

        def maps_lost(self, pid: int) -> bool:
            raise AssertionError("not asked without a pid")

    sym = Symbolizer(NoMaps())
    p = Profile({"comm": "x"}, 5, 6, 7, {(lost, Frame(0x42, None)): 3}, sample_type="cpu", unit="nanoseconds")
    out = sym.symbolize(p)
    ((a, b),) = out.samples
    assert a is lost and b.reason is Unresolved.NO_MAPPING and out.samples[(a, b)] == 3
    assert (out.labels, out.start_ns, out.duration_ns, out.period_ns, out.sample_type, out.unit) == (
        {"comm": "x"}, 5, 6, 7, "cpu", "nanoseconds")


def test_lru_bounds_entries_and_weight() -> None:
    lru: LRU[str] = LRU(3, max_weight=10, weigh=len)
    for k in "abc":
        lru.put(k, k * 3)
    assert lru.get("a") == "aaa"  # a is now the most recent
    lru.put("d", "dd")  # count: evicts b
    assert "b" not in lru and len(lru) == 3 and lru.weight == 8
    lru.put("e", "eeeeeeeee")  # weight 9 alone: everything older goes
    assert list(lru._data) == ["e"] and lru.weight == 9
    assert lru.pop("e") == "eeeeeeeee" and lru.weight == 0


def test_frames_without_a_mapping_answer_as_each_one_resolved_alone(tmp_path: Path) -> None:
    """ProcessSymbolizer.frame answers a native frame without a mapping from the reason it found for the
    process's first one, when no perf map can name any (a process gone before its maps were read has
    hundreds a drain). Every answer and outcome count equals resolving each frame alone (a call of its
    own, as before); a process with a perf map, or whose maps are held, keeps its own answers."""
    gone, jit, alive = 1001, 1002, 1003
    (tmp_path / str(jit) / "root" / "tmp").mkdir(parents=True)
    (tmp_path / str(jit) / "root" / "tmp" / f"perf-{jit}.map").write_text("6f00 200 jitted_fn\n")

    class Maps:
        def file(self, pid: int, mapping: Mapping) -> MappedFile | None:
            return None

        def maps_lost(self, pid: int) -> bool:
            return pid == gone  # `alive`'s maps are held: an address outside them has no mapping

    exe = Mapping(0x400000, 0x401000, 0, str(tmp_path / "missing-binary"))
    frames = [Frame(a, None, FrameKind.NATIVE) for a in (0x7000, 0x7010, 0x9000, 0x1234, 0x7050)]
    frames.insert(2, Frame(0x400100, exe, FrameKind.NATIVE))  # a mapped frame between them: resolved as ever
    for pid, expect in ((gone, [Unresolved.PROCESS_GONE] * 2 + [Unresolved.UNREADABLE] + [Unresolved.PROCESS_GONE] * 3),
                        (jit, [None, None, Unresolved.UNREADABLE, Unresolved.NO_MAPPING, Unresolved.NO_MAPPING,
                               None]),
                        (alive, [Unresolved.NO_MAPPING] * 2 + [Unresolved.UNREADABLE] + [Unresolved.NO_MAPPING] * 3)):
        alone = Symbolizer(Maps(), proc=str(tmp_path))
        want = [alone.for_process(pid).frame(f, i == len(frames) - 1) for i, f in enumerate(frames)]
        together = Symbolizer(Maps(), proc=str(tmp_path))
        per = together.for_process(pid)
        got = [per.frame(f, i == len(frames) - 1) for i, f in enumerate(frames)]
        assert got == want, pid
        assert [f.reason for f in got] == expect, pid
        assert [f.lines[0].function for f in got if f.lines] == (["jitted_fn"] * 3 if pid == jit else []), pid
        assert together.stats() == alone.stats(), pid
