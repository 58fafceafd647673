"""web/server/jsbundle.py: the page's modules joined into one script, or a clear refusal at start-up.

The browser tests run the joined script for real (every page they open uses it); these pin the rewrite rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from web.server.jsbundle import BundleError, bundle


def _write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_modules_become_scopes_in_import_order(tmp_path: Path) -> None:
    static = _write(tmp_path, {
        "app.js": 'import { twice as double, LIMIT } from "./b.js";\nimport {\n  Thing,\n} from "./c.js";\n'
                  "console.log(double(LIMIT), new Thing());\n",
        "b.js": 'import { Thing } from "./c.js";\nexport const LIMIT = 3;\nexport function twice(x) { return 2 * x; }\n'
                "const hidden = new Thing();\n",
        "c.js": "export class Thing {}\nexport async function later() {}\n",
    })
    out = bundle(static, "app.js")
    assert out.index("modules['c.js']") < out.index("modules['b.js']") < out.index("modules['app.js']")
    assert "const { twice: double, LIMIT } = modules['b.js'];" in out
    assert "const { Thing } = modules['c.js'];" in out
    assert "return { LIMIT, twice };" in out and "return { Thing, later };" in out
    assert "export" not in out and "import" not in out
    assert "const hidden = new Thing();" in out  # not exported: stays inside b.js's scope


@pytest.mark.parametrize("files, why", [
    ({"app.js": 'import { a } from "./b.js";\n', "b.js": 'import { c } from "./app.js";\nexport const a = 1;\n'},
     "import cycle"),
    ({"app.js": "export default function main() {}\n"}, "cannot translate"),
    ({"app.js": 'import * as b from "./b.js";\n', "b.js": "export const a = 1;\n"}, "cannot translate"),
])
def test_other_module_syntax_is_refused(tmp_path: Path, files: dict[str, str], why: str) -> None:
    with pytest.raises(BundleError, match=why):
        bundle(_write(tmp_path, files), "app.js")


def test_the_page_modules_join() -> None:
    static = Path(__file__).resolve().parent.parent / "web" / "server" / "static"
    out = bundle(static, "app.js")
    for name in ("flamegraph.js", "functions.js", "treebin.js", "canvas.js", "timeexpr.js"):
        assert f"modules['{name}'] = " in out
