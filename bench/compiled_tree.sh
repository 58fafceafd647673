#!/usr/bin/env bash
# A copy of this checkout's committed tree with the drain's hot modules compiled by mypyc (no source change
# but one: Frame.__init__ sets its slots with object.__setattr__, which mypyc compiles; the pure-Python
# tree keeps its faster descriptor writes). For measuring what compiled code gives the drain thread:
#
#     bash bench/compiled_tree.sh /work/tmp/compiled          # ~1 min: gcc, mypyc from .venv
#     (cd /work/tmp/compiled && .venv/bin/python bench/drain_replay.py --drains-file DRAINS \
#         --baseline "$OLDPWD" --rounds 10 --paired --ns)
#
# The copy uses this checkout's .venv (a symlink); its compiled modules (*.so beside the .py) are imported
# first because the replay puts the copy first on sys.path. Not a product build: nothing installs it.
set -euo pipefail
dest=${1:?usage: bench/compiled_tree.sh DEST}
here=$(cd "$(dirname "$0")/.." && pwd)
modules=(podflame/model.py profiler/agent.py profiler/pyframes.py podflame/pprof.py symbolizer/core.py
         symbolizer/cache.py symbolizer/resolve.py symbolizer/normalize.py profiler/metrics.py profiler/pidlabel.py
         profiler/python/code.py symbolizer/elf.py symbolizer/diskcache.py)
[ -e "$dest" ] && { echo "$dest exists" >&2; exit 1; }
mkdir -p "$dest"
git -C "$here" archive HEAD | tar -x -C "$dest"
ln -s "$here/.venv" "$dest/.venv"
cd "$dest"
"$here/.venv/bin/python" - <<'PY'
import re
from pathlib import Path
p = Path("podflame/model.py")
s = p.read_text()
names = ("address", "mapping", "kind", "lines", "reason")
body = "".join(f'        object.__setattr__(self, "{n}", {n})\n' for n in names)
body += '        object.__setattr__(self, "_hash", hash((address, mapping, kind, lines, reason)))\n'
s, n = re.subn(r"        _set_address\(self, address\)\n(?:        _set_\w+\(self, .*\)\n)+", body, s)
assert n == 1, "Frame.__init__ changed: update bench/compiled_tree.sh"
s, n = re.subn(r"\n_set_address, _set_mapping.*?\n    Frame\.__dict__.*?\)\)\n", "\n", s, flags=re.S)
assert n == 1, "the Frame setters changed: update bench/compiled_tree.sh"
p.write_text(s)
PY
printf '[mypy]\nignore_missing_imports = True\n' > mypyc.ini
"$here/.venv/bin/mypyc" --config-file mypyc.ini "${modules[@]}" > mypyc.log 2>&1 || { tail -20 mypyc.log >&2; exit 1; }
rm -rf build
echo "compiled ${#modules[@]} modules into $dest"
