"""The pages in headless Chromium against the real server: streaming chat, Stop, Describe, errors by
their field, the detail control, grounding and the language switch, with no script or CSP errors."""
from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


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
def page(browser, live_server):
    """A fresh browser context on the live server; fails the test on a script error, a CSP report or
    a missing file (4xx answers to the app's own fetch() calls are expected in error tests)."""
    context = browser.new_context(base_url="http://%s:%d" % live_server, locale="en-US")
    pg = context.new_page()
    problems = []
    pg.on("console", lambda m: problems.append(m.text)
          if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.on("response", lambda r: problems.append(f"{r.status} {r.url}")
          if r.status == 404 or r.status >= 500 else None)
    yield pg
    context.close()
    assert not problems, problems


def image_file(make_png, width=64, height=48):
    return {"name": "photo.png", "mimeType": "image/png", "buffer": make_png(width, height)}


def test_chat_streams_keeps_history_and_describes(page, make_png):
    page.goto("/")
    page.set_input_files("#image", image_file(make_png))
    assert page.locator("img.preview").is_visible()
    page.fill("#question", "What is it?")
    page.click("button[value=ask]")
    answer = page.locator(".bubble.assistant .text").last
    sync_api.expect(answer).to_contain_text("The last image is 64x48 pixels.")
    sync_api.expect(page.locator(".bubble.assistant .meta").last).to_contain_text("tok")
    assert page.input_value("#question") == "" and not page.locator("img.preview").is_visible()
    page.click("button[value=describe_short]")
    sync_api.expect(page.locator(".bubble.assistant .text").last).to_have_text("A 64x48 picture.")
    page.reload()  # the dialog is kept on the server
    assert page.locator(".bubble").count() == 4 and page.locator(".bubble img.thumb").count() == 1


def test_error_next_to_its_field(page):
    page.goto("/")
    page.fill("#question", "No image")
    page.click("button[value=ask]")
    sync_api.expect(page.locator("#error-image")).to_have_text("Please add an image first.")
    assert page.locator(".bubble").count() == 0


def test_stop_cancels_the_generation(page, fake_engine, make_png):
    fake_engine.delay_s = 0.1
    page.goto("/")
    page.set_input_files("#image", image_file(make_png))
    page.fill("#question", " ".join(["word"] * 30))
    page.click("button[value=ask]")
    sync_api.expect(page.locator(".bubble.assistant .text").last).to_contain_text("You")
    page.click("#stop")
    sync_api.expect(page.locator(".bubble.assistant .meta").last).to_contain_text("Stopped")
    assert fake_engine.cancelled.wait(5)


def test_detail_control_says_its_cost(page):
    page.goto("/")
    page.locator("#max_tiles").fill("5")
    sync_api.expect(page.locator("#tiles-cost")).to_have_text("up to 5 tiles ~ slow")


def test_grounding_page(page, make_png):
    page.goto("/ground")
    page.set_input_files("#image", image_file(make_png, 300, 200))
    page.fill("#phrases", "cat, <b>dog</b>")
    page.click("button[type=submit]")
    page.wait_for_url("**/ground")
    img = page.locator("img.annotated")
    assert img.evaluate("i => i.complete && i.naturalWidth") == 300
    assert page.locator("tbody tr").count() == 2
    assert page.locator("tbody tr").nth(1).locator("td").nth(1).inner_text() == "dog"
    page.click("summary:has-text('Raw model answer')")
    assert "<b>dog</b>" in page.locator("details pre").inner_text()


def test_language_switch(page):
    page.goto("/status")
    page.click("a[lang=ru]")
    page.wait_for_url("**/status")
    sync_api.expect(page.locator("h1")).to_have_text("Состояние")
    page.goto("/")
    sync_api.expect(page.locator("button[value=ask]")).to_have_text("Спросить")
