"""How complete are user stacks? podflame (tables, and --unwind fp) vs BCC's profile vs perf --call-graph dwarf.

Each workload runs alone in a kubelet-shaped cgroup and is sampled by each profiler in turn, for
the same seconds at the same frequency, from the same process:

- chain-nofp / chain-fp: tests/workloads/unwind_chain.c built with `gcc -O2` (no frame pointers)
  and with `-fno-omit-frame-pointer`: main -> run_chain -> level1..3 -> libc qsort -> compare ->
  leaf_work (a frameless leaf);
- python3-debian / python3.12-pyenv: a pure-Python loop under /usr/bin/python3 (static libpython,
  no frame pointers) and pyenv's 3.12.

Per workload and profiler: the share of samples whose user stack reaches the process entry
(root frame `_start`; for Python also through Py_BytesMain and _PyEval_EvalFrameDefault) and, for
the C chain, the share with the exact chain from main to the leaf (tests/test_unwind_bpf.py's
definition). The last line is one JSON object.

    .venv/bin/python bench/unwind.py [--seconds 5] [--frequency 99]

`--matrix` runs instead the workloads no test of the default run builds (docs/benchmarks.md "Fidelity
matrix"), each under podflame, profile-bpfcc and perf --call-graph dwarf: C++ -O2 with libstdc++
(std::sort with a lambda, virtual calls, an exception thrown and caught per iteration), the C chain
-O3, -static, -static-pie and non-PIE, in a thread and in a SIGALRM handler, Go, Node.js (JIT,
--perf-basic-prof), Java 17 (-XX:+PreserveFramePointer, jcmd Compiler.perfmap), Python 3.6-3.13 and
Debian's 3.11 behind 200 thread states and calling back from C (sorted(key=...)), and pod-shaped
processes (tests/test_fidelity_containers_bpf.py): a program, its library and libc from a private
tmpfs in a mount namespace over host decoys (pod-mountns), the same replaced on disk while running
(pod-replaced), Debian's python3 copied into such a mount (py-debian-mountns) or replaced while
running (py-debian-replaced), node in PID and mount namespaces with its perf map in its own /tmp; a hot
leaf in assembly without CFI (asm-nocfi), a makecontext/swapcontext coroutine (c-ucontext: its stack ends at
glibc's __start_context above co_entry), a fiber in boost.context's layout (c-fiber), a SIGALRM handler on a
sigaltstack (c-altstack), code resumed by siglongjmp out of a handler (c-longjmp) (tests/workloads/stack_ends.c),
a ctypes callback from libc's qsort (py*-ctypes-callback), two workers forked from a Python parent (py*-fork:
podflame by the pod's cgroup, the peers on one worker).
Per workload: the share reaching the entry, the share with the exact known chain
(where there is one) and `perf_agree`, the overlap of the profile with perf's (sum over stacks of the
smaller of the two shares, after both are reduced to function names without parameters; unnamed
frames count as one "?"). For Python: `with_python`, the share with any Python frame (the agent
registers a process on its first sample), and `exact_of_python`, the exact chain among those.
--only NAME[,NAME] picks workloads, --peers podflame[,profile_bpfcc,perf_dwarf] the profilers.

    .venv/bin/python bench/unwind.py --matrix [--seconds 3] [--only cpp-sort,go]

`--wide` runs instead the builds of tests/test_unwind_wide_bpf.py (docs/benchmarks.md "Stop 22 wide22"), under
podflame and perf --call-graph dwarf, with that test's exact chains: tests/workloads/wide_frames.c (alloca, a
realigned frame, DRAP realignment; -O2 and -mavx -mstackrealign), tests/workloads/wide_cpp.cc (std::function
and a lambda, templates, a hot catch block, std::thread) at -O2/-O3/-Os/-static/-no-pie -fcf-protection=full
-mno-red-zone, the C chain with .debug_frame only, stripped to .gnu_debugdata, and stripped bare (its entry:
the root frame inside _start by the ELF header's entry point; perf may name it from its build-id cache), and
every Python (pyenv 2.7, 3.6-3.13, Debian's 3.11) spinning in `python_fidelity.py threads 4` with `py-spy dump`'s
main-thread chain as the oracle (`pyspy_exact`: the share of podflame's samples with py-spy's chain); and stop 23's
(`stop23_workloads`): node in its own OpenSSL's SHA-512, the C chain -O3 -flto, without any CFI, exec'd from a memfd,
-fsplit-stack recursion across stack segments, and two libraries swapped at one address by dlclose/dlopen; and stop
24's (`stop24_workloads`): text moved into anonymous memory (a C build, node --use-largepages=on), text patched through
mprotect, a dlmopen'ed second copy, the vDSO, 16 KiB thread stacks, Go calling C and C calling back into Go; and stop
25's (`stop25_workloads`): OpenSSL's AES-GCM assembly (a CFA in rax across calls), a stripped program's
unnamed functions; and stop 26's (`stop26_workloads`): short processes (50 ms of CPU each, started one after the
other by a shell) whose chain crosses two libraries before their mapping array is written.

    .venv/bin/python bench/unwind.py --wide [--seconds 3] [--only drap-stackrealign,cpp-O2-catch]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.realsys import WORKLOADS, kubelet_cgroup, spawn_in_cgroup  # noqa: E402
from tests.test_fidelity_builds_bpf import JAVA_CHAIN, java_methods, java_perfmap  # noqa: E402
from tests.test_fidelity_containers_bpf import (  # noqa: E402
    LIBZ,
    build_pod_chain,
    mount_namespace,
    plant_decoys,
    pod_chain,
    replace_with,
)
from tests.test_fidelity_python_bpf import py_spy_main  # noqa: E402
from tests.test_fidelity_rust_bpf import V0_CHAIN  # noqa: E402
from tests.test_symbolizer_build import nm_functions  # noqa: E402
from tests.test_unwind_bpf import (  # noqa: E402
    BUSY_PY,
    CHAIN,
    PYTHONS,
    exact_chain,
    perf_stacks,
    through_eval,
    user_part,
)
from tests.test_unwind_wide_bpf import mini_debuginfo  # noqa: E402
from tests.test_unwind_wide_unnamed_bpf import file_offset_name  # noqa: E402

Stacks = Counter[tuple[str, ...]]
PODFLAME = Path(sys.executable).parent / "podflame"
RUSTC = Path(shutil.which("rustc") or Path.home() / ".cargo" / "bin" / "rustc")


def ours(pid: int, seconds: float, frequency: int, tmp: Path, mode: str, cgroup: Path | None = None) -> Stacks:
    out = tmp / f"ours-{mode}.folded"
    which = f"--cgroup={cgroup}" if cgroup is not None else f"--pid={pid}"
    subprocess.run([str(PODFLAME), "record", which, f"--duration={seconds}", f"--frequency={frequency}",
                    f"--unwind={mode}", "--format=folded", f"-o{out}"], check=True, capture_output=True, timeout=300)
    stacks: Stacks = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stacks[user_part(tuple(stack.split(";")))] += int(count)
    return stacks


def bcc_profile(pid: int, seconds: float, frequency: int) -> Stacks:
    """profile-bpfcc -U -f: user stacks only, folded `comm;root;...;leaf count`."""
    text = subprocess.run(["profile-bpfcc", "-U", "-f", "-F", str(frequency), "-p", str(pid), str(int(seconds))],
                          check=True, capture_output=True, text=True, timeout=300).stdout
    stacks: Stacks = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks[tuple(stack.split(";")[1:])] += int(count)
    return stacks


def perf_dwarf(pid: int, seconds: float, frequency: int, tmp: Path) -> Stacks:
    import tests.test_unwind_bpf as t

    t.SECONDS, t.FREQUENCY = seconds, frequency
    return perf_stacks(pid, tmp)


def shares(stacks: Stacks, entry: Callable[[tuple[str, ...]], bool],
           chain: Callable[[tuple[str, ...]], bool] | None) -> dict[str, float | int | None]:
    total = sum(stacks.values())
    if not total:
        return {"samples": 0, "entry": None, "exact_chain": None}
    return {"samples": total, "entry": round(sum(n for s, n in stacks.items() if entry(s)) / total, 4),
            "exact_chain": None if chain is None else round(sum(n for s, n in stacks.items() if chain(s)) / total, 4)}


def c_entry(s: tuple[str, ...]) -> bool:
    return bool(s) and s[0] == "_start"


def py_entry(s: tuple[str, ...]) -> bool:
    return through_eval(s)


# -- the fidelity matrix (--matrix) -----------------------------------------------------------------

Test = Callable[[tuple[str, ...]], bool]
PY_NAMES = frozenset({"<module>", "spin_threads", "middle", "leaf", "sorter", "keyf", "json_loop", "encode",
                      "c_sorter", "c_compare", "prefork", "worker_loop",
                      "zlib_loop", "squeeze", "re_loop", "scan"})
CEXT_CHAINS = {("<module>", "json_loop", "encode"): ("_start",), ("zlib_loop", "squeeze"): ("clone3", "clone"),
               ("re_loop", "scan"): ("clone3", "clone")}
RUST_CHAIN = ("fid_rust::main", "fid_rust::level1", "fid_rust::level2", "fid_rust::leaf_work")
SHELL = "py-debian-shell-entrypoint"  # recorded by its cgroup: the Python process is the shell's child
FORKED = {"py3.7-fork", "py3.12-fork", "pydebian-fork"}  # prefork workers: podflame by cgroup, peers on one worker
TWOLIBS = "c-spawn-twolibs"  # short processes started by a shell: podflame by cgroup, perf follows the shell's children
BY_CGROUP = {SHELL, *FORKED, TWOLIBS}
CHILD = {SHELL, "node-pidns", *FORKED}  # the workload is the started process's child (a shell, unshare -f, a fork)
AFTER_START: dict[str, Callable[[int], None]] = {}  # name -> what happens to the running process first
GO_CHAIN = ("runtime.main", "main.main", "main.level1", "main.level2", "main.leafWork")


def short(name: str) -> str:
    """A frame as both podflame and perf name it: no parameters, return type or clone suffix."""
    if name == "[unknown]" or re.search(r"\+0x[0-9a-f]+$", name):
        return "?"
    name = re.sub(r"::h[0-9a-f]{16}$", "", name.replace(" [clone .cold]", ""))  # Rust's legacy hash: perf drops it
    name = re.sub(r"^(\w+ )+(?=[\w:~]+[<(])", "", name)
    m = re.match(r"[^<(]*", name)
    return m.group(0) if m and m.group(0) else name


def agreement(ours_: Stacks, oracle: Stacks) -> float | None:
    """Overlap of two profiles over stacks of short names: 1.0 when the shares are equal stack by stack."""
    def norm(stacks: Stacks) -> dict[tuple[str, ...], float]:
        c: Counter[tuple[str, ...]] = Counter()
        for s, n in stacks.items():
            c[tuple(short(f) for f in s)] += n
        total = sum(c.values())
        return {k: v / total for k, v in c.items()} if total else {}
    a, b = norm(ours_), norm(oracle)
    if not a or not b:
        return None
    return round(sum(min(a.get(k, 0.0), v) for k, v in b.items()), 4)


def python_part(stack: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f for f in stack if f in PY_NAMES)


def pyenv(version: str) -> Path | None:
    found = sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    return found[-1] if found else None


def matrix_workloads(tmp: Path) -> dict[str, tuple[list[str], Test, Test | None]]:
    """name -> (argv, reaches the entry, exact chain or None)."""
    def build(name: str, tool: list[str], source: str) -> Path:
        exe = tmp / name
        subprocess.run([*tool, "-o", str(exe), source], check=True, capture_output=True, cwd=tmp)
        return exe

    def starts(*roots: str) -> Test:
        return lambda s: bool(s) and s[0] in roots

    def thread_chain(s: tuple[str, ...]) -> bool:
        return exact_chain(s, ("start_thread", "worker", *CHAIN[1:])) and s[0] in ("clone3", "clone")

    def signal_chain(s: tuple[str, ...]) -> bool:
        """In the handler: the chain under on_alarm under main; outside it: main -> wait_in_main."""
        if "on_alarm" not in s:
            return entry(s) and s[-2:] == ("main", "wait_in_main")
        return exact_chain(s, ("on_alarm", *CHAIN[1:])) and s[0] == "_start" and "main" in s

    out: dict[str, tuple[list[str], Test, Test | None]] = {}
    entry = starts("_start")
    cpp = build("fid_cpp", ["g++", "-O2"], str(WORKLOADS / "fid_cpp.cc"))
    def under(run: str, leaf: str | None = None) -> Test:  # names as short() makes them: perf's have no parameters
        return lambda s: entry(s) and run in [short(f) for f in s[:4 + 2]] and (leaf is None or short(s[-1]) == leaf)

    out["cpp-sort"] = ([str(cpp), "sort", "600"], entry, under("run_sort", "key_of"))
    out["cpp-virtual"] = ([str(cpp), "virtual", "600"], entry, under("run_virtual", "spin_area"))
    out["cpp-throw"] = ([str(cpp), "throw", "600"], entry, under("run_throw"))
    src = str(WORKLOADS / "unwind_chain.c")
    for name, flags in (("c-O3", ["-O3"]), ("c-static", ["-O2", "-static"]), ("c-nopie", ["-O2", "-no-pie"])):
        exe = build(name, ["gcc", *flags, "-pthread"], src)
        out[name] = ([str(exe), "chain", "600"], entry, exact_chain)
    nofp = build("c-O2", ["gcc", "-O2", "-pthread"], src)
    out["c-thread"] = ([str(nofp), "thread", "600"], starts("clone3", "clone"), thread_chain)
    out["c-sigalrm"] = ([str(nofp), "signal", "600"], entry, signal_chain)
    go = build("fid_go", ["go", "build"], str(WORKLOADS / "fid_go.go"))
    out["go"] = ([str(go), "600"], starts("runtime.goexit.abi0", "runtime.clone.abi0"),
                 lambda s: s[0] == "runtime.goexit.abi0" and s[1:6] == GO_CHAIN)
    rust = build("fid_rust", [str(RUSTC), "-C", "opt-level=3"], str(WORKLOADS / "fid_rust.rs")) \
        if RUSTC.exists() else None
    if rust is not None:
        out["rust-O3"] = ([str(rust), "600"], entry, rust_chain)
        v0 = build("fid_rust_v0", [str(RUSTC), "-C", "opt-level=3", "-C", "symbol-mangling-version=v0", "-g"],
                   str(WORKLOADS / "fid_rust_v0.rs"))
        out["rust-v0-g"] = ([str(v0), "600"], entry,
                            lambda s: entry(s) and any(s[i:i + len(V0_CHAIN)] == V0_CHAIN for i in range(len(s))))
    out["node-jit"] = (["node", "--perf-basic-prof", str(WORKLOADS / "fid_node.js"), "600"], entry, node_chain)
    work = str(WORKLOADS / "python_fidelity.py")
    for version in ("2.7", "3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "debian"):
        python = Path("/usr/bin/python3") if version == "debian" else pyenv(version)
        if python is not None:
            out[f"py{version}-200-threads"] = ([str(python), work, "threads", "200"], entry, threads_chain)
    for version in ("3.6", "3.11", "debian"):
        python = Path("/usr/bin/python3") if version == "debian" else pyenv(version)
        if python is not None:
            out[f"py{version}-sorted-key"] = ([str(python), work, "sorted"], entry, sorted_chain)
    for version in ("3.12", "debian"):
        python = Path("/usr/bin/python3") if version == "debian" else pyenv(version)
        if python is not None:
            out[f"py{version}-cext-threads"] = ([str(python), work, "cext"], starts("_start", "clone3", "clone"),
                                                cext_chain)
    for version in ("3.7", "3.12", "debian"):
        python = Path("/usr/bin/python3") if version == "debian" else pyenv(version)
        if python is not None:
            out[f"py{version}-ctypes-callback"] = ([str(python), work, "ctypes"], entry, ctypes_chain)
            out[f"py{version}-fork"] = ([str(python), work, "fork", "2"], entry, fork_chain)
    asm = build("asm-nocfi", ["gcc", "-O2"], str(WORKLOADS / "asm_nocfi.c"))
    out["asm-nocfi"] = ([str(asm), "plain", "600"], entry,
                        lambda s: entry(s) and s[-4:] == ("main", "caller1", "caller2", "asm_spin"))
    ends = build("stack-ends", ["gcc", "-O2"], str(WORKLOADS / "stack_ends.c"))
    out["c-ucontext"] = ([str(ends), "ucontext", "600"], ucontext_root, ucontext_chain)
    out["c-fiber"] = ([str(ends), "fiber", "600"], fiber_root,
                      lambda s: fiber_root(s) and (s[1:] == ("fib_entry", "fib_mid", "fib_leaf")
                                                   or s[-2:] == ("fib_drive", "fib_main_side")))
    out["c-altstack"] = ([str(ends), "altstack", "600"], entry, altstack_chain)
    out["c-longjmp"] = ([str(ends), "longjmp", "600"], entry,
                        lambda s: entry(s) and s[-4:] == ("main", "jumped", "jumped_mid", "jumped_leaf"))
    # `sh -c` that does not exec its last command: the container's process is the shell, Python its child
    out[SHELL] = (["sh", "-c", f"/usr/bin/python3 {work} threads 4; exit 0"], entry, threads_chain)
    out.update(pod_workloads(tmp, entry, starts))
    return out


Workloads = dict[str, tuple[list[str], Test, Test | None]]


def pod_workloads(tmp: Path, entry: Test, starts: Callable[..., Test]) -> Workloads:
    """Pod-shaped processes (tests/test_fidelity_containers_bpf.py) and runtimes with their own frames."""
    out: Workloads = {}
    work = str(WORKLOADS / "python_fidelity.py")
    # a private tmpfs over host decoys: the program, its library, libc and the loader from the "image"
    at, stage = tmp / "pod-app", tmp / "pod-stage"
    build_pod_chain(stage, at)
    plant_decoys(at, tmp)
    out["pod-mountns"] = (mount_namespace(at, stage, [str(at / "pod_chain"), "600"]), entry, pod_chain)
    at2 = tmp / "pod-replaced"
    build_pod_chain(at2, at2)
    out["pod-replaced"] = ([str(at2 / "pod_chain"), "600"], entry, pod_chain)
    AFTER_START["pod-replaced"] = lambda pid: plant_decoys(at2, tmp / "pod-replaced-decoys")
    py_at, py_stage = tmp / "py-app", tmp / "py-stage"
    py_stage.mkdir()
    shutil.copy("/usr/bin/python3.11", py_stage / "python3")
    py_at.mkdir()
    replace_with(py_at / "python3", LIBZ)
    out["py-debian-mountns"] = (mount_namespace(py_at, py_stage, ["env", "PYTHONHOME=/usr", str(py_at / "python3"),
                                                                  work, "threads", "4"]), entry, threads_chain)
    py_old = tmp / "py-old"
    py_old.mkdir()
    shutil.copy("/usr/bin/python3.11", py_old / "python3")
    out["py-debian-replaced"] = (["env", "PYTHONHOME=/usr", str(py_old / "python3"), work, "threads", "4"], entry,
                                 threads_chain)
    AFTER_START["py-debian-replaced"] = lambda pid: replace_with(py_old / "python3", LIBZ)
    node_tmp, node_stage = tmp / "node-tmp", tmp / "node-stage"
    node_tmp.mkdir()
    node_stage.mkdir()
    shutil.copy(WORKLOADS / "fid_node.js", node_stage / "fid_node.js")
    out["node-pidns"] = (mount_namespace(node_tmp, node_stage, [
        "sh", "-c", f"mount --bind {node_tmp} /tmp && exec node --perf-basic-prof /tmp/fid_node.js 600"], pidns=True),
        entry, node_chain)
    static_pie = tmp / "c-static-pie"
    subprocess.run(["gcc", "-O2", "-static-pie", "-pthread", "-o", str(static_pie), str(WORKLOADS / "unwind_chain.c")],
                   check=True)
    out["c-static-pie"] = ([str(static_pie), "chain", "600"], entry, exact_chain)
    if shutil.which("java") and shutil.which("jcmd"):
        out["java17-fp"] = (["java", "-XX:+PreserveFramePointer", "-XX:CompileCommand=quiet",
                             "-XX:CompileCommand=dontinline,FidJava::*", str(WORKLOADS / "FidJava.java"), "600"],
                            starts("clone3", "clone"), lambda s: java_methods(s) == JAVA_CHAIN)
        AFTER_START["java17-fp"] = java_perfmap
    return out


def ucontext_root(s: tuple[str, ...]) -> bool:
    """main's stack from _start; the coroutine's from the frame its entry returns into (glibc's __start_context:
    unnamed in Debian's libc, perf says [unknown]), not a bogus one from reading past it."""
    return bool(s) and (s[0] == "_start" or (s[1:2] == ("co_entry",) and s[0] != "[no mapping]"))


def ucontext_chain(s: tuple[str, ...]) -> bool:
    return ucontext_root(s) and (s[1:] == ("co_entry", "co_mid", "co_leaf") or s[-2:] == ("drive", "main_side"))


def fiber_root(s: tuple[str, ...]) -> bool:
    """main's stack from _start; the fiber's from the trampoline frame its entry returns into."""
    return bool(s) and (s[0] == "_start" or s[:2] == ("fib_trampoline", "fib_entry"))


def altstack_chain(s: tuple[str, ...]) -> bool:
    """In the handler (on the sigaltstack): under the signal frame under main -> wait_alt; outside: main -> wait_alt."""
    if "on_alt" not in s:
        return c_entry(s) and s[-2:] == ("main", "wait_alt")
    return c_entry(s) and s[-3:] == ("on_alt", "alt_mid", "alt_leaf") and "wait_alt" in s


def node_chain(s: tuple[str, ...]) -> bool:
    """A JIT frame of the workload's JS functions named from the container's perf map, under _start."""
    return bool(s) and s[0] == "_start" and any(
        f.startswith(("LazyCompile:", "JS:", "Function:")) and re.search(r"\b(leaf|middle|top) ", f) for f in s)


def rust_chain(s: tuple[str, ...]) -> bool:
    plain = tuple(re.sub(r"::h[0-9a-f]{16}$", "", f) for f in s)
    return bool(plain) and plain[0] == "_start" and plain[-len(RUST_CHAIN):] == RUST_CHAIN


def cext_chain(s: tuple[str, ...]) -> bool:
    """One of the three threads' Python chains, from its thread's entry, with the C it calls below it
    (zlib/json/re/the interpreter) or the eval loop itself at the leaf."""
    roots = CEXT_CHAINS.get(python_part(s))
    return roots is not None and s[0] in roots


def ctypes_chain(s: tuple[str, ...]) -> bool:
    """c_compare called by libc's qsort through libffi, under <module>;c_sorter, or c_sorter in qsort itself."""
    part = python_part(s)
    if part[:3] == ("<module>", "c_sorter", "c_compare"):
        between = s[s.index("c_sorter") + 1:s.index("c_compare")]
        return any("qsort" in f for f in between) and any("ffi" in f for f in between)
    return part == ("<module>", "c_sorter")


def fork_chain(s: tuple[str, ...]) -> bool:
    return python_part(s) == ("<module>", "prefork", "worker_loop", "middle", "leaf")


def threads_chain(s: tuple[str, ...]) -> bool:
    return python_part(s) == ("<module>", "spin_threads", "middle", "leaf")


def sorted_chain(s: tuple[str, ...]) -> bool:
    """keyf under <module>;sorter with the C code that calls it (list.sort) between them."""
    if "keyf" not in s or "sorter" not in s:
        return False
    at, up = s.index("keyf"), s.index("sorter")
    return python_part(s[:at + 1]) == ("<module>", "sorter", "keyf") and at > up + 1


def wide_workloads(tmp: Path) -> Workloads:
    """tests/test_unwind_wide_bpf.py's builds and chains, and every Python under py-spy (PYSPY)."""
    from tests.test_unwind_wide_bpf import CPP, FRAMES, LAMBDA, from_main, in_thread

    def build(name: str, tool: str, flags: list[str], source: str) -> Path:
        exe = tmp / name
        subprocess.run([tool, *flags, "-pthread", "-o", str(exe), str(WORKLOADS / source)], check=True,
                       capture_output=True)
        return exe

    def starts(*roots: str) -> Test:
        return lambda s: bool(s) and s[0] in roots

    entry, thread_entry = starts("_start"), starts("clone3", "clone")
    out: Workloads = {}
    for build_, flags in (("O2", ["-O2"]), ("stackrealign", ["-O2", "-mavx", "-mstackrealign"])):
        exe = build(f"wide_frames_{build_}", "gcc", flags, "wide_frames.c")
        for mode in ("alloca", "realign", "drap"):
            out[f"{mode}-{build_}"] = ([str(exe), mode, "600"], entry, from_main(FRAMES[mode]))
    for build_, flags, modes in (("O2", ["-O2"], ("function", "template", "catch", "thread")),
                                 ("O3", ["-O3"], ("catch", "thread")), ("Os", ["-Os"], ("function", "catch")),
                                 ("static", ["-O2", "-static"], ("function", "thread")),
                                 ("cet-nopie-noredzone", ["-O2", "-no-pie", "-fcf-protection=full", "-mno-red-zone"],
                                  ("template", "catch"))):
        exe = build(f"wide_cpp_{build_}", "g++", flags, "wide_cpp.cc")
        for mode in modes:
            out[f"cpp-{build_}-{mode}"] = ([str(exe), mode, "600"], thread_entry if mode == "thread" else entry,
                                           in_thread([LAMBDA]) if mode == "thread" else from_main(CPP[mode]))
    c_exact: Test = lambda s: entry(s) and exact_chain(s)  # noqa: E731
    dbg = build("chain_debug_frame", "gcc", ["-O2", "-fno-asynchronous-unwind-tables", "-g"], "unwind_chain.c")
    out["c-debug-frame-only"] = ([str(dbg), "chain", "600"], entry, c_exact)
    mini = build("chain_minidebuginfo", "gcc", ["-O2"], "unwind_chain.c")
    mini_debuginfo(mini, tmp)
    out["c-gnu-debugdata"] = ([str(mini), "chain", "600"], entry, c_exact)
    bare = build("chain_stripped", "gcc", ["-O2"], "unwind_chain.c")
    subprocess.run(["strip", "--strip-all", str(bare)], check=True)
    head = subprocess.run(["readelf", "-h", str(bare)], capture_output=True, text=True, check=True).stdout
    at = int(re.search(r"Entry point address:\s+0x([0-9a-f]+)", head)[1], 16)  # type: ignore[index]

    def in_start(s: tuple[str, ...]) -> bool:  # `chain_stripped+0x...` within _start (its call is at +0x21)
        name, _, off = s[0].partition("+0x") if s else ("", "", "")
        return (name == bare.name and bool(off) and at <= int(off, 16) < at + 0x30) or (bool(s) and s[0] == "_start")

    out["c-stripped-bare"] = ([str(bare), "chain", "600"], in_start,
                              lambda s: in_start(s) and len(s) >= 12 and s[1:3] == ("__libc_start_main_impl",
                                                                                    "__libc_start_call_main"))
    out.update(stop23_workloads(tmp, build, entry, c_exact))
    out.update(stop24_workloads(tmp, build, entry, c_exact))
    out.update(stop25_workloads(tmp, build))
    out.update(stop26_workloads(tmp, build))
    work = str(WORKLOADS / "python_fidelity.py")
    for version in ("2.7", "3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "debian"):
        python = Path("/usr/bin/python3") if version == "debian" else pyenv(version)
        if python is not None:
            out[f"py{version}-threads4"] = ([str(python), work, "threads", "4"], entry, threads_chain)
            PYSPY.add(f"py{version}-threads4")
    return out


PYSPY: set[str] = set()  # workloads whose main thread py-spy dumps, as the oracle of the Python chain


def stop23_workloads(tmp: Path, build: Callable[[str, str, list[str], str], Path], entry: Test,
                     c_exact: Test) -> Workloads:
    """docs/benchmarks.md "Stop 23 fid23": node in its own OpenSSL's SHA-512 (chain: from _start through
    PKCS5_PBKDF2_HMAC), the C chain -O3 -flto, without any CFI (-fno-asynchronous-unwind-tables, no -g: neither
    profiler can unwind it; exact 0 is the expected figure), exec'd from a memfd, -fsplit-stack recursion across
    __morestack's stack segments, and two libraries dlclose'd and dlopen'ed in turn at one address."""
    out: Workloads = {}
    node = shutil.which("node")
    if node is not None:
        out["node-pbkdf2-sha512"] = ([node, str(WORKLOADS / "node_pbkdf2.js"), "600"], entry,
                                     lambda s: entry(s) and "PKCS5_PBKDF2_HMAC" in s)
    lto = build("chain_lto", "gcc", ["-O3", "-flto"], "unwind_chain.c")
    out["c-O3-lto"] = ([str(lto), "chain", "600"], entry, c_exact)
    nocfi = build("chain_nocfi", "gcc", ["-O2", "-fno-asynchronous-unwind-tables"], "unwind_chain.c")
    out["c-no-cfi"] = ([str(nocfi), "chain", "600"], entry, c_exact)
    memfd = build("memfd_exec", "gcc", ["-O2"], "memfd_exec.c")
    chain = build("chain_O2", "gcc", ["-O2"], "unwind_chain.c")
    out["c-memfd-exec"] = ([str(memfd), str(chain), "chain", "600"], entry, c_exact)
    split = build("split_stack", "gcc", ["-O2", "-fsplit-stack"], "split_stack.c")
    out["c-split-stack"] = ([str(split), "600"], entry, lambda s: entry(s) and s[-1:] == ("leaf_work",) and
                            s.count("recurse") == 41 and "__morestack" in s)
    libs = [build(f"libdlswap_{v}.so", "gcc", ["-O2", "-shared", "-fPIC", *d], "dlswap_lib.c")
            for v, d in (("a", []), ("b", ["-DVARIANT_B"]))]
    swap = build("dlswap", "gcc", ["-O2"], "dlswap.c")
    out["c-dlswap"] = ([str(swap), *map(str, libs), "0.5", "600"], entry,
                       lambda s: entry(s) and s[-5:] in (("main", "run_lib", "lib_entry", "a_middle", "a_leaf"),
                                                         ("main", "run_lib", "lib_entry", "b_middle", "b_leaf")))
    return out


def stop24_workloads(tmp: Path, build: Callable[[str, str, list[str], str], Path], entry: Test,
                     c_exact: Test) -> Workloads:
    """docs/benchmarks.md "Stop 24 fid24" (tests/workloads/moved_text.c, tests/workloads/fid_cgo): the C chain with
    its text copied into anonymous memory over itself (as node --use-largepages=on moves text to huge pages), node
    itself so, a page of its text patched through mprotect, its library loaded again in a dlmopen namespace (with a
    second libc), main -> clock_gettime in the vDSO, threads on 16 KiB stacks; Go calling C through cgo, and C
    calling back into Go calling C (exact: the whole chain, C frames between included: neither profiler has it;
    podflame reaches runtime.goexit through Go's traceback's chain, without the C frames that called back)."""
    out: Workloads = {}
    moved = build("moved_text", "gcc", ["-O2", "-fno-toplevel-reorder", "-ldl"], "moved_text.c")
    lib = build("libmoved_text.so", "gcc", ["-O2", "-shared", "-fPIC"], "moved_text_lib.c")
    out["c-remap-text"] = ([str(moved), "remap", "600"], entry, c_exact)
    out["c-mprotect-text"] = ([str(moved), "mprotect", "600"], entry, c_exact)
    out["c-dlmopen"] = ([str(moved), "dlmopen", "600", str(lib)], entry,
                        lambda s: entry(s) and s[-2:] == ("lib_compare", "lib_leaf") and "main" in s
                        and s[s.index("main"):s.index("main") + 3] == ("main", "lib_run", "lib_level"))
    out["c-vdso"] = ([str(moved), "vdso", "600"], entry,
                     lambda s: entry(s) and "spin_clock" in s and s[s.index("spin_clock") - 1] == "main")
    thread_entry: Test = lambda s: bool(s) and s[0] in ("clone3", "clone")  # noqa: E731
    out["c-smallstack-threads"] = ([str(moved), "smallstack", "600"], thread_entry,
                                   lambda s: thread_entry(s) and "worker" in s and exact_chain(s, ("worker",
                                                                                                    *CHAIN[1:])))
    node = shutil.which("node")
    if node is not None:
        out["node-largepages-pbkdf2"] = ([node, "--use-largepages=on", str(WORKLOADS / "node_pbkdf2.js"), "600"],
                                         entry, lambda s: entry(s) and "PKCS5_PBKDF2_HMAC" in s)
    if shutil.which("go"):
        cgo = tmp / "fid_cgo"
        subprocess.run(["go", "build", "-o", str(cgo), "."], check=True, capture_output=True,
                       cwd=WORKLOADS / "fid_cgo")
        goexit: Test = lambda s: bool(s) and s[0] == "runtime.goexit.abi0"  # noqa: E731
        into_c = ("runtime.cgocall", "runtime.asmcgocall.abi0")
        out["go-cgo-call"] = ([str(cgo), "600", "plain"], goexit,
                              lambda s: goexit(s) and s[1:5] == ("runtime.main", "main.main", "main.plain1",
                                                                 "main._Cfunc_c_leaf.abi0")
                              and s[5:7] == into_c and s[-1] == "c_leaf" and len(s) == 9)
        out["go-cgo-callback"] = ([str(cgo), "600", "callback"], goexit,
                                  lambda s: goexit(s) and s[-1] == "c_leaf" and
                                  all(f in s for f in ("main.level1", "c_outer", "c_mid", "main.goCallback")))
    return out


def stop25_workloads(tmp: Path, build: Callable[[str, str, list[str], str], Path]) -> Workloads:
    """docs/benchmarks.md "Stop 25 fid25": OpenSSL's AES-GCM assembly, whose CFA is rax + 8 across its calls
    (`openssl speed -evp aes-128-gcm`, 16 KB blocks; openssl is stripped: the entry is libc's start frame; and node's
    copy, sealing 64 KiB buffers: tests/workloads/node_gcm.js), and a
    stripped -O2 program whose own functions have no symbol at all, each named by its start (its FDE): exact is
    the chain of those names from nm of the build before strip (perf names them all `[unknown]`)."""
    out: Workloads = {}
    started: Test = lambda s: "__libc_start_call_main" in s  # noqa: E731
    openssl = shutil.which("openssl")
    if openssl is not None:
        out["openssl-aes-128-gcm"] = ([openssl, "speed", "-seconds", "600", "-bytes", "16384", "-evp", "aes-128-gcm"],
                                      started, lambda s: started(s) and "EVP_EncryptUpdate" in s)
    node = shutil.which("node")
    if node is not None:  # the same assembly in node's own OpenSSL; exact: through it from _start
        start: Test = lambda s: bool(s) and s[0] == "_start"  # noqa: E731
        out["node-aes-128-gcm"] = ([node, str(WORKLOADS / "node_gcm.js"), "600"], start,
                                   lambda s: start(s) and "aesni_gcm_encrypt" in s)
    full = build("unnamed_full", "gcc", ["-O2"], "unnamed_funcs.c")
    bare = tmp / "unnamed_funcs"
    shutil.copy(full, bare)
    subprocess.run(["strip", "--strip-all", str(bare)], check=True)
    names = {f: file_offset_name(bare, nm_functions(full)[f][0]) for f in ("_start", "main", "hot_mid", "hot_leaf")}
    chain = (names["main"], names["hot_mid"], names["hot_leaf"])
    out["c-stripped-unnamed"] = ([str(bare), "spin"], lambda s: bool(s) and s[0] == names["_start"],
                                 lambda s: bool(s) and s[0] == names["_start"] and s[-3:] == chain)
    return out


TWOLIBS_HEAD = ("main", "run_chain", "level1", "level2", "level3", "lib_sort", "lib_level")


def twolibs_chain(s: tuple[str, ...]) -> bool:
    """_start .. main -> run_chain -> level1..3 -> lib_sort -> lib_level (its library) -> libc's qsort frames ->
    compare -> leaf_work (tests/test_unwind_second_library_bpf.py's chain)."""
    if not s or s[0] != "_start" or s[-2:] != ("compare", "leaf_work") or "main" not in s:
        return False
    at = s.index("main")
    inner = s[at + len(TWOLIBS_HEAD):-2]
    return s[at:at + len(TWOLIBS_HEAD)] == TWOLIBS_HEAD and bool(inner) and not {"compare", "leaf_work",
                                                                                 *TWOLIBS_HEAD} & set(inner)


def stop26_workloads(tmp: Path, build: Callable[[str, str, list[str], str], Path]) -> Workloads:
    """docs/benchmarks.md "Stop 26 fid26": spawn_qsort -DVIA_LIB (tests/workloads/spawn_qsort.c and its library),
    50 ms of CPU a run, run after run by a shell: most of a run's first samples come before its mapping array, and
    their chain crosses libc and then the program's own library."""
    lib = tmp / "libspawnlib.so"
    subprocess.run(["gcc", "-O2", "-fomit-frame-pointer", "-shared", "-fPIC", "-o", str(lib),
                    str(WORKLOADS / "spawn_qsort_lib.c")], check=True)
    exe = build("spawn_twolibs", "gcc", ["-O2", "-DVIA_LIB", "-Wl,--no-as-needed", str(lib),
                                         f"-Wl,-rpath,{tmp}"], "spawn_qsort.c")
    return {TWOLIBS: (["sh", "-c", f"while :; do {exe} 0.05 >/dev/null; done"], lambda s: bool(s) and
                      s[0] == "_start", twolibs_chain)}


def run_matrix(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, dict[str, float | int | None]]] = {}
    only = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.chdir(tmp)  # node writes its isolate logs where it runs
        for name, (argv, entry, chain) in (wide_workloads if args.wide else matrix_workloads)(tmp).items():
            if only is not None and name not in only:
                continue
            wanted = args.peers.split(",")
            with kubelet_cgroup() as cg:
                proc = spawn_in_cgroup(cg.path, argv)
                try:
                    time.sleep(1.0)
                    pid = proc.pid
                    if name in CHILD:  # the peers follow the child; for the shell, podflame the pod's cgroup
                        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                        for _ in range(50):  # the prefork parent forks after a second of its own
                            if children.read_text().split():
                                break
                            time.sleep(0.1)
                        pid = int(children.read_text().split()[0])
                    if name in AFTER_START:
                        AFTER_START[name](pid)
                    peers = {}
                    if "podflame" in wanted:
                        peers["podflame"] = ours(pid, args.seconds, args.frequency, tmp, "auto",
                                                 cg.path if name in BY_CGROUP else None)
                    if "profile_bpfcc" in wanted:
                        peers["profile_bpfcc"] = bcc_profile(pid, args.seconds, args.frequency)
                    if "perf_dwarf" in wanted:
                        peers["perf_dwarf"] = perf_dwarf(pid, args.seconds, args.frequency, tmp)
                    if name in PYSPY:
                        oracle = tuple(f for f in py_spy_main(pid) if f in PY_NAMES)
                finally:
                    for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split() \
                            if proc.poll() is None else []:
                        os.kill(int(child), signal.SIGKILL)  # the shell's Python: not the shell's to end
                    proc.kill()
                    proc.wait()
            results[name] = {}
            native = not name.startswith("py")
            for peer, stacks in peers.items():
                r = shares(stacks, entry, chain)
                # perf has no Python frames: its agreement means something for native workloads only
                r["perf_agree"] = agreement(stacks, peers["perf_dwarf"]) \
                    if native and peer != "perf_dwarf" and "perf_dwarf" in peers else None
                if not native and chain is not None:
                    # the agent registers a Python process on its first sample: samples before have no
                    # Python frames on any build; among the others the chain must be exact
                    framed = Counter({s: n for s, n in stacks.items() if python_part(s)})
                    r["with_python"] = round(sum(framed.values()) / max(1, sum(stacks.values())), 4)
                    r["exact_of_python"] = shares(framed, entry, chain)["exact_chain"]
                if name in PYSPY:
                    r["pyspy_exact"] = shares(stacks, entry, lambda s, o=oracle: python_part(s) == o)["exact_chain"]
                results[name][peer] = r
                text = " ".join(f"{k} {'-' if v is None else f'{v:.1%}' if isinstance(v, float) else v}"
                                for k, v in r.items())
                print(f"{name:24s} {peer:14s} {text}", flush=True)
    print(json.dumps({"bench": "unwind_matrix", "seconds": args.seconds, "frequency": args.frequency,
                      "results": results}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--frequency", type=int, default=99)
    ap.add_argument("--matrix", action="store_true", help="the fidelity matrix instead (see the docstring)")
    ap.add_argument("--wide", action="store_true", help="the wide builds and every Python instead (docstring)")
    ap.add_argument("--only", default="", help="with --matrix: comma-separated workload names")
    ap.add_argument("--peers", default="podflame,profile_bpfcc,perf_dwarf", help="with --matrix: which to run")
    args = ap.parse_args()
    if args.matrix or args.wide:
        args.peers = args.peers.replace("profile_bpfcc,", "") if args.wide else args.peers
        run_matrix(args)
        return
    results: dict[str, dict[str, dict[str, float | int | None]]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        script = tmp / "busy.py"
        script.write_text(BUSY_PY)
        workloads: dict[str, tuple[list[str], Callable, Callable | None]] = {}
        for name, flags in (("chain-nofp", ["-O2"]), ("chain-fp", ["-O2", "-fno-omit-frame-pointer"])):
            exe = tmp / name
            subprocess.run(["gcc", *flags, "-pthread", "-o", str(exe), str(WORKLOADS / "unwind_chain.c")], check=True)
            workloads[name] = ([str(exe), "chain", "600"], c_entry, exact_chain)
        for name, label in (("debian", "python3-debian"), ("pyenv-3.12", "python3.12-pyenv")):
            if PYTHONS[name] is not None:
                workloads[label] = ([str(PYTHONS[name]), str(script)], py_entry, None)
        for name, (argv, entry, chain) in workloads.items():
            with kubelet_cgroup() as cg:
                proc = spawn_in_cgroup(cg.path, argv)
                try:
                    time.sleep(0.5)
                    peers = {
                        "podflame": ours(proc.pid, args.seconds, args.frequency, tmp, "auto"),
                        "podflame_fp": ours(proc.pid, args.seconds, args.frequency, tmp, "fp"),
                        "profile_bpfcc": bcc_profile(proc.pid, args.seconds, args.frequency),
                        "perf_dwarf": perf_dwarf(proc.pid, args.seconds, args.frequency, tmp),
                    }
                finally:
                    proc.kill()
                    proc.wait()
            results[name] = {peer: shares(stacks, entry, chain) for peer, stacks in peers.items()}
            for peer, r in results[name].items():
                chain_text = "" if r["exact_chain"] is None else f"  exact chain {r['exact_chain']:7.2%}"
                entry_text = "-" if r["entry"] is None else f"{r['entry']:7.2%}"
                print(f"{name:18s} {peer:14s} {r['samples']:6d} samples  entry {entry_text}{chain_text}")
    # profile-bpfcc's share is often 0, so the comparison is a difference in points, not a ratio
    gain = {name: round(float(r["podflame"]["entry"] or 0) - float(r["profile_bpfcc"]["entry"] or 0), 4)
            for name, r in results.items()}
    print(json.dumps({"bench": "unwind", "seconds": args.seconds, "frequency": args.frequency,
                      "entry_share_minus_profile_bpfcc": gain, "results": results}))


if __name__ == "__main__":
    main()
