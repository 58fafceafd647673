"""A python3 of a known layout is registered by rebasing an earlier one's answer (detect.Layouts), and a
python3 that exec'd a python3 (same comm, same start time) is detected afresh.

Real processes of this machine's interpreters (Debian's static, non-PIE /usr/bin/python3 and pyenv's
PIE python3 with a shared libpython, whose _PyRuntime ASLR moves), real /proc, PROCMAP_QUERY and
process_vm_readv: every registration made from a layout must be, field by field, what a fresh detection
of the same process finds (and write the same bytes into the kernel's map), and a layout whose answer
would differ must not be used.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiler.procmaps import NewProcess, read_exec_vmas, read_new_process, start_time
from profiler.pyframes import PythonRegistry, pack_config
from profiler.python import walk
from profiler.python.code import CodeReader
from profiler.python.detect import Layouts, PythonProcess, Unsupported, inspect_process, layout_key

PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
DEBIAN = "/usr/bin/python3"
LDSO = "/lib64/ld-linux-x86-64.so.2"
# initialised, imports done (the same extension modules in every process: one layout), then idle
IDLE = "import json, re, zlib, hashlib, sys, time\nprint('ready', flush=True)\ntime.sleep(60)"


def pyenv(minor: str) -> str:
    found = sorted(PYENV.glob(f"{minor}.*/bin/python3"))
    if not found:
        pytest.fail(f"no pyenv CPython {minor} under {PYENV} (these machines have 2.7 and 3.6-3.13)")
    return str(found[-1])


INTERPRETERS = {"debian": lambda: DEBIAN, "3.12": lambda: pyenv("3.12"), "3.13": lambda: pyenv("3.13")}


def spawn(argv: list[str], stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    p = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"{argv} did not start"
    return p


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def new(pid: int) -> NewProcess:
    got = read_new_process(pid)
    assert got is not None and got.vmas, f"pid {pid}: no PROCMAP_QUERY read (Linux 6.11+ has it)"
    return got


def fresh(pid: int) -> PythonProcess:
    got = inspect_process(pid, started=start_time(pid))
    assert isinstance(got, PythonProcess), got
    return got


def assert_same(placed: PythonProcess, detected: PythonProcess) -> None:
    for f in dataclasses.fields(PythonProcess):
        assert getattr(placed, f.name) == getattr(detected, f.name), f.name
    assert pack_config(placed) == pack_config(detected)


@pytest.mark.parametrize("which", list(INTERPRETERS))
def test_a_repeat_process_of_a_known_layout_is_registered_by_rebasing_as_detection_would(
        which: str, started: list[subprocess.Popen[str]]) -> None:
    exe = INTERPRETERS[which]()
    started += [spawn([exe, "-c", IDLE]) for _ in range(4)]
    pids = [p.pid for p in started]
    writes: dict[int, bytes | None] = {}
    reg = PythonRegistry(writes.__setitem__)
    assert reg.layouts is not None
    keys = {layout_key(os.readlink(f"/proc/{pid}/exe"), new(pid).vmas or []) for pid in pids}
    assert len(keys) == 1, "the four processes should have one layout"
    reg.announce([new(pid) for pid in pids])
    assert reg.layouts.hits == 3, reg.unsupported  # the first one detected, the others placed
    for pid in pids:
        assert_same(reg.processes[pid], fresh(pid))
        assert writes[pid] == pack_config(fresh(pid))
    if which != "debian":  # a PIE libpython: ASLR put each process's _PyRuntime elsewhere, and rebasing followed
        assert len({reg.processes[pid].runtime_address for pid in pids}) == 4
    # the placed registrations read the processes: their threads and the code object each one runs
    for pid in pids[1:]:
        proc = reg.processes[pid]
        (thread,) = list(walk.threads(proc))
        frames = list(walk.raw_frames(proc, thread.frame))
        assert frames, "no Python frame in the idle process"
        info = CodeReader(pid, proc.offsets, proc.code_type).read(frames[0].code)
        assert info.name == "<module>"
    # a drain forgets every layout: the next process is detected again
    reg.refresh()
    assert len(reg.layouts) == 0
    started.append(spawn([exe, "-c", IDLE]))
    reg.announce([new(started[-1].pid)])
    assert reg.layouts.hits == 3 and len(reg.layouts) == 1
    assert_same(reg.processes[started[-1].pid], fresh(started[-1].pid))


def test_the_executable_is_part_of_the_layout(started: list[subprocess.Popen[str]]) -> None:
    """`ld.so /usr/bin/python3` maps what python3 maps, but its executable is ld.so, which detection does not
    take for an interpreter (only a libpython or the executable are candidates): another answer, not reused."""
    started.append(spawn([DEBIAN, "-c", IDLE]))
    started.append(spawn([LDSO, DEBIAN, "-c", IDLE]))
    direct, via = (new(p.pid) for p in started)
    exes = [os.readlink(f"/proc/{p.pid}/exe") for p in started]
    assert exes[0] != exes[1]
    assert direct.vmas is not None and via.vmas is not None
    k_direct, k_via = layout_key(exes[0], direct.vmas), layout_key(exes[1], via.vmas)
    assert k_direct is not None and k_via is not None
    assert k_direct[1:] == k_via[1:], "the same mappings: only the executable tells the answers apart"
    assert isinstance(inspect_process(via.pid), Unsupported)
    reg = PythonRegistry(lambda tgid, config: None)
    assert reg.layouts is not None
    reg.announce([direct, via])
    assert set(reg.processes) == {direct.pid} and reg.layouts.hits == 0


def test_an_interpreter_mapped_twice_is_not_placed(started: list[subprocess.Popen[str]]) -> None:
    """The layout is a set: a process whose interpreter's executable VMA appeared twice (the same key and size)
    has the key of one where it appears once, and which copy runs is not known: detect it instead."""
    exe = pyenv("3.12")
    started += [spawn([exe, "-c", IDLE]) for _ in range(2)]
    first, second = (new(p.pid) for p in started)
    layouts = Layouts()
    derived: list = []
    got = inspect_process(first.pid, started=first.starttime, derived=derived)
    assert isinstance(got, PythonProcess) and len(derived) == 1
    exe_path = os.readlink(f"/proc/{first.pid}/exe")
    key = layout_key(exe_path, first.vmas or [])
    assert key is not None
    layouts.learn(key, got, first.vmas or [], derived[0])
    assert second.vmas is not None
    placed = layouts.place(key, second.pid, second.starttime, second.vmas)
    assert placed is not None
    assert_same(placed, fresh(second.pid))
    lib = next(v for v in second.vmas if v[2][5].endswith(b".so.1.0") and b"libpython" in v[2][5])
    twice = sorted([*second.vmas, (lib[0] + (1 << 40), lib[1] + (1 << 40), lib[2])])
    assert layout_key(exe_path, twice) == key
    assert layouts.place(key, second.pid, second.starttime, twice) is None


def test_the_debug_offsets_are_read_per_process(started: list[subprocess.Popen[str]]) -> None:
    """3.13's layout comes from _Py_DebugOffsets in the process's memory: a process placed from a layout
    reads them again, and bytes other than the ones the layout's answer was decoded from are not reused."""
    exe = pyenv("3.13")
    started += [spawn([exe, "-c", IDLE]) for _ in range(2)]
    first, second = (new(p.pid) for p in started)
    derived: list = []
    got = inspect_process(first.pid, started=first.starttime, derived=derived)
    assert isinstance(got, PythonProcess) and derived[0].debug_raw is not None
    key = layout_key(os.readlink(f"/proc/{first.pid}/exe"), first.vmas or [])
    assert key is not None and second.vmas is not None
    layouts = Layouts()
    layouts.learn(key, got, first.vmas or [], derived[0])
    assert layouts.place(key, second.pid, second.starttime, second.vmas) is not None
    other = dataclasses.replace(derived[0], debug_raw=derived[0].debug_raw[:-1] + b"\x01")
    layouts.learn(key, got, first.vmas or [], other)
    assert layouts.place(key, second.pid, second.starttime, second.vmas) is None


