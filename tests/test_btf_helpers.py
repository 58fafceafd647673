"""Whether the kernel offers bpf_find_vma, from its BTF (the real one here, and a copy with the enumerator gone),
and from the release when there is no BTF: a sampler must not ask an older kernel for a helper it lacks, which
would fail the whole program's load."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler import sampler
from profiler.btf import VMLINUX_BTF, kernel_has_find_vma, mmap_lock_tracepoint_is_cheap


def test_this_kernel_has_find_vma() -> None:
    assert b"BPF_FUNC_find_vma" in VMLINUX_BTF.read_bytes()  # Linux 6.18 here
    assert kernel_has_find_vma()


def test_a_kernel_whose_helpers_end_before_find_vma(tmp_path: Path) -> None:
    older = tmp_path / "vmlinux"
    older.write_bytes(VMLINUX_BTF.read_bytes().replace(b"\0BPF_FUNC_find_vma\0", b"\0BPF_FUNC_xxxx_vma\0"))
    assert not kernel_has_find_vma(older)


def test_without_btf_the_release_decides(tmp_path: Path) -> None:
    gone = tmp_path / "none"
    assert not kernel_has_find_vma(gone, "5.15.0-91-generic")
    assert not kernel_has_find_vma(gone, "4.19.0")
    assert kernel_has_find_vma(gone, "5.17.0")
    assert kernel_has_find_vma(gone, "6.1.0-28-amd64")
    assert not kernel_has_find_vma(gone, "unknown")


def test_the_mmap_lock_tracepoint_is_cheap_only_where_it_passes_a_memcg_id(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Linux 6.18 here: (mm, write) with the memcg's id; before 6.13 (mm, memcg_path, write) and a cgroup_path per
    # mmap_lock release while a probe is attached, so the sampler leaves on_mmap_unlock out there
    assert mmap_lock_tracepoint_is_cheap()
    assert sampler.tracepoints() == sampler.TRACEPOINTS
    older = tmp_path / "vmlinux"
    older.write_bytes(VMLINUX_BTF.read_bytes().replace(b"\0memcg_id\0", b"\0memcg_xx\0"))
    assert not mmap_lock_tracepoint_is_cheap(older)
    assert not mmap_lock_tracepoint_is_cheap(tmp_path / "none")  # no BTF: not known to be cheap
    monkeypatch.setattr(sampler, "mmap_lock_tracepoint_is_cheap", lambda: False)
    assert sampler.tracepoints() == (("on_new_area", "vm_unmapped_area"),)
