"""Shift this process's wall clock by an offset (scripts/at_time.sh): time.time and time.time_ns, which is how
podflame reads the wall clock (web/, profiler/: no datetime.now), move by the nanoseconds in
$PODFLAME_CLOCK_OFFSET_FILE, read at start-up; clockplugin.py changes it during a run and rewrites the file, so a
process started later (an agent, a server) reads the same clock. time.monotonic, sleeps and timeouts stay real
(libfaketime's shifted monotonic clock hangs threading.Event.wait here)."""

import os
import time

_FILE = os.environ.get("PODFLAME_CLOCK_OFFSET_FILE")
if _FILE:
    _real_ns = time.time_ns
    try:
        with open(_FILE) as f:
            _offset = [int(f.read().strip() or 0)]
    except OSError:
        _offset = [0]

    def _time_ns() -> int:
        return _real_ns() + _offset[0]

    def _time() -> float:
        return (_real_ns() + _offset[0]) / 1e9

    def _set(ns: int, path: str = _FILE) -> None:
        _offset[0] = ns
        with open(path + ".tmp", "w") as f:
            f.write(str(ns))
        os.replace(path + ".tmp", path)

    time.time_ns = _time_ns
    time.time = _time
    time.clockshift_set = _set  # type: ignore[attr-defined]
    time.clockshift_real_ns = _real_ns  # type: ignore[attr-defined]
