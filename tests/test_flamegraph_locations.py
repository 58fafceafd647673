"""The flame graph's `locations`: each name's hottest file:line, so an inlined function (a frame of its
own) also says where it is in the source, as `go tool pprof -lines` does for the same data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from podflame.model import Frame, FrameKind, Line, Mapping
from tests.builders import ingest
from tests.test_api import RANGE, T0, prof
from web.server.app import create_app
from web.store.base import Store

EXE = Mapping(0x555500000000, 0x555500010000, 0x1000, "/usr/bin/shop", "abcdef0123")


def at(addr: int, *lines: tuple[str, str | None, int | None]) -> Frame:
    """A frame whose lines are innermost first, as the symbolizer gives them."""
    return Frame(addr, EXE, FrameKind.NATIVE, tuple(Line(*ln) for ln in lines))


def test_each_name_gets_its_hottest_file_line(tmp_path: Path, make_store: Callable[[Path], Store]) -> None:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "TESTING": True, "STORE": make_store(tmp_path / "data")})
    client = app.test_client()
    main = at(0x1100, ("main", "shop.cc", 40))
    # two addresses in checkout's loop, both inside the inlined price_mix, on different lines
    hot = at(0x1200, ("price_mix", "mix.h", 13), ("checkout", "shop.cc", 30))
    warm = at(0x1208, ("price_mix", "mix.h", 15), ("checkout", "shop.cc", 30))
    tally = at(0x1300, ("tally", "shop.cc", 22), ("checkout", "shop.cc", 31))
    stripped = Frame(0x1400, EXE, FrameKind.NATIVE, (Line("helper"),))
    ingest(client, [prof({"pod": "cart"}, T0, ((main, hot), 70), ((main, warm), 20), ((main, tally), 5),
                         ((main, stripped), 5))])
    fg = client.get("/api/v1/flamegraph", query_string={**RANGE, "query": '{pod="cart"}'}).json
    app.extensions["podflame.store"].close()
    where = dict(zip(fg["names"], fg["locations"], strict=True))
    assert where == {"total": "", "main": "shop.cc:40", "checkout": "shop.cc:30", "price_mix": "mix.h:13",
                     "tally": "shop.cc:22", "helper": ""}
