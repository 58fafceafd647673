"""The CI rule in tests/conftest.py: under CI a skipped test fails the run; elsewhere it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(
        "import pytest\n\n\ndef test_needs_an_oracle():\n    pytest.skip('go tool pprof is not installed')\n")
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    clean = {k: v for k, v in os.environ.items()
             if k not in ("CI", "PODFLAME_REQUIRE_BPF", "PODFLAME_REQUIRE_BROWSER")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env={**clean, **env}, cwd=tmp_path)


def test_a_skip_fails_under_ci(tmp_path: Path) -> None:
    got = _run(tmp_path, {"CI": "true"})
    assert got.returncode == 1 and "1 failed" in got.stdout, got.stdout
    assert "skipped under CI, where every test must run: Skipped: go tool pprof is not installed" in got.stdout


def test_a_skip_stays_a_skip_elsewhere(tmp_path: Path) -> None:
    got = _run(tmp_path, {})
    assert got.returncode == 0 and "1 skipped" in got.stdout, got.stdout
