"""Helpers for tests that run real processes: build C workloads, kubelet-shaped cgroups, a live server."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
WORKLOADS = Path(__file__).parent / "workloads"
CGROUP2_ROOT = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified/cgroup.procs").exists() \
    else Path("/sys/fs/cgroup")


def dwarf_libpython() -> Path | None:
    """A libpython3.11.so.1.0 with full DWARF: the symbolizer tests' big real input.

    pyenv's python3.11 (the default python3 on these machines) links one; the venv's interpreter is
    Debian's, whose libpython is stripped, so look at every python3.11 on PATH, not at our own.
    """
    probe = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    for d in os.get_exec_path():
        exe = Path(d) / "python3.11"
        if not os.access(exe, os.X_OK):
            continue
        got = subprocess.run([str(exe), "-c", probe], capture_output=True, text=True)
        lib = Path(got.stdout.strip()) / "libpython3.11.so.1.0"
        if got.returncode == 0 and lib.is_file() and _has_section(lib, ".debug_info"):
            return lib
    return None


def _has_section(path: Path, name: str) -> bool:
    out = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True).stdout
    return f" {name} " in out


def build_c(name: str, out_dir: Path, *flags: str, cc: str = "gcc") -> Path:
    """Compile tests/workloads/<name> into out_dir (tests build fixtures from source, never commit them)."""
    src = WORKLOADS / name
    exe = out_dir / src.stem
    subprocess.run([cc, "-O1", "-g", "-fno-omit-frame-pointer", *flags, "-o", str(exe), str(src)], check=True)
    return exe


@dataclass
class PodCgroup:
    path: Path  # absolute, under the v2 root
    pod_uid: str
    container_id: str

    @property
    def relative(self) -> str:
        return "/" + str(self.path.relative_to(CGROUP2_ROOT))

    @property
    def inode(self) -> int:
        return os.stat(self.path).st_ino


@contextmanager
def kubelet_cgroup(qos: str = "burstable") -> Iterator[PodCgroup]:
    """A v2 cgroup shaped like the kubelet's systemd-driver path for a containerd container.

    Guaranteed pods sit directly under kubepods.slice (`kubepods-pod<uid>.slice`); the other QoS
    classes have their own slice in between.
    """
    pod_uid = str(uuid.uuid4())
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    top = CGROUP2_ROOT / "kubepods.slice"
    uid = pod_uid.replace("-", "_")
    if qos == "guaranteed":
        parents = [top]
        pod = top / f"kubepods-pod{uid}.slice"
    else:
        parents = [top, top / f"kubepods-{qos}.slice"]
        pod = parents[-1] / f"kubepods-{qos}-pod{uid}.slice"
    leaf = pod / f"cri-containerd-{container_id}.scope"
    created = [d for d in (*parents, pod, leaf) if not d.exists()]
    leaf.mkdir(parents=True, exist_ok=True)
    try:
        yield PodCgroup(leaf, pod_uid, container_id)
    finally:
        # a deleted pod's processes die, as the kubelet's do: a workload's child that outlived its test (a PID
        # namespace's init when its unshare was killed) kept running orphaned and loaded every later test
        with suppress(OSError):
            (leaf / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and "populated 1" in _read(leaf / "cgroup.events"):
            time.sleep(0.01)
        for d in reversed(created):
            for pid in (d / "cgroup.procs").read_text().split():
                with suppress(OSError):
                    (CGROUP2_ROOT / "cgroup.procs").write_text(pid)
            _rmdir(d)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _rmdir(d: Path) -> None:
    with suppress(OSError):
        d.rmdir()


def spawn_in_cgroup(cgroup: Path, argv: list[str]) -> subprocess.Popen:
    """Start argv already inside `cgroup`, so its very first sample is attributed there."""
    return subprocess.Popen(["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *argv])


@contextmanager
def live_server(data_dir: Path) -> Iterator[str]:
    """The real Flask app on a real socket (127.0.0.1, a free port), in a thread."""
    from werkzeug.serving import make_server

    from web.server.app import create_app

    server = make_server("127.0.0.1", 0, create_app({"DATA_DIR": str(data_dir)}), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def run_in_cgroup(cgroup: Path, argv: list[str]) -> resource.struct_rusage:
    """Run argv to completion inside `cgroup`; its CPU usage (it must exit 0)."""
    proc = spawn_in_cgroup(cgroup, argv)
    _, status, usage = os.wait4(proc.pid, 0)
    assert status == 0, f"{argv} exited with status {status}"
    return usage


def with_agent(url: str, frequency: int, work: Callable[[], T], *, interval: float = 2.0, unwind: str = "fp",
               samplers: list[Any] | None = None) -> T:
    """The real agent (sampler, symbolizer, uploader) shipping to `url` while `work()` runs.

    On return the agent has made its final drain and every batch has landed on the server. `unwind`: the
    Sampler's mode (the library's default is "fp"; `podflame agent` and `up` run "auto", tables). `samplers`
    gets the agent's Sampler before `work()` runs, for a test that waits on its state (the unwind loader's).
    """
    from profiler.agent import Agent, create_context
    from profiler.sampler import Sampler
    from profiler.upload import Uploader
    from symbolizer import Symbolizer

    ctx = create_context("test-node")
    sampler = Sampler(frequency, unwind=unwind)
    if samplers is not None:
        samplers.append(sampler)
    uploader = Uploader(url, node=ctx.node)
    agent = Agent(sampler, ctx, Symbolizer(ctx.maps), uploader, interval=interval)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        return work()
    finally:
        agent.stop()
        thread.join(timeout=30)
        assert uploader.flush(30), "the agent's batches did not all land"
        uploader.close()
        sampler.close()

