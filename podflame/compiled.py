"""The agent's hot modules compiled by mypyc, imported in place of their source only while that source is unchanged.

The drain thread (build_profiles, encode, the symbolizer's caches) is many small Python costs per sample; the same
source compiled by mypyc runs it in ~0.7x the CPU (docs/benchmarks.md, stops 24 and 25). `scripts/compile.py`
(run by scripts/setup.sh and the agent image's build) writes the compiled modules into `podflame/_compiled/`
with a manifest: the modules, the group library mypyc links them into, and the size, mtime and SHA-256 of every
project source they were compiled from (each compiled module and the project modules it imports, transitively:
the types mypyc compiled against).

The compiled files do not sit beside the `.py` files (where Python would import them first, and an edited `.py`
would be silently shadowed by a stale one): a finder installed by the packages' `__init__` serves them, and only
when every recorded source is unchanged (a stat per file; a hash only when the stat moved). Otherwise, or when the
library fails to load, or with PODFLAME_COMPILE=0, every module comes from source, after one log line saying why.
The group is all or nothing: compiled modules call each other's native functions and classes directly, so one
module from source beside compiled others would be a second `Frame` class.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

# Every process imports this (the packages' __init__): stdlib modules the interpreter has loaded anyway, the rest
# (importlib.util, json, logging, hashlib) only when needed. Paths are strings for the same reason.
DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_compiled")
MANIFEST = "manifest.json"
ROOT = os.path.dirname(os.path.dirname(DIRECTORY))  # the folder holding podflame/ (a checkout, site-packages)
_PACKAGES = ("podflame.", "profiler.", "symbolizer.")  # where compiled modules may be (scripts/compile.py's HOT)
ENV = "PODFLAME_COMPILE"  # "0": never build (scripts/setup.sh) nor import (here) compiled modules


def source_digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def source_record(path: str) -> list[int | str]:
    """What the manifest keeps of one source: [size, mtime_ns, sha256]."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, source_digest(path)]


def changed_source(sources: dict[str, list[int | str]], root: str = ROOT) -> str | None:
    """The first recorded source (relative path) that differs from what was compiled, or None.

    A stat per file; a file whose size or mtime moved (a checkout, a copy) is hashed, and only a different hash
    counts."""
    for rel, (size, mtime_ns, digest) in sources.items():
        path = os.path.join(root, rel)
        try:
            st = os.stat(path)
            if st.st_size == size and st.st_mtime_ns == mtime_ns:
                continue
            if st.st_size == size and source_digest(path) == digest:
                continue
        except OSError:
            pass
        return rel
    return None


class Status:
    """What this process runs: `compiled` True once the group was accepted; `reason` why not otherwise."""

    def __init__(self) -> None:
        self.compiled = False
        self.modules: tuple[str, ...] = ()
        self.reason = "not decided: no compiled module imported yet"

    def describe(self) -> str:
        if self.compiled:
            return f"{len(self.modules)} hot modules compiled by mypyc ({', '.join(self.modules)})"
        return f"the pure-Python source ({self.reason})"


status = Status()


class _Finder:  # a meta path finder (no importlib.abc import at every start)
    """Serves the manifest's modules from DIRECTORY once the group is accepted; None (the source) otherwise.

    The manifest is read at the first import under a compiled package, not at `import podflame`."""

    def __init__(self) -> None:
        self._manifest: dict = {}
        self._names: frozenset[str] | None = None
        self._accepted: bool | None = None

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_PACKAGES) and not fullname.endswith("__mypyc"):
            return None
        if self._names is None:
            self._manifest = read_manifest() or {"modules": {}, "library": None}
            self._names = frozenset(self._manifest["modules"]) | {self._manifest["library"]}
        if fullname not in self._names:
            return None
        if self._accepted is None:
            self._accepted = self._decide()
        if not self._accepted:
            return None
        import importlib.util

        file = os.path.join(DIRECTORY, self._manifest["modules"].get(fullname) or self._manifest["library_file"])
        return importlib.util.spec_from_file_location(
            fullname, file, loader=importlib.machinery.ExtensionFileLoader(fullname, file))

    def _decide(self) -> bool:
        manifest = self._manifest
        reason = None
        if manifest.get("soabi") != _soabi():
            reason = f"compiled for {manifest.get('soabi')}, this interpreter is {_soabi()}"
        elif (rel := changed_source(manifest["sources"])) is not None:
            reason = f"{rel} changed since it was compiled: run scripts/setup.sh to rebuild"
        else:
            reason = self._load_library()
        if reason is not None:
            status.reason = f"compiled modules refused: {reason}"
            import logging

            logging.getLogger(__name__).warning("podflame: %s; running the pure-Python source", status.reason)
            return False
        status.compiled, status.modules, status.reason = True, tuple(sorted(manifest["modules"])), ""
        return True

    def _load_library(self) -> str | None:
        """Loads mypyc's group library (all the compiled code; no module body runs yet): a failure is a reason."""
        import importlib.util

        name = self._manifest["library"]
        file = os.path.join(DIRECTORY, self._manifest["library_file"])
        try:
            loader = importlib.machinery.ExtensionFileLoader(name, file)
            spec = importlib.util.spec_from_file_location(name, file, loader=loader)
            assert spec is not None
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            sys.modules[name] = module
        except (ImportError, OSError) as e:
            return f"{file} does not load ({e})"
        return None


def _soabi() -> str:
    return str(importlib.machinery.EXTENSION_SUFFIXES[0])


def read_manifest(directory: str = DIRECTORY) -> dict | None:
    import json

    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def install() -> None:
    """Puts the finder first on sys.meta_path (once): called by the packages' `__init__`, before any hot module."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    if os.environ.get(ENV) == "0":
        status.reason = f"{ENV}=0"
        return
    if not os.path.isfile(os.path.join(DIRECTORY, MANIFEST)):
        status.reason = "not built: scripts/setup.sh compiles them (needs mypy and gcc)"
        return
    sys.meta_path.insert(0, _Finder())
