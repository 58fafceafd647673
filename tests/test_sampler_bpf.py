"""The eBPF sampler against the real kernel: a C workload of known shape, sampled for a few seconds.

The oracle for "nothing lost, nothing counted twice" is the CPU time the kernel itself accounted to
the workload (wait4 rusage): a 99 Hz cpu-clock sampler must see 99 samples per CPU-second of it.
That equals frequency x seconds x busy threads on an idle machine, and stays right when other work
shares the two cores; then whether a tick finds the workload on a CPU is a coin flip, so the check
widens by the binomial noise (3 sigma), which is zero for a thread that never leaves its CPU.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import itertools
import os
import secrets
import shutil
import struct
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from profiler.bpfprog import MAP_HASH, MapSpec, create_map
from profiler.sampler import (
    PY_MAX_DEPTH,
    STACK_HEAD,
    Drain,
    PyStackRow,
    RawSample,
    SampleKey,
    Sampler,
    SamplerError,
    StackTrace,
    _BatchReader,
    _decode_py_stacks,
    _read_set,
)

pytestmark = pytest.mark.bpf

FREQ = 99
WORKLOAD_SOURCE = Path(__file__).parent / "workloads" / "burn.c"
UNIFIED = Path("/sys/fs/cgroup/unified")
ERROR_KEYS = {"stack_eexist", "stack_enomem", "stack_efault", "stack_other", "counts_full"}
KERNEL_SPACE = 0xFFFF_8000_0000_0000


@dataclass(frozen=True)
class MapRange:
    start: int
    end: int
    perms: str
    offset: int
    path: str

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end


@dataclass
class Workload:
    """A started-but-waiting burn process; `go()` lets it burn, `wait()` reaps it."""

    proc: subprocess.Popen[bytes]
    binary: Path
    maps: list[MapRange]
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0  # from go() to its exit seen (poll)
    _went: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"x")
        self.proc.stdin.close()
        self._went = time.monotonic()

    def poll(self) -> bool:
        """Reap the process if it exited, recording the CPU time the kernel accounted to it."""
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if not pid:
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        assert self.proc.returncode == 0, f"workload failed with {self.proc.returncode}"
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.wall_seconds = time.monotonic() - self._went
        return True

    def exec_ranges(self) -> list[MapRange]:
        return [m for m in self.maps if m.path == str(self.binary) and "x" in m.perms]

    def symbol(self, symbols: dict[str, tuple[int, int]], name: str) -> range:
        """Runtime address range of a function (PIE: load bias + st_value)."""
        bias = min(m.start for m in self.maps if m.path == str(self.binary) and m.offset == 0)
        value, size = symbols[name]
        return range(bias + value, bias + value + size)


def read_maps(pid: int) -> list[MapRange]:
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        out.append(MapRange(start, end, parts[1], int(parts[2], 16), parts[5] if len(parts) > 5 else ""))
    return out


@pytest.fixture(scope="module")
def burn_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the test workload: run scripts/setup.sh", pytrace=False)
    out = tmp_path_factory.mktemp("workload") / "burn"
    subprocess.run([gcc, "-O0", "-fno-omit-frame-pointer", "-pthread", "-Wall", "-Werror", "-o", str(out),
                    str(WORKLOAD_SOURCE)], check=True)
    return out


@pytest.fixture(scope="module")
def burn_symbols(burn_binary: Path) -> dict[str, tuple[int, int]]:
    """Function name -> (st_value, st_size) from nm, the oracle for attributing addresses."""
    text = subprocess.run(["nm", "-S", "--defined-only", str(burn_binary)], check=True, capture_output=True,
                          text=True).stdout
    symbols = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "Tt":
            symbols[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return symbols


@pytest.fixture
def spawn(burn_binary: Path) -> Iterator[Callable[..., Workload]]:
    """Start burn processes that wait for `go()`; kill whatever is left at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(seconds: float, threads: int, cgroup: Path | None = None, min_cpu: float = 0.0) -> Workload:
        """`min_cpu`: it burns on past `seconds` until it has had that much CPU (a loaded machine's share)."""
        proc = subprocess.Popen([str(burn_binary), str(seconds), str(threads), str(min_cpu)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # blocked in read(): fully loaded, burning nothing
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        return Workload(proc, burn_binary, read_maps(proc.pid))

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class PodCgroup:
    pod: Path  # kubepods-burstable-pod<uid>.slice
    container: Path  # cri-containerd-<id>.scope, where the workload runs

    @staticmethod
    def inode(path: Path) -> int:
        return os.stat(path).st_ino


@pytest.fixture
def pod_cgroup() -> Iterator[PodCgroup]:
    """A v2 cgroup shaped like a kubelet (systemd driver) container of a burstable pod."""
    if not (UNIFIED / "cgroup.procs").exists():
        pytest.fail(f"no cgroup v2 hierarchy at {UNIFIED}", pytrace=False)
    pod_uid = str(uuid.uuid4()).replace("-", "_")
    qos = UNIFIED / "kubepods.slice" / "kubepods-burstable.slice"
    pod = qos / f"kubepods-burstable-pod{pod_uid}.slice"
    container = pod / f"cri-containerd-{secrets.token_hex(32)}.scope"
    created = [p for p in (qos.parent, qos, pod, container) if not p.exists()]
    container.mkdir(parents=True)
    try:
        yield PodCgroup(pod, container)
    finally:
        for pid in (container / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                (UNIFIED / "cgroup.procs").write_text(pid)
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                if path in (pod, container):
                    raise  # ours alone; the shared parents may be in use by another test run


def sample_until_exit(sampler: Sampler, workloads: list[Workload], interval: float = 0.25,
                      timeout: float = 30) -> list[Drain]:
    """Drain every `interval` while the workloads run, then once more after all exited."""
    drains: list[Drain] = []
    running = list(workloads)
    deadline = time.monotonic() + timeout
    while running:
        assert time.monotonic() < deadline, "workload did not finish"
        time.sleep(interval)
        drains.append(sampler.drain())
        running = [w for w in running if not w.poll()]
    drains.append(sampler.drain())
    return drains


def samples_of(drains: list[Drain], tgid: int | None = None) -> list[RawSample]:
    return [s for d in drains for s in d.samples if tgid is None or s.tgid == tgid]


def total(samples: list[RawSample]) -> int:
    return sum(s.count for s in samples)


def assert_lossless(got: int, work: Workload, seconds: float, threads: int) -> None:
    """`got` samples are what `work`'s CPU time is worth: >= 95% and <= 105% plus sampling noise."""
    expected = FREQ * work.cpu_seconds
    seconds = max(seconds, work.wall_seconds)  # it ran on past `seconds` for its min_cpu (or was reaped late)
    on_cpu = min(1.0, work.cpu_seconds / (seconds * threads))
    noise = 3 * (expected * (1 - on_cpu)) ** 0.5 + 2
    assert 0.95 * expected - noise <= got <= 1.05 * expected + noise, (
        f"{got} samples for {work.cpu_seconds:.2f} CPU-s ({on_cpu:.0%} on CPU): expected {expected:.0f}, "
        f"{FREQ * seconds * threads:.0f} if never preempted")


def test_samples_a_pod_workload_losslessly_across_drains(spawn: Callable[..., Workload], pod_cgroup: PodCgroup,
                                                          burn_symbols: dict[str, tuple[int, int]]) -> None:
    seconds, threads = 4.0, 2
    # 1.5 CPU-s at least: at load 20+ four seconds gave the two threads under 1 CPU-s (quiet: 8)
    work = spawn(seconds, threads, cgroup=pod_cgroup.container, min_cpu=1.5)
    with Sampler(FREQ, pids=[work.pid]) as sampler:
        assert 0 < sampler.start_seconds < 30
        work.go()
        drains = sample_until_exit(sampler, [work], timeout=120)
    samples = samples_of(drains)
    got = total(samples)

    # Lossless and no double counting: every CPU-second of the workload is worth FREQ samples.
    assert work.cpu_seconds >= 1.5, f"workload got only {work.cpu_seconds:.2f} s of CPU"
    assert_lossless(got, work, seconds, threads)
    # Draining many times did happen while samples arrived.
    busy_drains = [d for d in drains if d.samples]
    assert len(drains) >= 12 and len(busy_drains) >= 10
    for earlier, later in itertools.pairwise(drains):
        assert earlier.end_ns == later.start_ns and later.start_ns < later.end_ns

    # Identity: the pid filter admitted only this process; both threads, the v2 cgroup inode, comm.
    assert {s.tgid for s in samples} == {work.pid}
    assert work.pid in {s.pid for s in samples} and len({s.pid for s in samples}) == threads
    assert {s.cgroup_id for s in samples} == {pod_cgroup.inode(pod_cgroup.container)}
    assert {s.comm for s in samples} == {"burn"}

    # Stacks: user stacks present, inside the process's executable mappings, leaf in the binary.
    exec_any = [m for m in work.maps if "x" in m.perms]
    exec_bin = work.exec_ranges()
    assert exec_bin, "no executable mapping of the workload binary"
    exiting = kernel_functions("do_exit")
    at_exit = [s for s in samples if s.user_error]
    # a sample inside the process's exit, after its memory was torn down, has no user stack (~1 run in 80 at 99 Hz:
    # test_a_sample_inside_the_exit_keeps_its_kernel_stack_and_has_no_user_stack); nothing else may lack one
    assert all(s.user_error == -errno.EFAULT and not s.user_stack and in_kernel(s, exiting) for s in at_exit), at_exit
    assert total(at_exit) <= 3, at_exit
    for s in samples:
        if s in at_exit:
            continue
        assert s.user_error == 0 and s.user_stack, s
        for address in s.user_stack:
            assert any(address in m for m in exec_any), f"{address:#x} outside every executable mapping"
        assert s.kernel_error in (0, -errno.EFAULT)
        assert bool(s.kernel_stack) == (s.kernel_error == 0)
        assert all(a >= KERNEL_SPACE for a in s.kernel_stack)
    in_binary = total([s for s in samples if s.user_stack and any(s.user_stack[0] in m for m in exec_bin)])
    assert in_binary >= 0.98 * got

    # The stack shape the program has: spin <- hot_a|hot_b <- worker, with hot_a:hot_b = 3:1.
    spin, hot_a, hot_b, worker = (work.symbol(burn_symbols, n) for n in ("spin", "hot_a", "hot_b", "worker"))
    callers: Counter[str] = Counter()
    for s in samples:
        if len(s.user_stack) >= 3 and s.user_stack[0] in spin and s.user_stack[2] in worker:
            callers["hot_a" if s.user_stack[1] in hot_a else "hot_b" if s.user_stack[1] in hot_b else "?"] += s.count
    assert sum(callers.values()) >= 0.95 * got and callers["?"] == 0
    n = callers["hot_a"] + callers["hot_b"]
    assert abs(callers["hot_a"] / n - 0.75) <= 3 * (0.75 * 0.25 / n) ** 0.5 + 0.02, callers

    # Error counters: all present, cumulative (never decreasing), and equal to what the samples carry.
    for d in drains:
        assert d.errors.keys() >= ERROR_KEYS and all(v >= 0 for v in d.errors.values())
    for earlier, later in itertools.pairwise(drains):
        assert all(later.errors[k] >= v for k, v in earlier.errors.items())
    errors = drains[-1].errors
    assert errors["kernel_stack_efault"] == total([s for s in samples if s.kernel_error == -errno.EFAULT])
    assert errors["stack_eexist"] == errors["counts_full"] == 0


def test_errors_are_counted_and_samples_kept_when_maps_are_too_small(spawn: Callable[..., Workload]) -> None:
    seconds, threads = 1.5, 2
    work = spawn(seconds, threads)
    # Room for one stack: every other distinct user stack finds the map full (-ENOMEM). Room for two
    # counts entries: the keys of the other stacks and of the second thread do not fit.
    with Sampler(FREQ, pids=[work.pid], stack_map_size=1, counts_map_size=2) as sampler:
        work.go()
        drains = sample_until_exit(sampler, [work], interval=0.5)
    samples = samples_of(drains)
    errors = drains[-1].errors
    lost = errors["counts_full"] + errors["counts_other"]
    assert errors["counts_full"] > 0
    # A stack error is counted once per sample, also for samples the full counts map then refused,
    # and a sample whose stack was lost is still counted.
    stackless = total([s for s in samples if s.user_error == -errno.ENOMEM])
    assert stackless > 0 and stackless <= errors["user_stack_enomem"] <= stackless + lost
    assert all(s.user_stack == () for s in samples if s.user_error)
    assert total([s for s in samples if s.user_stack]) > 0
    # Every sample is either counted or reported as lost.
    assert_lossless(total(samples) + lost, work, seconds, threads)


def test_cgroup_filter_selects_a_pod_and_its_containers(spawn: Callable[..., Workload],
                                                        pod_cgroup: PodCgroup) -> None:
    seconds = 3.0
    inside = spawn(seconds, 1, cgroup=pod_cgroup.container)
    outside = spawn(seconds, 1)
    # The filter names the pod slice; the workload runs in a container scope below it.
    with Sampler(FREQ, cgroup_ids=[pod_cgroup.inode(pod_cgroup.pod)], stack_map_size=1024) as sampler:
        inside.go()
        outside.go()
        time.sleep(1.5)
        filtered = sampler.drain()
        sampler.set_cgroup_filter(None)
        rest = sample_until_exit(sampler, [inside, outside])
    assert {s.tgid for s in filtered.samples} == {inside.pid}
    assert {s.cgroup_id for s in filtered.samples} == {pod_cgroup.inode(pod_cgroup.container)}
    assert total(samples_of(rest, outside.pid)) > 0
    # Switching filters lost none of the wanted process's samples.
    assert_lossless(total(filtered.samples) + total(samples_of(rest, inside.pid)), inside, seconds, 1)


IDLE_FREQ = 999  # a loaded machine is idle in gaps of well under a millisecond: 99 Hz rarely lands in one


def test_idle_is_excluded_by_default() -> None:
    # Both samplers watch the same window; the second proves there was idle time to exclude.
    # the default stack map: 1024 entries would fill at 999 Hz over a busy node in a 0.5 s drain, and an idle sample
    # whose kernel stack found it full would fail the checks below
    with Sampler(IDLE_FREQ) as default, Sampler(IDLE_FREQ, include_idle=True) as with_idle:
        busy_until = time.monotonic() + 0.3
        while time.monotonic() < busy_until:  # some non-idle samples of our own
            pass
        drains_default: list[Drain] = []
        drains_idle: list[Drain] = []
        started = time.monotonic()
        deadline = started + 120  # a saturated machine has idle moments only now and then
        while time.monotonic() < deadline and not [s for s in samples_of(drains_idle) if s.pid == 0]:
            time.sleep(0.5)
            drains_default.append(default.drain())
            drains_idle.append(with_idle.drain())
        print(f"\nidle samples after {time.monotonic() - started:.1f} s (load {os.getloadavg()[0]:.1f})")
    assert total(samples_of(drains_default, os.getpid())) > 0
    assert not [s for s in samples_of(drains_default) if s.pid == 0]
    idle = [s for s in samples_of(drains_idle) if s.pid == 0]
    assert total(idle) > 0, "no CPU was ever idle in 120 s, so idle exclusion could not be tested"
    assert all(s.comm.startswith("swapper") for s in idle)
    # The idle task runs in the kernel without a user half: a kernel stack, and -EFAULT for the user one.
    text = kernel_text()
    for s in idle:
        assert s.user_error == -errno.EFAULT and s.user_stack == ()
        assert s.kernel_error == 0 and s.kernel_stack[0] in text and all(a >= KERNEL_SPACE for a in s.kernel_stack)


def kernel_functions(*names: str) -> list[range]:
    """Address ranges of kernel functions, from /proc/kallsyms (each up to the next symbol)."""
    rows = sorted((int(a, 16), n) for a, _t, n, *_ in (line.split() for line in
                                                       Path("/proc/kallsyms").read_text().splitlines()))
    return [range(a, rows[i + 1][0]) for i, (a, n) in enumerate(rows[:-1]) if n in names and a]


def in_kernel(s: RawSample, functions: list[range]) -> bool:
    return any(a in f for a in s.kernel_stack for f in functions)


EXITING_C = r"""
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
/* Touches MB megabytes in 4 KiB pages, then exits: the kernel frees them in exit_mmap, after the task let go of
   its memory, for tens of milliseconds. */
int main(int argc, char **argv) {
    char go;
    long mb = atol(argv[1]);
    if (write(1, "ready\n", 6) != 6 || read(0, &go, 1) != 1)
        return 3;
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    volatile char *p = malloc(mb << 20);
    memset((char *)p, 1, mb << 20);
    return p[12345] - 1;
}
"""


def test_a_sample_inside_the_exit_keeps_its_kernel_stack_and_has_no_user_stack(tmp_path: Path) -> None:
    """The rare state behind a sample without a user stack in a busy process: its exit. exit_mm lets the task's
    memory go before the kernel frees it (exit_mmap), so a sample there has only a kernel stack, through do_exit.
    burn's exit lasts ~0.1 ms (12 samples in 100 exits at 999 Hz: ~1 run in 80 at 99 Hz); here 512 MiB of 4 KiB
    pages make it tens of milliseconds. The sample is kept and counted, with -EFAULT for the user stack."""
    src = tmp_path / "exiting.c"
    src.write_text(EXITING_C)
    exe = tmp_path / "exiting"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    proc = subprocess.Popen([str(exe), "512"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None and proc.stdout.readline() == b"ready\n"
    try:
        with Sampler(997, pids=[proc.pid]) as sampler:
            proc.stdin.write(b"x")
            proc.stdin.close()
            assert proc.wait(timeout=120) == 0
            time.sleep(0.1)
            samples = sampler.drain().samples
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    exiting = kernel_functions("do_exit")
    at_exit = [s for s in samples if in_kernel(s, exiting)]
    userless = [s for s in samples if s.user_error]
    assert total(at_exit) >= 5, f"{total(at_exit)} samples in the exit of {total(samples)}"
    assert userless
    assert all(s.user_error == -errno.EFAULT and not s.user_stack and s.kernel_error == 0 for s in userless)
    assert all(in_kernel(s, exiting) for s in userless)  # no user stack only inside the exit


def kernel_text() -> range:
    symbols = {}
    for line in Path("/proc/kallsyms").read_text().splitlines():
        address, _, name = line.split()[:3]
        if name in ("_stext", "_etext"):
            symbols[name] = int(address, 16)
    return range(symbols["_stext"], symbols["_etext"])


def test_refuses_clearly_without_root_or_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="frequency"):
        Sampler(0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SamplerError, match="root"):
        Sampler(FREQ)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result((*real[:2], "0.0.0-no-headers", *real[3:])))
    with pytest.raises(SamplerError, match=r"kernel headers.*scripts/setup\.sh"):
        Sampler(FREQ)


def test_drains_decode_stacks_and_keys_as_ctypes_reads_the_c_structs() -> None:
    """The drain decodes batch buffers with bytes.find, struct and RawSample's tuple constructor; ctypes views of
    the same bytes are the oracle. Real hash maps, emptied in several batch calls of a few entries."""
    kernel = 0xFFFF_FFFF_8100_0000
    stacks = {
        11: list(range(kernel, kernel + STACK_HEAD)),  # full depth, no zero
        12: [0x40_1000],  # depth 1
        13: [0x40_1000 + i for i in range(5)],  # zero-filled after five frames
        14: [0x40_2000, 0x40_2001, 0, 0x40_2003],  # a zero address ends the stack
        # Eight zero bytes across two addresses (0x1234's top six, the next one's low three) are not a zero
        # address: the stack goes on, here to its zero fill and, in 16, to full depth.
        15: [0x1234, 0x1234_5678_9A00_0000, 0x5555],
        16: [*range(1, STACK_HEAD - 1), 0x1234, 0x1000_0000_0000_0000],
    }
    # Python stacks: (code | flags, instr) pairs, leaf first; depth 0 to the deepest the kernel keeps
    py_stacks = {21: (0x7F00_0000_1000 | 1 << 56, 0x7F00_0000_2002, 0x7F00_0000_3000, 7),
                 22: tuple(range(1, 2 * PY_MAX_DEPTH + 1)), 23: ()}
    keys = [  # cgroup, user stack, kernel stack, tgid, pid, user error, kernel error, comm, Python stack, its error
        (1, 11, 0, 100, 101, 0, -errno.EFAULT, b"abcdefghijklmnop", 21, 0),  # 16 bytes, no NUL
        (2, 12, 13, 100, 102, 0, 0, b"\xffbad\xfe", 22, 4),  # not UTF-8; a truncated Python stack
        (2**64 - 1, 14, 15, 2**32 - 1, 2**32 - 2, 0, 0, b"", 0, 1),
        (3, 16, 99, 200, 200, 0, 0, b"ab\0cd", 23, 0),  # kernel stack 99 missing: -ENOENT; bytes after a NUL
        (4, 0, 0, 300, 301, -errno.ENOMEM, -errno.EFAULT, b"kworker/0:1", 0, 2),
        *((5, 12 + i % 5, 11, 400 + i, 400 + i, 0, 0, b"w%d" % i, 21, 0) for i in range(10)),
    ]
    key_struct = struct.Struct("=QQQIIii16sQi4x")
    stack_map = create_map(MapSpec("stacks_t", MAP_HASH, 8, ct.sizeof(StackTrace), 64))
    py_map = create_map(MapSpec("py_stacks_t", MAP_HASH, 8, ct.sizeof(PyStackRow), 64))
    count_map = create_map(MapSpec("counts_t", MAP_HASH, ct.sizeof(SampleKey), 8, 64))
    expected: list[RawSample] = []
    try:
        for stack_id, ips in stacks.items():
            stack_map.update(ct.c_uint64(stack_id), StackTrace((ct.c_uint64 * STACK_HEAD)(*ips)))
        for stack_id, pairs in py_stacks.items():  # stale words after depth are what a reused buffer holds
            words = (*pairs, *[0xDEAD] * (2 * PY_MAX_DEPTH - len(pairs)))
            row = PyStackRow(len(pairs) // 2, 0, (ct.c_uint64 * (2 * PY_MAX_DEPTH))(*words))
            py_map.update(ct.c_uint64(stack_id), row)
        for n, fields in enumerate(keys):
            raw = key_struct.pack(*fields)
            count_map.update(raw, ct.c_uint64(2**64 - 1 - n))
            k = SampleKey.from_buffer_copy(raw)

            def stack_of(stack_id: int, error: int) -> tuple[tuple[int, ...], int]:
                if error:
                    return (), error
                if stack_id not in stacks:
                    return (), -errno.ENOENT
                ips = StackTrace((ct.c_uint64 * STACK_HEAD)(*stacks[stack_id])).ip[:]
                return tuple(ips[: ips.index(0)] if 0 in ips else ips), 0

            user, user_err = stack_of(k.user_stack, k.user_error)
            kern, kern_err = stack_of(k.kernel_stack, k.kernel_error)
            expected.append(RawSample(cgroup_id=k.cgroup_id, tgid=k.tgid, pid=k.pid,
                                      comm=k.comm.decode("utf-8", "replace"), user_stack=user, kernel_stack=kern,
                                      user_error=user_err, kernel_error=kern_err, count=2**64 - 1 - n,
                                      python_stack=py_stacks.get(k.python_stack, ()), python_error=k.python_error))
        readers = (_BatchReader(stack_map.spec, 2), _BatchReader(count_map.spec, 3))
        python: dict[int, tuple[int, ...]] = {}
        for ids, rows, n in _BatchReader(py_map.spec, 8).take(py_map):  # a bucket's entries fit in one batch
            _decode_py_stacks(ids, rows, n, python)
        assert python == py_stacks
        got = _read_set(readers[0], stack_map, readers[1], count_map, {}, python)
        assert _read_set(readers[0], stack_map, readers[1], count_map, {}) == []  # emptied
    finally:
        os.close(stack_map.fd)
        os.close(count_map.fd)
        os.close(py_map.fd)
    assert all(type(s) is RawSample for s in got)
    assert Counter(got) == Counter(expected)
    assert {s.comm for s in got} >= {"abcdefghijklmnop", "\ufffdbad\ufffd", "", "ab"}
    by_pid = {s.pid: s for s in got}
    assert len(by_pid[101].user_stack) == len(by_pid[200].user_stack) == STACK_HEAD
    assert by_pid[2**32 - 2].user_stack == (0x40_2000, 0x40_2001) and len(by_pid[2**32 - 2].kernel_stack) == 3
    assert by_pid[200].kernel_error == -errno.ENOENT and by_pid[102].user_stack == (0x40_1000,)


def test_a_bucket_larger_than_the_batch_is_drained_whole() -> None:
    """The kernel returns whole hash buckets and answers ENOSPC, taking nothing, when the first bucket holds
    more entries than the batch: the reader grows its buffers and goes on. 16 entries in 16 buckets share one
    in all but ~1e-6 of the kernel's hash seeds, and a batch of one entry then meets it."""
    m = create_map(MapSpec("counts_t", MAP_HASH, 8, 8, 16))
    try:
        for k in range(16):
            m.update(ct.c_uint64(k), ct.c_uint64(1000 + k))
        got: dict[int, int] = {}
        for keys, values, n in _BatchReader(m.spec, 1).take(m):
            got.update(zip(memoryview(keys).cast("Q")[:n], memoryview(values).cast("Q")[:n], strict=True))
        assert got == {k: 1000 + k for k in range(16)}
        assert list(_BatchReader(m.spec, 16).take(m)) == []  # emptied
    finally:
        os.close(m.fd)


def test_a_batch_refuses_buffers_the_kernel_would_overrun() -> None:
    m = create_map(MapSpec("counts_t", MAP_HASH, ct.sizeof(SampleKey), 8, 4))
    try:
        token = ct.c_uint32(0)
        size = ct.sizeof(SampleKey)
        for keys, values in ((bytearray(size + 1), bytearray(64)), (bytearray(2 * size), bytearray(15)),
                             (bytearray(0), bytearray(8))):
            with pytest.raises(ValueError, match="batch buffers"):
                m.lookup_and_delete_batch(keys, values, None, token)
        assert m.lookup_and_delete_batch(bytearray(2 * size), bytearray(16), None, token) == (0, True)
    finally:
        os.close(m.fd)


def test_new_processes_are_read_once_and_announced_to_the_unwinder_first() -> None:
    """The watcher reads each new process once (NewProcess: start time, executable VMAs) before any callback,
    hands the unwind loader its batch first (a queue put: its tables are not held up by the others), then the
    agent's callback, then Python detection; a process sampled here arrives with its read."""
    from profiler.procmaps import NewProcess, start_time

    got: list[NewProcess] = []
    p = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        with Sampler(FREQ, pids=[p.pid], unwind="auto", python_frames=True) as s:
            s.watch_new_processes(got.extend)
            assert s.unwinder is not None
            assert s._new_process_callbacks[:2] == [s.unwinder.announce, got.extend]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not [n for n in got if n.pid == p.pid]:
                time.sleep(0.1)
        new = next(n for n in got if n.pid == p.pid)
        assert new.starttime == start_time(p.pid)
        entries = new.entries()
        assert entries is not None and any(e.path.endswith("/dash") or e.path.endswith("/sh") for e in entries)
    finally:
        p.kill()
        p.wait()
