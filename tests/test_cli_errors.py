"""What a new user's mistakes at the command line print: one `Error: ...` line that says what to do and the
documented exit code, never a Python traceback, and never after work that the mistake then throws away."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from podflame import cli

ROOT = Path(__file__).resolve().parent.parent


def _server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from podflame.entry import main; main()", "server", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", ["under a file", "not a database"])
def test_an_unusable_data_directory_is_one_error_line(tmp_path: Path, case: str) -> None:
    if case == "under a file":
        (tmp_path / "afile").write_text("")
        data, why = tmp_path / "afile" / "data", "Not a directory"
    else:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "index.sqlite").write_bytes(b"not sqlite at all" * 300)
        data, why = tmp_path / "data", "file is not a database"
    r = _server("--data", str(data), "--listen", "127.0.0.1:1")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"Error: cannot use {data} as the data directory") and why in r.stderr
    assert "--data" in r.stderr
    if case == "not a database":  # the user's file is left as it was
        assert (data / "index.sqlite").read_bytes() == b"not sqlite at all" * 300


def test_a_taken_port_says_to_pick_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _server("--data", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "pick another with --listen" in r.stderr


def test_record_refuses_an_unwritable_output_before_sampling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The output used to be opened after the capture: `-o /no/such/dir/cpu.pb.gz` sampled for the whole
    --duration and then died with a traceback, losing what it had recorded."""
    import profiler.record

    def capture(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampling started although the output cannot be written")

    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)  # the check under test runs before anything needs root
    monkeypatch.setattr(profiler.record, "record", capture)
    out = tmp_path / "no" / "such" / "dir" / "cpu.pb.gz"
    r = CliRunner().invoke(cli.main, ["record", "--duration", "60", "--pid", "1", "--format", "pprof", "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert f"cannot write {out}: No such file or directory" in r.output


@pytest.mark.parametrize("url", ["localhost:7070", "podflame", "ftp://host:21", "http://", "http://host:port"])
def test_agent_refuses_a_server_that_is_not_an_http_url(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--server localhost:7070` started sampling and then failed every upload ('unknown url type')."""
    import profiler.service

    def start(*args: object, **kwargs: object) -> None:
        raise AssertionError("the agent started although its server URL cannot be used")

    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(profiler.service, "start_agent", start)
    r = CliRunner().invoke(cli.main, ["agent", "--server", url])
    assert r.exit_code == 2, r.output
    assert "Invalid value for '--server'" in r.output and url in r.output


def test_a_failed_record_leaves_an_earlier_output_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening -o early must not truncate it: a capture that fails keeps the user's earlier file, and a file
    the command created for nothing is removed."""
    import profiler.record
    from podflame.errors import SystemUnsupported

    def capture(*args: object, **kwargs: object) -> None:
        raise SystemUnsupported("no BPF here")

    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(profiler.record, "record", capture)
    earlier, new = tmp_path / "earlier.pb.gz", tmp_path / "new.pb.gz"
    earlier.write_bytes(b"an earlier capture")
    for out in (earlier, new):
        r = CliRunner().invoke(cli.main, ["record", "--duration", "1", "--pid", "1", "-o", str(out)])
        assert r.exit_code == 3 and "no BPF here" in r.output
    assert earlier.read_bytes() == b"an earlier capture"
    assert not new.exists()


def test_a_server_on_another_store_says_where_its_data_is(tmp_path: Path) -> None:
    """`--store clickhouse://...` printed "data in ./podflame-data" (a folder it does not use), and nothing while
    it opened the store (chDB: ~10 s at load 7). Said now, without the DSN's password."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = "clickhouse://podflame:hunter2-secret@127.0.0.1:1/profiles"  # nothing listens on port 1
    proc = subprocess.Popen([sys.executable, "-c", "from podflame.entry import main; main()", "server", "--store",
                             dsn, "--data", str(tmp_path / "unused"), "--listen", f"127.0.0.1:{port}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert line.startswith(f"podflame server: listening on http://127.0.0.1:{port}/"), (line, err)
    assert "store clickhouse://podflame:***@127.0.0.1:1/profiles" in line and "data in" not in line, line
    assert "podflame server: opening the store clickhouse://podflame:***@127.0.0.1:1/profiles..." in err
    assert "hunter2" not in line + err


def test_a_bad_address_to_symbolize_names_it() -> None:
    r = CliRunner().invoke(cli.main, ["symbolize", "--binary", sys.executable, "0x401136", "main+0x10"])
    assert r.exit_code == 2
    assert "'main+0x10' is not a hex ELF virtual address (e.g. 0x401136 or 401136)" in r.output
    assert "invalid literal" not in r.output
