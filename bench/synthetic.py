"""A synthetic node for store benchmarks and tests: pods, binaries, skewed stacks, agent-shaped drains.

Each pod runs one of a few services (its own binary, shared libc and kernel frames) and owns a
few hundred distinct stacks drawn once; every drain samples each pod's stacks from a Zipf-like
distribution, with a per-pod CPU level, and ships all pods in one gzip pprof with the agent's
labels (as `profiler/upload.py` does), so ingest sees what a real node sends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from podflame import pprof
from podflame.model import Frame, FrameKind, Line, Mapping, Profile, Stack

S = 1_000_000_000
PERIOD_NS = 52_631_578  # 19 Hz
KERNEL_FUNCS = ["entry_SYSCALL_64", "do_syscall_64", "__x64_sys_read", "ksys_read", "vfs_read", "tcp_recvmsg",
                "__schedule", "schedule", "do_epoll_wait", "ep_poll", "__x64_sys_futex", "futex_wait",
                "asm_sysvec_apic_timer_interrupt", "copy_user_enhanced_fast_string", "__sys_sendto", "tcp_sendmsg"]
LIBC_FUNCS = ["__libc_start_main", "malloc", "free", "memcpy", "__memmove_avx_unaligned_erms", "pthread_mutex_lock",
              "epoll_wait", "read", "write", "__GI___poll", "clock_gettime", "strlen"]


@dataclass
class Pod:
    labels: dict[str, str]
    stacks: list[Stack]
    weights: list[float]
    cores: float


def _frames(rng: random.Random, mapping: Mapping, prefix: str, n: int, file: str) -> list[Frame]:
    out = []
    for i in range(n):
        addr = mapping.start + 0x1000 + i * 0x40
        lines = (Line(f"{prefix}{i}", file, rng.randint(10, 4000)),)
        if rng.random() < 0.1:  # some inlined callees
            lines = (Line(f"{prefix}{i}_inl", file, rng.randint(10, 4000)), *lines)
        out.append(Frame(addr, mapping, FrameKind.NATIVE, lines))
    return out


def make_node(pods: int = 100, services: int = 20, stacks_per_pod: int = 300, seed: int = 1) -> list[Pod]:
    """Pods with their stack universes; stack sets of pods of one service overlap (same binary)."""
    rng = random.Random(seed)
    libc = Mapping(0x7F0000000000, 0x7F0000200000, 0, "/usr/lib/x86_64-linux-gnu/libc.so.6", "c0ffee" * 6)
    libc_frames = [Frame(libc.start + 0x1000 + i * 0x80, libc, FrameKind.NATIVE, (Line(n),))
                   for i, n in enumerate(LIBC_FUNCS)]
    kernel = [Frame(0xFFFFFFFF81000000 + i * 0x100, None, FrameKind.KERNEL, (Line(n),))
              for i, n in enumerate(KERNEL_FUNCS)]
    service_frames = []
    for s in range(services):
        exe = Mapping(0x555500000000, 0x555500400000, 0x1000, f"/app/svc{s}", f"{s:04x}" * 10)
        service_frames.append(_frames(rng, exe, f"svc{s}::fn", 400, f"src/svc{s}.cc"))
    out = []
    for p in range(pods):
        s = p % services
        fns = service_frames[s]
        stack_rng = random.Random(seed * 1000 + s * 7 + p % 3)  # replicas of a service share most stacks
        stacks: list[Stack] = []
        seen: set[Stack] = set()
        while len(stacks) < stacks_per_pod:
            # A walk down the service's call graph: function i calls a few of the functions after it.
            stack: list[Frame] = [libc_frames[0]]
            i = 0
            for _ in range(stack_rng.randint(3, 30)):
                stack.append(fns[i])
                i = min(i + 1 + int(stack_rng.paretovariate(1.5) * 3) + (i * 7 + stack_rng.randint(0, 3)) % 5,
                        len(fns) - 1)
            if stack_rng.random() < 0.3:
                stack.append(stack_rng.choice(libc_frames[1:]))
            if stack_rng.random() < 0.25:
                k = stack_rng.randint(2, 6)
                stack.extend(kernel[:2] + stack_rng.sample(kernel[2:], k - 2))
            t = tuple(stack)
            if t not in seen:
                seen.add(t)
                stacks.append(t)
        weights = [1.0 / (i + 1) ** 1.1 for i in range(len(stacks))]  # Zipf-like: a few hot stacks
        ns = f"ns{p % 10}"
        uid = f"{p:08x}-0000-4000-8000-{p:012x}"
        labels = {"namespace": ns, "pod": f"svc{s}-{p:03d}-7d9f", "container": "app", "workload": f"svc{s}",
                  "pod_uid": uid, "container_id": f"{p:064x}", "qos": "burstable", "runtime": "containerd",
                  "cgroup": f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/"
                            f"cri-containerd-{p:064x}.scope",
                  "comm": f"svc{s}", "pid": str(1000 + p)}
        cores = min(1.5, rng.lognormvariate(-2.0, 1.2))  # most pods idle-ish, a few busy
        out.append(Pod(labels, stacks, weights, cores))
    return out


def drain(pods: list[Pod], start_ns: int, seconds: int = 10, seed: int = 0) -> list[Profile]:
    """One agent drain: a profile per pod with samples drawn from its skewed stack distribution."""
    rng = random.Random(seed)
    out = []
    for pod in pods:
        n = max(1, int(rng.gauss(1, 0.1) * pod.cores * seconds * S / PERIOD_NS))
        prof = Profile(labels=dict(pod.labels), start_ns=start_ns, duration_ns=seconds * S, period_ns=PERIOD_NS)
        for stack in rng.choices(pod.stacks, pod.weights, k=n):
            prof.add(stack, 1)
        out.append(prof)
    return out


def drain_pprof(pods: list[Pod], start_ns: int, node: str = "node-1", seconds: int = 10, seed: int = 0) -> bytes:
    """The drain as the agent ships it: one gzip pprof, node in the URL, the rest as sample labels."""
    return pprof.encode(drain(pods, start_ns, seconds, seed))
