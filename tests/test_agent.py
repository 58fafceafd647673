"""Assembling drained raw samples into labelled, root-first profiles (no BPF needed)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from podflame.model import Frame, FrameKind, Line, Mapping, Unresolved
from profiler.agent import Context, PodLabels, StackMemo, build_profiles
from profiler.sampler import Drain, RawSample

EXE = Mapping(0x400000, 0x500000, 0, "/opt/app/bin/app")


class FakeMaps:
    """Maps of pid 42 (EXE) only; other pids' maps were never read (version None), as MapsCache says."""

    def __init__(self) -> None:
        self.refreshed: set[int] = set()

    def refresh(self, pids):
        self.refreshed |= set(pids)

    def prefetch(self, pids):
        self.refreshed |= set(pids)

    def lookup(self, pid, address):
        return EXE if pid == 42 and EXE.start <= address < EXE.limit else None

    def maps_lost(self, pid):
        return False

    def version(self, pid):
        return 1 if pid == 42 else None


class FakeCgroups:
    def path(self, cgroup_id):
        return {7: "/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope"}.get(cgroup_id)


class FakePods:
    """Knows pod 1 only once `known` is set, like a watch that has not caught up yet."""

    def __init__(self, known: bool = True) -> None:
        self.known = known

    def labels(self, path):
        if "kubepods" not in path:
            return {}
        return {"pod_uid": "1", "pod": "cart-1"} if self.known else None

    def give_up(self, path):
        return {"pod_uid": "1"}


def raw(cgroup_id=7, tgid=42, pid=43, comm="worker", user=(), kernel=(), user_error=0, kernel_error=0, count=1,
        python=()) -> RawSample:
    return RawSample(cgroup_id, tgid, pid, comm, tuple(user), tuple(kernel), user_error, kernel_error, count, python)


def drain_of(*samples: RawSample, start_ns: int = 0, end_ns: int = 1) -> Drain:
    return Drain(start_ns, end_ns, list(samples))


def ctx() -> Context:
    return Context(node="n1", maps=FakeMaps(), cgroups=FakeCgroups(), comm_cache={42: "app"})


def test_samples_group_by_cgroup_and_process_with_root_first_stacks() -> None:
    c = ctx()
    drain = drain_of(
        # user leaf first, as the kernel records: leaf 0x401000 called from 0x400100 (main)
        raw(user=(0x401000, 0x400100), count=3),
        raw(pid=44, user=(0x401000, 0x400100), kernel=(0xFFFF0002, 0xFFFF0001), count=2),
        raw(cgroup_id=9, tgid=50, pid=50, comm="sshd", user=(0x1234,), count=1),
        start_ns=1000, end_ns=2000)
    profiles = {p.labels["pid"]: p for p in build_profiles(drain, c, period_ns=10)}
    assert c.maps.refreshed == {42, 50}
    app = profiles["42"]
    assert app.labels == {"cgroup": "/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope",
                          "node": "n1", "comm": "app", "pid": "42"}
    assert app.total() == 5 and (app.start_ns, app.duration_ns, app.period_ns) == (1000, 1000, 10)
    stacks = {tuple(f.address for f in s): v for s, v in app.samples.items()}
    assert stacks == {(0x400100, 0x401000): 3, (0x400100, 0x401000, 0xFFFF0001, 0xFFFF0002): 2}
    kernel_stack = next(s for s in app.samples if len(s) == 4)
    assert [f.kind for f in kernel_stack] == [FrameKind.NATIVE] * 2 + [FrameKind.KERNEL] * 2
    assert kernel_stack[0].mapping == EXE
    other = profiles["50"]
    assert other.labels["cgroup"] == "cgroup-id:9"
    (stack,) = other.samples
    assert stack[0].mapping is None  # no mapping known: the symbolizer will say why


def test_lost_stacks_stay_visible_as_explicit_frames() -> None:
    drain = drain_of(
        raw(user_error=-17, kernel=(0xFFFF0001,), count=4),  # user stack lost to a hash collision
        raw(tgid=0, pid=0, user_error=-14, kernel=(0xFFFF0001,), count=1),  # kernel thread: EFAULT is normal
    )
    profiles = build_profiles(drain, ctx(), period_ns=10)
    names = {n for p in profiles for n, _ in p.name_stacks()}
    assert ("[user stack lost: EEXIST]", "[kernel]+0xffff0001") in names
    assert ("[kernel]+0xffff0001",) in names


def _two_profiles():
    drain = drain_of(raw(user=(0x400100,), count=2), raw(cgroup_id=9, tgid=50, pid=50, user=(0x1,), count=1))
    return build_profiles(drain, ctx(), period_ns=10)


def test_profiles_of_unknown_pods_are_held_then_labelled_when_the_pod_appears() -> None:
    now = [0.0]
    pods = FakePods(known=False)
    stage = PodLabels(pods, hold_seconds=30, clock=lambda: now[0])
    ready = stage(_two_profiles())
    assert [p.labels["pid"] for p in ready] == ["50"] and len(stage.held) == 1  # host process ships now
    now[0] = 10
    pods.known = True
    ready = stage([])
    assert [p.labels.get("pod") for p in ready] == ["cart-1"] and not stage.held


def test_held_profiles_ship_with_best_effort_labels_after_the_hold() -> None:
    now = [0.0]
    stage = PodLabels(FakePods(known=False), hold_seconds=30, clock=lambda: now[0])
    stage(_two_profiles())
    now[0] = 31
    (late,) = stage([])
    assert late.labels["pod_uid"] == "1" and "pod" not in late.labels and late.total() == 2
    stage(_two_profiles())
    assert [p.labels["pod_uid"] for p in stage.flush()] == ["1"]  # shutdown ships what is held


