"""Shared test rules: real-system tests skip where the system is missing, except in CI.

CI sets CI=true, PODFLAME_REQUIRE_BPF=1 and PODFLAME_REQUIRE_BROWSER=1: there every skip (a BPF or
browser test, an oracle like go tool pprof, addr2line or readelf missing, the corpus absent) fails the
run instead of passing silently. Kinds of tests, each runnable alone: `bpf`, `browser`, `system` (this
host's tools, privileges or files) and the rest, unit tests (`make unit`: no root, no kernel, no tools).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from web.store.base import Store

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


# Modules whose tests need this host's tools, privileges or files (compilers and binutils as oracles,
# kubectl, root, other processes' /proc, kallsyms): marked `system` here, in one place.
SYSTEM_MODULES = frozenset({
    "test_symbolizer_build", "test_symbolizer", "test_debuginfod", "test_dwarf_features", "test_dwarf_corpus",
    "test_dwarf_libdw", "test_procmaps", "test_cgroups", "test_deploy", "test_agent_memo", "test_symbolizer_metrics",
    "test_corpus", "test_kallsyms", "test_deploy_clickhouse",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        name = module.__name__.rpartition(".")[2] if module is not None else ""
        if name in SYSTEM_MODULES or "corpus" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.system)


def in_ci() -> bool:
    """CI (or a developer asking for CI's rules): no test may skip."""
    return (os.environ.get("CI") == "true" or os.environ.get("PODFLAME_REQUIRE_BPF") == "1"
            or os.environ.get("PODFLAME_REQUIRE_BROWSER") == "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI a skip is a failure: an oracle, a tool or the corpus missing there is a broken CI."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]  # pluggy's Result, untyped in hookwrappers
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {reason}"


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


# -- store backends: one contract suite over each (the ClickHouse one on the real engine, in-process) --

STORE_BACKENDS = ("sqlite", "chdb")


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chDB embeds one server per process, on one path: every ClickHouse store of the run is a database in it."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def chdb_dsn(chdb_dir: Path) -> Iterator[str]:
    """The DSN of a new chDB database, dropped after the test: for tests that open several stores (servers) on it."""
    db = f"t_{uuid.uuid4().hex[:16]}"
    yield f"chdb://{chdb_dir}?database={db}"
    from web.store.clickhouse_transport import ChdbTransport

    t = ChdbTransport(str(chdb_dir))
    t.command(f"DROP DATABASE IF EXISTS {db} SYNC")
    t.close()


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(store_backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[Path], Store]]:
    """`make_store(data_dir)`: a new, empty store of the backend under test (closed, and dropped, after the test)."""
    opened: list[Store] = []

    def make(data_dir: Path) -> Store:
        from web.store.dsn import open_store

        if store_backend == "sqlite":
            store = open_store(None, data_dir)
        else:
            base = request.getfixturevalue("chdb_dir")
            store = open_store(f"chdb://{base}?database=t_{uuid.uuid4().hex[:16]}")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    if store_backend == "chdb" and opened:
        from web.store.clickhouse_transport import ChdbTransport

        cleanup = ChdbTransport(str(request.getfixturevalue("chdb_dir")))
        for store in opened:
            cleanup.command(f"DROP DATABASE IF EXISTS {store.layout.database} SYNC")  # type: ignore[attr-defined]
        cleanup.close()
