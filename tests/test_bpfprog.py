"""The compiled-program image format and cache, without a kernel: what is refused, and why."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from profiler.bpfprog import (
    MAP_ARRAY,
    MAP_ARRAY_OF_MAPS,
    MAP_HASH,
    ImageCache,
    MapSpec,
    ProgramImage,
    TracepointProgram,
    _expand_cpus,
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
