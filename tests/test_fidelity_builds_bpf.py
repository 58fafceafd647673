"""Builds and runtimes services ship that the other unwind tests do not cover, each sampled with the real
agent (`podflame record --pid`) in a pod-shaped cgroup, against an independent oracle:

- C++ -O2 -g with libstdc++'s templates inlined (std::sort with a lambda): every frame of the program
  in every sample carries the inline chain the oracles give for its address: the functions as
  `llvm-symbolizer --inlining` names them, every level's file:line as `addr2line -i` has it.
- static-pie (no dynamic loader, relocated at a random base, libc inside): the chain through qsort.
- Java 17 with -XX:+PreserveFramePointer, its JIT code named by `jcmd PID Compiler.perfmap`: the
  method chain main -> level1 -> level2 -> leafWork under the JVM's own frames from the thread start.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from podflame import pprof
from podflame.model import Frame
from tests.realsys import WORKLOADS, kubelet_cgroup
from tests.test_unwind_bpf import FREQUENCY, PODFLAME, SECONDS, commonest, exact_chain, record, running, share

pytestmark = pytest.mark.bpf


def short(name: str) -> str:
    """A C++ name without parameters, return type or template arguments, as both sides are compared."""
    name = re.sub(r"^(\w+ )+(?=[\w:~]+[<(])", "", name.replace(" [clone .cold]", ""))
    depth, out = 0, []
    for ch in name:  # drop <...> (nested) and what follows the first "(" at depth 0
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            break
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip()


def load_segment(exe: Path) -> tuple[int, int]:
    """(file offset, vaddr) of the executable LOAD segment (`readelf -l`)."""
    for line in subprocess.run(["readelf", "-lW", str(exe)], capture_output=True, text=True, check=True).stdout \
            .splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and "E" in f[6:-1]:
            return int(f[1], 16), int(f[2], 16)
    raise AssertionError(f"no executable segment in {exe}")


def addr2line_lines(exe: Path, vaddrs: list[int]) -> dict[int, list[str]]:
    """vaddr -> ["file:line"] per inline level, innermost first, as `addr2line -i` says (its function names
    are not used: binutils 2.40 prints the enclosing symbol's name for some innermost levels)."""
    text = subprocess.run(["addr2line", "-i", "-a", "-e", str(exe), *(f"{a:#x}" for a in vaddrs)],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    out: dict[int, list[str]] = {}
    at = -1
    for line in text:  # each address on its own line, then one file:line per inline level
        if re.fullmatch(r"0x[0-9a-f]{16}", line):
            at = int(line, 16)
            out[at] = []
        else:
            file, _, number = line.split(" (discriminator")[0].rpartition(":")
            out[at].append("?" if file.startswith("??") else f"{Path(file).name}:{number}")
    return out


def llvm_functions(exe: Path, vaddrs: list[int]) -> dict[int, list[str]]:
    """vaddr -> function names per inline level, innermost first, as `llvm-symbolizer --inlining` says."""
    text = subprocess.run(["llvm-symbolizer-14", "--output-style=JSON", "--inlining", "-e", str(exe),
                           *(f"{a:#x}" for a in vaddrs)], capture_output=True, text=True, check=True).stdout
    return {int(r["Address"], 16): [s["FunctionName"] for s in r["Symbol"]]
            for line in text.splitlines() if line.strip() for r in json.loads(line)}



Own = Callable[[tuple[Frame, ...]], list[tuple[Frame, bool]]]


def record_program(exe: Path, args: list[str], tmp: Path) -> tuple[Counter[tuple[Frame, ...]],
                                                                    Callable[[Frame, bool], int], Own]:
    """`podflame record --pid` (pprof) of exe running with args: its sample stacks; the ELF address to ask an
    oracle for a frame (a caller's is its return address: the call, one byte before); and a stack's frames in
    exe, each with whether it is the leaf."""
    out = tmp / f"{exe.name}.pb.gz"
    with running([str(exe), *args]) as pid:
        done = subprocess.run([str(PODFLAME), "record", f"--pid={pid}", f"--duration={SECONDS}",
                               f"--frequency={FREQUENCY}", "--format=pprof", f"-o{out}"], capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    samples: Counter[tuple[Frame, ...]] = Counter()
    for p in pprof.decode(out.read_bytes()):  # one profile per sample type and label set
        if p.sample_type == "samples":
            samples.update(p.samples)
    seg_offset, seg_vaddr = load_segment(exe)

    def vaddr(f: Frame, leaf: bool) -> int:
        assert f.mapping is not None
        return f.address - f.mapping.start + f.mapping.offset - seg_offset + seg_vaddr - (0 if leaf else 1)

    def own(stack: tuple[Frame, ...]) -> list[tuple[Frame, bool]]:
        return [(f, i == len(stack) - 1) for i, f in enumerate(stack)
                if f.mapping is not None and f.mapping.path == str(exe)]

    return samples, vaddr, own


def test_cpp_inlined_frames_match_the_symbolizer_oracles(tmp_path: Path) -> None:
    exe = tmp_path / "fid_cpp"
    subprocess.run(["g++", "-O2", "-g", "-o", str(exe), str(WORKLOADS / "fid_cpp.cc")], check=True)
    samples, vaddr, own = record_program(exe, ["sort", "600"], tmp_path)
    asked = sorted({vaddr(f, leaf) for stack in samples for f, leaf in own(stack)})
    names, lines = llvm_functions(exe, asked), addr2line_lines(exe, asked)
    frames = by_name = by_line = inlined = whole = 0
    for stack, n in samples.items():
        ok = True
        for f, leaf in own(stack):
            at = vaddr(f, leaf)
            same_names = [short(x.function) for x in f.lines] == [short(x) for x in names[at]]
            same_lines = [f"{Path(x.file).name}:{x.line}" if x.file and x.line else "?" for x in f.lines] == lines[at]
            frames += n
            by_name += n if same_names else 0
            by_line += n if same_lines else 0
            inlined += n if len(names[at]) > 1 else 0
            ok = ok and same_names and same_lines
        whole += n if ok and own(stack) else 0
    total = sum(samples.values())
    print(f"\nC++ -O2 -g std::sort: {whole / total:.1%} of {total} samples with every program frame's inline chain "
          f"as the oracles have it; by frame {by_name / frames:.1%} the functions (llvm-symbolizer), "
          f"{by_line / frames:.1%} every level's file:line (addr2line -i); {inlined / frames:.1%} hold inlined code")
    assert total >= 30 and inlined / frames >= 0.2  # the oracles say much of the time is in inlined code
    assert by_name / frames >= 0.95 and by_line / frames >= 0.95
    assert whole / total >= 0.9


def test_a_static_pie_binary_unwinds_through_its_own_libc(tmp_path: Path) -> None:
    exe = tmp_path / "chain_static_pie"
    subprocess.run(["gcc", "-O2", "-static-pie", "-pthread", "-o", str(exe), str(WORKLOADS / "unwind_chain.c")],
                   check=True)
    assert "DYN" in subprocess.run(["readelf", "-h", str(exe)], capture_output=True, text=True).stdout
    with running([str(exe), "chain", "600"]) as pid:
        stacks = record(pid)
    got = share(stacks, lambda s: s[0] == "_start" and exact_chain(s))
    print(f"\nstatic-pie: {got:.1%} of samples from _start with the exact chain")
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(stacks)}"


JAVA_CHAIN = ("FidJava.main", "FidJava.level1", "FidJava.level2", "FidJava.leafWork")


def java_methods(stack: tuple[str, ...]) -> tuple[str, ...]:
    """The workload's methods in `stack`, in order, as the JIT's perf map names them
    (`long FidJava.leafWork(long)`)."""
    return tuple(m.group(0) for f in stack if (m := re.search(r"FidJava\.\w+(?=\()", f)))


def java_perfmap(pid: int, timeout: float = 30.0) -> None:
    """Write the JVM's perf map (`jcmd PID Compiler.perfmap`) once the JIT has settled on the workload: the
    map is a snapshot, so code compiled after it (C2's recompiles, main's OSR) stays unnamed (a service
    would run the command now and then). Settled: every method of the chain compiled, and the workload's
    entries unchanged over half a second."""
    perf_map = Path(f"/tmp/perf-{pid}.map")
    deadline = time.monotonic() + timeout
    before: list[str] = []
    while True:  # jcmd fails until the JVM's attach listener is up
        subprocess.run(["jcmd", str(pid), "Compiler.perfmap"], capture_output=True, timeout=60)
        text = perf_map.read_text(errors="replace") if perf_map.exists() else ""
        ours = sorted(line for line in text.splitlines() if "FidJava." in line)
        if (ours == before and all(f"{m}(" in text for m in JAVA_CHAIN)) or time.monotonic() > deadline:
            return
        before = ours
        time.sleep(0.5)


def test_java_jit_frames_with_frame_pointers_and_a_perf_map(tmp_path: Path) -> None:
    argv = ["java", "-XX:+PreserveFramePointer", "-XX:CompileCommand=quiet",
            "-XX:CompileCommand=dontinline,FidJava::*", str(WORKLOADS / "FidJava.java"), "600"]
    with kubelet_cgroup() as cg:
        proc = subprocess.Popen(["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh",
                                 str(cg.path), *argv], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            java_perfmap(proc.pid)
            stacks = record(proc.pid)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
    hot = Counter({s: n for s, n in stacks.items() if "FidJava.leafWork(" in "".join(s)})
    chain = share(stacks, lambda s: java_methods(s) == JAVA_CHAIN)
    rooted = share(stacks, lambda s: java_methods(s) == JAVA_CHAIN and s[0] in ("clone3", "clone"))
    print(f"\nJava 17 JIT: {chain:.1%} of samples with {';'.join(JAVA_CHAIN)}, {rooted:.1%} from the thread start "
          f"({sum(hot.values())} of {sum(stacks.values())} in leafWork)")
    assert chain >= 0.8, f"{chain:.1%}; commonest: {commonest(stacks)}"
    assert rooted >= 0.8, f"{rooted:.1%}; commonest: {commonest(stacks)}"
