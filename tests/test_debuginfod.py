"""The debuginfod client against a real local HTTP server: a stripped binary gets file:line once its
debug file is fetched, and a slow, empty or lying server never blocks or corrupts symbolization."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podflame.model import Frame, FrameKind, Line, Mapping, Profile
from symbolizer import Symbolizer
from symbolizer.debuginfod import Debuginfod
from symbolizer.elf import ElfSymbols, read_build_id
from tests.debuginfod_standin import Server, debuginfod_standin
from tests.test_symbolizer_build import need_tools, nm_functions

WAIT = 60.0  # a liveness bound for the background fetch, not a speed requirement

SOURCE = """
#include <stdlib.h>
__attribute__((noinline)) long work(long n) {
    long s = 0;
    for (long i = 0; i < n; i++)
        s += i * i;  /* WORK_LINE */
    return s;
}
int main(int argc, char **argv) { return (int)(work(argc > 1 ? atol(argv[1]) : 10) & 1); }
"""


@dataclass
class Built:
    stripped: Path  # no DWARF (and, for `bare`, no .symtab either)
    bare: Path
    debug: Path  # objcopy --only-keep-debug of the same build
    other_debug: Path  # a debug file of another build (another build id)
    build_id: str
    work: int  # ELF address inside work's loop, where addr2line gives WORK_LINE
    line: int


def _build(d: Path, name: str, extra: str = "") -> Path:
    src = d / f"{name}.c"
    src.write_text(SOURCE + extra)
    exe = d / name
    subprocess.run(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-Wl,--build-id", "-o", str(exe), str(src)],
                   check=True, capture_output=True)
    return exe


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    need_tools("gcc", "objcopy", "strip", "nm", "addr2line")
    d = tmp_path_factory.mktemp("debuginfod")
    exe = _build(d, "prog")
    debug = d / "prog.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(debug)], check=True)
    stripped, bare = d / "prog-stripped", d / "prog-bare"
    subprocess.run(["strip", "--strip-debug", "-o", str(stripped), str(exe)], check=True)
    subprocess.run(["strip", "--strip-all", "-o", str(bare), str(exe)], check=True)
    other = _build(d, "other", "int unused_other(void) { return 7; }\n")
    other_debug = d / "other.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(other), str(other_debug)], check=True)

    start, size = nm_functions(exe)["work"]
    want = next(i + 1 for i, s in enumerate(SOURCE.splitlines()[1:]) if "WORK_LINE" in s)
    addrs = list(range(start, start + size))
    out = subprocess.run(["addr2line", "-e", str(exe), *map(hex, addrs)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    work = next(a for a, loc in zip(addrs, out, strict=True) if loc.endswith(f"prog.c:{want}"))
    build_id = read_build_id(str(exe))
    assert build_id and read_build_id(str(stripped)) == build_id
    return Built(stripped, bare, debug, other_debug, build_id, work, want)


@pytest.fixture
def server() -> Iterator[Server]:
    with debuginfod_standin() as state:
        yield state


def _client(server: Server, cache: Path, **kwargs: object) -> Debuginfod:
    # "empty" knows nothing (404s), "full" serves server.files: the client must go on to the next URL
    return Debuginfod([f"{server.url}/empty", f"{server.url}/full"], str(cache), **kwargs)  # type: ignore[arg-type]


def _lines(sym: Symbolizer, exe: Path, vaddr: int) -> tuple[Line, ...]:
    """Symbolize one leaf frame of `exe` mapped at a PIE base, as the agent would."""
    elf = ElfSymbols(str(exe))
    base = 0x5555_5555_4000
    text = next(s for s in elf.segments if s.executable)
    m = Mapping(base + text.vaddr, base + text.vaddr + text.memsz, text.offset, str(exe), elf.build_id)
    p = Profile(labels={}, start_ns=0, duration_ns=1, period_ns=1)
    p.add((Frame(base + vaddr, m, FrameKind.NATIVE),), 1)
    (stack,) = sym.symbolize(p).samples
    return stack[0].lines


def _symbolizer(client: Debuginfod) -> Symbolizer:
    return Symbolizer(kallsyms_path="/dev/null", debug_dirs=(), debuginfod=client)


def test_stripped_binary_gets_file_line_once_the_debug_file_is_fetched(built: Built, server: Server,
                                                                       tmp_path: Path) -> None:
    server.files[built.build_id] = ("ok", built.debug.read_bytes())
    client = _client(server, tmp_path / "cache")
    sym = _symbolizer(client)
    first = _lines(sym, built.stripped, built.work)
    assert [(ln.function, ln.file) for ln in first] == [("work", None)]  # the symbol table answers at once
    generation = sym.generation
    assert client.wait(WAIT)
    assert sym.generation > generation
    (line,) = _lines(sym, built.stripped, built.work)
    assert (line.function, Path(line.file or "").name, line.line) == ("work", "prog.c", built.line)

    stored = Path(client.path(built.build_id))
    assert stored.parent.parent == tmp_path / "cache" / ".build-id"
    assert read_build_id(str(stored)) == built.build_id
    assert not [p for p in stored.parent.iterdir() if p.name.startswith(".tmp-")]
    stats = sym.stats()
    assert stats["debuginfod_fetches"] == 1 and stats["debuginfod_hits"] == 1
    assert stats["debuginfod_errors"] == 0 and stats["debuginfod_misses"] == 0
    empty, full = (f"/{p}/buildid/{built.build_id}/debuginfo" for p in ("empty", "full"))
    assert server.requests == {empty: 1, full: 1}

    # a restarted agent finds the file in its cache: DWARF on the first call, no request
    again = _client(server, tmp_path / "cache")
    (line,) = _lines(_symbolizer(again), built.stripped, built.work)
    assert line.line == built.line and again.stats()["hits"] == 1
    assert server.requests == {empty: 1, full: 1}


def test_fully_stripped_binary_gets_its_names_from_the_fetched_file(built: Built, server: Server,
                                                                   tmp_path: Path) -> None:
    server.files[built.build_id] = ("ok", built.debug.read_bytes())
    client = _client(server, tmp_path / "cache")
    sym = _symbolizer(client)
    # no .symtab: until the file is here, at most its function's start from .eh_frame_hdr (no name, no line)
    assert all(line.function != "work" and line.line is None for line in _lines(sym, built.bare, built.work))
    assert client.wait(WAIT)
    (line,) = _lines(sym, built.bare, built.work)
    assert (line.function, line.line) == ("work", built.line)


def test_a_hanging_server_does_not_block_symbolization(built: Built, server: Server, tmp_path: Path) -> None:
    server.files[built.build_id] = ("hang", built.debug.read_bytes())
    client = _client(server, tmp_path / "cache")
    sym = _symbolizer(client)
    assert [ln.file for ln in _lines(sym, built.stripped, built.work)] == [None]
    assert server.entered.wait(WAIT)
    # the fetch is now stuck inside the server: symbolizing goes on, and asks nothing more
    for _ in range(3):
        assert [ln.file for ln in _lines(sym, built.stripped, built.work)] == [None]
    assert not server.release.is_set() and sum(server.requests.values()) == 2
    server.release.set()
    assert client.wait(WAIT)
    (line,) = _lines(sym, built.stripped, built.work)
    assert line.line == built.line


def test_a_server_that_never_answers_times_out_and_is_not_asked_again_at_once(built: Built, server: Server,
                                                                              tmp_path: Path) -> None:
    server.files[built.build_id] = ("hang", b"")
    client = _client(server, tmp_path / "cache", timeout=0.2)
    sym = _symbolizer(client)
    assert [ln.file for ln in _lines(sym, built.stripped, built.work)] == [None]
    assert client.wait(WAIT)
    assert client.stats()["errors"] == 1 and client.stats()["fetches"] == 0
    assert not client.request(built.build_id)  # remembered for error_retry_after
    assert not list((tmp_path / "cache").rglob("*.debug"))


def test_404_is_cached_so_misses_do_not_storm_the_server(built: Built, server: Server, tmp_path: Path) -> None:
    client = _client(server, tmp_path / "cache")
    for _ in range(3):
        sym = _symbolizer(client)  # a new symbolizer each time: nothing cached but the client's miss
        assert [ln.file for ln in _lines(sym, built.stripped, built.work)] == [None]
        assert client.wait(WAIT)
    assert sum(server.requests.values()) == 2  # one round over both URLs
    assert client.stats()["misses"] == 1 and client.stats()["requests"] == 1
    retrying = _client(server, tmp_path / "cache2", retry_after=0.0)
    assert retrying.request(built.build_id) and retrying.wait(WAIT)
    assert retrying.request(built.build_id), "a miss is asked again once retry_after has passed"
    assert retrying.wait(WAIT)


@pytest.mark.parametrize("reply", ["other build", "not elf", "too big"])
def test_a_wrong_reply_is_rejected(reply: str, built: Built, server: Server, tmp_path: Path) -> None:
    body = {"other build": built.other_debug.read_bytes(), "not elf": b"<html>debuginfod proxy error</html>",
            "too big": built.debug.read_bytes()}[reply]
    server.files[built.build_id] = ("ok", body)
    client = _client(server, tmp_path / "cache", max_bytes=1024 if reply == "too big" else 1 << 30)
    sym = _symbolizer(client)
    _lines(sym, built.stripped, built.work)
    assert client.wait(WAIT)
    assert client.stats()["rejected"] == 1 and client.stats()["errors"] == 1 and client.stats()["fetches"] == 0
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing kept, not even a temp file
    assert [ln.file for ln in _lines(sym, built.stripped, built.work)] == [None]


def test_off_unless_debuginfod_urls_is_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)
    assert Symbolizer(kallsyms_path="/dev/null").debuginfod is None
    assert "debuginfod_fetches" not in Symbolizer(kallsyms_path="/dev/null").stats()
    assert Debuginfod.from_env({"DEBUGINFOD_URLS": "  "}) is None
    env = {"DEBUGINFOD_URLS": "http://a.example/ https://b.example", "PODFLAME_SYMBOL_CACHE": str(tmp_path),
           "DEBUGINFOD_TIMEOUT": "3", "DEBUGINFOD_MAXSIZE": "1000"}
    client = Debuginfod.from_env(env)
    assert client is not None
    assert client.urls == ("http://a.example", "https://b.example")
    assert client.cache_dir == str(tmp_path / "debuginfod")
    assert (client.timeout, client.max_bytes) == (3.0, 1000)
    monkeypatch.setenv("DEBUGINFOD_URLS", "http://127.0.0.1:9")
    monkeypatch.setenv("DEBUGINFOD_CACHE_PATH", str(tmp_path / "c"))
    assert Symbolizer(kallsyms_path="/dev/null").debuginfod is not None


def test_the_agents_stack_memo_is_redone_when_a_debug_file_arrives() -> None:
    """The agent memoizes symbolized stacks across drains: a new `generation` (a fetched debug file)
    must drop them, or a hot stack would keep its symbol-table-only frames for the memo's lifetime."""
    from profiler.agent import StackMemo, build_profiles
    from tests.test_agent import CountingSymbolizer, ctx, drain_of, raw

    sym = CountingSymbolizer()
    memo = StackMemo(ctx(), sym)
    drain = drain_of(raw(user=(0x401000, 0x400100)))
    for generation in (0, 0, 1, 1):
        sym.generation = generation
        memo.begin_drain()
        build_profiles(drain, ctx(), 10, memo)
    assert sym.calls == 2 * 2  # the stack's two frames once, and once more after the arrival
