"""The agent's table source (profiler/unwind/builder.py): tables read from the disk cache in the
agent, small ones built in the agent without numpy, the others in a child process that exits when
idle, with its failures turned into errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podflame.errors import PodflameError
from profiler.unwind.build import UnwindFormatError, build_table, cfi_size
from profiler.unwind.builder import AGENT_CFI_BYTES, TableBuildError, TableSource
from symbolizer.elffile import ElfFile

BIG = Path(os.path.realpath("/usr/bin/python3"))  # Debian's 3.11: 480 KiB of CFI, 61k rule rows
CHILD = 256 << 10  # a limit under BIG's CFI: the tests of the child (and of the bench's log) send BIG there
JVM = next(iter(sorted(Path("/usr/lib/jvm").glob("*/lib/server/libjvm.so"))))  # 197k rule rows: numpy compacts
SMALL = Path("/usr/bin/md5sum")  # 5 KB: what the busy bench's restart used to start a child for
LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")  # 183 KB: what a new container image brings, built in the agent
ROOT = Path(__file__).resolve().parent.parent


def test_built_in_a_child_then_read_from_the_cache(tmp_path: Path) -> None:
    source = TableSource(str(tmp_path), agent_cfi_bytes=CHILD)
    try:
        built = source(str(BIG))
        assert built.rows == build_table(str(BIG)).rows and built.count > 10_000
        assert built.stats["cpu_ns"] > 0  # the child's CPU, charged to the loader's build budget
        assert source.stats["child_builds"] == 1 and source.stats["cache_hits"] == 0
        assert len(list((tmp_path / "unwind").rglob("*.tbl"))) == 1  # the child stored it
        again = source(str(BIG))
        assert again.rows == built.rows
        assert source.stats["child_builds"] == 1 and source.stats["cache_hits"] == 1
    finally:
        source.close()
    assert source._child is None


def test_the_child_starts_no_blas_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's OpenBLAS starts a thread per CPU at import, which a build never uses: a third of a child's
    start-up CPU on 2 CPUs, and 63 threads on a 64-CPU node. The child runs single-threaded."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    source = TableSource(str(tmp_path))
    try:
        assert source(str(JVM)).count > 0  # the child has imported numpy (197k rule rows) and built
        assert source._child is not None
        assert "numpy" in Path(f"/proc/{source._child.pid}/maps").read_text()
        status = Path(f"/proc/{source._child.pid}/status").read_text()
        threads = int(status.split("Threads:")[1].split()[0])
        assert threads == 1, f"the build child runs {threads} threads"
    finally:
        source.close()


def test_a_child_that_builds_tables_of_up_to_120k_rule_rows_never_imports_numpy(tmp_path: Path) -> None:
    """numpy's import costs a child start ~55-60 ms of CPU and ~17 MB, more than compacting Debian's python3
    (61k rule rows) in plain Python: the child that builds it (and most tables) runs without numpy."""
    source = TableSource(str(tmp_path), agent_cfi_bytes=CHILD)
    try:
        built = source(str(BIG))
        assert built.stats["cpu_ns"] > 0 and built.count > 10_000  # built by the child
        assert source._child is not None
        assert "numpy" not in Path(f"/proc/{source._child.pid}/maps").read_text()
    finally:
        source.close()


def test_an_image_is_built_by_the_child(tmp_path: Path) -> None:
    image = Path("/bin/true").read_bytes()
    with_source = TableSource(str(tmp_path), agent_cfi_bytes=0)  # every build in the child
    try:
        assert with_source(image).rows == build_table(image).rows
        assert with_source.stats["child_builds"] == 1 and with_source.stats["agent_builds"] == 0
    finally:
        with_source.close()


def test_a_small_binary_new_to_the_host_is_built_without_a_child(tmp_path: Path) -> None:
    """A child start costs 0.12-0.14 s of CPU (an interpreter and numpy's import); md5sum's table builds
    in ~1 ms. A binary whose CFI is small is built in the agent, stored on disk like the child's tables,
    and gives the same rows as the child's numpy build."""
    assert os.path.getsize(SMALL) < 1 << 20
    source = TableSource(str(tmp_path))
    try:
        built = source(str(SMALL))
        assert built.rows == build_table(str(SMALL), python=False).rows and built.count > 100
        assert built.stats["agent_cpu_ns"] > 0 and "cpu_ns" not in built.stats
        assert source.stats == {**source.stats, "agent_builds": 1, "child_builds": 0, "child_starts": 0}
        assert source._child is None
        image = _vdso_image()  # the vDSO too: no file, a few KB of CFI
        assert source(image).rows == build_table(image).rows
        libc = source(str(LIBC))  # 28k rows, over the plain-Python default of a build: the same rows
        assert libc.rows == build_table(str(LIBC), python=False).rows and libc.count > 10_000
        assert source.stats == {**source.stats, "agent_builds": 3, "child_starts": 0}
    finally:
        source.close()
    assert len(list((tmp_path / "unwind").rglob("*.tbl"))) == 3  # stored: a restart reads them from disk
    restart = TableSource(str(tmp_path))
    try:
        assert restart(str(SMALL)).rows == built.rows and restart(image).count > 0
        assert restart.stats == {**restart.stats, "cache_hits": 2, "agent_builds": 0, "child_starts": 0}
    finally:
        restart.close()


def test_a_big_binary_is_still_built_in_the_child(tmp_path: Path) -> None:
    """node's build peaks at ~80 MB with numpy, libjvm's (1.8 MB of CFI, 197k rule rows) at tens of MB: the
    allocator would keep that in the agent for its life, so a binary over AGENT_CFI_BYTES of CFI goes to the
    child."""
    with open(JVM, "rb") as f:
        assert (cfi_size(ElfFile(f)) or 0) > AGENT_CFI_BYTES
    source = TableSource(str(tmp_path))
    try:
        assert source(str(JVM)).stats["cpu_ns"] > 0
        assert source.stats == {**source.stats, "agent_builds": 0, "child_builds": 1, "child_starts": 1}
        assert source(str(SMALL)).count > 0  # the child is up, yet a small one is still built here
        assert source.stats == {**source.stats, "agent_builds": 1, "child_builds": 1}
    finally:
        source.close()


def test_a_mid_size_binary_new_to_the_host_starts_no_child(tmp_path: Path) -> None:
    """Debian's python3 (480 KiB of CFI; libcrypto, libbcc, pyenv's libpython are alike) builds in ~0.1 s of
    plain Python, peaking at a few MB; a child started for it cost 0.15-0.23 s of CPU (its start 0.09-0.15 s,
    then the same build): in the busy bench's steady windows, such a binary new to the host was most of the
    children's CPU. It is built in the agent, with the rows the child's build gives."""
    with open(BIG, "rb") as f:
        assert CHILD < (cfi_size(ElfFile(f)) or 0) <= AGENT_CFI_BYTES
    source = TableSource(str(tmp_path))
    try:
        built = source(str(BIG))
        assert built.rows == build_table(str(BIG)).rows and built.count > 10_000
        assert built.stats["agent_cpu_ns"] > 0 and "cpu_ns" not in built.stats
        assert source.stats == {**source.stats, "agent_builds": 1, "child_builds": 0, "child_starts": 0}
        assert source._child is None
    finally:
        source.close()


def _vdso_image() -> bytes:
    with open("/proc/self/maps") as f:
        line = next(ln for ln in f if ln.rstrip().endswith("[vdso]"))
    start, end = (int(x, 16) for x in line.split()[0].split("-"))
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(start)
        return mem.read(end - start)


def test_the_vdso_table_is_kept_on_disk_by_its_bytes(tmp_path: Path) -> None:
    """An agent restart finds the vDSO's table on disk and starts no build child for it (every start
    used to); another image (another kernel's vDSO) is never answered with this one's table."""
    image = _vdso_image()
    first = TableSource(str(tmp_path), agent_cfi_bytes=0)  # as a big image would be: by the child
    try:
        built = first(image)
        assert built.count > 0 and first.stats["child_builds"] == 1
    finally:
        first.close()
    restart = TableSource(str(tmp_path))
    try:
        again = restart(image)
        assert again.rows == built.rows and restart.stats == {**restart.stats, "cache_hits": 1, "child_starts": 0}
        other = Path("/bin/true").read_bytes()
        assert restart(other).rows == build_table(other).rows != built.rows
        assert restart.stats["agent_builds"] == 1 and restart.stats["cache_hits"] == 1
    finally:
        restart.close()


def test_a_bad_file_is_an_error_and_the_child_keeps_serving(tmp_path: Path) -> None:
    bad = tmp_path / "not-elf"
    bad.write_bytes(b"hello" * 100)
    source = TableSource(str(tmp_path / "cache"), agent_cfi_bytes=0)
    try:
        with pytest.raises(TableBuildError, match="not an ELF") as e:
            source(str(bad))
        assert isinstance(e.value, PodflameError)
        with pytest.raises(OSError):  # what the loader expects of a file that went away
            source(str(tmp_path / "missing"))
        assert source(str(BIG)).count > 0
        assert source.stats["child_starts"] == 1
    finally:
        source.close()


def test_a_bad_file_is_an_error_in_the_agent_too(tmp_path: Path) -> None:
    """The agent reads the ELF headers before it knows whether the CFI is small: a file that is no ELF is
    an error there, named by its path (not by the descriptor the agent read it through), and no child
    starts for it."""
    bad = tmp_path / "not-elf"
    bad.write_bytes(b"hello" * 100)
    source = TableSource(str(tmp_path / "cache"))
    try:
        with pytest.raises(UnwindFormatError, match="not an ELF") as e:
            source(str(bad))
        assert isinstance(e.value, PodflameError) and str(bad) in str(e.value) and "/proc/self/fd" not in str(e.value)
        assert source.stats["child_starts"] == 0
    finally:
        source.close()


def test_the_child_exits_when_idle_and_a_new_one_starts_on_demand(tmp_path: Path) -> None:
    source = TableSource(None, idle_s=0.2, agent_cfi_bytes=CHILD)  # no cache root: every call builds
    try:
        source(str(BIG))
        child = source._child
        assert child is not None
        child.wait(timeout=30)  # exits on its own after 0.2 s without a request
        source.reap()
        assert source._child is None
        assert source(str(BIG)).count > 0 and source.stats["child_starts"] == 2
    finally:
        source.close()


def test_a_killed_child_is_replaced(tmp_path: Path) -> None:
    source = TableSource(None, agent_cfi_bytes=CHILD)
    try:
        source(str(BIG))
        assert source._child is not None
        os.kill(source._child.pid, signal.SIGKILL)
        source._child.wait()
        assert source(str(BIG)).count > 0  # the write to the dead child fails: one more child
        assert source.stats["child_starts"] == 2
    finally:
        source.close()


def test_the_agent_side_never_imports_numpy(tmp_path: Path) -> None:
    """numpy costs ~17 MB resident: the agent moves rows as bytes and builds small and mid-size tables without
    it, only the child imports it (for libjvm's 197k rule rows)."""
    code = (f"import sys\nfrom profiler.unwind.loader import cached_tables\nimport profiler.sampler\n"
            f"s = cached_tables()\nt = s({str(JVM)!r})\nt2 = s({str(JVM)!r})\nsmall = s({str(SMALL)!r})\n"
            f"s.close()\nprint(t.count, s.stats['child_builds'], s.stats['cache_hits'], s.stats['agent_builds'],"
            f" small.count > 100, 'numpy' in sys.modules)")
    env = {**os.environ, "PODFLAME_SYMBOL_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120, check=True)
    count, builds, hits, agent_builds, small, numpy = done.stdout.split()
    assert int(count) > 10_000 and (builds, hits, agent_builds, small, numpy) == ("1", "1", "1", "True", "False")


def test_a_wedged_child_times_out(tmp_path: Path) -> None:
    source = TableSource(None, agent_cfi_bytes=CHILD)
    try:
        source(str(BIG))  # the child's start and first build, on a loaded machine, without the short limit
        assert source._child is not None
        source.timeout_s = 0.5
        os.kill(source._child.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(TableBuildError, match="took over"):
            source(str(BIG))
        assert time.monotonic() - started < 30
        source.timeout_s = 120
        assert source(str(BIG)).count > 0  # a new child
    finally:
        source.close()


def test_warm_starts_the_child_only_before_the_first_table(tmp_path: Path) -> None:
    first = TableSource(str(tmp_path), agent_cfi_bytes=CHILD)
    try:
        first.warm()  # an empty cache: a first start on this node
        assert first._child is not None and first.stats["child_starts"] == 1
        first(str(BIG))
        assert first.stats["child_starts"] == 1  # the warm child built it
    finally:
        first.close()
    restart = TableSource(str(tmp_path), agent_cfi_bytes=CHILD)
    try:
        restart.warm()  # tables on disk: a restart starts no child until a miss
        assert restart._child is None
        assert restart(str(BIG)).count > 0 and restart.stats["cache_hits"] == 1
        assert restart._child is None
    finally:
        restart.close()


def test_works_with_over_1024_descriptors_open(tmp_path: Path) -> None:
    """An agent watching many processes holds many descriptors: select() cannot wait on fd >= 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    source = TableSource(None, agent_cfi_bytes=CHILD)
    try:
        assert source(str(BIG)).count > 0
        assert source._sock is not None and source._sock.fileno() >= 1024
    finally:
        source.close()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_copies_of_a_big_library_without_a_build_id_are_built_once(tmp_path: Path) -> None:
    """numpy's OpenBLAS and protobuf's upb module carry no build id and sit in every virtualenv (or image
    layer) that ships them: the second copy, another file, is read from the disk cache (it was built again,
    in a child started for it, when the cache keyed such files by inode)."""
    copies = [tmp_path / d / "libbig.so" for d in ("venv-a", "venv-b")]
    for path in copies:
        path.parent.mkdir()
        subprocess.run(["objcopy", "--remove-section=.note.gnu.build-id", str(BIG), str(path)], check=True)
    source = TableSource(str(tmp_path / "cache"), agent_cfi_bytes=CHILD)
    try:
        first = source(str(copies[0]))
        assert first.build_id is None and first.count > 10_000 and source.stats["child_builds"] == 1
    finally:
        source.close()
    restart = TableSource(str(tmp_path / "cache"), agent_cfi_bytes=CHILD)
    try:
        assert restart(str(copies[1])).rows == first.rows
        assert restart.stats["cache_hits"] == 1 and restart.stats["child_starts"] == 0
    finally:
        restart.close()


def test_the_bench_lists_the_tables_built_in_its_window(tmp_path: Path) -> None:
    """bench/agent_overhead.py reads the tables built in a steady window from the agent's log: the lines the
    loader and the builder write (in the format of `podflame agent`'s log), timed against the window."""
    import io
    import logging

    from bench.agent_overhead import window_builds
    from profiler.unwind.loader import NativeUnwinder, _Binary

    class Room:  # the kernel maps' row budget, all free: what _build asks of them
        row_budget = 1 << 22

        def room(self) -> int:
            return self.row_budget

    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))  # podflame/cli.py
    logger = logging.getLogger("podflame.unwind")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)

    source = TableSource(str(tmp_path), agent_cfi_bytes=CHILD)
    loader = NativeUnwinder(Room(), source)  # type: ignore[arg-type]
    try:
        start = time.time() - 0.01
        for path in (SMALL, BIG):
            binary = _Binary("ET_DYN", (), -1, cfi_bytes=os.path.getsize(path), name=str(path))
            loader._build(binary, str(path))
            assert binary.count > 0
        end = time.time() + 0.01
    finally:
        source.close()
        logger.removeHandler(handler)
        logger.setLevel(level)
    got = window_builds(text.getvalue(), start, end)
    assert [(b["binary"], b["where"]) for b in got["tables"]] == [(str(SMALL), "agent"), (str(BIG), "child")]
    assert got["child_starts"] == 1 and got["child_ms"] > 10 and got["agent_ms"] > 0
    assert all(b["rows"] > 0 and 0 <= b["at_s"] <= end - start for b in got["tables"])
    assert window_builds(text.getvalue(), end + 1, end + 30) == {"agent_ms": 0, "child_ms": 0, "child_starts": 0,
                                                                  "tables": []}
