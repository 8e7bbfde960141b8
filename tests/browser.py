"""Shared Playwright fixtures for the browser tests: Debian's Chromium, one page per test
with its console errors collected. Import the fixtures into a test module to use them."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page

CHROMIUM = Path("/usr/bin/chromium")
# As root in a container: no sandbox; no background traffic to Google's hosts on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> NoReturn:
    """Fail in CI, where the browser must be installed (.ci/run does it); skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: Playwright's sync API runs its own event loop, which must not be alive while
    # pytest-asyncio runs the async tests of other modules.
    if not CHROMIUM.exists():
        _unavailable(
            f"{CHROMIUM} not found: browser tests need Debian's Chromium (apt-get install chromium)"
        )
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[test]'")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class UI:
    """One browser page on the steppe server, with what its console reported."""

    page: Page
    base_url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def path(self) -> str:
        """The current URL without the origin, decoded."""
        return urllib.parse.unquote(self.page.url.removeprefix(self.base_url))

    def query(self) -> dict[str, str]:
        parsed = urllib.parse.urlsplit(self.page.url)
        return dict(urllib.parse.parse_qsl(parsed.query))

    def screenshot(self, name: str, *, full_page: bool = True) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)

    def assert_no_console_errors(self, *allowed: str) -> None:
        problems = [
            p for p in self.console_errors if not any(a in p for a in allowed)
        ] + self.page_errors
        assert not problems, "browser console reported errors:\n" + "\n".join(problems)


@pytest.fixture
def ui(browser: Browser, steppe_server: Any) -> Iterator[UI]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    u = UI(page=page, base_url=steppe_server.http_url.rstrip("/"))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            u.console_errors.append(f"console.error: {message.text} ({message.location['url']})")

    def on_page_error(error: Error) -> None:
        u.page_errors.append(f"uncaught: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    try:
        yield u
    finally:
        context.close()
