"""The userspace half of Python frames, on this machine's real interpreters.

For pyenv's CPython 2.7 and 3.6-3.13 and Debian's static /usr/bin/python3 (3.11, PGO+LTO): detection
agrees with what the interpreter says of itself, the offsets equal offsetof() compiled against that
version's headers, and a walk of a process sitting in a known stack equals `py-spy dump` (the
oracle) frame by frame: name, file, line and entry marker. A version without a table is refused with a
reason, and a code object address whose memory changed is not named from the cache. 2.7 runs
tests/workloads/python2_chain.py (ASCII names) where the others run python_chain.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from profiler.procmaps import parse_exec_maps
from profiler.python import offsets as off
from profiler.python.code import CodeInfo, CodeReader, CodeReadError
from profiler.python.detect import LayoutMismatch, PythonProcess, Unsupported, check_layout, inspect_process
from profiler.python.lines import decode, line_for, shared_decode
from profiler.python.remote import ProcessGone, read
from profiler.python.walk import Frame, threads, walk

pytestmark = pytest.mark.system

WORKLOADS = Path(__file__).parent / "workloads"
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
DEBIAN = "/usr/bin/python3"
SUPPORTED = ["2.7", "3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "debian"]
PY3 = SUPPORTED[1:]  # workloads in Python 3 only (str kinds, frozen importlib, asyncio)
NO_QUALNAME = ("2.7", "3.6", "3.7", "3.8", "3.9", "3.10")  # co_qualname exists from 3.11


def interpreter(which: str) -> str:
    """The interpreter a test id names; a missing one fails the test (these machines all have them)."""
    if which == "debian":
        return DEBIAN
    found = sorted(PYENV.glob(f"{which}.*/bin/python{which}"))
    if not found:
        pytest.fail(f"no pyenv CPython {which} under {PYENV} (these machines have 2.7 and 3.6-3.13)")
    return str(found[-1])


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if not found:
        pytest.fail("py-spy is not installed: pip install -e '.[test]'")
    return found


@dataclasses.dataclass
class Running:
    popen: subprocess.Popen[str]
    facts: dict[str, object]

    @property
    def pid(self) -> int:
        return self.popen.pid


def start(argv: list[str]) -> Running:
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        p.kill()
        pytest.fail(f"{argv} did not start")
    return Running(p, json.loads(line))


def stop(r: Running) -> None:
    r.popen.kill()
    r.popen.wait()
    for f in (r.popen.stdin, r.popen.stdout):
        if f is not None:
            f.close()


def chain_workload(which: str) -> str:
    return str(WORKLOADS / ("python2_chain.py" if which == "2.7" else "python_chain.py"))


@pytest.fixture(scope="module", params=SUPPORTED)
def chain(request: pytest.FixtureRequest) -> Iterator[tuple[str, Running]]:
    r = start([interpreter(request.param), chain_workload(request.param)])
    try:
        yield request.param, r
    finally:
        stop(r)


def detect(pid: int) -> PythonProcess:
    got = inspect_process(pid)
    assert isinstance(got, PythonProcess), got
    return got


def test_detect_finds_version_runtime_and_code_type(chain: tuple[str, Running]) -> None:
    which, r = chain
    proc = detect(r.pid)
    assert list(proc.version) == r.facts["version"]
    if r.facts["runtime"] is not None:
        assert proc.runtime_address == r.facts["runtime"]
    # what the walker reads as the first interpreter is the one the C API gives (2.7, 3.6: from interp_head)
    head = read(r.pid, proc.runtime_address + proc.offsets.runtime_interpreters_head, 8)
    assert int.from_bytes(head, "little") == r.facts["interp_head"]
    assert (proc.code_type, proc.str_type, proc.bytes_type) == \
        (r.facts["code_type"], r.facts["str_type"], r.facts["bytes_type"])
    if which == "debian":
        assert proc.path == "/usr/bin/python3.11"  # the static executable: no libpython mapped
    else:
        assert Path(proc.path).name.startswith((f"libpython{which}.so", f"libpython{which}m.so"))
    assert proc.offsets.version == tuple(proc.version[:2])
    # the agent passes the executable mappings it already holds: the same answer
    assert inspect_process(r.pid, maps=parse_exec_maps(Path(f"/proc/{r.pid}/maps").read_text())) == proc


@pytest.mark.parametrize("which", ["3.12", "debian"])
def test_interpreter_ranges_come_from_detection_and_outlive_the_process(which: str) -> None:
    """Detection keeps the interpreter file's executable mappings (PythonProcess.exec_maps), so naming a
    new process's frames (pyframes._interpreter) reads no maps again: the eval loop and glue it finds from
    them equal what the process's maps give, and a process that exited before its drain still has them."""
    from profiler.pyframes import _interpreter

    r = start([interpreter(which), str(WORKLOADS / "python_chain.py")])
    try:
        proc = detect(r.pid)
        text = Path(f"/proc/{r.pid}/maps").read_text()
        assert proc.exec_maps == tuple((e.start, e.end, e.offset) for e in parse_exec_maps(text)
                                       if e.clean_path == proc.path) != ()
        kept, read = _interpreter(proc), _interpreter(dataclasses.replace(proc, exec_maps=()))
        assert kept is not None and read is not None and kept.eval_ranges
        assert (kept.eval_ranges, kept.start, kept.end) == (read.eval_ranges, read.start, read.end)
        probes = [kept.start + i * (kept.end - kept.start) // 997 for i in range(997)]
        probes += [a for lo, hi in kept.eval_ranges for a in (lo, hi - 1, hi)]
        assert [kept.kind(a) for a in probes] == [read.kind(a) for a in probes]
    finally:
        stop(r)
    gone = _interpreter(proc)
    assert gone is not None and (gone.eval_ranges, gone.start, gone.end) == (kept.eval_ranges, kept.start, kept.end)
    assert _interpreter(dataclasses.replace(proc, exec_maps=())) is None  # the maps went with the process


def walk_equals_py_spy(pid: int) -> dict[str, list[Frame]]:
    """Assert every thread's frames as the reference walker reads them equal py-spy's, frame by frame
    (function, file, line, entry marker); the walk by thread name.

    The workloads reach a state that does not change (blocked, or spinning on one line) just after
    they say they are ready: walks are taken before and after py-spy's until the two are equal, so
    both saw that state."""
    proc = detect(pid)

    def shown(frames: list[Frame]) -> list[tuple[str | None, str | None, int | None, bool]]:
        return [(f.code.qualname if f.code else None, f.code.filename if f.code else None, f.line, f.entry)
                for f in frames]

    def snapshot() -> dict[int, list[Frame]]:
        return {t.thread_id: frames for t, frames in walk(proc).items()}

    for attempt in range(50):
        before = snapshot()
        dump = json.loads(subprocess.run([py_spy(), "dump", "--json", "--pid", str(pid)], capture_output=True,
                                         text=True, check=True).stdout)
        mine = snapshot()
        if {k: shown(v) for k, v in before.items()} == {k: shown(v) for k, v in mine.items()}:
            break
        assert attempt < 49, "the workload's stacks never stood still"
        time.sleep(0.05)
    assert len(dump) == len(mine)
    for thread in dump:
        # py-spy names frames by co_qualname from 3.11 (co_name before, all those versions have)
        want = [(f["name"], f["filename"], f["line"], f["is_entry"] or f["is_shim_entry"]) for f in thread["frames"]]
        assert shown(mine[thread["thread_id"]]) == want, thread["thread_name"]
    # py-spy names no 2.7 thread: the main one is the process's own tid there
    return {t.get("thread_name") or ("MainThread" if t.get("os_thread_id") == pid else f"thread {t['thread_id']}"):
            mine[t["thread_id"]] for t in dump}


def test_walk_equals_py_spy_dump(chain: tuple[str, Running]) -> None:
    which, r = chain
    by_name = walk_equals_py_spy(r.pid)
    assert len(by_name) == 2
    main = [f.code.name for f in by_name["MainThread"] if f.code]
    assert main == (["f3", "f2", "cafe", "f1", "<module>"] if which == "2.7" else
                    ["f3", "f2", "𠀀", "函数", "café", "f1", "<module>"])
    top = by_name["MainThread"][0].code
    assert top is not None and top.qualname == ("f3" if which in NO_QUALNAME else "Worker.f3")
    other = "second" if which != "2.7" else next(n for n in by_name if n != "MainThread")
    second = [f.code.name for f in by_name[other] if f.code]
    assert second[2:4] == ["g2", "g1"]


@pytest.mark.parametrize("which", PY3)
def test_frozen_importlib_frames_equal_py_spy_dump(which: str, tmp_path: Path) -> None:
    """A thread blocked in an import runs importlib's frozen code: from 3.11 its code objects and
    their names are static data in the interpreter's image, not heap objects."""
    (tmp_path / "blocker.py").write_text("import threading\nprint('{}', flush=True)\nthreading.Event().wait()\n")
    r = start([interpreter(which), "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import blocker"])
    try:
        stack = walk_equals_py_spy(r.pid)["MainThread"]
    finally:
        stop(r)
    files = [f.code.filename for f in stack if f.code]
    blocker = files.index(str(tmp_path / "blocker.py"))  # innermost first: the import machinery below it
    assert files[-1] == "<string>" and "<frozen importlib._bootstrap>" in files[blocker:]


@pytest.mark.parametrize("which", PY3)
def test_generator_and_coroutine_frames_equal_py_spy_dump(which: str) -> None:
    r = start([interpreter(which), str(WORKLOADS / "python_async.py")])
    try:
        stack = walk_equals_py_spy(r.pid)["MainThread"]
    finally:
        stop(r)
    names = [f.code.name for f in stack if f.code]
    assert names[:2] == ["numbers", "consume"] and names[-2:] == ["main", "<module>"]


def test_an_interpreter_only_its_mount_namespace_sees(tmp_path: Path) -> None:
    """As in a container: the interpreter's file exists only in the process's own mount namespace
    (a tmpfs mounted there), so it is opened through /proc/PID/root."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    script = (f'mount -t tmpfs none "{hidden}" && cp "$(readlink -f {DEBIAN})" "{hidden}/python3.11" && '
              f'exec "{hidden}/python3.11" "{WORKLOADS / "python_chain.py"}"')
    r = start(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    try:
        assert not (hidden / "python3.11").exists()  # not from here
        proc = detect(r.pid)
        chain = ["f3", "f2", "𠀀", "函数", "café", "f1", "<module>"]
        for _ in range(100):  # the main thread enters the chain just after it said it was ready
            stacks = [[f.code.name for f in frames if f.code] for frames in walk(proc).values()]
            if chain in stacks:
                break
            time.sleep(0.02)
    finally:
        stop(r)
    assert proc.path == f"{hidden}/python3.11" and list(proc.version) == r.facts["version"]
    assert chain in stacks


def test_thread_ids_are_the_fs_base_and_the_tid(chain: tuple[str, Running]) -> None:
    """What the kernel walker matches a thread state by: thread_id is pthread_self(), the thread's fs
    base (read by each thread with arch_prctl), and native_thread_id (3.11+) its kernel tid."""
    _, r = chain
    proc = detect(r.pid)
    tids = {int(t) for t in os.listdir(f"/proc/{r.pid}/task")}
    truth = {t["fs_base"]: t for t in r.facts["threads"]}  # type: ignore[attr-defined]
    found = list(threads(proc))
    assert {t.thread_id for t in found} == set(truth) == {t["ident"] for t in truth.values()}
    assert {t["native"] for t in truth.values()} == tids
    for t in found:
        if proc.offsets.tstate_native_thread_id == off.NO_FIELD:
            assert t.native_thread_id is None
        else:
            assert t.native_thread_id == truth[t.thread_id]["native"]


# --- offsets against the headers -------------------------------------------------------------------

def header_offsets(python: str, tmp: Path) -> dict[str, int]:
    """offsetof() of the fields, compiled against the headers of `python`'s own installation."""
    paths = subprocess.run([python, "-c", "import sysconfig; p = sysconfig.get_paths(); "
                            "print(p['include']); print(p['platinclude'])"],
                           capture_output=True, text=True, check=True).stdout.split()
    flags = []
    for inc in dict.fromkeys(paths):
        flags += [f"-I{inc}", f"-I{inc}/internal"]
    multiarch = Path("/usr/include/x86_64-linux-gnu") / Path(paths[0]).name  # Debian's pyconfig.h
    if multiarch.is_dir():
        flags.append(f"-I{multiarch}")
    exe = tmp / "py_offsets"
    subprocess.run(["gcc", "-w", *flags, "-o", str(exe), str(WORKLOADS / "py_offsets.c")], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


NOT_OFFSETS = {"version", "frame_instr_kind", "linetable_format", "code_size", "names_are_bytes"}


@pytest.mark.parametrize("which", SUPPORTED)
def test_offsets_equal_offsetof_from_the_headers(which: str, tmp_path: Path) -> None:
    python = interpreter(which)
    want = header_offsets(python, tmp_path)
    hexversion = want.pop("version_hex")
    sizeof_code = want.pop("code_sizeof")
    version = (hexversion >> 24, hexversion >> 16 & 0xFF)
    if version in off.TABLES:
        table = off.TABLES[version]
    else:  # 3.13: the offsets the running interpreter publishes in _Py_DebugOffsets
        r = start([python, str(WORKLOADS / "python_chain.py")])
        try:
            table = detect(r.pid).offsets
        finally:
            stop(r)
    assert table.version == version
    got = {f.name: getattr(table, f.name) for f in dataclasses.fields(table) if f.name not in NOT_OFFSETS}
    if version not in off.TABLES:  # what _Py_DebugOffsets does not publish, and its own size
        want.pop("interp_runtime")
        assert want.pop("debug_offsets_size") == off.DEBUG_OFFSETS_SIZE
    # a field the headers do not have must be NO_FIELD; every other one must be the header's offset
    assert got == {name: want.get(name, off.NO_FIELD) for name in got}
    code_fields = [table.code_name, table.code_qualname, table.code_filename, table.code_linetable]
    assert max(code_fields) + 8 <= table.code_size <= sizeof_code
    kinds = {(2, 7): off.LASTI_BYTES, (3, 6): off.LASTI_BYTES, (3, 7): off.LASTI_BYTES,
             (3, 8): off.LASTI_BYTES, (3, 9): off.LASTI_BYTES, (3, 10): off.LASTI_UNITS, (3, 11): off.PREV_INSTR,
             (3, 12): off.PREV_INSTR, (3, 13): off.INSTR_PTR}
    assert table.frame_instr_kind == kinds[version]
    formats = {(2, 7): off.LNOTAB_27, (3, 6): off.LNOTAB, (3, 7): off.LNOTAB, (3, 8): off.LNOTAB, (3, 9): off.LNOTAB,
               (3, 10): off.LINETABLE_310}
    assert table.linetable_format == formats.get(version, off.LOCATIONS)


def test_debug_offsets_that_do_not_fit_are_refused() -> None:
    """Real 3.13 _Py_DebugOffsets bytes, altered the ways another build would differ: each is refused."""
    r = start([interpreter("3.13"), str(WORKLOADS / "python_chain.py")])
    try:
        proc = detect(r.pid)
        raw = read(r.pid, proc.runtime_address, off.DEBUG_OFFSETS_SIZE)
    finally:
        stop(r)
    assert off.from_debug_offsets(raw) == proc.offsets

    def patched(at: int, value: bytes) -> bytes:
        return raw[:at] + value + raw[at + len(value):]

    version_314 = (0x030E00F0).to_bytes(8, "little")
    with pytest.raises(off.DebugOffsetsError, match="cookie"):
        off.from_debug_offsets(patched(0, b"xdebugpz"))
    with pytest.raises(off.DebugOffsetsError, match=r"3\.14: layout not known"):
        off.from_debug_offsets(patched(8, version_314))
    with pytest.raises(off.DebugOffsetsError, match="free-threaded"):
        off.from_debug_offsets(patched(16, (1).to_bytes(8, "little")))
    frame_previous = 8 + 8 * (off.DEBUG_313_FIELDS.index("frame.previous"))
    with pytest.raises(off.DebugOffsetsError, match="outside its struct"):
        off.from_debug_offsets(patched(frame_previous, (1 << 16).to_bytes(8, "little")))
    with pytest.raises(off.DebugOffsetsError, match="need"):
        off.from_debug_offsets(raw[:-8])


# --- line tables ------------------------------------------------------------------------------------

LINES_PROBE = r"""
import binascii, dis, json, sys, threading, json.decoder
m3 = __import__("asyncio.base_events" if sys.version_info[0] > 2 else "urllib2", fromlist=["x"])
def codes(co):
    yield co
    for c in co.co_consts:
        if hasattr(c, "co_code"):
            for d in codes(c):
                yield d
step = 1 if sys.version_info[0] == 2 else 2  # 2.7's instructions are 1 or 3 bytes
sources = [(open(m.__file__.rstrip("c")).read(), m.__file__) for m in (threading, json.decoder, m3)]
# line jumps over 127 (2.7: one unsigned byte; 3.6+: split in signed ones) and over 255
sources.append(("x = 1\n" + "\n" * 200 + "y = 2\n" + "\n" * 300 + "def f():\n    return 3\n", "<jumps>"))
out = []
for text, name in sources:
    src = compile(text, name, "exec")
    for co in codes(src):
        n = len(co.co_code)
        if sys.version_info >= (3, 10):
            table = co.co_linetable
            want = {}
            for start, end, line in co.co_lines():
                for o in range(start, end, step):
                    want[o] = line
        else:
            table = co.co_lnotab
            starts = list(dis.findlinestarts(co))
            want = {}
            for o in range(0, n, step):
                line = co.co_firstlineno
                for s, l in starts:
                    if s <= o:
                        line = l
                want[o] = line
        out.append([binascii.hexlify(table).decode(), co.co_firstlineno, sorted(want.items())])
print(json.dumps(out))
"""


@pytest.mark.parametrize("which", SUPPORTED)
def test_line_tables_decode_as_the_interpreter_does(which: str) -> None:
    """Every instruction of three stdlib modules: line_for on the raw table equals the interpreter's
    own co_lines() (3.10+) or dis.findlinestarts (2.7-3.9), and a module whose lines jump by more than a
    line table byte holds."""
    python = interpreter(which)
    major, minor = map(int, subprocess.run([python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                                           capture_output=True, text=True, check=True).stdout.split())
    fmt = off.LNOTAB_27 if major == 2 else {6: off.LNOTAB, 7: off.LNOTAB, 8: off.LNOTAB, 9: off.LNOTAB,
                                            10: off.LINETABLE_310}.get(minor, off.LOCATIONS)
    dump = json.loads(subprocess.run([python, "-c", LINES_PROBE], capture_output=True, text=True, check=True).stdout)
    checked = 0
    for table, first, want in dump:
        raw = bytes.fromhex(table)
        for offset, line in want:
            assert line_for(raw, fmt, first, offset) == line, (first, offset)
            checked += 1
    assert checked > 8_000  # 3.6: ~9,000
    assert line_for(b"", fmt, 7, -2) == 7  # a frame that has not started: its first line


def test_line_tables_shared_across_processes_only_when_identical() -> None:
    """shared_decode keeps one decoding per (table, format, first line) for all processes: a table read
    again (other bytes objects, as from another process) answers from it, and the same bytes under another
    first line or format are decoded on their own (a key without either would name the wrong lines)."""
    dump = json.loads(subprocess.run([DEBIAN, "-c", LINES_PROBE], capture_output=True, text=True,
                                     check=True).stdout)
    shared = 0
    for table, first, want in dump[:200]:
        raw = bytes.fromhex(table)
        got = shared_decode(raw, off.LOCATIONS, first)
        again = shared_decode(bytes.fromhex(table), off.LOCATIONS, first)  # another process's copy
        assert again is got
        shared += 1
        for offset, line in want:
            assert got.line(offset) == line
        moved = shared_decode(raw, off.LOCATIONS, first + 7)
        assert moved is not got and moved == decode(raw, off.LOCATIONS, first + 7)
        assert all(b is None if a is None else b == a + 7 for a, b in zip(got.lines, moved.lines, strict=True))
        if len(raw) >= 4:
            other_format = shared_decode(raw, off.LINETABLE_310, first)
            assert other_format == decode(raw, off.LINETABLE_310, first) and other_format is not got
    assert shared == 200


# --- reused addresses, exited processes, unsupported versions -------------------------------------

@pytest.fixture(params=PY3)
def codes(request: pytest.FixtureRequest) -> Iterator[tuple[str, Running, CodeReader]]:
    """tests/workloads/python_codes.py running on one interpreter, and a reader of its code objects."""
    r = start([interpreter(request.param), str(WORKLOADS / "python_codes.py")])
    try:
        proc = detect(r.pid)
        yield request.param, r, CodeReader.for_process(proc)
    finally:
        stop(r)


def test_long_names_and_tables_read_whole(codes: tuple[str, Running, CodeReader]) -> None:
    which, r, reader = codes
    wide = reader.read(int(r.facts["long_wide"]))  # type: ignore[call-overload]
    ascii_ = reader.read(int(r.facts["long_ascii"]))  # type: ignore[call-overload]
    assert wide.name == wide.qualname == "\U00020000" * 100
    assert ascii_.name == ascii_.qualname == "x" * 300
    assert ascii_.filename == "/tmp/" + "directory/" * 30 + "long.py" == wide.filename
    assert ascii_.linetable == bytes.fromhex(str(r.facts["long_table"])) and len(ascii_.linetable) > 512
    # the first instruction: RESUME on the def line from 3.11, the first statement before
    assert ascii_.line(0) == (2 if which in ("3.6", "3.7", "3.8", "3.9", "3.10") else 1) and wide.firstlineno == 402


def test_a_batch_of_new_code_objects_reads_in_a_few_calls_and_as_one_at_a_time(
        codes: tuple[str, Running, CodeReader], monkeypatch: pytest.MonkeyPatch) -> None:
    """read_many reads the fields of every code object it has not seen in three system calls for all of them
    (a new Python process's drain names dozens), and answers exactly what reading each alone answers; a bad
    object in the batch (its name turned into a bytes object) fails alone."""
    from profiler.python import remote

    _, r, _ = codes
    proc = detect(r.pid)
    names = ["alpha", "beta", "gamma", "long_ascii", "long_wide"]  # long ones need a second read of their data
    addrs = [int(r.facts[n]) for n in names]  # type: ignore[call-overload]
    calls: list[int] = []
    real = remote._batch

    def counted(pid: int, ranges: list[tuple[int, int]]) -> list[bytes | None]:
        calls.append(len(ranges))
        return real(pid, ranges)

    monkeypatch.setattr(remote, "_batch", counted)
    batch = CodeReader.for_process(proc).read_many(addrs)
    assert len(calls) == 4 and calls[0] == len(addrs) and calls[1] == 4 * len(addrs)  # heads, fields, rest, heads
    monkeypatch.setattr(remote, "_batch", real)
    want = ["alpha", "beta", "gamma", "x" * 300, "\U00020000" * 100]
    for a, name in zip(addrs, want, strict=True):
        alone = CodeReader.for_process(proc).read(a)
        assert batch[a] == alone and alone.name == name
    command(r, f"rename {proc.offsets.code_name}")  # gamma's name is now a bytes object
    again = CodeReader.for_process(proc).read_many(addrs)
    bad = again[addrs[2]]
    assert isinstance(bad, CodeReadError) and "name is not a str" in str(bad)
    assert all(again[a] == batch[a] for i, a in enumerate(addrs) if i != 2)


def test_reused_code_address_is_read_anew(codes: tuple[str, Running, CodeReader]) -> None:
    _, r, reader = codes
    proc = detect(r.pid)
    alpha, beta = int(r.facts["alpha"]), int(r.facts["beta"])  # type: ignore[call-overload]
    assert reader.read(alpha).name == "alpha"
    assert reader.read(alpha).name == "alpha" and reader.reads == 1  # the second one from the cache
    command(r, "reuse")  # beta's code object now at alpha's address
    again = reader.read(alpha)
    assert (again.name, reader.reads) == ("beta", 2)
    assert again.fingerprint == reader.read(beta).fingerprint
    command(r, "clobber")  # now not a code object at all
    with pytest.raises(CodeReadError, match="not a code object"):
        reader.read(alpha)
    # a reader that does not know PyCode_Type checks the type's name instead
    by_name = CodeReader(r.pid, proc.offsets)
    assert by_name.read(beta).name == "beta"
    with pytest.raises(CodeReadError):
        by_name.read(alpha)
    with pytest.raises(CodeReadError):
        reader.read(8)  # unmapped
    gamma = int(r.facts["gamma"])  # type: ignore[call-overload]
    command(r, f"rename {proc.offsets.code_name}")  # its name now a bytes object
    for checker in (reader, by_name):
        with pytest.raises(CodeReadError, match="name is not a str"):
            checker.read(gamma)
    batch = reader.read_many([beta, alpha, 8, beta])  # one call for all: bad ones do not spoil the rest
    assert list(batch) == [beta, alpha, 8]
    got_beta = batch[beta]
    assert isinstance(got_beta, CodeInfo) and got_beta.name == "beta"
    assert isinstance(batch[alpha], CodeReadError) and isinstance(batch[8], CodeReadError)
    stop(r)  # the process exits
    # the process is gone: what was read stays readable, nothing else is
    assert reader.read(beta).name == "beta"
    with pytest.raises(ProcessGone):
        reader.read(beta + 64)


def command(r: Running, what: str) -> None:
    assert r.popen.stdin is not None and r.popen.stdout is not None
    r.popen.stdin.write(what + "\n")
    r.popen.stdin.flush()
    assert r.popen.stdout.readline().strip() == "done"


def test_a_table_of_another_version_is_refused(chain: tuple[str, Running]) -> None:
    """The interpreter's pointer back at _PyRuntime proves a table fits: the neighbours' tables fail it."""
    _, r = chain
    proc = detect(r.pid)
    check_layout(proc)
    def checked(t: off.PyOffsets) -> tuple[int, ...]:
        return t.runtime_interpreters_head, t.interp_runtime, t.interp_threads_head, t.tstate_interp

    def alike(t: off.PyOffsets, mine: off.PyOffsets) -> bool:  # a field one of them lacks is not checked
        return all(a == b or off.NO_FIELD in (a, b) for a, b in zip(checked(t), checked(mine), strict=True))

    # 3.9 and 3.10 differ in frames only, 3.8 from 3.9 by the runtime pointer it lacks: the check cannot
    # tell them apart (their version can)
    tables = [t for t in off.TABLES.values() if not alike(t, proc.offsets)]
    assert len(tables) >= 2
    for wrong in tables:
        if proc.offsets.version in ((2, 7), (3, 6)):
            # 2.7's and 3.6's interp_head is a lone variable: a runtime table's head offset may read the zeros past it,
            # which is "not initialised yet" (nothing proved, nothing misread); never a proved layout
            with suppress(LayoutMismatch):
                assert not check_layout(dataclasses.replace(proc, offsets=wrong)), wrong.version
            continue
        with pytest.raises(LayoutMismatch):
            check_layout(dataclasses.replace(proc, offsets=wrong))
    if proc.offsets.version >= (3, 13):
        return  # the frame fields come from the process itself
    # a table right about threads but wrong about where a frame's code is, is refused too (the newest
    # thread sits in Python code)
    bad = dataclasses.replace(proc.offsets, frame_code=proc.offsets.frame_code + 8)
    with pytest.raises(LayoutMismatch):
        check_layout(dataclasses.replace(proc, offsets=bad))


def test_cache_is_bounded(chain: tuple[str, Running]) -> None:
    _, r = chain
    proc = detect(r.pid)
    reader = CodeReader.for_process(proc, capacity=3)
    read_order = list(dict.fromkeys(f.raw.code for frames in walk(proc, reader).values() for f in frames))
    assert len(read_order) > 3 and len(reader) == 3
    # least recently read first out: the last three stay, the first is gone
    assert reader.cached(read_order[0]) is None
    assert all(reader.cached(a) is not None for a in read_order[-3:])


@pytest.mark.parametrize("version", ["2.7", "3.6"])
def test_a_version_without_a_table_is_unsupported_with_a_reason(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CPython on this machine has a table now (2.7 was refused before stop 19): one taken away stands
    for a version podflame does not know (2.6, 3.5, a future one), found in a real process."""
    monkeypatch.delitem(off.TABLES, tuple(map(int, version.split("."))))
    p = subprocess.Popen([interpreter(version), "-c", "import sys; sys.stdout.write('up\\n'); sys.stdout.flush(); "
                          "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "up\n"
        got = inspect_process(p.pid)
    finally:
        p.kill()
        p.wait()
    assert isinstance(got, Unsupported)
    assert version in got.reason and "2.7 and 3.6-3.13" in got.reason


def test_non_python_and_missing_processes_are_unsupported() -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        got = inspect_process(p.pid)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert isinstance(got, Unsupported) and "_PyRuntime" in got.reason
    gone = inspect_process(p.pid)
    assert isinstance(gone, Unsupported) and "does not exist" in gone.reason


def test_the_versions_the_docs_name_are_the_ones_with_a_layout() -> None:
    """README.md and `podflame record --help` name the CPython versions as runs ("2.7 and 3.6-3.13"), made
    here from the versions offsets.py has a layout for: a table added or dropped without the docs fails."""
    from click.testing import CliRunner

    from podflame import cli

    runs: list[list[tuple[int, int]]] = []
    for v in sorted(off.SUPPORTED):
        if runs and runs[-1][-1] == (v[0], v[1] - 1):
            runs[-1].append(v)
        else:
            runs.append([v])
    named = " and ".join(f"{r[0][0]}.{r[0][1]}" + (f"-{r[-1][0]}.{r[-1][1]}" if len(r) > 1 else "") for r in runs)
    assert named == "2.7 and 3.6-3.13"  # what this machine's pyenv holds, every one of them tested above
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert f"for CPython {named} (" in readme
    helped = CliRunner().invoke(cli.main, ["record", "--help"], terminal_width=400)
    assert helped.exit_code == 0 and f"stacks ({named}; docs/python-frames.md)" in " ".join(helped.output.split())
