"""BPF C sources, compiled at run time by BCC (configured with -D cflags, never edited as text)."""

from pathlib import Path

SOURCE_DIR = Path(__file__).parent
