"""BPF C sources, compiled at run time by BCC (configured with -D cflags, never edited as text)."""

from pathlib import Path

SOURCE_DIR = Path(__file__).parent


def source_with_headers(source: Path) -> bytes:
    """A program's text and every header beside it, for cache keys: a compiled image depends on the
    headers the program includes as much as on its own text."""
    parts = [source.read_bytes()]
    for header in sorted(source.parent.glob("*.h")):
        parts.append(b"\0" + header.name.encode() + b"\0" + header.read_bytes())
    return b"".join(parts)
