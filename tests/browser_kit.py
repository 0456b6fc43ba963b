"""What the browser tests share: one headless Chromium per module, pages opened on the live server in a given
language and window size (failing the test on a script error, a CSP report or a missing file), and helpers.

Import the fixtures into a test module: `from browser_kit import browser, open_page, page  # noqa: F401`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
expect = sync_api.expect
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots, kept for people to look at (git-ignored)
README_SHOTS = Path(__file__).parents[1] / "docs" / "screenshots"  # the README's pictures (committed)
DESKTOP, PHONE = (1366, 768), (390, 844)
LOCALES = {"en": "en-US", "ru": "ru-RU"}


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (the system one, else Playwright's own)."""
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Exception as e:  # no browser installed here
            pytest.skip(f"no Chromium: {e}")
        yield b
        b.close()


@pytest.fixture
def open_page(browser, live_server):
    """open_page(lang="en", size=DESKTOP, clipboard=False) -> a page in a fresh context on the live server,
    with the browser asking for that language. The test fails on a script error, a CSP report or a missing
    file (4xx answers to the app's own fetch() calls are expected in error tests)."""
    contexts, problems = [], []

    def open_(lang: str = "en", size: tuple[int, int] = DESKTOP, clipboard: bool = False):
        base = "http://%s:%d" % live_server
        context = browser.new_context(base_url=base, locale=LOCALES[lang],
                                      viewport={"width": size[0], "height": size[1]})
        if clipboard:
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        contexts.append(context)
        pg = context.new_page()
        pg.on("console", lambda m: problems.append(m.text)
              if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        pg.on("pageerror", lambda e: problems.append(str(e)))
        pg.on("response", lambda r: problems.append(f"{r.status} {r.url}") if unexpected(r) else None)
        return pg

    yield open_
    for context in contexts:
        context.close()
    assert not problems, problems


def unexpected(response) -> bool:
    """A missing file, or a server error other than /health's 503 while the model loads."""
    if response.status == 404:
        return response.request.resource_type != "fetch"
    return response.status >= 500 and not (response.status == 503 and response.url.endswith("/health"))


@pytest.fixture
def page(open_page):
    """A desktop-sized page in English."""
    return open_page()


def image_file(make_png, width=64, height=48, name="photo.png"):
    """A file for set_input_files."""
    return {"name": name, "mimeType": "image/png", "buffer": make_png(width, height)}


def screenshot(page, name: str) -> None:
    """Keep a full-page screenshot under tests/artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def readme_screenshot(page, name: str) -> None:
    """With UPDATE_SCREENSHOTS=1, write the README's picture docs/screenshots/<name>.png of this page (1024 px
    wide: the content's width, without the margins of a wider window)."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        size = page.viewport_size
        page.set_viewport_size({"width": 1024, "height": size["height"]})
        page.screenshot(path=str(README_SHOTS / f"{name}.png"), full_page=True)
        page.set_viewport_size(size)


def tab_to(page, selector: str, presses: int = 40) -> int:
    """Press Tab until the element matching selector has the focus; the number of presses it took."""
    target = page.locator(selector)
    for n in range(1, presses + 1):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):
            return n
    raise AssertionError(f"{selector} not reached with {presses} presses of Tab")


def clipboard(page) -> str:
    """The text on the clipboard (the context must have been opened with clipboard=True)."""
    return page.evaluate("navigator.clipboard.readText()")
