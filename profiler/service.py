"""The node agent, wired: Kubernetes metadata, pod selection, sampler, symbolizer, uploader and the
drain loop in a thread. What `podflame agent` and `podflame up` run; the CLI only parses options.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from podflame.errors import InvalidInput
from podflame.threads import daemon_thread
from profiler.health import AgentHealth
from profiler.kube import PodSelection


def start_agent(server_url: str, frequency: int, interval: float, node: str | None, *, unwind: str,
                python_frames: bool, pid_min_age_s: float, python_early_reads: tuple[float, ...] = (),
                namespaces: str | None = None,
                exclude_namespaces: str | None = None,
                pod_selector: str | None = None, pod_labels: str | None = None,
                pod_annotations: str | None = None, health: AgentHealth | None = None,
                token_file: str | None = None, ca_file: str | None = None,
                say: Callable[[str], None] = lambda text: None) -> Callable[[], None]:
    """Start sampling and shipping to `server_url`; returns the function that stops it (with a final drain).

    `unwind`, `python_frames` and `python_early_reads` are the sampler's (profiler.sampler.Sampler), given
    by the caller: the command line's options, never the environment read behind the caller's back. `pid_min_age_s` says
    which processes get a pid label (profiler/pidlabel.py).

    Raises InvalidInput for a pod selection that cannot work, SamplerError when BPF cannot run here.
    """
    from podflame import compiled
    from profiler import metrics
    from profiler.agent import Agent, KubeletLabels, create_context
    from profiler.cgroups import CgroupResolver
    from profiler.kube import KubeMetadata
    from profiler.procmaps import MapsCache
    from profiler.sampler import Sampler
    from profiler.selection import PodCgroupFilter, parse_selection
    from profiler.upload import Uploader
    from symbolizer import Symbolizer

    ctx = create_context(node, pid_min_age_s)
    copy: dict[str, list[str]] = {}
    if pod_labels is not None:
        copy["label_allowlist"] = [k.strip() for k in pod_labels.split(",") if k.strip()]
    if pod_annotations is not None:
        copy["annotation_allowlist"] = [k.strip() for k in pod_annotations.split(",") if k.strip()]
    kube = KubeMetadata.from_environment(ctx.node, **copy)  # None (logged once) on a plain host
    try:
        selection = parse_selection(namespaces, exclude_namespaces, pod_selector,
                                    watch_namespace=kube.namespace if kube is not None else None)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    if not selection.everything and kube is None:
        raise InvalidInput("choosing pods (--namespaces, --exclude-namespaces, --pod-selector) needs the "
                           "Kubernetes API: run in a cluster or set KUBECONFIG")
    if kube is not None:
        kube.start()
    say(f"podflame agent: running {compiled.status.describe()}")
    metrics.COMPILED_MODULES.set(len(compiled.status.modules))
    say(f"podflame agent: compiling the eBPF sampler ({frequency} Hz on {os.cpu_count()} CPUs)...")
    # with a selection, nothing is sampled until the selected pods' cgroups are known
    sampler = Sampler(frequency, cgroup_ids=None if selection.everything else PodCgroupFilter.initial_ids(),
                      unwind=unwind, python_frames=python_frames, python_early_reads=python_early_reads)
    pod_filter = None
    if not selection.everything:
        assert kube is not None and isinstance(ctx.cgroups, CgroupResolver)  # checked above; create_context's
        pod_filter = PodCgroupFilter(sampler, kube, selection, ctx.cgroups)
        pod_filter.start()
    assert isinstance(ctx.maps, MapsCache)  # create_context's: the symbolizer reads binaries through it
    symbolizer = Symbolizer(ctx.maps)
    uploader = Uploader(server_url, node=ctx.node, token_file=token_file, ca_file=ca_file)
    agent = Agent(sampler, ctx, symbolizer, uploader, pod_labels=KubeletLabels(kube), interval=interval)
    thread = daemon_thread(agent.run, "podflame-agent")
    thread.start()
    if health is not None:
        health.attach(agent, thread, kube, pod_filter)
    what = "every process" if selection.everything else f"only pods with {describe(selection)}"
    say(f"podflame agent: sampling {what} on node {ctx.node!r}, shipping every {interval:g}s to {server_url}")

    def stop() -> None:
        agent.stop()
        thread.join(timeout=interval + 30)
        uploader.close()
        if pod_filter is not None:
            pod_filter.stop()
        sampler.close()
        if kube is not None:
            kube.stop()

    return stop


def describe(selection: PodSelection) -> str:
    """A pod selection in words, for the start-up message."""
    parts = []
    if selection.namespaces:
        parts.append("namespace in " + ",".join(sorted(selection.namespaces)))
    if selection.exclude_namespaces:
        parts.append("namespace not in " + ",".join(sorted(selection.exclude_namespaces)))
    parts.extend(f"{k}={v}" for k, v in sorted(selection.labels.items()))
    return " and ".join(parts)
