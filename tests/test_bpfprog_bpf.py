"""The compiled-program cache against the real kernel: compile once with BCC in a child process, later
starts load the kept bytecode without BCC, and anything wrong with a kept image means compiling again, never failing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler.bpfcompile import CompileError, compile_in_child
from profiler.bpfprog import FORMAT, ImageCache
from profiler.sampler import Sampler
from tests.test_sampler_bpf import (  # noqa: F401  (fixtures)
    FREQ,
    Workload,
    assert_lossless,
    burn_binary,
    sample_until_exit,
    samples_of,
    spawn,
    total,
)

pytestmark = pytest.mark.bpf
ROOT = Path(__file__).resolve().parent.parent

# Samples one pid with the cached image in a fresh interpreter and says what was loaded into it.
CHILD = """
import json, sys, time
from pathlib import Path
from profiler.bpfcompile import CompileError, compile_in_child
from profiler.bpfprog import ImageCache
from profiler.sampler import Sampler
pid = int(sys.argv[1])
started = time.process_time()
sampler = Sampler(99, pids=[pid], image_cache=ImageCache(Path(sys.argv[2])))
start_cpu = time.process_time() - started
print("ready", flush=True)
sys.stdin.readline()  # the parent reaped the workload
got = sum(s.count for s in sampler.drain().samples if s.tgid == pid)
maps = Path("/proc/self/maps").read_text()
hwm = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print(json.dumps({"compiled": sampler.compiled, "compile_seconds": sampler.compile_seconds, "samples": got,
                  "bcc_imported": "bcc" in sys.modules, "libbcc_mapped": "libbcc" in maps,
                  "llvm_mapped": "libLLVM" in maps, "peak_rss_kb": hwm, "start_cpu_s": start_cpu}))
sampler.close()
"""


def _images(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json"))


def _fill(cache: Path) -> Path:
    with Sampler(FREQ, image_cache=ImageCache(cache)) as sampler:
        assert sampler.compiled and sampler.compile_seconds > 0
    (image,) = _images(cache)
    return image


def _sample_in_child(spawn, cache: Path) -> dict:  # noqa: F811
    """Start a sampler in a fresh interpreter, sample a workload with it, and report on that process."""
    work: Workload = spawn(2.0, 2)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(work.pid), str(cache)], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    work.go()
    deadline = time.monotonic() + 30
    while not work.poll():
        assert time.monotonic() < deadline, "workload did not finish"
        time.sleep(0.1)
    child.stdin.write("done\n")
    child.stdin.flush()
    got = json.loads(child.stdout.readline())
    assert child.wait(30) == 0
    assert_lossless(got["samples"], work, 2.0, 2)
    return got


def test_compiles_once_in_a_child_then_starts_from_the_cached_image(tmp_path: Path, spawn) -> None:  # noqa: F811
    cache = tmp_path / "bpf"
    first = _sample_in_child(spawn, cache)
    assert first["compiled"] is True and first["compile_seconds"] > 0
    # BCC compiled in a child process that exited: its Python package, libbcc and LLVM never entered
    # the sampler's process, whose peak RSS stays far below the compiler's (~130-170 MB).
    assert not first["bcc_imported"] and not first["libbcc_mapped"] and not first["llvm_mapped"], first
    assert first["peak_rss_kb"] < 80_000, first
    (image,) = _images(cache)
    assert cache.stat().st_mode & 0o777 == 0o700 and image.stat().st_mode & 0o777 == 0o600

    again = _sample_in_child(spawn, cache)
    assert again["compiled"] is False and again["compile_seconds"] == 0
    assert not again["bcc_imported"] and not again["libbcc_mapped"] and not again["llvm_mapped"], again
    assert again["peak_rss_kb"] < 80_000, again
    # Loading (the verifier's work on the walker programs included) is far below an in-process compile
    # (~1.3 s of BCC + LLVM); the bound is loose because the verifier's CPU grows with the host's load.
    assert again["start_cpu_s"] < 1.5, again
    assert _images(cache) == [image]  # nothing rewritten


def test_a_compile_error_reports_the_compilers_messages(tmp_path: Path) -> None:
    broken = tmp_path / "broken.bpf.c"
    broken.write_text("int on_sample(void *ctx) { return undeclared_thing; }\n")
    with pytest.raises(CompileError) as e:
        compile_in_child(broken, "on_sample", [], {})
    assert "undeclared_thing" in str(e.value) and "exit status 1" in str(e.value)


def test_a_corrupt_or_unsafe_cached_image_is_compiled_again(tmp_path: Path, spawn,  # noqa: F811
                                                           caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "bpf"
    image = _fill(cache)

    image.write_text('{"format": 1, "insns": "ff')  # torn or tampered
    with caplog.at_level(logging.WARNING, "podflame.bpfprog"), Sampler(FREQ, image_cache=ImageCache(cache)) as s:
        assert s.compiled
    assert "ignoring the cached BPF program" in caplog.text
    assert json.loads(image.read_text())["format"] == FORMAT  # replaced by a good one

    caplog.clear()
    image.chmod(0o666)  # anyone could have written this bytecode: never load it
    with caplog.at_level(logging.WARNING, "podflame.bpfprog"), Sampler(FREQ, image_cache=ImageCache(cache)) as s:
        assert s.compiled
    assert "writable by someone other" in caplog.text
    assert image.stat().st_mode & 0o777 == 0o600

    cache.chmod(0o777)
    with Sampler(FREQ, image_cache=ImageCache(cache)) as s:
        assert s.compiled  # neither read from nor written to a directory others can write
    cache.chmod(0o700)
    with Sampler(FREQ, image_cache=ImageCache(cache)) as s:
        assert not s.compiled

    # The sampler still samples after every one of those restarts.
    work: Workload = spawn(1.0, 1)
    with Sampler(FREQ, pids=[work.pid], image_cache=ImageCache(cache)) as s:
        assert not s.compiled
        work.go()
        got = total(samples_of(sample_until_exit(s, [work]), work.pid))
    assert_lossless(got, work, 1.0, 1)


def test_an_image_the_kernel_refuses_means_compiling_again(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "bpf"
    image = _fill(cache)
    data = json.loads(image.read_text())
    first_reloc = min(i for i, _ in data["relocations"])
    assert first_reloc > 0
    data["insns"] = "ff" * 8 + data["insns"][16:]  # instruction 0: an opcode that does not exist
    image.write_text(json.dumps(data))
    os.chmod(image, 0o600)
    with caplog.at_level(logging.WARNING, "podflame.sampler"), Sampler(FREQ, image_cache=ImageCache(cache)) as s:
        assert s.compiled
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # this process burns: an idle machine gives nothing else to sample
            pass
        assert sum(x.count for x in s.drain().samples if x.tgid == os.getpid()) > 0
    assert "did not load" in caplog.text and "refused" in caplog.text
