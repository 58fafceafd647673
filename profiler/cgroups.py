"""Cgroup ids to paths, and kubelet cgroup paths to pod identity.

The sampler keys every sample by `bpf_get_current_cgroup_id()`, which is the inode number of
the task's cgroup v2 directory. `CgroupResolver` turns that number back into a path by walking
the v2 tree, and keeps ids of removed cgroups for a while: the agent resolves at drain time,
seconds after the sample, and a pod that finished in between must keep its path.

`parse_kubelet_path` reads the pod UID, container id, QoS class and runtime out of the names
the kubelet and the runtimes give cgroups, for both kubelet cgroup drivers (systemd slices and
plain cgroupfs directories), cgroup v1 and v2, containerd, CRI-O and docker. It works on the
path alone so that pod identity survives even when the API server is unreachable; names come
later from `profiler.kube`.

Interface (used by profiler.agent and the CLI):

    r = CgroupResolver()            # finds the v2 mount in /proc/self/mountinfo
    r.path(cgroup_id) -> "/kubepods.slice/.../cri-containerd-<id>.scope" | None
    r.id_of("/kubepods.slice/...") -> inode | None   (also accepts a full /sys/fs/cgroup/... path)
    r.path_of_pid(pid) -> v2 path of a process, relative to the host's v2 root
    r.processes({cgroup_id, ...}) -> pids now in those cgroups and the ones below them
    cgroup_of_pid(pid) -> the process's cgroup path as the kernel prints it (v2, else best v1)
    parse_kubelet_path(path) -> KubeletCgroup | None
    labels_for(path) -> {"cgroup": path, "pod_uid": ..., "container_id": ..., "qos": ..., "runtime": ...}
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("podflame.cgroups")

ROOT_ENV = "PODFLAME_CGROUP2_ROOT"  # override for unusual layouts (e.g. the host tree mounted elsewhere)

# ---------------------------------------------------------------------------------------------
# Finding the cgroup v2 mount


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points of cgroup2 filesystems, in mount order, each listed once (the topmost mount wins)."""
    points: dict[str, None] = {}
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields = pre.split()
        if len(fields) < 5 or not post.split() or post.split()[0] != "cgroup2":
            continue
        point = _unescape_mountinfo(fields[4])
        points.pop(point, None)  # a later mount on the same point hides the earlier one
        points[point] = None
    return list(points)


