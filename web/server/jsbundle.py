"""The page's ES modules (web/server/static/*.js) joined into one script, for inlining into the page.

Ten module files are ten requests to a Python server and ten compiles before the page can start; as one script
in the HTML they cost neither a round trip nor server time while the first graph's answer is being sent. Our
modules use a small subset of the syntax (`import { a, b as c } from "./x.js";` and `export` before a
declaration), so the join is a plain rewrite, no build tool: each module becomes a function scope that
returns its exports, run in import order, its imports read from the modules before it. Anything else
(another import form, `export default`, an import cycle) is refused at start-up, never half-translated.
"""

from __future__ import annotations

import re
from pathlib import Path

_IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([\w.-]+\.js)";[ \t]*$', re.M)
_EXPORT = re.compile(r"^export\s+((?:async\s+)?function\*?|const|let|class)\s+([A-Za-z_$][\w$]*)", re.M)
_OTHER_MODULE_SYNTAX = re.compile(r"^\s*(import\b(?!\s*\()|export\b)", re.M)
_NAME = re.compile(r"^[A-Za-z_$][\w$]*$")


class BundleError(ValueError):
    """A static module uses syntax the join does not translate (raised when the server starts)."""


def _imports(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    for m in _IMPORT.finditer(text):
        names = []
        for part in m.group(1).split(","):
            part = part.strip()
            if not part:
                continue
            src, _, local = part.partition(" as ")
            src, local = src.strip(), (local or src).strip()
            if not (_NAME.match(src) and _NAME.match(local)):
                raise BundleError(f"cannot read the import of {part!r}")
            names.append((src, local))
        out.append((m.group(2), names))
    return out


def _module(name: str, text: str) -> tuple[str, list[str]]:
    """The module as a function body returning its exports, and the modules it imports."""
    deps = _imports(text)
    body = _IMPORT.sub("", text)
    exports = [m.group(2) for m in _EXPORT.finditer(body)]
    body = _EXPORT.sub(lambda m: f"{m.group(1)} {m.group(2)}", body)
    left = _OTHER_MODULE_SYNTAX.search(body)
    if left:
        raise BundleError(f"{name}: cannot translate {body[left.start():left.start() + 60]!r}")
    reads = "".join(
        f"  const {{ {', '.join(s if s == loc else f'{s}: {loc}' for s, loc in names)} }} = modules[{dep!r}];\n"
        for dep, names in deps)
    code = (f"modules[{name!r}] = (() => {{\n{reads}{body}\n"
            f"  return {{ {', '.join(exports)} }};\n}})();\n")
    return code, [dep for dep, _ in deps]


def bundle(static: Path, entry: str) -> str:
    """`entry` and every module it imports (transitively), dependencies first, as one module script."""
    done: dict[str, str] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise BundleError(f"import cycle through {name}")
        visiting.add(name)
        code, deps = _module(name, (static / name).read_text(encoding="utf-8"))
        for dep in deps:
            visit(dep)
        visiting.discard(name)
        done[name] = code

    visit(entry)
    return ("// web/server/static's modules joined by web/server/jsbundle.py; the sources are the files.\n"
            "const modules = {};\n" + "".join(done.values()))
