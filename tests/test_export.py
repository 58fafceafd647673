"""Exports: folded text, and pprof that `go tool pprof` reads with names, lines, inlines, mappings, labels."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from podflame import pprof
from podflame.folded import to_folded
from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from web.query.export import to_pprof

EXE = Mapping(0x555500000000, 0x555500010000, 0x1000, "/usr/bin/shop", "abcdef0123")
MAIN = Frame(0x555500001100, EXE, FrameKind.NATIVE, (Line("main", "shop.c", 10),))
INL = Frame(0x555500001200, EXE, FrameKind.NATIVE, (Line("hash_step", "hash.h", 7), Line("checkout", "shop.c", 42)))
KERN = Frame(0xFFFFFFFF81000000, None, FrameKind.KERNEL, (Line("ksys_read"),))
BARE = Frame(0x555500001234, EXE, FrameKind.NATIVE)


def _profile(labels: dict[str, str], scale: int = 1, period: int = 10_000_000) -> Profile:
    p = Profile(labels=labels, start_ns=1_700_000_000 * 10**9, duration_ns=10**10, period_ns=period)
    p.add((MAIN, INL), 30 * scale)
    p.add((MAIN, KERN), 10 * scale)
    p.add((MAIN, BARE), 5 * scale)
    p.add((MAIN,), 1 * scale)
    return p


def test_folded_is_root_first_sorted_and_merges_equal_names() -> None:
    p = _profile({})
    p.add((MAIN, Frame(0x555500001300, EXE, FrameKind.NATIVE, (Line("hash_step"), Line("checkout")))), 2)
    p.add((), 9)  # an empty stack has no folded line
    assert to_folded(p) == ("main 1\n"
                            "main;checkout;hash_step 32\n"
                            "main;ksys_read 10\n"
                            "main;shop+0x2234 5\n")


def test_folded_of_nothing_is_empty() -> None:
    assert to_folded(Profile({}, 0, 0, 0)) == ""


def test_empty_pprof_keeps_the_type() -> None:
    (back,) = pprof.decode(to_pprof([], "alloc_space", "bytes")) or [None]
    assert back is None  # no samples, but a valid profile
    msg = pprof.PprofProfile()
    msg.ParseFromString(pprof.decompress(to_pprof([], "alloc_space", "bytes")))
    assert [msg.string_table[t.type] for t in msg.sample_type] == ["alloc_space"]


def test_pprof_round_trip_keeps_series_labels_and_per_series_periods() -> None:
    a, b = _profile({"pod": "a"}), _profile({"pod": "b"}, scale=2, period=20_000_000)
    back = pprof.decode(to_pprof([a, b]))
    samples = {p.labels["pod"]: p for p in back if p.sample_type == "samples"}
    cpu = {p.labels["pod"]: p.total() for p in back if p.sample_type == "cpu"}
    assert samples["a"].samples == a.samples and samples["b"].samples == b.samples
    assert cpu == {"a": 46 * 10_000_000, "b": 92 * 20_000_000}


@pytest.mark.system
@pytest.mark.skipif(not shutil.which("go"), reason="go tool pprof (Debian golang-go) not installed")
def test_go_tool_pprof_reads_names_lines_inlines_mappings_and_labels(tmp_path: Path) -> None:
    f = tmp_path / "p.pb.gz"
    f.write_bytes(to_pprof([_profile({"pod": "<a>"}), _profile({"pod": "b"})]))

    def run(*args: str) -> str:
        return subprocess.run(["go", "tool", "pprof", *args, str(f)], capture_output=True, text=True,
                              check=True).stdout

    top = run("-top", "-sample_index=samples")
    assert "of 92 total" in top
    for name in ("hash_step", "ksys_read", "main"):
        assert name in top
    traces = run("-traces", "-lines")
    assert "hash.h:7" in traces and "shop.c:42" in traces and "shop.c:10" in traces
    assert "pod:<a>" in traces.replace(" ", "") or "<a>" in traces
    raw = run("-raw")
    assert "/usr/bin/shop" in raw and "abcdef0123" in raw
    tagged = run("-top", "-sample_index=samples", "-tagfocus=pod=b")
    assert "accounting for 46, 50.00% of 92 total" in tagged  # the series' labels select its samples
