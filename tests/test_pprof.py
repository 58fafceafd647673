"""The pprof codec: round trips, go tool pprof reading what we write, and failing closed."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile

EXE = Mapping(0x555500000000, 0x555500010000, 0x1000, "/usr/bin/shop", "abcdef0123")
LIBC = Mapping(0x7F0000000000, 0x7F0000200000, 0x28000, "/lib/x86_64-linux-gnu/libc.so.6", None)


def _profile(labels: dict[str, str]) -> Profile:
    main = Frame(0x555500001100, EXE, FrameKind.NATIVE, (Line("main", "shop.c", 10),))
    # one address that is an inlined call: inner first
    inl = Frame(0x555500001200, EXE, FrameKind.NATIVE,
                (Line("hash_step", "hash.h", 7), Line("checkout", "shop.c", 42)))
    read = Frame(0x7F0000030000, LIBC, FrameKind.NATIVE, (Line("__read"),))
    kern = Frame(0xFFFFFFFF81000000, None, FrameKind.KERNEL, (Line("ksys_read"),))
    stripped = Frame(0x7F0000031234, LIBC, FrameKind.NATIVE)
    p = Profile(labels=labels, start_ns=1_700_000_000_000_000_000, duration_ns=10_000_000_000, period_ns=10_101_010)
    p.add((main, inl), 30)
    p.add((main, read, kern), 10)
    p.add((main, stripped), 5)
    return p


def test_round_trip_keeps_labels_frames_and_inlines() -> None:
    a, b = _profile({"pod_uid": "u1", "comm": "shop"}), _profile({"pod_uid": "u2", "comm": "<b>x</b>"})
    back = pprof.decode(pprof.encode([a, b]))
    samples = [p for p in back if p.sample_type == "samples"]
    assert sorted(p.labels["pod_uid"] for p in samples) == ["u1", "u2"]
    assert {p.labels["comm"] for p in samples} == {"shop", "<b>x</b>"}
    for p in samples:
        assert dict(p.name_stacks()) == {
            ("main", "checkout", "hash_step"): 30,
            ("main", "__read", "ksys_read"): 10,
            ("main", "libc.so.6+0x59234"): 5,
        }
        assert p.period_ns == 10_101_010 and p.start_ns == a.start_ns and p.duration_ns == a.duration_ns
    frames = {f for p in samples for stack in p.samples for f in stack}
    assert any(f.kind is FrameKind.KERNEL and f.mapping is None for f in frames)
    assert any(f.mapping == EXE for f in frames)
    cpu = [p for p in back if p.sample_type == "cpu"]
    assert {p.total() for p in cpu} == {45 * 10_101_010}


def test_common_labels_come_back_from_the_caller() -> None:
    data = pprof.encode([_profile({"node": "n1", "pid": "7"})], common_labels={"node": "n1"})
    (p, _cpu) = pprof.decode(data, {"node": "n1"})
    assert p.labels == {"node": "n1", "pid": "7"}


@pytest.mark.system
@pytest.mark.skipif(not shutil.which("go"), reason="go tool pprof (Debian golang-go) not installed")
def test_go_tool_pprof_reads_what_we_write(tmp_path: Path) -> None:
    f = tmp_path / "p.pb.gz"
    f.write_bytes(pprof.encode([_profile({"pod_uid": "u1"})]))
    top = subprocess.run(["go", "tool", "pprof", "-top", "-sample_index=samples", str(f)],
                         capture_output=True, text=True, check=True).stdout
    assert "45 total" in top.replace(",", "") or "of 45 total" in top
    for name in ("hash_step", "ksys_read", "main"):
        assert name in top
    lines = subprocess.run(["go", "tool", "pprof", "-traces", "-lines", str(f)],
                           capture_output=True, text=True, check=True).stdout
    assert "hash.h:7" in lines and "shop.c:42" in lines  # inline frame and its caller, both with lines
    raw = subprocess.run(["go", "tool", "pprof", "-raw", str(f)], capture_output=True, text=True, check=True).stdout
    assert "/usr/bin/shop" in raw and "abcdef0123" in raw  # the mapping and its build id survive


@pytest.mark.parametrize("data, message", [
    (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
    (b"\xff\xff\xff\xff", "not a pprof"),
])
def test_invalid_bytes_fail_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(pprof.PprofError, match=message):
        pprof.decode(data)


def test_dangling_location_reference_is_rejected() -> None:
    msg = pprof.PprofProfile()
    msg.string_table.extend(["", "samples", "count"])
    msg.sample_type.add(type=1, unit=2)
    msg.sample.add(location_id=[99], value=[1])
    with pytest.raises(pprof.PprofError, match="unknown location 99"):
        pprof.decode(msg.SerializeToString())


def test_gzip_bomb_is_refused() -> None:
    # 8 MiB of valid fields (empty string_table entries): refused at the inflated limit, not after it
    bomb = gzip.compress(b"\x32\x00" * (4 << 20))
    with pytest.raises(pprof.PprofTooLarge, match="limit"):
        pprof.decode(bomb, limit=1 << 20)


def test_gzip_of_garbage_is_refused_at_its_first_field() -> None:
    with pytest.raises(pprof.PprofError, match="field number 0 at byte 0"):
        pprof.decode(gzip.compress(b"\0" * (8 << 20)))
