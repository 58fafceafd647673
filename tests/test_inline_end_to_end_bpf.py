"""Inlined frames end to end: a C++ workload whose hot function GCC inlines, sampled by the real agent,
shows that function as its own frame with its file:line in the flame graph and in the pprof download.

Only DWARF knows the hot code is shop::price_mix (its instructions belong to shop::checkout), so this
checks the whole path: the symbolizer's inline chain, the wire pprof, the store, and the exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from podflame import pprof
from podflame.model import Frame
from symbolizer.elf import ElfSymbols
from tests.realsys import kubelet_cgroup, live_server, run_in_cgroup, with_agent

pytestmark = pytest.mark.bpf

SOURCE = Path(__file__).parent / "fixtures" / "inline_hot.cc"
FREQUENCY = 997
SECONDS = 3.0
CHECKOUT = "shop::checkout(unsigned long, long)"
PRICE_MIX = "shop::price_mix(unsigned long)"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _hot_loop() -> tuple[int, range]:
    """The line marked as the hot loop, and the loop's lines (its `for` to its closing brace), from the source."""
    src = SOURCE.read_text().splitlines()
    hot = next(i + 1 for i, s in enumerate(src) if "the hot loop" in s)
    start = max(i + 1 for i, s in enumerate(src[:hot]) if s.strip().startswith("for"))
    end = next(i + 1 for i, s in enumerate(src) if i + 1 > hot and s.strip() == "}")
    return hot, range(start, end + 1)


def _path(fg: dict, names: list[str]) -> list[list[int]]:
    """The flame graph nodes along a root-first name path (each inside its parent's span, one level down),
    starting at the heaviest node named `names[0]` (a process's first samples, unwound before its tables
    load, can hang the same function under a shorter root), or fewer when cut."""
    starts = [[*level[i:i + 4], depth] for depth, level in enumerate(fg["levels"])
              for i in range(0, len(level), 4) if fg["names"][level[i + 3]] == names[0]]
    if not starts:
        return []
    found = [max(starts, key=lambda n: n[1])]
    for depth in range(found[0][4] + 1, len(fg["levels"])):
        if len(found) == len(names):
            break
        level, want = fg["levels"][depth], names[len(found)]
        nodes = [level[i:i + 4] for i in range(0, len(level), 4)]
        step = next((n for n in nodes if fg["names"][n[3]] == want
                     and found[-1][0] <= n[0] < found[-1][0] + found[-1][1]), None)
        if step is None:
            break
        found.append([*step, depth])
    return found


def _addr2line(exe: Path, vaddrs: list[int]) -> dict[int, list[tuple[str, str]]]:
    """addr2line -f -i -C: (function, file:line) innermost first, per ELF address."""
    out = subprocess.run(["addr2line", "-f", "-i", "-C", "-a", "-e", str(exe), *map(hex, vaddrs)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    result: dict[int, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    i = 0
    while i < len(out):
        if out[i].startswith("0x"):
            current = result.setdefault(int(out[i], 16), [])
            i += 1
            continue
        current.append((out[i], out[i + 1].split(" (discriminator")[0]))
        i += 2
    return result


def _elf_vaddr(frame: Frame, elf: ElfSymbols) -> int:
    """A sampled address as the ELF virtual address addr2line takes (through its mapping's file offset)."""
    m = frame.mapping
    assert m is not None
    offset = frame.address - m.start + m.offset
    seg = next(s for s in elf.segments if s.offset <= offset < s.offset + s.filesz)
    return offset - seg.offset + seg.vaddr


def test_inlined_hot_function_is_its_own_frame_with_file_line(tmp_path: Path) -> None:
    for tool in ("g++", "addr2line", "go"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is needed (Debian g++ / binutils / golang-go)")
    exe = tmp_path / "inline_hot"
    subprocess.run(["g++", "-O2", "-g", "-fno-omit-frame-pointer", "-Wl,--build-id", "-o", str(exe), str(SOURCE)],
                   check=True)
    hot, loop = _hot_loop()

    with kubelet_cgroup("burstable") as cg, live_server(tmp_path / "data") as url:
        with_agent(url, FREQUENCY, lambda: run_in_cgroup(cg.path, [str(exe), str(SECONDS)]))

        q = urllib.parse.urlencode({"query": f'{{pod_uid="{cg.pod_uid}"}}', "from": "now-10m", "to": "now+1m"})
        fg = json.loads(_get(f"{url}/api/v1/flamegraph?{q}"))
        pprof_file = tmp_path / "pod.pb.gz"
        pprof_file.write_bytes(_get(f"{url}/api/v1/pprof?{q}"))

    # flame graph: main -> checkout -> price_mix, price_mix a frame of its own holding most samples
    path = _path(fg, ["main", CHECKOUT, PRICE_MIX])
    assert len(path) == 3, f"main -> checkout -> price_mix not in the flame graph: {fg['names'][:50]}"
    mix = path[2]
    assert mix[1] >= 0.8 * fg["total"], f"price_mix has {mix[1]} of {fg['total']} samples"
    file, _, mix_line = fg["locations"][mix[3]].rpartition(":")
    assert file == str(SOURCE) and int(mix_line) in loop, f"the flame graph places price_mix at {file}:{mix_line}"
    assert fg["locations"][path[1][3]].startswith(f"{SOURCE}:")  # checkout: where it runs the inlined code

    # the pprof download, as go tool pprof reads it: price_mix's samples are on the loop's lines
    top = subprocess.run(["go", "tool", "pprof", "-lines", "-top", "-sample_index=samples", str(pprof_file)],
                         capture_output=True, text=True, check=True).stdout
    assert f"File: {exe.name}" in top, top  # the executable is the main mapping, not the kernel
    flat: Counter[tuple[str, int]] = Counter()
    for line in top.splitlines():
        parts = line.split()
        if len(parts) >= 7 and parts[0].isdigit() and ":" in parts[6]:
            file, _, num = parts[6].rpartition(":")
            if parts[5].startswith("shop::price_mix") and file == str(SOURCE):
                flat[("price_mix", int(num))] += int(parts[0])
    assert flat[("price_mix", hot)] > 0, top
    assert sum(v for (_, n), v in flat.items() if n in loop) >= 0.8 * fg["total"], top
    assert max(flat, key=flat.__getitem__)[1] == int(mix_line), "the flame graph and pprof disagree on the hot line"

    # the same file:line as addr2line -i gives for the sampled addresses themselves
    prof = pprof.decode(pprof_file.read_bytes())
    leaves: Counter[Frame] = Counter()
    for p in prof:
        for stack, value in p.samples.items():
            if stack and stack[-1].lines and stack[-1].lines[0].function == PRICE_MIX:
                leaves[stack[-1]] += value
    assert leaves, "no price_mix leaf frame in the pprof download"
    elf = ElfSymbols(str(exe))
    frames = [f for f, _ in leaves.most_common(20)]
    vaddrs = [_elf_vaddr(f, elf) for f in frames]
    oracle = _addr2line(exe, vaddrs)
    for f, v in zip(frames, vaddrs, strict=True):
        ours = [(ln.function, f"{ln.file}:{ln.line}") for ln in f.lines]
        assert ours == oracle[v], f"{v:#x}: ours {ours}, addr2line {oracle[v]}"
