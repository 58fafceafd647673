"""The dependency rule, enforced: every module's imports (top-level and inside functions) point down.

    podflame.model / errors / pprof / folded, bpf            (0: the model and the wire codec)
      <- profiler, symbolizer, web.store                     (1: the node's stages; the store)
      <- web.query, web.normalize                            (2: queries over the store; wire -> store rows)
      <- web.server                                          (3: Flask)
      <- podflame.cli, podflame.entry                        (4: the command line)

Besides the ranks: the node side (profiler, symbolizer) and the server (web) never import each other,
symbolizer does not import profiler, the store does not import the wire codec (podflame.pprof), and
only the BPF compile child (profiler/bpfcompile.py) imports bcc. The checker runs on the real tree and,
to show it can fail, on planted violations (a fake import graph and a module written to a temp tree).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("podflame", "profiler", "symbolizer", "web", "bpf")

# Longest prefix first wins.
RANKS: tuple[tuple[str, int], ...] = (
    ("podflame.cli", 4), ("podflame.entry", 4),
    ("web.server", 3),
    ("web.query", 2), ("web.normalize", 2),
    ("web.store", 1), ("profiler", 1), ("symbolizer", 1), ("web", 1),
    ("podflame", 0), ("bpf", 0),
)
# (importer prefix, imported prefix) pairs that are forbidden whatever the ranks say.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("profiler", "web"), ("symbolizer", "web"), ("web", "profiler"), ("web", "symbolizer"),
    ("symbolizer", "profiler"), ("web.store", "podflame.pprof"),
)
BCC_IMPORTERS = {"profiler.bpfcompile"}

# module -> [(imported module, enclosing top-level function or "")]
Graph = dict[str, list[tuple[str, str]]]


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def rank(module: str) -> int | None:
    for prefix, r in RANKS:
        if _matches(module, prefix):
            return r
    return None  # stdlib or third party


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, known: set[str]) -> list[tuple[str, str]]:
    """Absolute names a module imports, each with the top-level function it is imported in ("" at module level).
    `from pkg import name` counts as `pkg.name` when that is a module, else as `pkg`."""
    out: list[tuple[str, str]] = []
    package = module if module in known and any(k.startswith(module + ".") for k in known) else \
        module.rpartition(".")[0]

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            f = func or (child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                         and node is tree else "")
            if isinstance(child, ast.Import):
                out.extend((a.name, f) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    out.append((sub if sub in known else base, f))
            visit(child, f)

    tree = ast.parse(source)
    visit(tree, "")
    return out


def build_graph(root: Path, packages: Iterable[str] = PACKAGES) -> Graph:
    files = [p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))]
    known = {module_name(p, root) for p in files}
    return {module_name(p, root): imports_of(p.read_text(), module_name(p, root), known) for p in files}


def violations(graph: Graph) -> list[str]:
    bad = []
    for module, imported in graph.items():
        mine = rank(module)
        for target, _func in imported:
            if target == "bcc" or target.startswith("bcc."):
                if module not in BCC_IMPORTERS:
                    bad.append(f"{module} imports {target}: only {', '.join(sorted(BCC_IMPORTERS))} may import bcc")
                continue
            theirs = rank(target)
            if mine is None or theirs is None:
                continue
            if theirs > mine:
                bad.append(f"{module} (layer {mine}) imports {target} (layer {theirs}): an upward import")
            for a, b in FORBIDDEN:
                if _matches(module, a) and _matches(target, b) and not _matches(module, b):
                    bad.append(f"{module} imports {target}: {a} must not import {b}")
    return bad


def test_the_tree_follows_the_dependency_rule() -> None:
    graph = build_graph(ROOT)
    assert len(graph) > 60 and "web.store.sqlite" in graph and "podflame.cli" in graph
    assert violations(graph) == []


def test_the_checker_sees_lazy_imports_and_from_imports_of_submodules() -> None:
    graph = build_graph(ROOT)
    assert ("profiler.service", "agent") in graph["podflame.cli"]  # inside the `agent` command
    assert ("web.store.base", "") in graph["web.normalize"]
    assert ("podflame.pprof", "") in graph["web.normalize"]


def test_planted_violations_in_a_fake_graph_fail() -> None:
    fake: Graph = {
        "web.store.sqlite": [("web.query.merge", ""), ("podflame.pprof", "")],  # upward; wire types in the store
        "profiler.agent": [("web.store.base", "")],  # node side importing the server
        "web.query.flamegraph": [("bcc", "render")],  # bcc outside the compile child
        "profiler.bpfprog": [("bcc.libbcc", "image_from_bcc")],  # even inside a function: the child's alone
        "podflame.model": [("podflame.cli", "")],  # the bottom importing the top
        "profiler.bpfcompile": [("bcc", "_compile")],  # allowed
        "web.server.api": [("web.query.merge", ""), ("flask", "")],  # allowed
    }
    found = violations(fake)
    assert len(found) == 6, found
    assert any("web.store.sqlite (layer 1) imports web.query.merge (layer 2)" in v for v in found)
    assert any("web.store must not import podflame.pprof" in v for v in found)
    assert any("profiler must not import web" in v for v in found)
    assert sum("may import bcc" in v for v in found) == 2
    assert any("podflame.model (layer 0) imports podflame.cli (layer 4)" in v for v in found)


def test_a_planted_module_in_a_real_tree_fails(tmp_path: Path) -> None:
    """The same checker over files: a copy of two real packages plus one module that imports upward,
    lazily, inside a function (the kind of import a reviewer misses)."""
    import shutil

    for pkg in ("podflame", "web"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("static", "templates"))
    assert violations(build_graph(tmp_path, ("podflame", "web"))) == []
    (tmp_path / "web" / "store" / "planted.py").write_text(
        "def later():\n    from web.server import api\n    from ..query import merge\n    return api, merge\n")
    found = violations(build_graph(tmp_path, ("podflame", "web")))
    assert sorted(found) == [
        "web.store.planted (layer 1) imports web.query.merge (layer 2): an upward import",
        "web.store.planted (layer 1) imports web.server.api (layer 3): an upward import",
    ]
