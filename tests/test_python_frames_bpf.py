"""Python frames in sampled stacks, end to end on this machine's real interpreters.

For pyenv's CPython 2.7, 3.6-3.8 and 3.10-3.13 and Debian's static /usr/bin/python3 (3.11, PGO+LTO, no frame pointers),
tests/workloads/python_frames.py runs in a kubelet-shaped cgroup; the real sampler (in-kernel Python
walk) and the agent's assembly (StackMemo, symbolizer, merge) turn its samples into stacks, and:
- the main thread's samples read <module>;main;handler;Parser.parse;spin with the right file:line,
  in at least 90% of them;
- the second thread's samples that are in zlib's C code (libz) have compress_block (at its call of
  zlib.compress) as their innermost Python frame, with the C frames below it;
- py-spy (the oracle) dumps the same Python stack of the main thread, function and line;
- `podflame record --pid` writes a pprof whose Python frames sit under a "[python]" mapping.
Shares are printed (pytest -s) for the record.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podflame.model import Frame, FrameKind
from profiler.agent import StackMemo, create_context
from profiler.sampler import PY_ERRORS, Sampler
from symbolizer import Symbolizer
from tests.realsys import CGROUP2_ROOT, kubelet_cgroup

pytestmark = pytest.mark.bpf

WORKLOAD = Path(__file__).parent / "workloads" / "python_frames.py"
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
INTERPRETERS = ["2.7", "3.6", "3.7", "3.8", "3.10", "3.11", "3.12", "3.13", "debian"]
FREQ = 99
WINDOW_S = 3.0
MAX_WINDOW_S = 20.0
MIN_SAMPLES = 100  # of the main thread, when the machine lets it run that much within MAX_WINDOW_S
ROOT = Path(__file__).resolve().parent.parent


def interpreter(which: str) -> str:
    if which == "debian":
        return "/usr/bin/python3"
    found = sorted(PYENV.glob(f"{which}.*/bin/python{which}"))
    if not found:
        pytest.fail(f"no pyenv CPython {which} under {PYENV} (these machines have 2.7 and 3.6-3.13)")
    return str(found[-1])


def marker_lines() -> dict[str, int]:
    """`# at: NAME` markers of the workload: the line each frame of the known stacks is at."""
    found = {}
    for n, text in enumerate(WORKLOAD.read_text().splitlines(), 1):
        m = re.search(r"at: (\w+)$", text)
        if m:
            found[m.group(1)] = n
    return found


def expected_main(which: str) -> list[tuple[str, str, int]]:
    at = marker_lines()
    parse = "parse" if which in ("2.7", "3.6", "3.7", "3.8", "3.10") else "Parser.parse"  # co_qualname exists from 3.11
    return [("<module>", str(WORKLOAD), at["module"]), ("main", str(WORKLOAD), at["main"]),
            ("handler", str(WORKLOAD), at["handler"]), (parse, str(WORKLOAD), at["parse"]),
            ("spin", str(WORKLOAD), at["spin"])]


def python_frames(stack: tuple[Frame, ...]) -> list[tuple[str, str | None, int | None]]:
    return [(f.lines[0].function, f.lines[0].file, f.lines[0].line) for f in stack if f.kind is FrameKind.PYTHON]


def contiguous(stack: tuple[Frame, ...]) -> bool:
    kinds = [f.kind is FrameKind.PYTHON for f in stack]
    first, last = kinds.index(True), len(kinds) - 1 - kinds[::-1].index(True)
    return all(kinds[first:last + 1])


@pytest.fixture(scope="module")
def sampler() -> Iterator[Sampler]:
    # a cgroup filter that selects nothing until a test points it at its pod
    s = Sampler(FREQ, cgroup_ids=[os.stat(CGROUP2_ROOT / "cgroup.procs").st_ino])
    try:
        yield s
    finally:
        s.close()


@dataclass
class Sampled:
    which: str
    pid: int
    cgroup_inode: int
    samples: list[tuple[int, int, tuple[Frame, ...], int, int]]  # (tid, cgroup id, stack, python error, count)
    registered_after_s: float


def start(python: str, cgroup: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen(["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", python, str(WORKLOAD)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"{python} did not start"
    return p


def sample(sampler: Sampler, which: str) -> Sampled:
    """Start the workload in a pod cgroup, wait until its interpreter is registered, sample WINDOW_S."""
    ctx = create_context("test-node")
    memo = StackMemo(ctx, Symbolizer(ctx.maps))
    with kubelet_cgroup() as cg:
        p = start(interpreter(which), cg.path)
        inode = cg.inode
        try:
            sampler.set_cgroup_filter([inode])
            t0 = time.monotonic()
            while p.pid not in sampler.drain().python_processes:  # its first sample announces it
                assert time.monotonic() - t0 < 10, f"pid {p.pid} ({which}) was never registered as CPython"
                time.sleep(0.05)
            registered = time.monotonic() - t0
            # at least WINDOW_S, and on a busy shared machine until the main thread has MIN_SAMPLES
            out: list[tuple[int, int, tuple[Frame, ...], int, int]] = []
            started = time.monotonic()
            while time.monotonic() - started < MAX_WINDOW_S:
                time.sleep(1.0)
                drain = sampler.drain()
                ctx.maps.refresh({p.pid})
                assert ctx.python is not None
                ctx.python.begin_drain(drain)
                memo.begin_drain()
                out += [(s.pid, s.cgroup_id, memo(s), s.python_error, s.count) for s in drain.samples
                        if s.tgid == p.pid]
                main = sum(n for tid, *_, n in out if tid == p.pid)
                if time.monotonic() - started >= WINDOW_S and main >= MIN_SAMPLES:
                    break
        finally:
            p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()
            sampler.set_cgroup_filter([os.stat(CGROUP2_ROOT / "cgroup.procs").st_ino])
    return Sampled(which, p.pid, inode, out, registered)


@pytest.fixture(scope="module", params=INTERPRETERS)
def sampled(request: pytest.FixtureRequest, sampler: Sampler) -> Sampled:
    return sample(sampler, request.param)


def test_the_main_threads_python_chain_is_in_its_samples(sampled: Sampled) -> None:
    main = [(stack, err, n) for tid, _, stack, err, n in sampled.samples if tid == sampled.pid]
    total = sum(n for *_, n in main)
    assert total >= 30, f"only {total} samples of the main thread"  # the machine is shared: not all 297
    want = expected_main(sampled.which)
    exact = sum(n for stack, _, n in main if python_frames(stack) == want and contiguous(stack))
    errors = collections.Counter(PY_ERRORS[err] for _, err, n in main for _ in range(n))
    print(f"\n{sampled.which}: main thread {exact}/{total} = {exact / total:.1%} exact Python chain "
          f"(registered {sampled.registered_after_s:.2f}s after start of sampling; walk outcomes {dict(errors)})")
    assert exact >= 0.9 * total, (f"{exact}/{total}", collections.Counter(
        ";".join(f"{f}:{line}" for f, _, line in python_frames(s)) for s, _, _ in main).most_common(3))
    assert {cg for _, cg, *_ in sampled.samples} == {sampled.cgroup_inode}  # the pod's cgroup


def test_c_code_called_from_python_sits_under_its_caller(sampled: Sampled) -> None:
    at = marker_lines()
    others = [(stack, n) for tid, _, stack, _, n in sampled.samples if tid != sampled.pid]
    in_zlib = [(stack, n) for stack, n in others
               if any(f.kind is FrameKind.NATIVE and f.mapping is not None and "libz" in f.mapping.path
                      for f in stack)]
    total_thread = sum(n for _, n in others)
    total = sum(n for _, n in in_zlib)
    assert total >= 0.5 * total_thread > 0, f"{total} of {total_thread} worker samples in libz"
    good = 0
    for stack, n in in_zlib:
        py = python_frames(stack)
        last = max(i for i, f in enumerate(stack) if f.kind is FrameKind.PYTHON)
        below = stack[last + 1:]
        if py[-2:] == [("worker", str(WORKLOAD), at["worker"]), ("compress_block", str(WORKLOAD),
                                                                at["compress_block"])] \
                and all(f.kind in (FrameKind.NATIVE, FrameKind.KERNEL) for f in below) \
                and any(f.mapping is not None and "libz" in f.mapping.path for f in below):
            good += 1 * n
    print(f"\n{sampled.which}: zlib thread {good}/{total} = {good / total:.1%} with compress_block above libz")
    assert good >= 0.9 * total


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        pytest.fail("py-spy is not installed: pip install -e '.[test]'")
    return str(exe)


@pytest.mark.parametrize("which", ["2.7", "3.12", "debian"])
def test_python_frames_match_py_spy_dump(sampler: Sampler, which: str) -> None:
    """The oracle: py-spy's dump of the main thread (function, line) equals podflame's Python frames there."""
    result = sample(sampler, which)  # the process is gone after this; py-spy needs one alive: a second run
    with kubelet_cgroup() as cg:
        p = start(interpreter(which), cg.path)
        try:
            time.sleep(0.3)
            dump = json.loads(subprocess.run([py_spy(), "dump", "--json", "--pid", str(p.pid)], capture_output=True,
                                             text=True, check=True).stdout)
        finally:
            p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()
    main = next(t for t in dump if t.get("os_thread_id") == p.pid or t.get("thread_name") == "MainThread")
    oracle = [(f["name"], f["line"]) for f in reversed(main["frames"])]  # py-spy: leaf first
    counts = collections.Counter()
    for tid, _, stack, _, n in result.samples:
        if tid == result.pid:
            counts[tuple((name, line) for name, _, line in python_frames(stack))] += n
    mine, n = counts.most_common(1)[0]
    share = n / sum(counts.values())
    print(f"\n{which}: podflame's commonest main-thread Python stack ({share:.1%}) vs py-spy: {list(mine)} / {oracle}")
    assert list(mine) == oracle
    assert share >= 0.9


def record_workload(which: str, *args: str) -> None:
    """`podflame record --pid` of the workload on `which` interpreter, in a pod cgroup, with `args`."""
    with kubelet_cgroup() as cg:
        p = start(interpreter(which), cg.path)
        try:
            done = subprocess.run([str(Path(sys.executable).parent / "podflame"), "record", "--pid", str(p.pid),
                                   *args], capture_output=True, text=True, cwd=ROOT)
        finally:
            p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()
    assert done.returncode == 0, done.stderr


def test_record_writes_python_frames_to_pprof(tmp_path: Path) -> None:
    """`podflame record --pid` (the stack_of path, symbolized after the merge) keeps Python frames, and
    `go tool pprof` sees them under the "[python]" mapping."""
    from podflame import pprof

    out = tmp_path / "p.pb.gz"
    record_workload("3.11", "--duration", "3", "--format", "pprof", "-o", str(out))
    profiles = pprof.decode(out.read_bytes())
    counts: collections.Counter = collections.Counter()
    for prof in (p for p in profiles if p.sample_type == "samples"):
        for stack, n in prof.samples.items():
            counts[tuple(python_frames(stack))] += n
    want = tuple(expected_main("3.11"))
    total_main = sum(n for frames, n in counts.items() if frames[-1:] == want[-1:])
    exact = counts[want]
    print(f"\nrecord --pid (3.11): {exact}/{total_main} main-thread samples with the exact chain")
    assert total_main > 0 and exact >= 0.9 * total_main
    raw = subprocess.run(["go", "tool", "pprof", "-traces", str(out)], capture_output=True, text=True, check=True)
    assert "Parser.parse" in raw.stdout and "[python]" in subprocess.run(
        ["go", "tool", "pprof", "-raw", str(out)], capture_output=True, text=True, check=True).stdout


def test_record_python_frames_off_samples_the_interpreter_natively(tmp_path: Path) -> None:
    """`--python-frames off` reaches the sampler (built without the walk): the same workload's samples have
    the interpreter's native frames and not one Python function."""
    out = tmp_path / "p.folded"
    record_workload("3.11", "--duration", "2", "--python-frames", "off", "-o", str(out))
    stacks = [line.rpartition(" ")[0].split(";") for line in out.read_text().splitlines()]
    names = {name for stack in stacks for name in stack}
    print(f"\nrecord --python-frames off (3.11): {len(stacks)} stacks")
    assert "_PyEval_EvalFrameDefault" in names
    assert not names & {"<module>", "main", "handler", "Parser.parse", "spin", "worker", "compress_block"}