def test_two_runtimes_are_never_kept_by_layout(started: list[subprocess.Popen[str]]) -> None:
    """Debian's static python3 that also loads libpython3.11.so has two _PyRuntimes; the one running is
    chosen by reading memory (which has an interpreter), so the answer is not the layout's to keep."""
    code = "import ctypes; ctypes.CDLL('libpython3.11.so.1.0')\n" + IDLE
    started += [spawn([DEBIAN, "-c", code]) for _ in range(2)]
    reg = PythonRegistry(lambda tgid, config: None)
    assert reg.layouts is not None
    news = [new(p.pid) for p in started]
    assert all(any(b"libpython3.11.so" in v[2][5] for v in n.vmas or []) for n in news)
    reg.announce(news)
    assert reg.layouts.hits == 0 and len(reg.layouts) == 0
    for n in news:
        assert_same(reg.processes[n.pid], fresh(n.pid))
        assert reg.processes[n.pid].path == os.path.realpath(DEBIAN)


# A python3 that forks; the child waits for a line on stdin (between its fork and its exec: the sampler's
# first sample of it would announce it then, with its parent's mappings), then execs `argv[1]` (a python3
# as well: the comm stays "python3", so the kernel does not announce it again) running `after_exec`.
FORKER = """
import os, sys
pid = os.fork()
if pid == 0:
    print("forked", os.getpid(), flush=True)
    sys.stdin.readline()
    os.execv(sys.argv[1], [sys.argv[1], "-c", sys.argv[2]])
os.waitpid(pid, 0)
"""
AFTER_EXEC = "import sys, time\ndef after_exec():\n    print('exec', flush=True)\n    time.sleep(60)\nafter_exec()\n"


