"""The pages in headless Chromium against the real server: streaming chat, Stop, Describe, errors by
their field, the detail control, grounding and the language switch, with no script or CSP errors."""
from __future__ import annotations

import re

import pytest
from browser_kit import browser, open_page, page  # noqa: F401  (fixtures)
from browser_kit import expect, image_file, screenshot

pytestmark = pytest.mark.browser


def test_chat_streams_keeps_history_and_describes(page, make_png):
    page.goto("/")
    page.set_input_files("#image", image_file(make_png))
    expect(page.locator("img.preview")).to_be_visible()
    page.fill("#question", "What is it?")
    page.click("button[value=ask]")
    answer = page.locator(".bubble.assistant .text").last
    expect(answer).to_contain_text("The last image is 64x48 pixels.")
    expect(page.locator(".bubble.assistant .timing").last).to_contain_text("tokens")
    expect(page.locator("#question")).to_have_value("")
    expect(page.locator("img.preview")).to_be_hidden()
    page.click("button[value=describe_short]")
    expect(page.locator(".bubble.assistant .text").last).to_have_text("A 64x48 picture.")
    page.reload()  # the dialog is kept on the server
    expect(page.locator(".bubble")).to_have_count(4)
    expect(page.locator(".bubble img.thumb")).to_have_count(1)


def test_error_next_to_its_field(page):
    page.goto("/")
    page.fill("#question", "No image")
    page.click("button[value=ask]")
    expect(page.locator("#error-image")).to_have_text("Please add an image first.")
    expect(page.locator(".bubble")).to_have_count(0)


def test_stop_cancels_the_generation(page, fake_engine, make_png):
    fake_engine.delay_s = 0.1
    page.goto("/")
    page.set_input_files("#image", image_file(make_png))
    page.fill("#question", " ".join(["word"] * 30))
    page.click("button[value=ask]")
    expect(page.locator(".bubble.assistant .text").last).to_contain_text("You")
    page.click("#stop")
    expect(page.locator(".bubble.assistant .meta").last).to_contain_text("Stopped")
    assert fake_engine.cancelled.wait(5)


def test_detail_control_says_its_cost(page):
    page.goto("/")
    page.locator("#max_tiles").fill("5")
    expect(page.locator("#tiles-cost")).to_have_text("up to 5 tiles ~ slow")


def test_grounding_page(page, make_png):
    page.goto("/ground")
    page.set_input_files("#image", image_file(make_png, 300, 200))
    page.fill("#phrases", "cat, <b>dog</b>")
    page.click("button[type=submit]")
    page.wait_for_url("**/ground#result")
    expect(page.locator("tbody tr")).to_have_count(2)
    img = page.locator("img.annotated")
    page.wait_for_function("i => i.complete && i.naturalWidth === 300", arg=img.element_handle())
    expect(page.locator("tbody tr").nth(1).locator("td").nth(1)).to_have_text("dog")
    page.click("summary:has-text('Raw model answer')")
    expect(page.locator("details:has(summary:has-text('Raw model answer')) pre")).to_contain_text("<b>dog</b>")


def test_language_switch(page):
    page.goto("/status")
    page.click("a[lang=ru]")
    page.wait_for_url("**/status")
    expect(page.locator("h1")).to_have_text("Состояние")
    page.goto("/")
    expect(page.locator("button[value=ask]")).to_have_text("Спросить")


def test_image_is_read_before_the_question(page, fake_engine, make_png):
    fake_engine.prepare_tile_s = 0.4  # 3 tiles: long enough to watch the progress
    page.goto("/")
    page.set_input_files("#image", image_file(make_png, 200, 100))
    status = page.locator("#image-status")
    expect(status).to_have_text(re.compile(r"^Reading the image… \d/3$"))  # next to the preview
    screenshot(page, "prepare-reading")
    expect(status).to_have_text("Image ready", timeout=10_000)
    expect(page.locator("img.preview")).to_be_visible()
    screenshot(page, "prepare-ready")
    assert [c[0] for c in fake_engine.calls] == ["prepare"]  # sent when chosen, before any question
    page.fill("#question", "What is it?")
    page.click("button[value=ask]")
    answer = page.locator(".bubble.assistant .text").last
    expect(answer).to_contain_text("The last image is 200x100 pixels.")
    screenshot(page, "prepare-answered")
    assert [c[0] for c in fake_engine.calls] == ["prepare", "chat"]
    assert fake_engine.calls[1][1][-1].images[0] is fake_engine.calls[0][1]  # the id was sent, not the file
    expect(page.locator(".bubble.user img.thumb")).to_have_count(1)
    expect(status).to_be_hidden()


