"""Python frames on shapes the other Python tests do not build (tests/workloads/python_fidelity.py),
each sampled with the real agent (`podflame record --pid`, folded) in a pod-shaped cgroup. The known
chain of Python functions the workload spins in is the oracle; py-spy's dump is a second one for the
thread test. Shares of samples are asserted and printed (pytest -s).

- threads: the main thread spins behind 40 and 200 idle threads' thread states (CPython puts new
  ones at the head of its list; one sample looks at 32): its Python frames must still be there.
- sorted(key=...): a Python function called back from C (list.sort) sits above list_sort.
- ctypes: a Python comparator called by libc's qsort through a libffi closure sits above qsort and libffi.
- fork: workers forked (no exec) from a parent that ran Python first keep their Python frames (gunicorn's
  prefork, multiprocessing's fork), recorded by the pod's cgroup as the node agent sees them.
- the node agent itself (sampler with unwind tables, symbolizer, uploader, the real server): the threads
  shape read back from the server's folded profile of the pod (2.7, and 3.12 beside it).
CPython 3.6 and 3.7 are in each (before: no Python frame at all for them), 2.7 in the threads test (refused before).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS, kubelet_cgroup, live_server, run_in_cgroup, with_agent
from tests.test_python_reader import interpreter
from tests.test_unwind_bpf import Stacks, record, record_target, share

pytestmark = pytest.mark.bpf

WORKLOAD = WORKLOADS / "python_fidelity.py"


@contextmanager
def running(python: str, *args: str) -> Iterator[int]:
    """The workload on `python` in a kubelet-shaped cgroup, past its "ready" line."""
    with kubelet_cgroup() as cg:
        p = subprocess.Popen(["sh", "-c", f'echo $$ > "{cg.path}/cgroup.procs" && exec "$@"', "sh", python,
                              str(WORKLOAD), *args], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"{python} {args} did not start"
            time.sleep(0.2)
            yield p.pid
        finally:
            p.kill()
            p.wait()
            assert p.stdout is not None
            p.stdout.close()


PY_NAMES = frozenset({"<module>", "spin_threads", "middle", "leaf", "sorter", "keyf", "use_gen", "gen", "recurse",
                      "c_sorter", "c_compare", "prefork", "worker_loop"})


def python_part(stack: tuple[str, ...]) -> tuple[str, ...]:
    """The workload's Python functions in `stack`, in order (3.9/3.10 keep C frames between them)."""
    return tuple(f for f in stack if f in PY_NAMES)


def commonest(stacks: Stacks) -> str:
    return ";".join(stacks.most_common(1)[0][0][-8:])


@pytest.mark.parametrize("threads", [40, 200])
@pytest.mark.parametrize("which", ["2.7", "3.6", "3.7", "3.8", "3.9", "3.12", "debian"])
def test_the_main_thread_behind_many_thread_states_keeps_its_python_frames(which: str, threads: int) -> None:
    """2.7-3.9 match threads by pthread_self() (the FS base), 3.12 and Debian's 3.11 by the kernel tid."""
    with running(interpreter(which), "threads", str(threads)) as pid:
        stacks = record(pid)
        dump = json.loads(subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--json", "--pid",
                                          str(pid)], capture_output=True, text=True, check=True).stdout)
    main = next(t for t in dump if t.get("os_thread_id") == pid or t.get("thread_name") == "MainThread")
    oracle = tuple(f["name"] for f in reversed(main["frames"]))  # py-spy: leaf first
    assert oracle[:2] == ("<module>", "spin_threads"), oracle
    chain = ("<module>", "spin_threads", "middle", "leaf")
    got = share(stacks, lambda s: python_part(s) == chain)
    # `record --pid` registers the interpreter before its first sample (the agent, at a first sample's
    # announcement: its samples before that had none, 66% of a 3 s capture at load 14): a sample without Python
    # frames is a walk that missed the main thread; among those with them, the chain must be exact
    with_python = Counter({s: n for s, n in stacks.items() if python_part(s)})
    exact = share(with_python, lambda s: python_part(s) == chain, least=20)
    print(f"\n{which}, {threads} threads: {got:.1%} of samples with {';'.join(chain)}, {exact:.1%} of those with "
          f"Python frames (py-spy: {';'.join(oracle)})")
    assert got >= 0.8, f"{got:.1%}; commonest: {commonest(stacks)}"
    assert exact >= 0.95, f"{exact:.1%}; commonest: {commonest(with_python)}"


@pytest.mark.parametrize("which", ["3.6", "3.9", "3.11", "3.13", "debian"])
def test_a_python_callback_from_c_sits_above_the_c_that_calls_it(which: str) -> None:
    with running(interpreter(which), "sorted") as pid:
        stacks = record(pid)
    in_key = Counter({s: n for s, n in stacks.items() if "keyf" in s})

    def placed(s: tuple[str, ...]) -> bool:
        at = s.index("keyf")
        # the C between them: list_sort_impl (3.6: listsort) where its symbol is there (Debian's static python
        # has no .symtab)
        between = s[s.index("sorter") + 1:at]
        return python_part(s[:at + 1]) == ("<module>", "sorter", "keyf") and s[0] == "_start" and bool(between) \
            and (which == "debian" or ("listsort" if which == "3.6" else "list_sort_impl") in between)

    got = share(in_key, placed)
    print(f"\n{which}: {got:.1%} of keyf's samples under <module>;sorter;...list_sort_impl from _start")
    assert share(stacks, lambda s: "keyf" in s) >= 0.5
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(in_key)}"