@pytest.mark.parametrize("child", ["3.12", "debian"])
def test_a_python3_that_execs_a_python3_is_detected_afresh(child: str) -> None:
    parent_exe = pyenv("3.12")
    child_exe = INTERPRETERS[child]()
    p = subprocess.Popen([parent_exe, "-c", FORKER, child_exe, AFTER_EXEC], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        forked = p.stdout.readline().split()
        assert forked[:1] == ["forked"], forked
        kid = int(forked[1])
        # between fork and exec: the child is its parent's copy, registered with its parent's interpreter
        reg = PythonRegistry(lambda tgid, config: None)
        reg.announce([new(p.pid), new(kid)])
        before = reg.processes[kid]
        assert before.runtime_address == reg.processes[p.pid].runtime_address
        assert Path(f"/proc/{kid}/comm").read_text().strip() == "python3"
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "exec"
        assert Path(f"/proc/{kid}/comm").read_text().strip() == "python3"
        assert start_time(kid) == before.start_time, "an exec keeps the start time"
        after = fresh(kid)
        assert after.runtime_address != before.runtime_address
        # the drain's refresh sees the exec though nothing announced the process again
        processes = reg.refresh()
        assert_same(processes[kid], after)
        # and an announcement of it (a table ask) does too, when the registration is the parent's
        reg2 = PythonRegistry(lambda tgid, config: None)
        reg2.announce([new(p.pid)])
        reg2.processes[kid] = dataclasses.replace(reg2.processes[p.pid], pid=kid, start_time=before.start_time)
        reg2.announce([new(kid)])
        assert_same(reg2.processes[kid], after)
        # the child's Python frames, read with its registration, are its own: after_exec
        proc = processes[kid]
        (thread,) = list(walk.threads(proc))
        names = [CodeReader(kid, proc.offsets, proc.code_type).read(f.code).name
                 for f in walk.raw_frames(proc, thread.frame)]
        assert names == ["after_exec", "<module>"], names
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the parent and its exec'd child: one process group
        p.wait()


def test_a_registration_is_kept_while_its_interpreter_stays_mapped(started: list[subprocess.Popen[str]]) -> None:
    """The exec check costs nothing to the common case: a process announced again (a table ask, a dlopen) and
    refreshed keeps its registration (the same object) while its interpreter's mappings are where they were."""
    started.append(spawn([pyenv("3.12"), "-c", IDLE]))
    pid = started[0].pid
    reg = PythonRegistry(lambda tgid, config: None)
    reg.announce([new(pid)])
    kept = reg.processes[pid]
    reg.announce([new(pid)])
    assert reg.refresh()[pid] is kept and reg.processes[pid] is kept
    assert read_exec_vmas(pid)


def test_a_layout_proof_forgotten_since_is_made_again(started: list[subprocess.Popen[str]]) -> None:
    """A layout learnt from a proved file skips the proof only while detection's record of proofs still holds
    it: once that record was emptied (64 files), placing a process proves the layout in it again, as detection
    of it would."""
    from profiler.python import detect

    started += [spawn([pyenv("3.12"), "-c", IDLE]) for _ in range(2)]
    first, second = (new(p.pid) for p in started)
    derived: list[detect.Derivation] = []
    got = inspect_process(first.pid, started=first.starttime, derived=derived)
    assert isinstance(got, PythonProcess)
    proof = (derived[0].identity, got.offsets)
    assert proof in detect._PROVED
    key = layout_key(os.readlink(f"/proc/{first.pid}/exe"), first.vmas or [])
    assert key is not None and second.vmas is not None
    layouts = Layouts()
    layouts.learn(key, got, first.vmas or [], derived[0])
    for i in range(64):  # other files proved since: the record is emptied once
        detect._prove((-1, -1, i), got.offsets)
    assert proof not in detect._PROVED
    placed = layouts.place(key, second.pid, second.starttime, second.vmas)
    assert placed is not None
    assert proof in detect._PROVED  # check_layout ran on the placed process and proved it again
    assert_same(placed, fresh(second.pid))
