"""The agent's metrics show the share of resolved frames and why the others stayed unresolved."""

from __future__ import annotations

from prometheus_client import REGISTRY

from podflame.model import Frame, FrameKind, Mapping, Profile
from profiler import metrics
from profiler.sampler import Drain
from symbolizer import Symbolizer
from tests.test_dwarf_corpus import build_corpus
from tests.test_symbolizer_build import nm_functions


def test_resolved_share_and_reasons_reach_the_metrics(tmp_path) -> None:
    pie = next(p for p in build_corpus(tmp_path) if p.name == "dwarf-pie")
    start, size = nm_functions(pie)["hot_loop"]
    m = Mapping(0x1000_0000, 0x1000_0000 + 0x10_0000, 0, str(pie))  # whole file mapped at offset 0
    p = Profile(labels={"pid": "999999999"}, start_ns=0, duration_ns=1, period_ns=1)
    p.add((Frame(0x1000_0000 + start + size // 2, m, FrameKind.NATIVE),           # resolves (DWARF)
           Frame(0x1000_0000 + 0x5, m, FrameKind.NATIVE),                          # ELF header: no symbols
           Frame(0x7777, None, FrameKind.NATIVE)), 4)                              # no mapping, process gone
    out = Symbolizer(kallsyms_path="/dev/null").symbolize(p)
    (stack,) = out.samples
    assert stack[0].lines and stack[0].lines[0].file and stack[1].reason and stack[2].reason

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {r: sample("podflame_agent_frames_total", resolution=r) for r in ("resolved", "no_symbols",
                                                                              "process_gone", "no_mapping")}
    metrics.record_drain(Drain(0, 1), [out], {})
    after = {r: sample("podflame_agent_frames_total", resolution=r) for r in before}
    assert after["resolved"] - before["resolved"] == 1
    assert after["no_symbols"] - before["no_symbols"] == 1
    assert (after["process_gone"] + after["no_mapping"]) - (before["process_gone"] + before["no_mapping"]) == 1
    assert abs(sample("podflame_agent_resolved_frame_ratio") - 1 / 3) < 1e-9
