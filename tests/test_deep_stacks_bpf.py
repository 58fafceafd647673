"""Native stacks deeper than a stack map row (127 frames), kept whole up to MAX_STACK_DEPTH (264).

A C program recurses through one function to a known depth, then spins. Built with `-O2` (no frame pointers:
the table walker, `podflame record --unwind=auto`) and with `-O2 -fno-omit-frame-pointer` (`--unwind=fp`:
bpf_get_stack, which stops at kernel.perf_event_max_stack, then the walker on from the registers). Oracles:
`perf record --call-graph dwarf` (its own unwinder, `perf script --max-stack`) for the -O2 build's whole
chain, and for the frame-pointer build bpf_get_stack's own chain at a depth it returns whole (its shape,
with the recursion lengthened). Past 264 frames the stack is cut and marked at its root end, and counted.
The drain's reassembly of a row and its overflow chunks is checked on real maps against what was written.
"""

from __future__ import annotations

import ctypes as ct
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.test_unwind_bpf import Stacks, perf_stacks, record, running, share

pytestmark = pytest.mark.bpf

MARK = "[truncated: user stack at the 264-frame limit]"
SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned long sink;

__attribute__((noinline)) void spin(void) {
    for (;;)
        for (unsigned long i = 0; i < 100000; i++)
            sink += i * i;
}

/* rec(n) calls rec(n - 1) ... rec(0), which spins: n + 1 frames of rec, none of them a tail call */
__attribute__((noinline)) unsigned long rec(int n) {
    unsigned long r = 0;
    if (n > 0)
        r = rec(n - 1);
    else
        spin();
    __asm__ volatile("" ::: "memory");
    sink ^= r;
    return r + (unsigned long)n;
}

int main(int argc, char **argv) {
    unsigned long r = rec(atoi(argv[1]));
    sink ^= r;
    return (int)(r & 1);
}
"""


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("deep")
    src = out / "deep.c"
    src.write_text(SOURCE)
    built = {}
    for name, flags in (("nofp", ["-O2"]), ("fp", ["-O2", "-fno-omit-frame-pointer"])):
        built[name] = out / f"deep_{name}"
        subprocess.run(["gcc", *flags, "-o", str(built[name]), str(src)], check=True)
    return built


def spinning(stacks: Stacks) -> Stacks:
    return Counter({s: n for s, n in stacks.items() if s and s[-1] == "spin"})


def commonest(stacks: Stacks) -> str:
    if not stacks:
        return "(none)"
    s = stacks.most_common(1)[0][0]
    return f"{len(s)} frames, {s.count('rec')} rec: {';'.join(s[:6])} ... {';'.join(s[-3:])}"


def perf_dwarf(pid: int, tmp_path: Path) -> Stacks:
    """`perf record --call-graph dwarf` of pid as root-first user frames, read past perf's default 127."""
    return perf_stacks(pid, tmp_path, frequency=199, seconds=3, deep=True)


@pytest.mark.parametrize("depth", [200, 250])
def test_an_O2_recursion_is_whole_from_start_as_perf_dwarf_sees_it(builds: dict[str, Path], depth: int,
                                                                   tmp_path: Path) -> None:
    """The table walk: the exact chain perf's DWARF unwinder gives (_start ... main, depth + 1 rec, spin)."""
    with running([str(builds["nofp"]), str(depth)]) as pid:
        ours = spinning(record(pid))
        theirs = spinning(perf_dwarf(pid, tmp_path))
    assert theirs, "perf saw no sample in spin"
    truth = theirs.most_common(1)[0][0]
    assert truth[0] == "_start" and truth.count("rec") == depth + 1 and "main" in truth, commonest(theirs)
    got = share(ours, lambda s: s == truth)
    print(f"\n-O2, recursion {depth}: {got:.1%} of {sum(ours.values())} samples are perf's {len(truth)}-frame chain "
          f"({share(theirs, lambda s: s == truth):.1%} of perf's)")
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(ours)}"


def test_a_frame_pointer_recursion_past_the_kernel_limit_is_whole(builds: dict[str, Path]) -> None:
    """bpf_get_stack returns at most kernel.perf_event_max_stack (127) frames; the rest comes from the walker.
    The oracle is bpf_get_stack's own chain at depth 40, where it is whole: the same with 210 more rec."""
    with running([str(builds["fp"]), "40"]) as pid:
        shallow = spinning(record(pid, "--unwind=fp"))
    with running([str(builds["fp"]), "250"]) as pid:
        deep = spinning(record(pid, "--unwind=fp"))
    base = shallow.most_common(1)[0][0]
    assert share(shallow, lambda s: s == base) >= 0.9 and base.count("rec") >= 40, commonest(shallow)
    first = base.index("rec")
    want = (*base[:first], *["rec"] * (base.count("rec") + 210), *base[first + base.count("rec"):])
    got = share(deep, lambda s: s == want)
    print(f"\n-fno-omit-frame-pointer, recursion 250: {got:.1%} of {sum(deep.values())} samples are the "
          f"{len(want)}-frame chain")
    assert len(want) > 127 and got >= 0.9, f"{got:.1%}; commonest: {commonest(deep)}"


@pytest.mark.parametrize(("build", "unwind"), [("nofp", "auto"), ("fp", "fp")])
def test_past_264_frames_the_leaf_side_is_kept_under_the_marker(builds: dict[str, Path], build: str,
                                                                unwind: str) -> None:
    with running([str(builds[build]), "400"]) as pid:
        stacks = spinning(record(pid, f"--unwind={unwind}"))
    want = (MARK, *["rec"] * 263, "spin")
    got = share(stacks, lambda s: s == want)
    print(f"\n{build}, recursion 400: {got:.1%} are the marker, 263 rec, spin")
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(stacks)}"


