"""podflame: profiler."""

import podflame  # noqa: F401  (installs the compiled-module finder before any hot module: podflame/compiled.py)
