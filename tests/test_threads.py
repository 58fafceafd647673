"""The agent's threads are named in the kernel, where top -H, ps -L and the overhead bench read them."""

from __future__ import annotations

import threading
from pathlib import Path

from podflame.threads import daemon_thread, os_name


def test_a_daemon_thread_names_its_os_thread_before_its_work() -> None:
    seen: dict[str, str] = {}
    done = threading.Event()

    def work() -> None:
        seen["comm"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        done.wait(10)

    t = daemon_thread(work, "podflame-new-processes")
    assert t.daemon and t.name == "podflame-new-processes"
    t.start()
    try:
        for _ in range(100):
            if "comm" in seen:
                break
            threading.Event().wait(0.01)
        assert seen["comm"] == "pf-new-processe"  # the kernel keeps 15 bytes
        assert Path(f"/proc/self/task/{t.native_id}/comm").read_text().strip() == "pf-new-processe"
    finally:
        done.set()
        t.join(5)
    main_comm = Path(f"/proc/self/task/{threading.main_thread().native_id}/comm").read_text().strip()
    assert main_comm != "pf-new-processe"  # only that thread was renamed


def test_names_fit_the_kernel() -> None:
    assert os_name("podflame-unwind") == b"pf-unwind"
    assert os_name("worker") == b"worker"
    assert len(os_name("podflame-" + "x" * 40)) == 15
