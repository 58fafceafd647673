"""Compiles the agent's hot modules with mypyc into podflame/_compiled/, where podflame/compiled.py finds them.

Run by scripts/setup.sh (and the agent image's build) with the interpreter that will run them, which needs mypy
(the `test` extra) and gcc with Python's headers. Quick when nothing changed: the manifest's sources match. A failed
compile leaves no compiled modules (the source runs) and exits 1 with mypyc's last lines.

    python scripts/compile.py [--root DIR] [--work DIR] [--force]
"""

from __future__ import annotations

import argparse
import ast
import importlib.machinery
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The drain thread's modules (docs/benchmarks.md, stops 24-25): the sample-to-profile path, pprof encoding, the
# symbolizer's caches and lookups. One mypyc group: they call each other natively.
HOT = ("podflame/model.py", "profiler/agent.py", "profiler/pyframes.py", "podflame/pprof.py", "symbolizer/core.py",
       "symbolizer/cache.py", "symbolizer/resolve.py", "symbolizer/normalize.py", "profiler/metrics.py",
       "profiler/pidlabel.py", "profiler/python/code.py", "symbolizer/elf.py", "symbolizer/diskcache.py")
PACKAGES = ("podflame", "profiler", "symbolizer", "web", "bpf")
# What mypyc type-checks with: the project's own settings are for `make lint`; here modules without stubs
# (bcc, cxxfilt...) are Any.
MYPY_INI = "[mypy]\nignore_missing_imports = True\n"


def say(message: str) -> None:
    print(f"[compile] {message}", flush=True)


def _module_name(rel: str) -> str:
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _module_file(root: Path, name: str) -> str | None:
    rel = name.replace(".", "/")
    for candidate in (f"{rel}.py", f"{rel}/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def sources(root: Path, hot: tuple[str, ...] = HOT) -> list[str]:
    """The hot modules and every project module they import, transitively (any import statement, also those
    under TYPE_CHECKING or in functions: mypy reads them all), with their packages' `__init__` files."""
    seen: set[str] = set()
    todo = list(hot)
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        name = _module_name(rel)
        package = name if rel.endswith("__init__.py") else name.rpartition(".")[0]
        parts = name.split(".")
        for i in range(1, len(parts)):
            todo.append(f"{'/'.join(parts[:i])}/__init__.py")
        for node in ast.walk(ast.parse((root / rel).read_text(), rel)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            for imported in names:
                if imported.split(".")[0] in PACKAGES and (file := _module_file(root, imported)):
                    todo.append(file)
    return sorted(seen)


def up_to_date(root: Path, out: Path, files: list[str]) -> bool:
    from podflame.compiled import changed_source, read_manifest

    manifest = read_manifest(str(out))
    return (manifest is not None and manifest.get("soabi") == importlib.machinery.EXTENSION_SUFFIXES[0]
            and sorted(manifest["modules"]) == sorted(_module_name(h) for h in HOT)
            and sorted(manifest["sources"]) == files
            and all((out / f).is_file() for f in [*manifest["modules"].values(), manifest["library_file"]])
            and changed_source(manifest["sources"], str(root)) is None)


def compile_into(root: Path, work: Path, out: Path, files: list[str]) -> bool:
    from podflame.compiled import source_record

    work.mkdir(parents=True, exist_ok=True)
    records = {}
    for rel in files:  # copies that keep their mtime (mypy's cache in `work` stays valid for unchanged ones)
        src, dst = root / rel, work / rel
        records[rel] = source_record(str(src))
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (work / "mypyc.ini").write_text(MYPY_INI)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for old in work.rglob(f"*{suffix}"):  # a previous build's: only this run's may be copied out
        old.unlink()
    say(f"compiling {len(HOT)} hot modules with mypyc (gcc; about a minute): the agent's drain runs them in ~0.7x "
        f"the CPU. PODFLAME_COMPILE=0 skips this")
    started = time.monotonic()
    log = work / "mypyc.log"
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "mypyc", "--config-file", "mypyc.ini", *HOT], cwd=work,
                              stdout=f, stderr=subprocess.STDOUT)
    libraries = list(work.glob(f"*__mypyc{suffix}"))
    modules = {_module_name(h): h.removesuffix(".py") + suffix for h in HOT}
    if done.returncode != 0 or len(libraries) != 1 or not all((work / f).is_file() for f in modules.values()):
        print("".join(log.read_text().splitlines(keepends=True)[-20:]), file=sys.stderr)
        say(f"mypyc failed (exit {done.returncode}; its log: {log})")
        return False
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    for file in [*modules.values(), libraries[0].name]:
        (staging / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / file, staging / file)
    library = libraries[0].name.removesuffix(suffix)
    manifest = {"soabi": suffix, "library": library, "library_file": libraries[0].name, "modules": modules,
                "sources": records}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    say(f"compiled {len(HOT)} modules into {out} in {time.monotonic() - started:.0f} s")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent.parent
    parser.add_argument("--root", type=Path, default=here, help="the tree holding podflame/ (checkout, site-packages)")
    parser.add_argument("--work", type=Path, help="mypyc's work folder (default ROOT/build/mypyc)")
    parser.add_argument("--force", action="store_true", help="compile even when up to date")
    args = parser.parse_args()
    root = args.root.resolve()
    sys.path.insert(0, str(root))
    out = root / "podflame" / "_compiled"
    files = sources(root)
    if not args.force and up_to_date(root, out, files):
        return 0
    if not compile_into(root, (args.work or root / "build" / "mypyc").resolve(), out, files):
        shutil.rmtree(out, ignore_errors=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
