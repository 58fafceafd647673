"""Stacks deeper than the kernel keeps, sampled with the real agent (`podflame record --pid`, folded) in a
pod-shaped cgroup. A cut stack must say where it was cut: shown whole, its outermost kept frame would read
as the root of the program (a 300-deep recursion's samples under `recurse` at no caller, `<module>` gone).

- Python (tests/workloads/python_fidelity.py `deep N`): the kernel keeps 64 frames. Up to 1024 deep it keeps
  the leaf-most and root-most 32 with a `[truncated: ...]` frame between, so the samples still start at
  `<module>`; deeper, the leaf-most 64 under the marker. A stack of 44 frames has no marker.
- Native (tests/workloads/deep_recursion.c): a user stack cut at the deepest kept (264 frames, MAX_STACK_DEPTH)
  gets a marker at its root, with tables and with frame pointers; a 50-deep one reaches `_start` without it
  (tests/test_deep_stacks_bpf.py: 200 and 250 deep, whole).
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from profiler.sampler import MAX_STACK_DEPTH
from tests.realsys import WORKLOADS
from tests.test_fidelity_python_bpf import PY_NAMES, running
from tests.test_python_reader import interpreter
from tests.test_unwind_bpf import Stacks, record, share
from tests.test_unwind_bpf import running as running_native

pytestmark = pytest.mark.bpf

PY_MARK = "[truncated: Python frames left out]"
NATIVE_MARK = f"[truncated: user stack at the {MAX_STACK_DEPTH}-frame limit]"


def python_part(stack: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f for f in stack if f in PY_NAMES or f == PY_MARK)


def with_python(stacks: Stacks) -> Stacks:
    """The samples taken once the agent had registered the process (the first ones have no Python frames)."""
    return Counter({s: n for s, n in stacks.items() if python_part(s)})


def in_spin(py: tuple[str, ...]) -> bool:
    return py[-2:] == ("middle", "leaf") or py[-1:] == ("middle",)


def commonest(stacks: Stacks) -> str:
    return ";".join(stacks.most_common(1)[0][0][:24]) + " ... " if stacks else "(none)"


@pytest.mark.parametrize(("which", "depth"), [("3.10", 300), ("3.12", 300), ("3.12", 80), ("debian", 300)])
def test_a_deep_python_recursion_keeps_its_root_and_marks_the_cut(which: str, depth: int) -> None:
    """3.10 runs one eval-loop call per frame (its native stack is cut too), 3.12 one for all, with shims.
    At 80 deep the root half begins among the leaf-most 64 frames the kernel read first."""
    with running(interpreter(which), "deep", str(depth)) as pid:
        stacks = record(pid)
    named = with_python(stacks)

    def honest(s: tuple[str, ...]) -> bool:
        py = python_part(s)
        # the root half: <module>, recurse...; the cut; the leaf half: recurse..., middle, leaf
        return py[:2] == ("<module>", "recurse") and py.count(PY_MARK) == 1 and in_spin(py) \
            and set(py[1:py.index(PY_MARK)]) == {"recurse"} and 20 <= py.count("recurse") <= 64 \
            and PY_MARK not in s[:s.index("<module>")]

    got = share(named, honest, least=20)
    print(f"\n{which}, recursion {depth}: {got:.1%} of {sum(named.values())} samples with Python frames start at "
          f"<module> with one cut marked ({share(stacks, lambda s: bool(python_part(s))):.1%} have Python frames)")
    assert share(stacks, lambda s: bool(python_part(s))) >= 0.6
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(named)}"


@pytest.mark.parametrize("which", ["3.12", "debian"])
def test_a_shallow_python_stack_has_no_marker(which: str) -> None:
    """<module>, 41 recurse, middle, leaf: 44 frames, under the 64 the kernel keeps whole."""
    with running(interpreter(which), "deep", "40") as pid:
        stacks = record(pid)
    named = with_python(stacks)
    whole = ("<module>", *["recurse"] * 41, "middle")
    got = share(named, lambda s: python_part(s)[:len(whole)] == whole and in_spin(python_part(s)), least=20)
    print(f"\n{which}, recursion 40: {got:.1%} whole, without a marker")
    assert share(named, lambda s: PY_MARK in s, least=20) == 0
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(named)}"


def test_a_python_recursion_deeper_than_the_walk_is_cut_at_its_root() -> None:
    """2000 frames: past the 1024 one sample follows, the leaf-most 64 stay under the marker."""
    with running(interpreter("3.12"), "deep", "2000") as pid:
        stacks = record(pid)
    named = with_python(stacks)

    def cut_at_root(s: tuple[str, ...]) -> bool:
        py = python_part(s)
        return py[0] == PY_MARK and py.count(PY_MARK) == 1 and "<module>" not in py and in_spin(py) \
            and py.count("recurse") >= 55

    got = share(named, cut_at_root, least=20)
    print(f"\n3.12, recursion 2000: {got:.1%} cut at the root and marked")
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(named)}"


@pytest.fixture(scope="module")
def deep_binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("deep")
    built = {}
    for name, flags in (("nofp", ["-O2"]), ("fp", ["-O2", "-fno-omit-frame-pointer"])):
        exe = built[name] = out / f"deep_recursion_{name}"
        subprocess.run(["gcc", *flags, "-o", str(exe), str(WORKLOADS / "deep_recursion.c")], check=True)
    return built


@pytest.mark.parametrize(("build", "unwind"), [("nofp", "auto"), ("fp", "fp")])
def test_a_native_stack_past_the_limit_is_marked_at_its_root(deep_binaries: dict[str, Path], build: str,
                                                              unwind: str) -> None:
    """--unwind=auto walks -O2 code with .eh_frame tables; --unwind=fp leaves a frame-pointer build to
    bpf_get_stack and the walker past its 127: both cut at MAX_STACK_DEPTH (264) frames."""
    with running_native([str(deep_binaries[build]), "300"]) as pid:
        stacks = record(pid, f"--unwind={unwind}")
    spinning = Counter({s: n for s, n in stacks.items() if s and s[-1] == "spin"})
    got = share(spinning, lambda s: s == (NATIVE_MARK, *["descend"] * (MAX_STACK_DEPTH - 1), "spin"))
    print(f"\n--unwind={unwind}, native recursion 300: {got:.1%} of spin's samples are the marker, 263 descend, spin")
    assert share(stacks, lambda s: s[-1:] == ("spin",)) >= 0.9
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(spinning)}"


def test_a_native_stack_under_the_limit_reaches_its_entry_unmarked(deep_binaries: dict[str, Path]) -> None:
    with running_native([str(deep_binaries["nofp"]), "50"]) as pid:
        stacks = record(pid)
    spinning = Counter({s: n for s, n in stacks.items() if s and s[-1] == "spin"})
    got = share(spinning, lambda s: s[0] == "_start" and s.count("descend") == 51 and NATIVE_MARK not in s)
    print(f"\nnative recursion 50: {got:.1%} from _start, 51 descend, no marker")
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(spinning)}"


def test_the_agent_counts_the_cut_stacks(deep_binaries: dict[str, Path], tmp_path: Path) -> None:
    """The real agent's metrics: podflame_agent_truncated_stacks_total by stack, against the samples it took
    of the two processes (the sampler follows only them)."""
    import threading
    import time

    from profiler import metrics
    from profiler.agent import Agent, create_context
    from profiler.sampler import Sampler
    from profiler.upload import Uploader
    from symbolizer import Symbolizer
    from tests.realsys import live_server

    def value(stack: str) -> float:
        return metrics.TRUNCATED_STACKS.labels(stack)._value.get()

    def python_samples() -> float:
        return sum(metrics.PYTHON_SAMPLES.labels(o)._value.get() for o in ("frames", "no_thread_state", "no_frame"))

    with running(interpreter("3.12"), "deep", "300") as py, running_native([str(deep_binaries["nofp"]), "300"]) as c, \
            live_server(tmp_path / "data") as url:
        before = value("python"), value("native"), metrics.SAMPLES._value.get(), python_samples()
        ctx = create_context("test-node")
        sampler = Sampler(99, pids=[py, c], unwind="auto")
        uploader = Uploader(url, node=ctx.node)
        symbolizer = Symbolizer(ctx.maps)  # type: ignore[arg-type]
        agent = Agent(sampler, ctx, symbolizer, uploader, interval=1.0)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        try:
            time.sleep(5)
        finally:
            agent.stop()
            thread.join(timeout=30)
            uploader.flush(30)
            uploader.close()
            sampler.close()
    python, native, samples, of_python = (a - b for a, b in zip(
        (value("python"), value("native"), metrics.SAMPLES._value.get(), python_samples()), before, strict=True))
    print(f"\nagent: {python:.0f} of {of_python:.0f} Python samples and {native:.0f} of {samples - of_python:.0f} "
          "native ones cut and counted")
    assert of_python >= 30 and samples - of_python >= 30
    # all are cut but the first ones (before the process is registered for Python frames, before its
    # tables are loaded)
    assert python >= 0.6 * of_python and native >= 0.6 * (samples - of_python), (python, native, samples, of_python)
