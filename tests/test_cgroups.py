"""Cgroup id -> path resolution and kubelet cgroup path parsing.

The parser table holds real cgroup paths copied from public issues and documentation (the URL
beside each), one or more for every kubelet driver (systemd, cgroupfs), cgroup version, runtime
(containerd, CRI-O, docker) and QoS class. The resolver tests build a real v2 cgroup shaped
like a kubelet path and need root (not BPF).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from profiler.cgroups import (
    CgroupResolver,
    KubeletCgroup,
    cgroup2_mounts,
    cgroup_of_pid,
    find_cgroup2_root,
    labels_for,
    parse_kubelet_path,
    read_proc_cgroup,
)
from tests.realsys import CGROUP2_ROOT, kubelet_cgroup

C, CR, D, U = "containerd", "crio", "docker", "unknown"
SD, FS = "systemd", "cgroupfs"

# (url, path, pod_uid, container_id, qos, runtime, driver)
REAL_PATHS = [
    # systemd driver, containerd, cgroup v2 (`systemd-cgls` of a node)
    ("https://github.com/netdata/netdata/issues/4868",
     "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod55c6c714_b240_4dec_9a45_57b61696ab6e.slice/"
     "cri-containerd-2032491dcae31e6746f47daa0ac74564f2843a1bd847c5e6c4eb501ca132ac36.scope",
     "55c6c714-b240-4dec-9a45-57b61696ab6e",
     "2032491dcae31e6746f47daa0ac74564f2843a1bd847c5e6c4eb501ca132ac36", "burstable", C, SD),
    # same node: a static pod, whose UID is the kubelet's 32-hex config hash, without dashes
    ("https://github.com/netdata/netdata/issues/4868",
     "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8daa50c3a64c9ff60bb9eab7b44b56fd.slice/"
     "cri-containerd-2884d57c0e100d7a9a2f9487ce0bc2986bca3430e988af7a4865aff061f51ac5.scope",
     "8daa50c3a64c9ff60bb9eab7b44b56fd",
     "2884d57c0e100d7a9a2f9487ce0bc2986bca3430e988af7a4865aff061f51ac5", "burstable", C, SD),
    # systemd driver, containerd, guaranteed pod: no QoS slice
    ("https://github.com/kata-containers/kata-containers/pull/11598",
     "/kubepods.slice/kubepods-poddc430cd3_34b7_4ea6_be26_ddfd88d7ddff.slice/"
     "cri-containerd-8564224395a4fbf7f2792baa22ee16dfc8f8e862e20342d3b2bcc211a3939af6.scope",
     "dc430cd3-34b7-4ea6-be26-ddfd88d7ddff",
     "8564224395a4fbf7f2792baa22ee16dfc8f8e862e20342d3b2bcc211a3939af6", "guaranteed", C, SD),
    # kind: kubelet cgroupRoot=/kubelet, so every slice is prefixed "kubelet-"; full filesystem path
    ("https://github.com/containerd/nri/pull/227",
     "/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     "kubelet-kubepods-besteffort-pod1e597579_417e_482f_bf65_5fe170c3aebd.slice/"
     "cri-containerd-a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e.scope",
     "1e597579-417e-482f-bf65-5fe170c3aebd",
     "a09bc17f5aa29b0dbdec9ede5f46cf1396d2405917ab02e6f1eb1019f388396e", "besteffort", C, SD),
    # kind node seen from the host: the pod tree nested below the node container's docker scope
    ("https://github.com/sustainable-computing-io/kepler/blob/main/internal/resource/container_test.go",
     "0::/system.slice/docker-fd9d0ea06257a9780827cbc7fd92e3812a54fca26d63e191b73610d5d48b9cbd.scope/"
     "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     "kubelet-kubepods-besteffort-podeab5a334_93fe_48a8_b139_9e8079c1f163.slice/"
     "cri-containerd-99f3a16ea25b7724cb56a4f0c0df1113ad9474fbf5545bead97fd5c7f61c13f4.scope",
     "eab5a334-93fe-48a8-b139-9e8079c1f163",
     "99f3a16ea25b7724cb56a4f0c0df1113ad9474fbf5545bead97fd5c7f61c13f4", "besteffort", C, SD),
    # containerd with SystemdCgroup while cgroup v1 controllers use its cgroupfs form: one directory
    # "<pod slice>:cri-containerd:<id>", sometimes below containerd.service (/proc/self/cgroup lines)
    ("https://github.com/open-telemetry/opentelemetry-java/issues/4507",
     "10:blkio:/system.slice/containerd.service/kubepods-besteffort-pod0125ec2f_b64a_4868_8f5b_94b56cbab864.slice"
     ":cri-containerd:ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459",
     "0125ec2f-b64a-4868-8f5b-94b56cbab864",
     "ee4b20e90ac7f42a10bd004d05646b13d8ab5e2c5e7cbc01abf8006bac016459", "besteffort", C, SD),
    ("https://github.com/duckdb/duckdb/pull/16608",
     "13:cpuset:/kubepods-burstable-podb96a7488_3ee1_4bdc_9c98_155cc887b417.slice"
     ":cri-containerd:6ef14b5a76df7b5d24285e3a04ccbc6fd323620272b3787b5dc440fc1b75d294",
     "b96a7488-3ee1-4bdc-9c98-155cc887b417",
     "6ef14b5a76df7b5d24285e3a04ccbc6fd323620272b3787b5dc440fc1b75d294", "burstable", C, SD),
    # systemd driver, CRI-O, cgroup v2 (OpenShift), container and pod sandbox (no ".scope")
    ("https://github.com/containerd/nri/pull/227",
     "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod35550f44_f691_427e_b57d_ab6127d2cb65"
     ".slice/crio-805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73.scope",
     "35550f44-f691-427e-b57d-ab6127d2cb65",
     "805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73", "burstable", CR, SD),
    ("https://github.com/containerd/nri/pull/227",
     "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod35550f44_f691_427e_b57d_ab6127d2cb65"
     ".slice/crio-468f848e2ebec7203ed55748d08337851af589ac42eb551c572446a5c68fe631",
     "35550f44-f691-427e-b57d-ab6127d2cb65",
     "468f848e2ebec7203ed55748d08337851af589ac42eb551c572446a5c68fe631", "burstable", CR, SD),
    # systemd driver, CRI-O, minikube node (a docker container): pod tree below /docker/<id>
    ("https://github.com/kubernetes/minikube/issues/11280",
     "/docker/d5d9ee5cf5ec9520d182418b737fb11f3aa6b739e91d7cb6ecd6786f6a2bcbd1/kubepods.slice/"
     "kubepods-besteffort.slice/kubepods-besteffort-pod2cde702b_a0cf_438d_a228_fb164e54434b.slice/"
     "crio-0765f197c9158576f202e50498b488cd0d2b022fb2462b0a629f214bb51cd57d.scope",
     "2cde702b-a0cf-438d-a228-fb164e54434b",
     "0765f197c9158576f202e50498b488cd0d2b022fb2462b0a629f214bb51cd57d", "besteffort", CR, SD),
    # systemd driver, CRI-O, cgroup v1 controller path
    ("https://github.com/opencontainers/runc/issues/4620",
     "/sys/fs/cgroup/systemd/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_434d_add7_"
     "4afaafdaef89.slice/crio-5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c.scope",
     "a5c1f8d5-1919-434d-add7-4afaafdaef89",
     "5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c", "burstable", CR, SD),
    # systemd driver, docker (dockershim era), cgroup v1
    ("https://github.com/kontena/pharos-cluster/issues/440",
     "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9692aa0e_748e_11e8_8dfa_76d458035df6.slice/"
     "docker-abddff03dfd7710c79a750ce3e730365cbb2c8247a974170c1062683bc3e9152.scope",
     "9692aa0e-748e-11e8-8dfa-76d458035df6",
     "abddff03dfd7710c79a750ce3e730365cbb2c8247a974170c1062683bc3e9152", "besteffort", D, SD),
    ("https://github.com/lxc/lxc/issues/3890",
     "11:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7d4424e6_bb13_42f4_a47a_45a4828bf54d"
     ".slice/docker-d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98.scope",
     "7d4424e6-bb13-42f4-a47a-45a4828bf54d",
     "d0b3604b67ac7930dd34ba3a796627e3e4717d12309e90a4afe3f38b6816ac98", "burstable", D, SD),
    # guaranteed pod under docker; the scope is named after the container, not its id
    ("https://github.com/kubernetes/kubernetes/issues/76704",
     "/sys/fs/cgroup/cpu,cpuacct/kubepods.slice/kubepods-pode7dac811_5d23_11e9_8ff8_005056935735.slice/"
     "docker-kube-flannel.scope",
     "e7dac811-5d23-11e9-8ff8-005056935735", "kube-flannel", "guaranteed", D, SD),
    # cgroupfs driver (containerd or docker: the bare id does not tell which)
    ("https://github.com/rancher/rke2/issues/7436",
     "/kubepods/besteffort/podb933ae96-6ca5-4382-bdae-c3edad27d2a4/"
     "efccca1f375f17aa0863195e8b5c9e3c6b85070c298e6323bf0e5c4f8a61c30e",
     "b933ae96-6ca5-4382-bdae-c3edad27d2a4",
     "efccca1f375f17aa0863195e8b5c9e3c6b85070c298e6323bf0e5c4f8a61c30e", "besteffort", U, FS),
    ("https://github.com/sustainable-computing-io/kepler/blob/main/internal/resource/container_test.go",
     "11:blkio:/kubepods/burstable/podf6adb0af-0855-4bab-b25b-c853f18d0ce2/"
     "35b97177dada20362ab90d90ac63cd54e8a41cf87bea34f270631b6da17f4a93",
     "f6adb0af-0855-4bab-b25b-c853f18d0ce2",
     "35b97177dada20362ab90d90ac63cd54e8a41cf87bea34f270631b6da17f4a93", "burstable", U, FS),
    # cgroupfs driver, guaranteed pod: directly below /kubepods (crictl inspectp cgroupsPath)
    ("https://kubernetes.io/docs/concepts/scheduling-eviction/pod-overhead/",
     "/kubepods/podd7f4b509-cf94-4951-9417-d1087c92a5b2/"
     "7ccf55aee35dd16aca4189c952d83487297f3cd760f1bbf09620e206e7d0c27a",
     "d7f4b509-cf94-4951-9417-d1087c92a5b2",
     "7ccf55aee35dd16aca4189c952d83487297f3cd760f1bbf09620e206e7d0c27a", "guaranteed", U, FS),
    # cgroupfs driver inside a minikube node container
    ("https://github.com/kubernetes/minikube/issues/14915",
     "/docker/85b8af02515cb3e49ca58e7f9d5f59e038a1cb400bec20870842393ee6fe39c4/kubepods/besteffort/"
     "pod12606883-05a6-4572-bb79-ffa847b300fb/28369cae89b3fa80f9e06cabcaa96b678501d818df1007be653dc6664b3651d7",
     "12606883-05a6-4572-bb79-ffa847b300fb",
     "28369cae89b3fa80f9e06cabcaa96b678501d818df1007be653dc6664b3651d7", "besteffort", U, FS),
    # cgroupfs driver, CRI-O: "crio-<id>" for the container (v1 cpu controller path)
    ("https://github.com/cri-o/cri-o/pull/5511",
     "/sys/fs/cgroup/cpu/kubepods/burstable/pod44e2e33e-776b-4284-a647-4bd959899c91/"
     "crio-dc4b5f11a034ac50f4bf7a0f2396fce881f58dcb5b2fa5f0f74d5c2ad924c083",
     "44e2e33e-776b-4284-a647-4bd959899c91",
     "dc4b5f11a034ac50f4bf7a0f2396fce881f58dcb5b2fa5f0f74d5c2ad924c083", "burstable", CR, FS),
    # cgroupfs driver, cgroup v2, the pod's own cgroup (no container below it)
    ("https://github.com/google/gvisor/issues/8269",
     "/sys/fs/cgroup/kubepods/besteffort/pod88bcf96e-7b92-4ce5-a3c0-2a6d098a1c33",
     "88bcf96e-7b92-4ce5-a3c0-2a6d098a1c33", None, "besteffort", U, FS),
]

NOT_PODS = [
    ("https://github.com/sustainable-computing-io/kepler/blob/main/internal/resource/container_test.go",
     "/system.slice/ssh.service"),
    ("https://github.com/sustainable-computing-io/kepler/blob/main/internal/resource/container_test.go",
     "13:hugetlb:/system.slice/docker-2fa3e04b676df750842faf017052dd37ea0cc5bc7259a3487a1718c7fe100c94.scope"),
    ("https://github.com/sustainable-computing-io/kepler/blob/main/internal/resource/container_test.go",
     "0::/user.slice/user-1000.slice/user@1000.service/user.slice/"
     "libpod-3f05ee050f82c0145f1d88c94269c39dff0f07dbf8bba20aafd54b3a75dcaecc.scope/container"),
    ("https://github.com/kubernetes/kubernetes/issues/36807",  # pre-1.6 experimental naming, without kubepods
     "11:memory:/system.slice/docker.service/BestEffort.slice/BestEffort-pod0d33f94b_ab1a_11e6_9e1a_68f7281d8004.slice/"
     "0c34bcd7d02f321d0df7aa6ea703285b02abebc9096c5128c14091fc43ea1f3b"),
    ("https://github.com/kontena/pharos-cluster/issues/440", "/system.slice"),
    ("", "/"),
    ("", "/kubepods.slice"),
    ("", "/kubepods.slice/kubepods-burstable.slice"),
    ("", "/kubepods/burstable"),
    ("", "/user.slice/user-1000.slice/session-3.scope"),
    ("", "/system.slice/pod1234.slice"),
]


@pytest.mark.parametrize(("url", "path", "uid", "cid", "qos", "runtime", "driver"), REAL_PATHS,
                         ids=[f"{r[6]}-{r[5]}-{r[4]}-{i}" for i, r in enumerate(REAL_PATHS)])
def test_real_kubelet_paths_parse(url, path, uid, cid, qos, runtime, driver) -> None:
    assert parse_kubelet_path(path) == KubeletCgroup(uid, cid, qos, runtime, driver), url


@pytest.mark.parametrize(("url", "path"), NOT_PODS)
def test_other_cgroups_are_not_pods(url, path) -> None:
    assert parse_kubelet_path(path) is None, url
    assert labels_for(path) == {"cgroup": path}


def test_crio_conmon_cgroup_belongs_to_its_container() -> None:
    # https://github.com/cri-o/cri-o/pull/5511: with cgroupfs, CRI-O puts conmon in "crio-conmon-<id>"
    kc = parse_kubelet_path("/kubepods/burstable/pod44e2e33e-776b-4284-a647-4bd959899c91/"
                            "crio-conmon-dc4b5f11a034ac50f4bf7a0f2396fce881f58dcb5b2fa5f0f74d5c2ad924c083")
    assert kc is not None and kc.conmon and kc.runtime == "crio"
    assert kc.container_id == "dc4b5f11a034ac50f4bf7a0f2396fce881f58dcb5b2fa5f0f74d5c2ad924c083"


def test_sub_cgroups_inside_a_container_keep_the_container() -> None:
    # CRI-O with crun nests a "container" cgroup below the scope (https://github.com/cri-o/cri-o/issues/9251);
    # the path here is our own, shaped after that report
    kc = parse_kubelet_path("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod35550f44_f691_427e_b57d_"
                            "ab6127d2cb65.slice/crio-805b902ed98fdc1409c76e9aa94964787a904c80f46fc3ee74283509108f5e73"
                            ".scope/container")
    assert kc is not None and kc.container_id.startswith("805b902e") and kc.runtime == "crio"


def test_labels_follow_docs_api_names() -> None:
    path = REAL_PATHS[0][1]
    assert labels_for(path) == {
        "cgroup": path, "pod_uid": "55c6c714-b240-4dec-9a45-57b61696ab6e",
        "container_id": "2032491dcae31e6746f47daa0ac74564f2843a1bd847c5e6c4eb501ca132ac36",
        "qos": "burstable", "runtime": "containerd"}
    # cgroupfs: the runtime is not in the path, so no runtime label rather than a made-up one
    assert "runtime" not in labels_for(REAL_PATHS[14][1])
    # the pod's own cgroup has no container
    assert "container_id" not in labels_for(REAL_PATHS[-1][1])


# ---------------------------------------------------------------------------------------------
# /proc parsing and mount discovery, on fixture files


def test_mountinfo_picks_unified_on_hybrid_hosts_and_the_topmost_mount(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PODFLAME_CGROUP2_ROOT", raising=False)
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert find_cgroup2_root(str(hybrid)) == Path("/sys/fs/cgroup/unified")
    # in a container: the runtime's own cgroup2 mount, then the host's bind-mounted over it, and another elsewhere
    container = tmp_path / "container"
    container.write_text(
        "900 800 0:30 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n"
        "901 800 0:30 /../../.. /host/cg\\040tree rw - cgroup2 cgroup2 rw\n"
        "902 800 0:30 /../../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n")
    assert cgroup2_mounts(str(container)) == ["/host/cg tree", "/sys/fs/cgroup"]
    assert find_cgroup2_root(str(container)) == Path("/sys/fs/cgroup")
    monkeypatch.setenv("PODFLAME_CGROUP2_ROOT", "/host/cg tree")
    assert find_cgroup2_root(str(container)) == Path("/host/cg tree")


def test_cgroup_of_pid_prefers_v2_then_the_kubelets_v1_tree(tmp_path: Path) -> None:
    (tmp_path / "10").mkdir()
    (tmp_path / "10" / "cgroup").write_text("0::/kubepods.slice/x.scope\n")
    (tmp_path / "11").mkdir()
    # hybrid host, pod placed by a v1 kubelet: v2 line is "/", the controllers carry the pod
    (tmp_path / "11" / "cgroup").write_text(
        "12:pids:/kubepods/besteffort/pod1/abc\n"
        "9:cpu,cpuacct:/kubepods/besteffort/pod1/abc\n"
        "1:name=systemd:/kubepods/besteffort/pod1/abc\n0::/\n")
    (tmp_path / "12").mkdir()
    (tmp_path / "12" / "cgroup").write_text("4:memory:/\n0::/\n")
    assert cgroup_of_pid(10, str(tmp_path)) == "/kubepods.slice/x.scope"
    assert cgroup_of_pid(11, str(tmp_path)) == "/kubepods/besteffort/pod1/abc"
    assert read_proc_cgroup(11, str(tmp_path))["cpu,cpuacct"] == "/kubepods/besteffort/pod1/abc"
    assert cgroup_of_pid(12, str(tmp_path)) == "/"
    assert cgroup_of_pid(13, str(tmp_path)) is None


# ---------------------------------------------------------------------------------------------
# The resolver on a directory tree (kernfs not needed: the logic is inode numbers and a walk)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_resolver_rescans_at_most_once_per_interval_and_keeps_removed_ids(tmp_path: Path) -> None:
    clock = Clock()
    r = CgroupResolver(tmp_path, rescan_interval=1.0, keep_removed=60.0, clock=clock)
    a = tmp_path / "kubepods.slice" / "a.scope"
    a.mkdir(parents=True)
    a_id = a.stat().st_ino
    assert r.path(a_id) == "/kubepods.slice/a.scope" and r.scans == 1
    assert r.path(os.stat(tmp_path).st_ino) == "/"
    b = tmp_path / "b.scope"
    b.mkdir()
    assert r.path(b.stat().st_ino) is None and r.scans == 1  # miss within the interval: no walk
    assert r.path(12345678) is None and r.scans == 1
    clock.t += 1.0
    assert r.path(b.stat().st_ino) == "/b.scope" and r.scans == 2
    a.rmdir()
    clock.t += 1.0
    r.rescan()
    assert r.path(a_id) == "/kubepods.slice/a.scope"  # removed, still known for late samples
    clock.t += 61.0
    r.rescan()
    assert a_id not in r.known()


def test_id_of_accepts_relative_and_full_paths(tmp_path: Path) -> None:
    r = CgroupResolver(tmp_path)
    (tmp_path / "x.slice" / "y.scope").mkdir(parents=True)
    ino = (tmp_path / "x.slice" / "y.scope").stat().st_ino
    assert r.id_of("/x.slice/y.scope") == ino
    assert r.id_of(tmp_path / "x.slice" / "y.scope") == ino
    assert r.id_of("/nope") is None
    assert r.known()[ino] == "/x.slice/y.scope"


# ---------------------------------------------------------------------------------------------
# A real cgroup v2 directory shaped like a kubelet path (root needed, BPF not)

needs_root_v2 = pytest.mark.skipif(os.geteuid() != 0 or not (CGROUP2_ROOT / "cgroup.procs").exists(),
                                   reason="needs root and a cgroup v2 mount")


@needs_root_v2
@pytest.mark.parametrize("qos", ["besteffort", "guaranteed"])
def test_real_cgroup_resolves_to_its_kubelet_path_and_stays_known_after_removal(qos: str) -> None:
    with kubelet_cgroup(qos) as cg:
        child = subprocess.Popen(["sleep", "60"])
        try:
            (cg.path / "cgroup.procs").write_text(str(child.pid))
            assert cgroup_of_pid(child.pid) == cg.relative
            r = CgroupResolver()
            assert r.root == CGROUP2_ROOT
            assert r.path(cg.inode) == cg.relative
            assert r.id_of(cg.relative) == cg.inode
            assert r.path_of_pid(child.pid) == cg.relative
            labels = labels_for(r.path(cg.inode))
            assert labels["pod_uid"] == cg.pod_uid and labels["container_id"] == cg.container_id
            assert labels["qos"] == qos and labels["runtime"] == "containerd"
            inode = cg.inode
        finally:
            child.kill()
            child.wait()
    assert not cg.path.exists()
    r.rescan()
    assert r.path(inode) == cg.relative  # a sample drained after the pod was deleted still resolves


@needs_root_v2
def test_path_of_pid_from_inside_a_cgroup_namespace() -> None:
    """The agent runs in a container's private cgroup namespace: paths of other pods print as "/../..."."""
    if subprocess.run(["unshare", "--cgroup", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --cgroup not permitted here")
    agent_cg = CGROUP2_ROOT / f"podflame-test-agent-{uuid.uuid4().hex[:8]}.scope"
    agent_cg.mkdir()
    try:
        with kubelet_cgroup("burstable") as cg:
            target = subprocess.Popen(["sleep", "60"])
            try:
                (cg.path / "cgroup.procs").write_text(str(target.pid))
                script = ("from profiler.cgroups import CgroupResolver, cgroup_of_pid;"
                          f"print(cgroup_of_pid({target.pid})); print(CgroupResolver().path_of_pid({target.pid}))")
                out = subprocess.run(
                    ["sh", "-c", f'echo $$ > "{agent_cg}/cgroup.procs" && exec unshare --cgroup "$@"', "sh",
                     sys.executable, "-c", script],
                    capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent).stdout.split()
                assert out[0].startswith("/../")  # what the kernel shows inside the namespace
                assert out[1] == cg.relative  # mapped back to the host tree we walk
            finally:
                target.kill()
                target.wait()
    finally:
        for pid in (agent_cg / "cgroup.procs").read_text().split():
            (CGROUP2_ROOT / "cgroup.procs").write_text(pid)
        agent_cg.rmdir()
