"""Native stacks of programs built ways the other unwind tests do not build, each sampled with `podflame
record --pid` (tables, 3 s at 199 Hz) in a pod-shaped cgroup; bench/unwind.py --wide has the same workloads
with perf --call-graph dwarf's shares beside ours (docs/benchmarks.md "Stop 22 wide22").

- Frames whose CFA is not rsp/rbp + n (tests/workloads/wide_frames.c): a variable alloca (CFA from rbp),
  a 64-byte aligned local (the stack realigned, CFA from rbp), and both at once, which gcc realigns through
  a DRAP register (CFA = *(rbp - 8), a DW_CFA_def_cfa_expression); built -mavx -mstackrealign, main and
  every run_* function realign that way too. Before table.CFA_DEREF every such stack ended at the first
  DRAP frame: 0% reached _start (perf: 100%).
- C++ -O2 (tests/workloads/wide_cpp.cc): std::function calling a lambda, nested template instances, a hot
  catch block (the function's .cold part, its own FDE) after a throw through a cleanup landing pad, and
  std::thread workers (their stacks end at clone3 -> start_thread, through libstdc++'s thread routine);
  and one build of each other kind: -O3, -Os, -static, -no-pie with -fcf-protection=full -mno-red-zone.
- The C chain (tests/workloads/unwind_chain.c) with only .debug_frame for its own code
  (-fno-asynchronous-unwind-tables -g) and stripped to a .gnu_debugdata mini symbol table (Fedora's
  MiniDebugInfo): the exact chain, names and all.

The thresholds: every workload measured 97.7-100% exact over 3 runs each (docs/benchmarks.md); the rest are
samples in now()/clock_gettime between the hot calls (0-2%), so 0.85 leaves room for a loaded machine.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import Stacks, commonest, exact_chain, perf_stacks, reaches_entry, record, running, share

pytestmark = pytest.mark.bpf
START = ("_start", "__libc_start_main_impl", "__libc_start_call_main", "main")
THREAD = ("clone3", "start_thread")
STARTS = ("__libc_start_main_impl", "__libc_start_main")


def short(name: str) -> str:
    """A frame without parameters, return type and clone suffix, as perf names it (templates' arguments
    kept: `Stage<3>::step`)."""
    name = re.sub(r" \[clone [^]]*\]$", "", name)
    name = re.sub(r"^(\w+ )+(?=[\w:~]+[<(])", "", name)
    depth = 0
    for i, c in enumerate(name):
        depth += (c == "<") - (c == ">")
        if c == "(" and depth == 0 and i:
            return name[:i]
    return name


def shorts(stack: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(short(f) for f in stack)


# workload -> (the chains under main, or under the thread's start, of its hot code: one of them, exactly)
FRAMES = {mode: [(f"run_{mode}", f"with_{mode}"), (f"run_{mode}", f"with_{mode}", "frame_leaf")]
          for mode in ("alloca", "realign", "drap")}
LAMBDA = ("run_function", "run_function", "wide_leaf")  # the lambda is named run_function(...)::{lambda...}
CPP = {
    "function": [LAMBDA],
    "template": [("run_template", "Stage<3>::step", "Stage<2>::step", "Stage<1>::step", "wide_leaf")],
    "catch": [("run_catch", "in_catch", "wide_leaf")],  # in the catch block: run_catch's .cold part
}


def from_main(chains: list[tuple[str, ...]]) -> Callable[[tuple[str, ...]], bool]:
    """_start -> glibc's start (a -static build names it by its shorter alias, __libc_start_main) -> main -> one
    of the chains, exactly."""
    def test(s: tuple[str, ...]) -> bool:
        named = shorts(s)
        return len(s) > 4 and named[0] == "_start" and named[1] in STARTS and named[2:4] == START[2:] and \
            any(named[4:] == c for c in chains)
    return test


def in_thread(chains: list[tuple[str, ...]]) -> Callable[[tuple[str, ...]], bool]:
    """clone3 -> start_thread -> libstdc++'s execute_native_thread_routine (named from .symtab when linked
    -static, else libstdc++.so.6...+0x...: Debian's has no .symtab) -> worker -> the chain."""
    return lambda s: len(s) > 4 and s[:2] == THREAD and any(shorts(s[3:]) == ("worker", *c) for c in chains)


def build(tmp: Path, name: str, tool: str, flags: list[str], source: str) -> Path:
    exe = tmp / name
    subprocess.run([tool, *flags, "-pthread", "-o", str(exe), str(WORKLOADS / source)], check=True,
                   capture_output=True)
    return exe


def check(argv: list[str], test: Callable[[tuple[str, ...]], bool], what: str, least: float = 0.85) -> Stacks:
    with running([*argv, "600"]) as pid:
        stacks = record(pid)
    got = share(stacks, test)
    print(f"\n{what}: {got:.1%} of {sum(stacks.values())} samples exact")
    assert got >= least, f"{got:.1%}; commonest: {commonest(stacks)}"
    return stacks


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wide")


@pytest.mark.parametrize("build_", ["O2", "stackrealign"])
@pytest.mark.parametrize("mode", ["alloca", "realign", "drap"])
def test_realigned_and_alloca_frames_reach_the_entry(tmp: Path, build_: str, mode: str) -> None:
    flags = ["-O2"] if build_ == "O2" else ["-O2", "-mavx", "-mstackrealign"]
    exe = build(tmp, f"wide_frames_{build_}", "gcc", flags, "wide_frames.c")
    check([str(exe), mode], from_main(FRAMES[mode]), f"{mode} {build_}")


