"""The hot modules setup compiled (scripts/compile.py) are the ones imported, and only while their source is unchanged.

Each case imports in a fresh interpreter (the finder decides once per process) from a copy of the checkout's packages
with their `_compiled` folder, so a source can be edited or the library broken without touching the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podflame import compiled

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
import profiler.agent, podflame.compiled as c
names = [n for n in c.read_manifest()["modules"]] if c.read_manifest() else ["podflame.model", "profiler.agent"]
for n in names:
    __import__(n)
print(json.dumps({"compiled": c.status.compiled, "reason": c.status.reason,
                  "files": {n: sys.modules[n].__file__ for n in names}}))
"""


def built_manifest() -> dict:
    manifest = compiled.read_manifest()
    if manifest is None:
        if os.environ.get(compiled.ENV) == "0":
            pytest.skip("PODFLAME_COMPILE=0: nothing compiled to test")
        if os.environ.get("CI"):
            pytest.fail("CI runs the compiled modules: scripts/setup.sh should have compiled them")
        pytest.skip("not compiled: run scripts/setup.sh (mypy and gcc)")
    return manifest


def probe(root: Path, **env: str) -> tuple[dict, str]:
    environ = {k: v for k, v in os.environ.items() if k != compiled.ENV}  # on unless PODFLAME_COMPILE=0
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=root, capture_output=True, text=True, check=True,
                          env={**environ, "PYTHONPATH": str(root), **env})
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and their compiled modules; every file's mtime new (a copy, not a checkout)."""
    for package in ("podflame", "profiler", "symbolizer", "bpf"):
        shutil.copytree(ROOT / package, tmp_path / package, copy_function=shutil.copy,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_checkout_imports_its_compiled_modules() -> None:
    manifest = built_manifest()
    result, stderr = probe(ROOT, **{compiled.ENV: "0"})  # the source, whatever is built
    assert not result["compiled"] and all(f.endswith(".py") for f in result["files"].values())
    result, stderr = probe(ROOT)
    assert result["compiled"], result["reason"]
    assert sorted(result["files"]) == sorted(manifest["modules"])
    for name, file in result["files"].items():
        assert file == os.path.join(compiled.DIRECTORY, manifest["modules"][name])
    assert "refused" not in stderr
    assert compiled.changed_source(manifest["sources"]) is None  # what the suite runs is what was compiled


def test_the_suite_itself_runs_the_compiled_modules() -> None:
    """Every other test exercises what the agent runs: the compiled modules (the default), or the source when the
    suite was started with PODFLAME_COMPILE=0. Compiled and source must behave the same (stop 25: a Python stack
    cut at its root merged differently compiled), so CI runs the suite the way the agent runs."""
    import profiler.agent

    manifest = built_manifest()
    if os.environ.get(compiled.ENV) == "0":
        assert not compiled.status.compiled and profiler.agent.__file__.endswith(".py")
        return
    assert compiled.status.compiled, compiled.status.reason
    assert profiler.agent.__file__ == os.path.join(compiled.DIRECTORY, manifest["modules"]["profiler.agent"])


def test_moved_but_unchanged_sources_keep_the_compiled_modules(tree: Path) -> None:
    built_manifest()
    result, stderr = probe(tree)
    assert result["compiled"], result["reason"]
    assert all(f.startswith(str(tree / "podflame" / "_compiled")) for f in result["files"].values())
    assert "refused" not in stderr


def test_an_edited_source_is_refused_with_one_line_and_the_source_runs(tree: Path) -> None:
    manifest = built_manifest()
    edited = tree / "profiler" / "pidlabel.py"  # compiled, imported by profiler.agent
    edited.write_text(edited.read_text() + "\n# edited after the compile\n")
    result, stderr = probe(tree)
    assert not result["compiled"]
    assert "profiler/pidlabel.py changed since it was compiled" in result["reason"]
    assert sorted(result["files"]) == sorted(manifest["modules"])
    assert all(f.startswith(str(tree)) and f.endswith(".py") for f in result["files"].values())
    assert [line for line in stderr.splitlines() if "refused" in line] == [
        f"podflame: {result['reason']}; running the pure-Python source"]


def test_an_edited_import_of_a_compiled_module_is_refused_too(tree: Path) -> None:
    built_manifest()
    edited = tree / "profiler" / "procmaps.py"  # not compiled; the compiled agent was type-checked against it
    edited.write_text(edited.read_text() + "\n")
    result, _ = probe(tree)
    assert not result["compiled"] and "profiler/procmaps.py changed" in result["reason"]


def test_a_library_that_does_not_load_leaves_the_source(tree: Path) -> None:
    manifest = built_manifest()
    (tree / "podflame" / "_compiled" / manifest["library_file"]).write_bytes(b"not an ELF file")
    result, stderr = probe(tree)
    assert not result["compiled"] and "does not load" in result["reason"] and result["reason"] in stderr
    assert all(f.endswith(".py") for f in result["files"].values())


def test_podflame_compile_0_runs_the_source_silently(tree: Path) -> None:
    built_manifest()
    result, stderr = probe(tree, **{compiled.ENV: "0"})
    assert not result["compiled"] and result["reason"] == f"{compiled.ENV}=0"
    assert all(f.endswith(".py") for f in result["files"].values()) and "refused" not in stderr
