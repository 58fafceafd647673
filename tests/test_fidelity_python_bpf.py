"""Python frames on shapes the other Python tests do not build (tests/workloads/python_fidelity.py),
each sampled with the real agent (`podflame record --pid`, folded) in a pod-shaped cgroup. The known
chain of Python functions the workload spins in is the oracle; py-spy's dump is a second one for the
thread test. Shares of samples are asserted and printed (pytest -s).

- threads: the main thread spins behind 40 and 200 idle threads' thread states (CPython puts new
  ones at the head of its list; one sample looks at 32): its Python frames must still be there.
- sorted(key=...): a Python function called back from C (list.sort) sits above list_sort.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS, kubelet_cgroup
from tests.test_python_reader import interpreter
from tests.test_unwind_bpf import Stacks, record, share

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


PY_NAMES = frozenset({"<module>", "spin_threads", "middle", "leaf", "sorter", "keyf", "use_gen", "gen", "recurse"})


def python_part(stack: tuple[str, ...]) -> tuple[str, ...]:
    """The workload's Python functions in `stack`, in order (3.9/3.10 keep C frames between them)."""
    return tuple(f for f in stack if f in PY_NAMES)


def commonest(stacks: Stacks) -> str:
    return ";".join(stacks.most_common(1)[0][0][-8:])


@pytest.mark.parametrize("threads", [40, 200])
@pytest.mark.parametrize("which", ["3.6", "3.7", "3.8", "3.9", "3.12", "debian"])
def test_the_main_thread_behind_many_thread_states_keeps_its_python_frames(which: str, threads: int) -> None:
    """3.6-3.9 match threads by pthread_self() (the FS base), 3.12 and Debian's 3.11 by the kernel tid."""
    with running(interpreter(which), "threads", str(threads)) as pid:
        stacks = record(pid)
        dump = json.loads(subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--json", "--pid",
                                          str(pid)], capture_output=True, text=True, check=True).stdout)
    main = next(t for t in dump if t.get("os_thread_id") == pid or t.get("thread_name") == "MainThread")
    oracle = tuple(f["name"] for f in reversed(main["frames"]))  # py-spy: leaf first
    assert oracle[:2] == ("<module>", "spin_threads"), oracle
    chain = ("<module>", "spin_threads", "middle", "leaf")
    got = share(stacks, lambda s: python_part(s) == chain)
    # the samples before the agent registered the process (its first sample announces it) have no Python
    # frames on any build: among the others, the chain must be exact
    with_python = Counter({s: n for s, n in stacks.items() if python_part(s)})
    exact = share(with_python, lambda s: python_part(s) == chain, least=20)
    print(f"\n{which}, {threads} threads: {got:.1%} of samples with {';'.join(chain)}, {exact:.1%} of those with "
          f"Python frames (py-spy: {';'.join(oracle)})")
    assert got >= 0.6, f"{got:.1%}; commonest: {commonest(stacks)}"
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
