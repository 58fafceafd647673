"""Shared test rules: real-system tests skip where the system is missing, except in CI.

CI sets PODFLAME_REQUIRE_BPF=1 and PODFLAME_REQUIRE_BROWSER=1 so that a skipped BPF or
browser test fails the run instead of passing silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# ../shared/corpus beside the checkout; a clean clone elsewhere (CI's) finds it by env or at /work.
_CORPUS_PLACES = [Path(p) for p in [os.environ.get("PODFLAME_CORPUS", "")] if p] + [
    ROOT.parent / "shared" / "corpus", Path("/work/shared/corpus")]
CORPUS = next((p for p in _CORPUS_PLACES if p.is_dir()), _CORPUS_PLACES[0])


def pytest_configure(config: pytest.Config) -> None:
    """One compiled-sampler cache per test run (inherited by the agents tests start): the first BPF
    test compiles with BCC, later ones load the cached image, so both paths run; /var/cache stays
    untouched. tests/test_bpfprog_bpf.py drives each path on purpose with caches of its own."""
    if "PODFLAME_BPF_CACHE" not in os.environ:
        import tempfile

        os.environ["PODFLAME_BPF_CACHE"] = tempfile.mkdtemp(prefix="podflame-bpf-cache-")


def _bpf_problem() -> str | None:
    if os.geteuid() != 0:
        return "BPF tests need root"
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        return f"BCC is not importable ({e}); run scripts/setup.sh"
    return None


CHROMIUM = "/usr/bin/chromium"  # Debian's; `playwright install` cannot download browsers here
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def _browser_problem() -> str | None:
    if not shutil.which("chromium") and not Path(CHROMIUM).exists():
        return "Chromium is not installed (Debian package chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


_CHECKS = {"bpf": (_bpf_problem, "PODFLAME_REQUIRE_BPF"), "browser": (_browser_problem, "PODFLAME_REQUIRE_BROWSER")}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, (check, flag) in _CHECKS.items():
        if item.get_closest_marker(marker) and (problem := check()):
            if os.environ.get(flag) == "1":
                pytest.fail(f"{flag}=1 but {problem}", pytrace=False)
            pytest.skip(problem)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """../shared/corpus: real profiles written by other projects."""
    if not CORPUS.is_dir():
        pytest.skip(f"test corpus not found at {', '.join(map(str, _CORPUS_PLACES))} (set PODFLAME_CORPUS)")
    return CORPUS


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium driven by Playwright, one per browser test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
