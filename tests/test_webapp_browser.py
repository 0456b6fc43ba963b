"""The pages in headless Chromium against the real server: streaming chat, Stop, Describe, errors by
their field, the detail control, grounding and the language switch, with no script or CSP errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots, kept for people to look at (git-ignored)


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
          if (r.status == 404 and r.request.resource_type != "fetch") or r.status >= 500 else None)
    yield pg
    context.close()
    assert not problems, problems


def image_file(make_png, width=64, height=48, name="photo.png"):
    return {"name": name, "mimeType": "image/png", "buffer": make_png(width, height)}


def screenshot(page, name: str) -> None:
    """Keep a full-page screenshot under tests/artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


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


def test_image_is_read_before_the_question(page, fake_engine, make_png):
    fake_engine.prepare_tile_s = 0.4  # 3 tiles: long enough to watch the progress
    page.goto("/")
    page.set_input_files("#image", image_file(make_png, 200, 100))
    status = page.locator("#image-status")
    sync_api.expect(status).to_contain_text("/3")  # "Reading the image… n/3", next to the preview
    assert status.inner_text().startswith("Reading the image")
    screenshot(page, "prepare-reading")
    sync_api.expect(status).to_have_text("Image ready", timeout=10_000)
    assert page.locator("img.preview").is_visible()
    screenshot(page, "prepare-ready")
    assert [c[0] for c in fake_engine.calls] == ["prepare"]  # sent when chosen, before any question
    page.fill("#question", "What is it?")
    page.click("button[value=ask]")
    answer = page.locator(".bubble.assistant .text").last
    sync_api.expect(answer).to_contain_text("The last image is 200x100 pixels.")
    screenshot(page, "prepare-answered")
    assert [c[0] for c in fake_engine.calls] == ["prepare", "chat"]
    assert fake_engine.calls[1][1][-1].images[0] is fake_engine.calls[0][1]  # the id was sent, not the file
    assert page.locator(".bubble.user img.thumb").count() == 1 and status.is_hidden()


def test_asking_before_ready_waits_and_the_grounding_page_shares_the_image(page, fake_engine, make_png, tmp_path):
    fake_engine.prepare_tile_s = 0.5
    picture = tmp_path / "shared.png"  # a file on disk: the same name, size and date when chosen again
    picture.write_bytes(make_png(200, 100))
    page.goto("/")
    page.set_input_files("#image", picture)
    page.fill("#question", "Quick?")
    page.click("button[value=ask]")  # long before "ready": the server waits for the reading
    sync_api.expect(page.locator(".bubble.assistant .text").last).to_contain_text("200x100", timeout=10_000)
    page.goto("/ground")
    page.set_input_files("#image", picture)  # the same file: its reading is found, not sent again
    sync_api.expect(page.locator("#image-status")).to_have_text("Image ready")
    page.fill("#phrases", "cat")
    page.click("button[type=submit]")
    sync_api.expect(page.locator("tbody tr")).to_have_count(1)
    screenshot(page, "prepare-ground-shared")
    assert [c[0] for c in fake_engine.calls] == ["prepare", "chat", "ground"]
    assert fake_engine.calls[2][1] is fake_engine.calls[0][1]


def test_a_replaced_image_drops_its_reading(page, fake_engine, make_png):
    fake_engine.prepare_tile_s = 0.2
    page.goto("/ground")
    page.set_input_files("#image", image_file(make_png, 200, 100, name="first.png"))
    sync_api.expect(page.locator("#image_id")).not_to_have_value("")
    first = page.input_value("#image_id")
    page.set_input_files("#image", image_file(make_png, 100, 200, name="second.png"))
    sync_api.expect(page.locator("#image-status")).to_have_text("Image ready")
    assert page.input_value("#image_id") != first
    assert fake_engine.preparations[first].cancelled_at is not None


def test_a_bad_file_is_refused_when_chosen(page):
    page.goto("/")
    page.set_input_files("#image", {"name": "x.png", "mimeType": "image/png", "buffer": b"<html></html>"})
    sync_api.expect(page.locator("#error-image")).to_contain_text("not an image")
    assert page.locator("#image-status").is_hidden() and page.input_value("#image_id") == ""


def test_an_expired_reading_falls_back_to_sending_the_file(page, fake_engine, make_png):
    page.goto("/")
    page.set_input_files("#image", image_file(make_png, 200, 100))
    sync_api.expect(page.locator("#image-status")).to_have_text("Image ready")
    fake_engine.cancel_prepare(page.input_value("#image_id"))  # as if it expired on the server
    page.fill("#question", "Still there?")
    page.click("button[value=ask]")
    sync_api.expect(page.locator(".bubble.assistant .text").last).to_contain_text("200x100")
    assert page.locator("#error-image").is_hidden() and page.locator(".bubble").count() == 2


def test_moving_the_detail_control_reads_the_same_image_again(page, fake_engine, make_png):
    page.goto("/")
    page.set_input_files("#image", image_file(make_png, 200, 100))
    sync_api.expect(page.locator("#image-status")).to_have_text("Image ready")
    first = page.input_value("#image_id")
    page.locator("#max_tiles").fill("5")
    page.wait_for_function("old => !['', old].includes(document.getElementById('image_id').value)", arg=first)
    sync_api.expect(page.locator("#image-status")).to_have_text("Image ready")
    (_, image, tiles), (_, again, more) = fake_engine.calls
    assert (tiles, more) == (2, 5) and again is image  # read again from its id, not uploaded again
    assert fake_engine.preparations[first].cancelled_at is not None