def find_cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """The v2 hierarchy: $PODFLAME_CGROUP2_ROOT, else /sys/fs/cgroup/unified (hybrid hosts),
    else /sys/fs/cgroup (unified hosts), else any other cgroup2 mount."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env)
    mounts = cgroup2_mounts(mountinfo)
    for preferred in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if preferred in mounts:
            return Path(preferred)
    return Path(mounts[0]) if mounts else None


# ---------------------------------------------------------------------------------------------
# /proc/PID/cgroup

# v1 hierarchies in order of preference for a process's "cgroup" on hosts where v2 holds nothing:
# name=systemd mirrors the unit tree; cpu/cpuacct is where the kubelet puts every pod.
_V1_PREFERENCE = ("name=systemd", "cpu", "cpuacct", "cpu,cpuacct", "memory", "pids")


def read_proc_cgroup(pid: int | str, proc: str = "/proc") -> dict[str, str]:
    """Controller list -> path from /proc/PID/cgroup; the v2 line is under the key ""."""
    out: dict[str, str] = {}
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def cgroup_of_pid(pid: int | str, proc: str = "/proc") -> str | None:
    """The process's cgroup path as its /proc/PID/cgroup says (relative to the reader's cgroup namespace).

    The v2 path when the process is anywhere below the v2 root; on cgroup v1 and hybrid hosts
    whose v2 tree is unused, the best v1 path (name=systemd, then cpu, ...), since the v1 tree is
    where the kubelet placed the pod. None when the process is gone.
    """
    lines = read_proc_cgroup(pid, proc)
    if not lines:
        return None
    v2 = lines.get("")
    if v2 is not None and v2 != "/":
        return v2
    by_controller: dict[str, str] = {}
    for controllers, path in lines.items():
        for c in controllers.split(","):
            by_controller.setdefault(c, path)
        by_controller.setdefault(controllers, path)
    for c in _V1_PREFERENCE:
        chosen = by_controller.get(c)
        if chosen and chosen != "/":
            return chosen
    for controllers, path in lines.items():
        if controllers and path != "/":
            return path
    return v2 if v2 is not None else "/"


# ---------------------------------------------------------------------------------------------
# Cgroup id <-> path


class CgroupResolver:
    """Cgroup v2 id (inode number) -> path relative to the v2 root ("/" is the root itself).

    Lookups are served from a cache; a miss rescans the whole tree, at most once per
    `rescan_interval` seconds, so a burst of unknown ids costs one walk. Ids whose directory
    disappeared stay resolvable for `keep_removed` seconds, for samples drained after the pod died.
    """

    def __init__(self, root: str | Path | None = None, *, rescan_interval: float = 1.0,
                 keep_removed: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        found = Path(root) if root is not None else find_cgroup2_root()
        if found is None:
            log.warning("no cgroup v2 mount found: cgroup paths will be shown as ids")
        self.root = found
        self.rescan_interval = rescan_interval
        self.keep_removed = keep_removed
        self._clock = clock
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {}
        self._removed_at: dict[int, float] = {}  # id -> when a walk first missed it
        self._last_scan = float("-inf")
        self._ns_root: str | None = None  # host path of this process's cgroup namespace root
        self.scans = 0

    # -- lookups

    def path(self, cgroup_id: int) -> str | None:
        with self._lock:
            found = self._paths.get(cgroup_id)
            if found is None and self._clock() - self._last_scan >= self.rescan_interval:
                self._scan_locked()
                found = self._paths.get(cgroup_id)
            return found

    def id_of(self, path: str | Path) -> int | None:
        """Inode of a v2 cgroup given relative to the v2 root or as a full path below it."""
        full = self._full_path(path)
        if full is None:
            return None
        try:
            st = os.stat(full)
        except OSError:
            return None
        if not os.path.isdir(full):
            return None
        rel = self._relative(full)
        if rel is not None:
            with self._lock:
                self._paths[st.st_ino] = rel
                self._removed_at.pop(st.st_ino, None)
        return st.st_ino

    def path_of_pid(self, pid: int | str, proc: str = "/proc") -> str | None:
        """A process's v2 path relative to the v2 root we walk, even from inside a cgroup namespace.

        In a private cgroup namespace (the default for containers on cgroup v2) the kernel prints
        other processes' paths relative to our namespace root, e.g. "/../../kubepods.slice/...";
        we join them to the host path of that root, found once from our own pid.
        """
        v2 = read_proc_cgroup(pid, proc).get("")
        if v2 is None:
            return None
        if "/.." not in v2 and not v2.startswith(".."):
            return v2
        ns_root = self._namespace_root()
        if ns_root is None:
            return None
        return os.path.normpath(ns_root.rstrip("/") + "/" + v2.lstrip("/")) or "/"

    def processes(self, cgroup_ids: set[int] | frozenset[int]) -> list[int]:
        """The processes now in these cgroups or any cgroup below them (what a cgroup filter samples), read
        from cgroup.procs: `podflame record --cgroup` loads their unwind tables before sampling starts."""
        if self.root is None or not cgroup_ids:
            return []
        with self._lock:
            self._scan_locked()
            paths = sorted(self._paths[c] for c in cgroup_ids if c in self._paths)
            below = [p for p in self._paths.values()
                     if any(p == top or top == "/" or p.startswith(top + "/") for top in paths)]
        out: dict[int, None] = {}
        for rel in below:
            try:
                with open(f"{self.root}{'' if rel == '/' else rel}/cgroup.procs") as f:
                    out.update(dict.fromkeys(int(t) for t in f.read().split()))
            except (OSError, ValueError):
                continue  # removed meanwhile: its processes are gone or elsewhere
        return list(out)

    # -- maintenance

    def rescan(self) -> None:
        with self._lock:
            self._scan_locked()

    def known(self) -> dict[int, str]:
        with self._lock:
            return dict(self._paths)

    def _scan_locked(self) -> None:
        now = self._clock()
        self._last_scan = now
        if self.root is None:
            return
        seen = self._walk()
        self.scans += 1
        if not seen:
            return
        self._paths.update(seen)
        for cid in list(self._paths):
            if cid in seen:
                self._removed_at.pop(cid, None)
                continue
            gone_since = self._removed_at.setdefault(cid, now)
            if now - gone_since > self.keep_removed:
                del self._paths[cid]
                del self._removed_at[cid]

    def _walk(self) -> dict[int, str]:
        """Every directory below the root: inode -> "/relative/path" (d_ino from readdir, no stat)."""
        assert self.root is not None
        try:
            seen = {os.stat(self.root).st_ino: "/"}
        except OSError:
            return {}
        stack: list[tuple[str, str]] = [(str(self.root), "")]
        while stack:
            directory, rel = stack.pop()
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        try:
                            if not entry.is_dir(follow_symlinks=False):
                                continue
                        except OSError:
                            continue
                        child = f"{rel}/{entry.name}"
                        seen[entry.inode()] = child
                        stack.append((entry.path, child))
            except OSError:
                continue  # removed while walking, or unreadable
        return seen

    def _full_path(self, path: str | Path) -> Path | None:
        if self.root is None:
            return None
        p = str(path)
        root = str(self.root)
        if p == root or p.startswith(root.rstrip("/") + "/"):
            return Path(p)
        return self.root / p.lstrip("/")

    def _relative(self, full: Path) -> str | None:
        assert self.root is not None
        try:
            rel = full.resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        return "/" + str(rel) if str(rel) != "." else "/"

    def _namespace_root(self) -> str | None:
        if self._ns_root is None and self.root is not None:
            own = read_proc_cgroup("self").get("")
            host_own = self._dir_holding(os.getpid())
            if own is not None and host_own is not None:
                suffix = "" if own == "/" else own
                if host_own.endswith(suffix):
                    self._ns_root = host_own[: len(host_own) - len(suffix)] or "/"
        return self._ns_root

    def _dir_holding(self, pid: int) -> str | None:
        """The directory whose cgroup.procs lists pid (one walk, done once per resolver)."""
        wanted = str(pid)
        for rel in self._walk().values():
            try:
                with open(f"{self.root}{'' if rel == '/' else rel}/cgroup.procs") as f:
                    if wanted in f.read().split():
                        return rel
            except OSError:
                continue
        return None


# ---------------------------------------------------------------------------------------------
# Kubelet cgroup names

QOS_CLASSES = ("guaranteed", "burstable", "besteffort")

_CONTROLLER_PREFIX = re.compile(r"^\d+:[^:/]*:")  # a /proc/PID/cgroup line: "11:blkio:/kubepods/..."
# systemd driver: "<root>-<qos>-pod<uid>.slice", <qos> absent for guaranteed pods, the UID's "-" as "_"
# (systemd reserves "-" for the slice hierarchy). <root> is "kubepods" or "<cgroupRoot>-kubepods".
_SYSTEMD_POD = re.compile(r"^(?P<parent>[\w.-]*?kubepods)(?:-(?P<qos>burstable|besteffort))?"
                          r"-pod(?P<uid>[0-9a-fA-F_-]+)\.slice$", re.IGNORECASE)
# cgroupfs driver: "pod<uid>" below ".../kubepods[/<qos>]"
_CGROUPFS_POD = re.compile(r"^pod(?P<uid>[0-9a-fA-F-]+)$")
# containerd's systemd cgroup path when the runtime's and kubelet's drivers disagree (cgroup v1):
# "kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>" as one directory name
_COLON_FORM = re.compile(r"^(?P<slice>[^:]+\.slice):(?P<prefix>[\w-]+):(?P<id>[\w.-]+)$")
_CONTAINER = re.compile(r"^(?P<prefix>cri-containerd|crio-conmon|crio|docker)-(?P<id>[\w.-]+?)"
                        r"(?:\.scope)?$")
_RUNTIME_OF_PREFIX = {"cri-containerd": "containerd", "crio": "crio", "crio-conmon": "crio",
                      "docker": "docker"}


@dataclass(frozen=True, slots=True)
class KubeletCgroup:
    """Pod identity read from a cgroup path; `container_id` is None for the pod's own cgroup."""

    pod_uid: str  # with dashes; static pods keep the kubelet's 32-hex config hash
    container_id: str | None
    qos: str  # guaranteed | burstable | besteffort
    runtime: str  # containerd | crio | docker | unknown
    driver: str  # systemd | cgroupfs
    conmon: bool = False  # CRI-O's per-container monitor process, not the container itself