def py_spy_main(pid: int) -> tuple[str, ...]:
    """The Python functions of pid's main thread as `py-spy dump` gives them, root first."""
    dump = json.loads(subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--json", "--pid",
                                      str(pid)], capture_output=True, text=True, check=True).stdout)
    main = next(t for t in dump if t.get("os_thread_id") == pid or t.get("thread_name") == "MainThread")
    return tuple(f["name"] for f in reversed(main["frames"]))


@pytest.mark.parametrize("which", ["3.7", "3.12", "debian"])
def test_a_ctypes_callback_sits_above_qsort_and_libffi(which: str) -> None:
    with running(interpreter(which), "ctypes") as pid:
        stacks = record(pid)
        oracle = py_spy_main(pid)
    assert oracle[:2] == ("<module>", "c_sorter"), oracle
    in_callback = Counter({s: n for s, n in stacks.items() if "c_compare" in s})

    def placed(s: tuple[str, ...]) -> bool:
        at, up = s.index("c_compare"), s.index("c_sorter")
        between = s[up + 1:at]  # ctypes' call, libffi, libc's qsort, libffi's closure, ctypes' callback
        return s[0] == "_start" and python_part(s[:at + 1]) == ("<module>", "c_sorter", "c_compare") \
            and any("qsort" in f for f in between) and any("ffi" in f for f in between)

    got = share(in_callback, placed)
    print(f"\n{which}: {got:.1%} of c_compare's samples from _start under <module>;c_sorter;...qsort...libffi... "
          f"(py-spy: {';'.join(oracle)})")
    assert share(stacks, lambda s: "c_compare" in s) >= 0.5
    assert got >= 0.9, f"{got:.1%}; commonest: {commonest(in_callback)}"


def record_cgroup(cgroup: Path) -> Stacks:
    """`podflame record --cgroup` (tables on demand, every process of the pod: the node agent's view)."""
    return record_target(f"--cgroup={cgroup}")


@pytest.mark.parametrize("which", ["3.7", "3.12", "debian"])
def test_forked_workers_keep_their_python_frames(which: str) -> None:
    with kubelet_cgroup() as cg:
        p = subprocess.Popen(["sh", "-c", f'echo $$ > "{cg.path}/cgroup.procs" && exec "$@"', "sh",
                              interpreter(which), str(WORKLOAD), "fork", "2"], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"{which} did not fork"
            workers = [int(w) for w in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
            assert len(workers) == 2
            stacks = record_cgroup(cg.path)
            oracle = py_spy_main(workers[0])
        finally:
            for pid in (cg.path / "cgroup.procs").read_text().split():
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            p.wait()
            assert p.stdout is not None
            p.stdout.close()
    chain = ("<module>", "prefork", "worker_loop", "middle", "leaf")
    assert oracle == chain, oracle
    got = share(stacks, lambda s: python_part(s) == chain and s[0] == "_start")
    with_python = Counter({s: n for s, n in stacks.items() if python_part(s)})
    exact = share(with_python, lambda s: python_part(s) == chain, least=20)
    print(f"\n{which}, 2 forked workers: {got:.1%} of samples from _start with {';'.join(chain)}, {exact:.1%} of those "
          f"with Python frames (py-spy: {';'.join(oracle)})")
    assert got >= 0.8, f"{got:.1%}; commonest: {commonest(stacks)}"
    assert exact >= 0.95, f"{exact:.1%}; commonest: {commonest(with_python)}"


@pytest.mark.parametrize("which", ["2.7", "3.12"])
def test_the_agent_ships_the_main_threads_python_chain(which: str, tmp_path: Path) -> None:
    """What a node runs: the Agent (unwind tables, as `podflame agent` runs it) samples the pod while the
    threads shape runs 8 s, and the server's folded profile of the pod holds the main thread's chain."""
    from tests.test_fidelity_containers_bpf import folded

    argv = ["sh", "-c", 'timeout 8 "$0" "$@"; exit 0', interpreter(which), str(WORKLOAD), "threads", "40"]
    with kubelet_cgroup() as cg, live_server(tmp_path / "data") as url:
        with_agent(url, 99, lambda: run_in_cgroup(cg.path, argv), unwind="auto")
        stacks = folded(url, cg.relative)
    chain = ("<module>", "spin_threads", "middle", "leaf")
    python = Counter({s: n for s, n in stacks.items() if python_part(s)})
    got_share = share(stacks, lambda s: python_part(s) == chain)
    exact = share(python, lambda s: python_part(s) == chain, least=20)
    print(f"\n{which}, agent: {got_share:.1%} of the pod's samples with {';'.join(chain)}, {exact:.1%} of those with "
          f"Python frames")
    assert got_share >= 0.6, f"{got_share:.1%}; commonest: {commonest(stacks)}"
    assert exact >= 0.95, f"{exact:.1%}; commonest: {commonest(python)}"
