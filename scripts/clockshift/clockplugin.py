"""pytest plugin of scripts/at_time.sh: runs tests at a chosen wall-clock time (sitecustomize.py shifts it).

CLOCKSHIFT_START=ISO (UTC): the run starts then (set before collection, so module constants see it too).
CLOCKSHIFT_EACH=SECONDS: each test starts SECONDS after midnight UTC of a new day (day k of the run is
CLOCKSHIFT_BASE + k days): 86399.5 crosses midnight, an hour and a minute 0.5 s into every test, month and year
ends on their days. Browser contexts get Playwright's clock installed at the shifted time (Chromium's own clock is
real), so the page's Date agrees with the server's."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import pytest

UTC = datetime.UTC
_day = [0]


def _go(seconds: float) -> None:
    time.clockshift_set(int(seconds * 1e9) - time.clockshift_real_ns())  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(time, "clockshift_set"):
        raise pytest.UsageError("scripts/clockshift/clockplugin.py needs scripts/at_time.sh (its sitecustomize)")
    if start := os.environ.get("CLOCKSHIFT_START"):
        _go(datetime.datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp())
    try:
        from playwright.sync_api._generated import Browser
    except ImportError:
        return
    new_context, new_page = Browser.new_context, Browser.new_page

    def shifted_context(self: Browser, *a: Any, **kw: Any) -> Any:
        ctx = new_context(self, *a, **kw)
        ctx.clock.install(time=time.time())
        return ctx

    def shifted_page(self: Browser, *a: Any, **kw: Any) -> Any:
        page = new_page(self, *a, **kw)
        page.context.clock.install(time=time.time())
        return page

    Browser.new_context, Browser.new_page = shifted_context, shifted_page  # type: ignore[method-assign]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if each := os.environ.get("CLOCKSHIFT_EACH"):
        base = datetime.datetime.fromisoformat(os.environ.get("CLOCKSHIFT_BASE", "2026-12-28")).replace(tzinfo=UTC)
        _go(base.timestamp() + _day[0] * 86400 + float(each))
        _day[0] += 1
    item.user_properties.append(("clock", datetime.datetime.fromtimestamp(time.time(), UTC).isoformat()))