def _normalize_uid(raw: str) -> str | None:
    """"55c6c714_b240_4dec_9a45_57b61696ab6e" -> "55c6c714-b240-4dec-9a45-57b61696ab6e"; None if not a UID."""
    hexes = raw.replace("_", "").replace("-", "").lower()
    if len(hexes) != 32 or any(c not in "0123456789abcdef" for c in hexes):
        return None
    if "_" not in raw and "-" not in raw:
        return hexes  # a static pod's config hash: the kubelet uses it undashed as the pod UID
    return f"{hexes[:8]}-{hexes[8:12]}-{hexes[12:16]}-{hexes[16:20]}-{hexes[20:]}"


def _container(name: str) -> tuple[str, str, bool]:
    """(container id, runtime, is conmon) from a container cgroup's directory name."""
    m = _CONTAINER.match(name)
    if m:
        return m.group("id"), _RUNTIME_OF_PREFIX[m.group("prefix")], m.group("prefix") == "crio-conmon"
    return name, "unknown", False  # cgroupfs driver: the bare id (containerd or docker: not told apart)


def parse_kubelet_path(path: str) -> KubeletCgroup | None:
    """Pod identity from a cgroup path made by the kubelet, or None for any other cgroup.

    Accepts v2 paths ("/kubepods.slice/..."), v1 paths with or without their mount point
    ("/sys/fs/cgroup/cpu,cpuacct/kubepods/..."), /proc/PID/cgroup lines, and pod trees nested
    below another prefix (kind and minikube nodes run inside a container).
    """
    path = _CONTROLLER_PREFIX.sub("", path.strip(), count=1)
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        m = _COLON_FORM.match(part)
        if m:
            pod = _SYSTEMD_POD.match(m.group("slice"))
            uid = pod and _normalize_uid(pod.group("uid"))
            prefix = m.group("prefix")
            if not uid or pod is None:
                continue
            return KubeletCgroup(uid, m.group("id"), (pod.group("qos") or "guaranteed").lower(),
                                 _RUNTIME_OF_PREFIX.get(prefix, "unknown"), "systemd", prefix == "crio-conmon")
        m = _SYSTEMD_POD.match(part)
        driver = "systemd"
        if m:
            uid = _normalize_uid(m.group("uid"))
            qos = (m.group("qos") or "guaranteed").lower()
        else:
            m = _CGROUPFS_POD.match(part)
            if not m or i == 0:
                continue
            parent = parts[i - 1].lower()
            if parent in ("burstable", "besteffort") and i >= 2 and "kubepods" in parts[i - 2].lower():
                qos = parent
            elif "kubepods" in parent:
                qos = "guaranteed"
            else:
                continue
            uid = _normalize_uid(m.group("uid"))
            driver = "cgroupfs"
        if not uid:
            continue
        if i + 1 < len(parts):
            cid, runtime, conmon = _container(parts[i + 1])
        else:
            cid, runtime, conmon = None, "unknown", False
        return KubeletCgroup(uid, cid, qos, runtime, driver, conmon)
    return None


def labels_for(path: str) -> dict[str, str]:
    """Profile labels for a cgroup path: `cgroup`, plus pod identity when the kubelet made it.

    `runtime` is left out when the path does not tell (cgroupfs driver), rather than "unknown".
    """
    labels = {"cgroup": path}
    kc = parse_kubelet_path(path)
    if kc is None:
        return labels
    labels["pod_uid"] = kc.pod_uid
    labels["qos"] = kc.qos
    if kc.container_id is not None:
        labels["container_id"] = kc.container_id
    if kc.runtime != "unknown":
        labels["runtime"] = kc.runtime
    return labels
