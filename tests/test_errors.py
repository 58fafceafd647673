"""One error root, mapped once: exit codes in the CLI, HTTP statuses in the server, a closed store typed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from podflame import errors, pprof
from podflame.cli import EXIT_CODES, main
from profiler.bpfcompile import CompileError
from profiler.sampler import SamplerError
from symbolizer.dwarf import DwarfError
from symbolizer.dwarfread import FormatError
from symbolizer.elf import ElfReadError
from symbolizer.elffile import ElfFormatError
from web.server.api import HTTP_STATUS, ApiError, http_status
from web.server.app import create_app
from web.server.timeparse import TimeError
from web.store.base import StoreClosed
from web.store.selector import SelectorError
from web.store.sqlite import SqliteStore


def test_every_old_root_is_a_podflame_error_of_the_right_kind() -> None:
    kinds = {pprof.PprofError: errors.InvalidInput, pprof.PprofTooLarge: errors.TooLarge,
             SelectorError: errors.InvalidInput, TimeError: errors.InvalidInput, ApiError: errors.PodflameError,
             CompileError: errors.SystemUnsupported, SamplerError: errors.SystemUnsupported,
             ElfReadError: errors.BinaryFormatError, ElfFormatError: errors.BinaryFormatError,
             FormatError: errors.BinaryFormatError, DwarfError: errors.BinaryFormatError,
             StoreClosed: errors.Unavailable}
    for cls, kind in kinds.items():
        assert issubclass(cls, kind), cls
    assert issubclass(SamplerError, RuntimeError) and issubclass(SelectorError, ValueError)  # old catches still work


def test_statuses_and_exit_codes_by_kind() -> None:
    assert [http_status(e) for e in (pprof.PprofTooLarge("x"), SelectorError("x"), errors.NotFound("x"),
                                     StoreClosed("x"), errors.PodflameError("x"), ApiError(418, "x"))] == \
        [413, 400, 404, 503, 500, 418]
    assert HTTP_STATUS[-1] == (errors.PodflameError, 500)
    assert {kind: code for kind, code in EXIT_CODES} == {errors.InvalidInput: 2, errors.SystemUnsupported: 3,
                                                         errors.PodflameError: 1}


def test_a_closed_store_is_a_typed_error_and_503(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s")
    store.close()
    with pytest.raises(StoreClosed):
        store.types(0, 1)
    app = create_app({"DATA_DIR": str(tmp_path / "d"), "MAINTENANCE_SECONDS": 0})
    app.extensions["podflame.store"].close()
    r = app.test_client().get("/api/v1/labels")
    assert r.status_code == 503 and r.json == {"error": "the store is closed"}


def test_the_cli_maps_kinds_to_exit_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    r = CliRunner().invoke(main, ["agent", "--server", "http://127.0.0.1:9"])
    assert r.exit_code == 3 and "Error: podflame agent needs root" in r.output
    not_elf = tmp_path / "not-elf"
    not_elf.write_text("hello\n")
    r = CliRunner().invoke(main, ["symbolize", "--binary", str(not_elf), "0x10"])
    assert r.exit_code == 2 and r.output.startswith("Error: ")
