"""The compiled-program image format and cache, without a kernel: what is refused, and why."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from profiler.bpfprog import (
    FIND_VMA_STORE_MARK,
    MAP_ARRAY,
    MAP_ARRAY_OF_MAPS,
    MAP_HASH,
    PSEUDO_FUNC,
    ImageCache,
    MapSpec,
    ProgramImage,
    TracepointProgram,
    _expand_cpus,
    link_callbacks,
    subprograms,
)

LD_MAP = bytes([0x18, 0x10, 0, 0, 0, 0, 0, 0]) + bytes(8)  # r0 = map (fd patched in at load)
EXIT = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])


def image(**change: object) -> ProgramImage:
    base = ProgramImage(name="on_sample", prog_type=7, license="GPL", kern_version=0, insns=LD_MAP + EXIT,
                        relocations=((0, "control"),),
                        maps=(MapSpec("control", MAP_ARRAY, 4, 4, 4), MapSpec("grace", MAP_ARRAY_OF_MAPS, 4, 4, 1, 0,
                                                                               "control")))
    return dataclasses.replace(base, **change)


def test_an_image_round_trips_through_json() -> None:
    good = image(tracepoint_programs=(TracepointProgram("on_new_area", LD_MAP + EXIT, ((0, "control"),),
                                                        "vm_unmapped_area"),))
    assert ProgramImage.from_json(good.to_json()) == good
    assert ProgramImage.from_json(image().to_json()).tracepoint_programs == ()


@pytest.mark.parametrize(("change", "why"), [
    ({"insns": LD_MAP + EXIT[:4]}, "instructions"),
    ({"insns": b""}, "instructions"),
    ({"relocations": ((1, "control"),)}, "not a map load"),  # the second half of the ld_imm64
    ({"relocations": ((0, "nosuch"),)}, "not a map load"),
    ({"maps": (MapSpec("control", 99, 4, 4, 4),)}, "unexpected map"),
    ({"maps": (MapSpec("control", MAP_HASH, 4, 4, 1 << 30),)}, "unexpected map"),
    ({"maps": (MapSpec("control", MAP_ARRAY, 4, 4, 4), MapSpec("g", MAP_ARRAY_OF_MAPS, 4, 4, 1, 0, "gone"))},
     "unexpected map"),
    ({"maps": (MapSpec("control", MAP_ARRAY, 4, 4, 4), MapSpec("control", MAP_ARRAY, 4, 4, 4))}, "two maps"),
    ({"tracepoint_programs": (TracepointProgram("t", LD_MAP + EXIT, ((0, "nosuch"),), "sched_switch"),)},
     "not a map load"),
    ({"tracepoint_programs": (TracepointProgram("t", EXIT, (), "../../x"),)}, "not a tracepoint name"),
])
def test_malformed_images_are_refused(change: dict, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        ProgramImage.from_json(image(**change).to_json())


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": 99}', json.dumps({"format": 1, "insns": "zz"})])
def test_unparseable_images_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"malformed|format"):
        ProgramImage.from_json(text)


def test_the_key_covers_source_flags_and_program() -> None:
    k = ImageCache.key(b"src", ["-DA=1", "-DB=2"], "on_sample")
    assert k == ImageCache.key(b"src", ["-DB=2", "-DA=1"], "on_sample")
    assert len({k, ImageCache.key(b"src2", ["-DA=1", "-DB=2"], "on_sample"),
                ImageCache.key(b"src", ["-DA=1", "-DB=3"], "on_sample"),
                ImageCache.key(b"src", ["-DA=1", "-DB=2"], "other")}) == 4


def test_cache_keeps_images_private_and_bounded(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c")
    for i in range(20):
        cache.put(f"k{i:02}", image(kern_version=i))
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(files) == 16 and "k19.json" in files
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o700
    assert cache.get("k19") == image(kern_version=19) and cache.get("missing") is None
    (tmp_path / "c" / "k19.json").chmod(0o620)
    assert cache.get("k19") is None
    if os.geteuid() == 0:  # someone else's file, however private, is not ours to load as root
        (tmp_path / "c" / "k18.json").chmod(0o600)
        os.chown(tmp_path / "c" / "k18.json", 65534, 65534)
        assert cache.get("k18") is None
    (tmp_path / "c" / "k17.json").write_bytes(b"x" * (5 << 20))
    assert cache.get("k17") is None


def test_cache_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODFLAME_BPF_CACHE", "")
    off = ImageCache.from_env()
    assert off.directory is None and off.get("k") is None
    off.put("k", image())  # nothing, no error
    monkeypatch.delenv("PODFLAME_BPF_CACHE")
    assert ImageCache.from_env().directory == Path("/var/cache/podflame/bpf")


def test_cpu_lists() -> None:
    assert _expand_cpus("0-3,5\n") == [0, 1, 2, 3, 5] and _expand_cpus("0") == [0]


def ld_imm64(value: int) -> bytes:
    """r3 = value (a 16-byte load)."""
    return bytes([0x18, 0x03, 0, 0]) + (value & 0xFFFFFFFF).to_bytes(4, "little") + bytes(4) \
        + (value >> 32).to_bytes(4, "little")


def test_a_find_vma_callback_is_linked_as_a_subprogram() -> None:
    code = LD_MAP + ld_imm64(0x1234_5678_9ABC) + ld_imm64(FIND_VMA_STORE_MARK) + EXIT  # 7 instructions
    linked = link_callbacks(code)
    assert linked[:56] == code[:32] + linked[32:48] + EXIT  # only the marked load changed
    assert linked[33] >> 4 == PSEUDO_FUNC and int.from_bytes(linked[36:40], "little", signed=True) == 7 - 5
    assert linked[40:48] == bytes(8)
    assert subprograms(linked) == [0, 7]  # the callback appended after the program's exit
    assert len(linked) // 8 == 10  # three instructions: store the VMA at the context pointer, return 0
    assert link_callbacks(LD_MAP + EXIT) == LD_MAP + EXIT  # nothing to link
    image(insns=linked).check()


def test_a_callback_load_outside_the_program_is_refused() -> None:
    code = bytearray(link_callbacks(ld_imm64(FIND_VMA_STORE_MARK) + EXIT))
    code[4:8] = (40).to_bytes(4, "little")
    with pytest.raises(ValueError, match="outside the program"):
        image(insns=bytes(code), relocations=()).check()
