"""BPF C sources, compiled at run time by BCC (configured with -D cflags, never edited as text)."""

import re
from pathlib import Path

SOURCE_DIR = Path(__file__).parent

_LOCAL_INCLUDE = re.compile(rb'^#include "([A-Za-z0-9_.]+\.bpf\.h)"[ \t]*$', re.MULTILINE)


def expanded_source(path: Path) -> bytes:
    """`path`'s text with each `#include "x.bpf.h"` of this folder replaced by that file's text.

    BCC rewrites map method calls (`m.lookup(&k)`) only in the main file it compiles: in an included
    file they would compile to calls through function pointers the verifier rejects. So the local
    headers are joined in here, with #line markers that keep clang's messages pointing at the right
    file, and the joined text is what the compiled-image cache key hashes (an edit to a header
    changes the key).
    """
    text = path.read_bytes()
    seen: set[str] = set()

    def inline(m: re.Match[bytes]) -> bytes:
        name = m.group(1).decode()
        if name in seen:
            return b"// " + m.group(0) + b" (already included)"
        seen.add(name)
        line = text.count(b"\n", 0, m.start()) + 2
        body = (path.parent / name).read_bytes()
        return (b'#line 1 "' + name.encode() + b'"\n' + body + b'\n#line ' + str(line).encode()
                + b' "' + path.name.encode() + b'"')

    return _LOCAL_INCLUDE.sub(inline, text)
