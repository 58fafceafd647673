"""Whether the kernel offers bpf_find_vma, from its BTF (the real one here, and a copy with the enumerator gone),
and from the release when there is no BTF: a sampler must not ask an older kernel for a helper it lacks, which
would fail the whole program's load."""

from __future__ import annotations

from pathlib import Path

from profiler.btf import VMLINUX_BTF, kernel_has_find_vma


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
