"""The kernel's walk counters (cumulative, one drain's `unwind` report) as /metrics counters: each drain adds what
changed since the previous one, under the label an operator reads."""

from __future__ import annotations

from prometheus_client import generate_latest

from profiler import metrics


def _value(text: str, line_start: str) -> float:
    return float(next(ln for ln in text.splitlines() if ln.startswith(line_start)).rsplit(" ", 1)[1])


def test_library_lookups_by_outcome_count_each_drains_increase() -> None:
    name = "podflame_agent_unwind_library_lookups_total"
    before = generate_latest().decode()
    base = {o: _value(before, f'{name}{{outcome="{o}"}}') if f'outcome="{o}"' in before else 0.0
            for o in ("table", "busy", "no_table", "remembered")}
    first = {"walk_vma": 5, "walk_vma_fail": 1, "walk_vma_no_table": 2, "walk_lib_known": 7, "walk_tables": 20}
    second = {**first, "walk_vma": 6, "walk_lib_known": 17, "walk_tables": 40}
    metrics._unwind_last.clear()
    try:
        metrics.record_unwind(first)
        metrics.record_unwind(second)
    finally:
        metrics._unwind_last.clear()  # a later drain's report counts from zero again
    after = generate_latest().decode()
    got = {o: _value(after, f'{name}{{outcome="{o}"}}') - base[o] for o in base}
    # the new process's libraries served from its own mmaps (unwind_exe_libs) are their own outcome
    assert got == {"table": 6, "busy": 1, "no_table": 2, "remembered": 17}, got
