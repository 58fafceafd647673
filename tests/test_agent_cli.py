"""`--unwind` and `--python-frames` of `podflame up`, `agent` and `record` reach the Sampler as arguments.

The commands once passed --unwind by setting os.environ["PODFLAME_UNWIND"] for the Sampler to read, which
leaked into everything else in the process (in-process tests included). Here the real commands run up to
the Sampler's construction, where a stand-in records its arguments and the environment it sees, then
stops the command as a host without BPF would (SamplerError, exit status 3). No root, no BPF.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import profiler.sampler
from podflame import cli
from profiler.sampler import SamplerError

ENV_NAMES = ("PODFLAME_UNWIND", "PODFLAME_PYTHON_FRAMES")


class Built:
    """What the stand-in Sampler was given, and the environment at that moment."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], dict[str, str | None]]] = []

    def sampler(self, frequency: int, **kwargs: Any) -> None:
        self.calls.append((kwargs, {k: os.environ.get(k) for k in ENV_NAMES}))
        raise SamplerError("stand-in sampler: stop here")


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Built:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "_require_root", lambda what: None)
    b = Built()
    monkeypatch.setattr(profiler.sampler, "Sampler", b.sampler)
    return b


def run(args: list[str], env: dict[str, str] | None = None) -> None:
    result = CliRunner().invoke(cli.main, args, env=env)
    assert result.exit_code == 3, (result.output, result.exception)  # SystemUnsupported, from the stand-in
    assert "stand-in sampler: stop here" in result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_record_passes_its_options_and_leaves_the_environment_alone(built: Built) -> None:
    run(["record", "--pid", str(os.getpid()), "--duration", "1", "-o", os.devnull, "--unwind", "fp",
         "--python-frames", "off"])
    run(["record", "--pid", str(os.getpid()), "--duration", "1", "-o", os.devnull])
    (first, env1), (second, env2) = built.calls
    assert (first["unwind"], first["python_frames"]) == ("fp", False)
    assert (second["unwind"], second["python_frames"]) == ("auto", True)  # the options' defaults
    assert first["pids"] == [os.getpid()]
    assert env1 == env2 == dict.fromkeys(ENV_NAMES)  # nothing was set for the Sampler to read
    assert all(name not in os.environ for name in ENV_NAMES)


def test_agent_takes_the_environment_as_its_options_defaults_only(built: Built) -> None:
    env = {"PODFLAME_UNWIND": "tables", "PODFLAME_PYTHON_FRAMES": "0"}  # as bench/agent_overhead.py sets it
    run(["agent", "--server", "http://127.0.0.1:9"], env=env)
    run(["agent", "--server", "http://127.0.0.1:9", "--python-frames", "on", "--unwind", "fp"], env=env)
    (from_env, seen), (from_args, _) = built.calls
    assert (from_env["unwind"], from_env["python_frames"]) == ("tables", False)
    assert (from_args["unwind"], from_args["python_frames"]) == ("fp", True)  # an option beats its variable
    assert seen == env  # the variables as the caller set them, not rewritten by the command


def test_up_passes_its_options_and_frees_its_port_when_the_agent_cannot_start(built: Built, tmp_path: Path) -> None:
    port = free_port()
    run(["up", "--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "data"), "--python-frames", "off"])
    ((kwargs, env),) = built.calls
    assert (kwargs["unwind"], kwargs["python_frames"]) == ("auto", False)
    assert env == dict.fromkeys(ENV_NAMES)
    with socket.socket() as s:  # the server that `up` started before the agent was shut down
        s.bind(("127.0.0.1", port))


def test_python_frames_takes_on_or_off(built: Built) -> None:
    result = CliRunner().invoke(cli.main, ["record", "--pid", "1", "--duration", "1", "-o", os.devnull,
                                           "--python-frames", "sometimes"])
    assert result.exit_code == 2 and "--python-frames" in result.output
    assert not built.calls


def test_python_early_reads_reach_the_sampler_as_seconds(built: Built) -> None:
    run(["record", "--pid", str(os.getpid()), "--duration", "1", "-o", os.devnull, "--python-early-reads", "0.1,0.3"])
    run(["agent", "--server", "http://127.0.0.1:9"], env={"PODFLAME_PYTHON_EARLY_READS": "0.2"})
    run(["agent", "--server", "http://127.0.0.1:9"])
    assert [kwargs["python_early_reads"] for kwargs, _ in built.calls] == [(0.1, 0.3), (0.2,), ()]
    for bad in ("soon", "-1", "0.1,0", "0.1,99", "1,2,3,4,5"):
        result = CliRunner().invoke(cli.main, ["record", "--pid", "1", "--duration", "1", "-o", os.devnull,
                                               "--python-early-reads", bad])
        assert result.exit_code == 2 and "--python-early-reads" in result.output, (bad, result.output)
    assert len(built.calls) == 3