def test_asking_before_ready_waits_and_the_grounding_page_shares_the_image(page, fake_engine, make_png, tmp_path):
    fake_engine.prepare_tile_s = 0.5
    picture = tmp_path / "shared.png"  # a file on disk: the same name, size and date when chosen again
    picture.write_bytes(make_png(200, 100))
    page.goto("/")
    page.set_input_files("#image", picture)
    page.fill("#question", "Quick?")
    page.click("button[value=ask]")  # long before "ready": the server waits for the reading
    expect(page.locator(".bubble.assistant .text").last).to_contain_text("200x100", timeout=10_000)
    page.goto("/ground")
    page.set_input_files("#image", picture)  # the same file: its reading is found, not sent again
    expect(page.locator("#image-status")).to_have_text("Image ready")
    page.fill("#phrases", "cat")
    page.click("button[type=submit]")
    expect(page.locator("tbody tr")).to_have_count(1)
    screenshot(page, "prepare-ground-shared")
    assert [c[0] for c in fake_engine.calls] == ["prepare", "chat", "ground"]
    assert fake_engine.calls[2][1] is fake_engine.calls[0][1]


def test_a_replaced_image_drops_its_reading(page, fake_engine, make_png):
    fake_engine.prepare_tile_s = 0.2
    page.goto("/ground")
    page.set_input_files("#image", image_file(make_png, 200, 100, name="first.png"))
    expect(page.locator("#image_id")).not_to_have_value("")
    first = page.input_value("#image_id")
    page.set_input_files("#image", image_file(make_png, 100, 200, name="second.png"))
    expect(page.locator("#image-status")).to_have_text("Image ready")
    assert page.input_value("#image_id") != first
    assert fake_engine.preparations[first].cancelled_at is not None


def test_a_bad_file_is_refused_when_chosen(page):
    page.goto("/")
    page.set_input_files("#image", {"name": "x.png", "mimeType": "image/png", "buffer": b"<html></html>"})
    expect(page.locator("#error-image")).to_contain_text("not an image")
    expect(page.locator("#image-status")).to_be_hidden()
    expect(page.locator("#image_id")).to_have_value("")


def test_an_expired_reading_falls_back_to_sending_the_file(page, fake_engine, make_png):
    page.goto("/")
    page.set_input_files("#image", image_file(make_png, 200, 100))
    expect(page.locator("#image-status")).to_have_text("Image ready")
    fake_engine.cancel_prepare(page.input_value("#image_id"))  # as if it expired on the server
    page.fill("#question", "Still there?")
    page.click("button[value=ask]")
    expect(page.locator(".bubble.assistant .text").last).to_contain_text("200x100")
    expect(page.locator("#error-image")).to_be_hidden()
    expect(page.locator(".bubble")).to_have_count(2)


def test_moving_the_detail_control_reads_the_same_image_again(page, fake_engine, make_png):
    page.goto("/")
    page.set_input_files("#image", image_file(make_png, 200, 100))
    expect(page.locator("#image-status")).to_have_text("Image ready")
    first = page.input_value("#image_id")
    page.locator("#max_tiles").fill("5")
    page.wait_for_function("old => !['', old].includes(document.getElementById('image_id').value)", arg=first)
    expect(page.locator("#image-status")).to_have_text("Image ready")
    (_, image, tiles), (_, again, more) = fake_engine.calls
    assert (tiles, more) == (2, 5) and again is image  # read again from its id, not uploaded again
    assert fake_engine.preparations[first].cancelled_at is not None
