"""The agent's threads carry their names into the kernel.

Python before 3.14 leaves every thread with the process's name, so `top -H`, `ps -L` and
/proc/PID/task/TID/comm could not tell the drain from the unwind loader or the new-process watcher;
with the name set, an operator (and bench/agent_overhead.py) reads CPU per thread without a profiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable

_PR_SET_NAME = 15
_COMM_BYTES = 15  # the kernel keeps 16 bytes with the NUL


def os_name(name: str) -> bytes:
    """`podflame-unwind` -> b"pf-unwind": the kernel keeps 15 bytes, so the common prefix is shortened."""
    short = name.removeprefix("podflame-")
    return ("pf-" + short if short != name else name).encode()[:_COMM_BYTES]


def name_current_thread(name: str) -> None:
    """Best effort: a libc without prctl (not Linux) leaves the name as it was."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(os_name(name)), 0, 0, 0)


def daemon_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread (not started) that names its OS thread before it runs `target`."""
    def run() -> None:
        name_current_thread(name)
        target()

    return threading.Thread(target=run, name=name, daemon=True)
