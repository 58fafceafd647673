"""A process that execs its own binary under the same pid and comm (a daemon re-exec'ing its upgraded binary, a
python3 exec'ing python3), sampled with the real agent (`podflame record --pid`): every image is mapped at new
addresses (ASLR). The kernel announced a process once per (tgid, comm), so after the first exec the walker kept the
first image's tables and the symbolizer its maps: 0% of samples reached `_start` and ~23% had no mapping at all.
Now the exec count is in the kernel's key (a new image is announced at once), `podflame record` reads an announced
process's maps then (as the agent does), and the maps cache keeps the images an exec replaced until their samples
are drained (tests/test_procmaps.py): 98-99.5% exact and none unmapped in quiet runs (80% once beside a CI run)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.realsys import WORKLOADS
from tests.test_unwind_bpf import commonest, record, running, share

pytestmark = pytest.mark.bpf

CHAIN = ("main", "image_mid", "image_leaf")


@pytest.fixture(scope="module")
def reexec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("reexec") / "reexec"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(WORKLOADS / "reexec.c")], check=True)
    return exe


def test_each_image_of_a_process_that_execs_itself_unwinds_and_is_named(reexec: Path) -> None:
    with running([str(reexec), "100", "1.0"]) as pid:  # a new image every second, for longer than the recording
        stacks = record(pid)
    exact = share(stacks, lambda s: s[0] == "_start" and s[-3:] == CHAIN)
    unmapped = share(stacks, lambda s: "[no mapping]" in s, least=1)
    print(f"\nre-exec every second: {exact:.1%} of samples exactly _start..{';'.join(CHAIN)}, "
          f"{unmapped:.1%} with no mapping")
    assert exact >= 0.75, f"{exact:.1%}; commonest: {commonest(stacks)}"
    assert unmapped <= 0.1
