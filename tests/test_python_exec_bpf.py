"""A python3 sampled between its fork and its exec of a python3 gets its own Python frames after the exec.

The kernel announces a process once per (tgid, comm), and a python3 that execs a python3 keeps its comm:
its first sample, taken between the fork and the exec, registered it with its parent's interpreter (the
child is its parent's copy then), and nothing announced it again with the exec'd one. pyenv's python3
has a PIE libpython, so the exec'd interpreter's _PyRuntime is elsewhere: the kernel walked the parent's
addresses in the new image and the child's samples had no Python frames of their own. Real sampler, real
interpreters, a kubelet-shaped cgroup; with frame-pointer unwinding (nothing but the drain's refresh sees
the exec) and with tables (a walk's ask for a table announces the process again).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from podflame.model import FrameKind
from profiler.agent import StackMemo, create_context
from profiler.sampler import Sampler
from symbolizer import Symbolizer
from tests.realsys import CGROUP2_ROOT, kubelet_cgroup
from tests.test_python_layouts import pyenv

pytestmark = pytest.mark.bpf

# the child spins in before_exec (so that it is sampled, and announced, as its parent's copy) until the flag
# file exists, then execs argv[1] (a python3: the comm stays) running AFTER; the parent waits for it
FORKER = """
import os, sys
def before_exec(flag):
    while not os.path.exists(flag):
        pass
pid = os.fork()
if pid == 0:
    print("forked", os.getpid(), flush=True)
    before_exec(sys.argv[3])
    os.execv(sys.argv[1], [sys.argv[1], "-c", sys.argv[2]])
os.waitpid(pid, 0)
"""
AFTER = """
def after_exec():
    while True:
        pass
print("exec", flush=True)
after_exec()
"""


@pytest.mark.parametrize("unwind", ["fp", "auto"])
def test_the_exec_d_python3_is_walked_with_its_own_interpreter(unwind: str) -> None:
    python = pyenv("3.12")
    ctx = create_context("test-node")
    memo = StackMemo(ctx, Symbolizer(ctx.maps))
    sampler = Sampler(99, unwind=unwind, cgroup_ids=[os.stat(CGROUP2_ROOT / "cgroup.procs").st_ino])
    flag = Path(tempfile.mkdtemp(prefix="podflame-exec-")) / "go"
    try:
        with kubelet_cgroup() as cg:
            p = subprocess.Popen(["sh", "-c", f'echo $$ > "{cg.path}/cgroup.procs" && exec "$@"', "sh", python, "-c",
                                  FORKER, python, AFTER, str(flag)], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
            assert p.stdout is not None
            try:
                sampler.set_cgroup_filter([cg.inode])
                line = p.stdout.readline().split()
                assert line[:1] == ["forked"], line
                kid = int(line[1])
                t0 = time.monotonic()
                while kid not in (before := sampler.drain().python_processes):  # announced as its parent's copy
                    assert time.monotonic() - t0 < 20, f"the child {kid} was never registered as CPython"
                    time.sleep(0.1)
                assert Path(f"/proc/{kid}/comm").read_text().strip() == "python3"
                was = before[kid]
                flag.touch()
                assert p.stdout.readline().strip() == "exec"
                assert Path(f"/proc/{kid}/comm").read_text().strip() == "python3"
                time.sleep(0.5)
                sampler.drain()  # the drain of the exec: samples walked before anything saw it go
                names: list[list[str]] = []
                t0 = time.monotonic()
                while time.monotonic() - t0 < 20 and len(names) < 60:
                    time.sleep(1.0)
                    drain = sampler.drain()
                    ctx.maps.refresh({kid})
                    assert ctx.python is not None
                    ctx.python.begin_drain(drain)
                    memo.begin_drain()
                    names += [[f.lines[0].function for f in memo(s) if f.kind is FrameKind.PYTHON]
                              for s in drain.samples if s.tgid == kid for _ in range(s.count)]
                now = drain.python_processes[kid]
            finally:
                os.killpg(p.pid, signal.SIGKILL)  # the parent and its exec'd child: one process group
                p.wait()
                p.stdout.close()
    finally:
        sampler.close()
        flag.unlink(missing_ok=True)
        flag.parent.rmdir()
    assert now.runtime_address != was.runtime_address, "still the parent's interpreter"
    assert len(names) >= 20, f"only {len(names)} samples of the child after its exec"
    right = sum(n == ["<module>", "after_exec"] for n in names)
    print(f"\n{unwind}: {right}/{len(names)} samples of the exec'd child with its own Python frames")
    assert right >= 0.9 * len(names), names[:5]
