"""Where to open the file behind a mapping, and what identifies it.

A mapping's path is as the process sees it: inside a container, or deleted since it was
mapped (an upgraded binary still running). /proc/PID/map_files/<start>-<end> opens the very
inode that is mapped (root only); /proc/PID/root/<path> resolves in the process's mount
namespace; the plain path is the last resort, good for host processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from podflame.model import Mapping

DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class MappedFile:
    """Openable paths for a mapping's file (best first) and its identity (st_dev, st_ino, st_mtime_ns)."""

    paths: tuple[str, ...]
    key: tuple[int, int, int] | None = None


def is_anonymous(path: str) -> bool:
    """Executable memory with no file: JIT code (named `[anon:...]` by some runtimes)."""
    return path in ("", "[anon]") or path.startswith("[anon:")


def is_special(path: str) -> bool:
    """Kernel-provided or anonymous regions ([vdso], [vsyscall], [heap], ...): no file to open."""
    return not path or path.startswith("[")


def candidate_paths(pid: int | None, mapping: Mapping, *, deleted: bool = False,
                    proc: str = "/proc") -> tuple[str, ...]:
    """Paths to try, best first. A deleted file is only reachable through map_files: its old
    path may now hold a different binary (the upgrade), whose symbols would be wrong."""
    if is_special(mapping.path):
        return ()
    paths: list[str] = []
    if pid is not None:
        paths.append(f"{proc}/{pid}/map_files/{mapping.start:x}-{mapping.limit:x}")
        if not deleted and mapping.path.startswith("/"):
            paths.append(f"{proc}/{pid}/root{mapping.path}")
    if not deleted:
        paths.append(mapping.path)
    return tuple(paths)
