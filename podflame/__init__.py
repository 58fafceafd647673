"""podflame: podflame."""

from podflame import compiled as _compiled

_compiled.install()  # before any hot module is imported: they may come compiled (podflame/compiled.py)
