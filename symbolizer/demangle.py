"""C++ and Rust demangling through libraries: `cxxfilt` (libstdc++'s abi::__cxa_demangle, what
c++filt and addr2line -C print) and `rust-demangler` (Rust legacy `_ZN..17h<hash>E` and v0 `_R`).

`demangle(name)` never raises and returns the name unchanged when it is not mangled or the library
cannot read it; results are memoized (bounded) because the same names recur in every drain.
"""

from __future__ import annotations

import re
from functools import lru_cache

_libs: tuple | None = None


def _load() -> tuple:
    """(cxxfilt, rust_demangler), imported on the first mangled name: cxxfilt loads libstdc++
    through ctypes, which a C-only binary (libpython) never needs."""
    global _libs
    if _libs is None:
        try:
            import cxxfilt
        except ImportError:  # pragma: no cover - a declared dependency; degrade to mangled names
            cxxfilt = None
        try:
            import rust_demangler
        except ImportError:  # pragma: no cover
            rust_demangler = None
        _libs = (cxxfilt, rust_demangler)
    return _libs


_V0_EMPTY_NAME = re.compile(r"\{(closure|shim):#")
_RUST_LEGACY = re.compile(r"^_ZN.*17h[0-9a-f]{16}E(\.llvm\.\d+)?$")
_RUST_LEGACY_HASH = re.compile(r"::h[0-9a-f]{16}$")


@lru_cache(maxsize=65536)
def demangle(name: str) -> str:
    """Readable name for a mangled C++ (Itanium ABI) or Rust symbol; other names as they are."""
    if not name.startswith(("_Z", "_R", "__Z")):
        return name
    if name.endswith("@plt"):  # a PLT stub (symbolizer.plt): `operator delete[](void*)@plt`, as perf prints it
        return demangle(name[:-4]) + "@plt"
    cxxfilt, rust = _load()
    base, dot, suffix = name.partition(".")  # GCC clones: _Z3fooi.constprop.0 -> foo(int) [clone .constprop.0]
    try:
        if rust is not None and (name.startswith("_R") or _RUST_LEGACY.match(name)):
            # v0 closures and shims without a name: `{closure#0}` as rustc-demangle and DWARF say it (the
            # package writes `{closure:#0}`, so an inlined level and its symbol named one closure two ways)
            # legacy names end in `::h<hash>`, which addr2line -C, perf and rustc-demangle's `{:#}` drop: kept, a
            # function named from its symbol and the same one named from DWARF would be two frames
            return _RUST_LEGACY_HASH.sub("", _V0_EMPTY_NAME.sub(r"{\1#", rust.demangle(name)))
        if cxxfilt is not None:
            out = cxxfilt.demangle(name, external_only=False)
            if out != name:
                return out
            if dot:
                out = cxxfilt.demangle(base, external_only=False)
                if out != base:
                    return f"{out} [clone {dot}{suffix}]"
    except Exception:
        pass
    return name