def test_the_sampler_drains_whole_deep_stacks_and_counts_the_cut_ones(builds: dict[str, Path]) -> None:
    """The agent's path without the agent: Sampler drains (frame pointers, its default) of a 180-deep and a
    400-deep recursion; the agent marks (stack_of) and the metric counts (record_drain) only the cut ones."""
    import time

    from profiler import metrics
    from profiler.agent import NATIVE_TRUNCATED, create_context, stack_of
    from profiler.sampler import MAX_STACK_DEPTH, Sampler

    with running([str(builds["fp"]), "180"]) as whole, running([str(builds["fp"]), "400"]) as cut, \
            Sampler(99, pids=[whole, cut], unwind="fp") as sampler:
        time.sleep(4)
        drain = sampler.drain()
    lengths: dict[int, Counter[int]] = {whole: Counter(), cut: Counter()}
    for s in drain.samples:
        if s.user_stack and s.tgid in lengths:
            lengths[s.tgid][len(s.user_stack)] += s.count
    print(f"\nuser stack lengths: 180 deep {dict(lengths[whole])}, 400 deep {dict(lengths[cut])}")
    for tgid in lengths:
        assert sum(lengths[tgid].values()) >= 15, lengths  # a floor that holds with two cores shared
    top = lengths[whole].most_common(1)[0][0]
    assert 181 < top < MAX_STACK_DEPTH and lengths[whole][top] >= 0.9 * lengths[whole].total()
    assert lengths[cut][MAX_STACK_DEPTH] >= 0.9 * lengths[cut].total()
    ctx = create_context("test-node")
    marked = Counter(s.tgid for s in drain.samples for _ in range(s.count)
                     if s.tgid in lengths and s.user_stack and stack_of(s, ctx)[0] is NATIVE_TRUNCATED)
    assert marked[whole] == 0 and marked[cut] == lengths[cut][MAX_STACK_DEPTH]
    before = metrics.TRUNCATED_STACKS.labels("native")._value.get()
    metrics.record_drain(drain, [], {})
    counted = metrics.TRUNCATED_STACKS.labels("native")._value.get() - before
    assert counted >= lengths[cut][MAX_STACK_DEPTH]


def test_the_drain_joins_rows_and_chunks_as_written() -> None:
    """Real hash maps written as the kernel writes them: a stack's row (127 frames) and its overflow chunks
    (46 frames each, zero after the last frame) under (stack, index). A stack of exactly 127 or 173 frames
    ends where its last full row or chunk does; a chunk whose stack is not in the stack map is dropped."""
    from profiler.bpfprog import MAP_HASH, MapSpec, create_map
    from profiler.sampler import (
        DEEP_CHUNK,
        MAX_STACK_DEPTH,
        STACK_HEAD,
        ChunkKey,
        SampleKey,
        StackChunk,
        StackTrace,
        _BatchReader,
        _read_set,
    )

    def frames(stack_id: int, n: int) -> list[int]:
        return [stack_id << 20 | i + 1 for i in range(n)]

    lengths = {1: 5, 2: STACK_HEAD, 3: STACK_HEAD + 1, 4: STACK_HEAD + DEEP_CHUNK, 5: STACK_HEAD + DEEP_CHUNK + 7,
               6: MAX_STACK_DEPTH, 7: 200}
    stacks = {sid: frames(sid, n) for sid, n in lengths.items()}
    stack_map = create_map(MapSpec("stacks_t", MAP_HASH, 8, ct.sizeof(StackTrace), 64))
    deep_map = create_map(MapSpec("deep_t", MAP_HASH, ct.sizeof(ChunkKey), ct.sizeof(StackChunk), 64))
    count_map = create_map(MapSpec("counts_t", MAP_HASH, ct.sizeof(SampleKey), 8, 64))
    try:
        for sid, ips in stacks.items():
            padded = [*ips, 0, *[0xDEAD] * 400]  # stale words after the terminating zero, as in a reused buffer
            if sid != 7:  # 7: chunks without their row (the stack map was full)
                stack_map.update(ct.c_uint64(sid), StackTrace((ct.c_uint64 * STACK_HEAD)(*padded[:STACK_HEAD])))
            for index in range((len(ips) - STACK_HEAD + DEEP_CHUNK - 1) // DEEP_CHUNK if len(ips) > STACK_HEAD else 0):
                at = STACK_HEAD + index * DEEP_CHUNK
                chunk = StackChunk((ct.c_uint64 * DEEP_CHUNK)(*padded[at:at + DEEP_CHUNK]))
                deep_map.update(ChunkKey(sid, index, 0), chunk)
            count_map.update(SampleKey(cgroup_id=1, user_stack=sid, tgid=sid, pid=sid, kernel_error=-14),
                             ct.c_uint64(sid))
        readers = [_BatchReader(m.spec, 2) for m in (stack_map, count_map, deep_map)]
        got = _read_set(readers[0], stack_map, readers[1], count_map, {}, None, readers[2], deep_map)
        assert _read_set(readers[0], stack_map, readers[1], count_map, {}, None, readers[2], deep_map) == []
        assert deep_map.spec.max_entries == 64 and not list(readers[2].take(deep_map))  # emptied too
    finally:
        for m in (stack_map, deep_map, count_map):
            os.close(m.fd)
    by_tgid = {s.tgid: s for s in got}
    for sid, ips in stacks.items():
        if sid == 7:
            assert by_tgid[7].user_stack == () and by_tgid[7].user_error != 0
        else:
            assert by_tgid[sid].user_stack == tuple(ips), (sid, len(by_tgid[sid].user_stack), len(ips))