def test_drap_frames_agree_with_perf(tmp: Path) -> None:
    """-mstackrealign: main and every function under it realign through DRAP; perf --call-graph dwarf
    evaluates the expression itself: both see the same two stacks in about the same shares."""
    exe = build(tmp, "wide_frames_stackrealign", "gcc", ["-O2", "-mavx", "-mstackrealign"], "wide_frames.c")
    with running([str(exe), "drap", "600"]) as pid:
        ours = record(pid)
        theirs = perf_stacks(pid, tmp)
    test = from_main(FRAMES["drap"])
    assert share(theirs, test) >= 0.85  # the oracle sees the chain the workload has
    assert share(ours, test) >= 0.85
    leaf_ours = share(ours, lambda s: s[-1:] == ("frame_leaf",))
    leaf_theirs = share(theirs, lambda s: s[-1:] == ("frame_leaf",))
    assert abs(leaf_ours - leaf_theirs) < 0.2, (leaf_ours, leaf_theirs)  # ~50% each: the leaf and its caller


@pytest.mark.parametrize("mode", ["function", "template", "catch", "thread"])
def test_cpp_o2(tmp: Path, mode: str) -> None:
    exe = build(tmp, "wide_cpp_O2", "g++", ["-O2"], "wide_cpp.cc")
    check([str(exe), mode], in_thread([LAMBDA]) if mode == "thread" else from_main(CPP[mode]), f"C++ -O2 {mode}")


@pytest.mark.parametrize(("name", "flags", "mode"), [
    ("O3", ["-O3"], "catch"),
    ("Os", ["-Os"], "function"),
    ("static", ["-O2", "-static"], "thread"),
    ("static", ["-O2", "-static"], "function"),
    ("cet-nopie-noredzone", ["-O2", "-no-pie", "-fcf-protection=full", "-mno-red-zone"], "template"),
])
def test_cpp_builds(tmp: Path, name: str, flags: list[str], mode: str) -> None:
    exe = build(tmp, f"wide_cpp_{name}", "g++", flags, "wide_cpp.cc")
    check([str(exe), mode], in_thread([LAMBDA]) if mode == "thread" else from_main(CPP[mode]), f"C++ {name} {mode}")


def test_debug_frame_only(tmp: Path) -> None:
    """The program's functions have FDEs in .debug_frame alone (the C runtime's crt files keep .eh_frame)."""
    exe = build(tmp, "chain_debug_frame", "gcc", ["-O2", "-fno-asynchronous-unwind-tables", "-g"], "unwind_chain.c")
    sections = subprocess.run(["readelf", "-wf", str(exe)], capture_output=True, text=True, check=True).stdout
    own = re.findall(r"Contents of the (\S+) section", sections)
    assert ".debug_frame" in own, own
    check([str(exe), "chain"], lambda s: reaches_entry(s) and exact_chain(s), "C chain, .debug_frame only")


def nm_functions(exe: Path, *opts: str) -> set[str]:
    """The function symbols nm lists in exe (`-D`: the dynamic ones)."""
    out = subprocess.run(["nm", *opts, "--format=posix", "--defined-only", str(exe)], capture_output=True,
                         text=True, check=True).stdout
    return {f[0] for f in (line.split() for line in out.splitlines()) if len(f) > 1 and f[1] in "Tt"}


def mini_debuginfo(exe: Path, tmp: Path) -> None:
    """Strip exe to an xz-compressed .gnu_debugdata of its function symbols (Fedora/RHEL's MiniDebugInfo)."""
    keep, debug, mini = tmp / "keep_symbols", tmp / f"{exe.name}.debug", tmp / f"{exe.name}.mini"
    keep.write_text("\n".join(sorted(nm_functions(exe) - nm_functions(exe, "-D"))) + "\n")
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(debug)], check=True)
    subprocess.run(["objcopy", "-S", "--remove-section", ".comment", f"--keep-symbols={keep}", str(debug), str(mini)],
                   check=True)
    subprocess.run(["strip", "--strip-all", "-R", ".comment", str(exe)], check=True)
    subprocess.run(["xz", "-f", str(mini)], check=True)
    subprocess.run(["objcopy", "--add-section", f".gnu_debugdata={mini}.xz", str(exe)], check=True)


def test_stripped_to_mini_debuginfo(tmp: Path) -> None:
    """Stripped, with its function symbols in an xz-compressed .gnu_debugdata (Fedora/RHEL's MiniDebugInfo)."""
    exe = build(tmp, "chain_minidebuginfo", "gcc", ["-O2"], "unwind_chain.c")
    mini_debuginfo(exe, tmp)
    assert not nm_functions(exe), "strip left a symbol table"
    check([str(exe), "chain"], lambda s: reaches_entry(s) and exact_chain(s), "C chain, .gnu_debugdata only")


def test_openssl_sha512_assembly_under_python() -> None:
    """Debian's python3 hashing with libcrypto: OpenSSL's perlasm block function reads its CFA from a stack slot
    (table.CFA_DEREF). On main the walk ended there: 0.4% of samples from _start through digest_loop, 0% under
    SHA512_Update (perf --call-graph dwarf stops there too: 35% of a sha256+sha512 loop reach _start); 99.6% after."""
    with running(["/usr/bin/python3", str(WORKLOADS / "wide_sha512.py")]) as pid:
        stacks = record(pid)
    in_sha = share(stacks, lambda s: "SHA512_Update" in s)
    whole = share(stacks, lambda s: reaches_entry(s) and "Py_BytesMain" in s and "digest_loop" in s
                  and s.index("digest_loop") < (s.index("SHA512_Update") if "SHA512_Update" in s else len(s)))
    print(f"\nsha512: {in_sha:.1%} of samples under SHA512_Update, {whole:.1%} from _start through digest_loop")
    assert in_sha >= 0.5, stacks.most_common(3)
    assert whole >= 0.85, f"{whole:.1%}; commonest: {commonest(stacks)}"