class CountingSymbolizer:
    """Names frames inside EXE, leaves others unresolved with no mapping; counts the frames it resolves.

    The interface StackMemo uses of symbolizer.Symbolizer: `for_process(pid).frame(frame, leaf)` and
    `generation` (tests move it as a debug file's arrival would)."""

    def __init__(self) -> None:
        self.calls = 0
        self.generation = 0

    def for_process(self, pid):
        return self

    def frame(self, f: Frame, leaf: bool) -> Frame:
        self.calls += 1
        return replace(f, lines=(Line(f"fn_{f.address:x}"),)) if f.mapping else replace(f, reason=Unresolved.NO_MAPPING)


def test_stack_memo_symbolizes_a_repeated_stack_once_but_retries_unmapped_ones() -> None:
    sym = CountingSymbolizer()
    memo = StackMemo(ctx(), sym)
    drain = drain_of(raw(user=(0x401000, 0x400100), count=3), raw(cgroup_id=9, tgid=50, pid=50, user=(0x1234,)))
    for _ in range(3):
        memo.begin_drain()
        profiles = build_profiles(drain, ctx(), 10, memo)
    # the mapped stack's two frames once; the unmapped frame every drain (pid 50's maps were never read:
    # they may come)
    assert sym.calls == 2 + 3
    app = next(p for p in profiles if p.labels["pid"] == "42")
    assert dict(app.name_stacks()) == {("fn_400100", "fn_401000"): 3}


def test_new_processes_do_not_reset_the_agents_health_clock() -> None:
    """/healthz reads `last_drain_at`: a process starting between drains must not make the agent look stuck."""
    from profiler.agent import Agent

    class Sampler:
        period_ns = 10

        def watch_new_processes(self, callback):
            self.announce = callback

        def drain(self):
            return Drain(0, 10)

    sampler = Sampler()
    c = Context(node="n1", maps=FakeMaps(), cgroups=FakeCgroups())
    agent = Agent(sampler, c, symbolizer=CountingSymbolizer(), sink=lambda profiles: None, pod_labels=FakePods())
    assert agent.last_drain_at is None
    agent.drain_once()
    drained_at = agent.last_drain_at
    assert drained_at is not None
    sampler.announce([1234])
    assert c.maps.refreshed == {1234} and agent.last_drain_at == drained_at


def test_the_process_name_is_the_main_threads_comm_and_follows_an_exec() -> None:
    c = Context(node="n1", maps=FakeMaps(), cgroups=FakeCgroups())
    me = os.getpid()
    worker = raw(tgid=me, pid=me + 10_000_000, comm="worker-3", user=(0x400100,))  # not the main thread
    main_thread = raw(tgid=me, pid=me, comm="renamed", user=(0x400100,))  # e.g. after an exec

    def names(*samples) -> set[str]:
        return {p.labels["comm"] for p in build_profiles(drain_of(*samples), c, 10)}

    assert names(worker) == {Path(f"/proc/{me}/comm").read_text().strip()}  # read once from /proc
    assert names(main_thread) == {"renamed"}  # the main thread's own sample says it
    assert names(worker) == {"renamed"}  # and the name sticks for the other threads


def test_kubelet_labels_parse_a_path_once_and_hand_each_caller_its_own_labels() -> None:
    """A cgroup path's pod identity is parsed once (it was twice per profile per drain); the answers stay
    those of a fresh parse, and a caller that adds to its labels (give_up adds the API server's) changes
    nobody else's."""
    from profiler.agent import KubeletLabels
    from profiler.cgroups import labels_for, parse_kubelet_path

    path = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234abcd_5678_90ef_1234_567890abcdef"
            ".slice/cri-containerd-" + "c" * 64 + ".scope")

    class Kube:
        resolved: dict[str, str] | None = None
        asked: list[tuple[str | None, str | None]] = []

        def resolve(self, container_id: str | None, pod_uid: str | None) -> dict[str, str] | None:
            self.asked.append((container_id, pod_uid))
            return self.resolved

        def labels_for(self, kc) -> dict[str, str]:
            return {"pod": "web-1", "namespace": "shop"}

    kube = Kube()
    labeler = KubeletLabels(kube, max_paths=2)
    fresh = {k: v for k, v in labels_for(path).items() if k != "cgroup"}
    kc = parse_kubelet_path(path)
    assert kc is not None and fresh["pod_uid"] == kc.pod_uid
    assert labeler.labels(path) is None  # the API server does not know it yet
    given_up = labeler.give_up(path)
    assert given_up == {**fresh, "pod": "web-1", "namespace": "shop"}
    given_up["extra"] = "x"
    kube.resolved = {"pod": "web-1"}
    assert labeler.labels(path) == {**fresh, "pod": "web-1"}  # nothing of give_up's answer stayed behind
    assert labeler.give_up(path) == {**fresh, "pod": "web-1", "namespace": "shop"}
    assert kube.asked == [(kc.container_id, kc.pod_uid)] * 2  # labels() asks; give_up goes to labels_for
    # other cgroups: a plain one has no pod labels; past max_paths the parsed paths are let go, answers unchanged
    for other in ("/system.slice/sshd.service", "/user.slice", path):
        assert labeler.give_up(other) == ({**fresh, "pod": "web-1", "namespace": "shop"} if other == path else {})
    assert len(labeler._parsed) <= 2
