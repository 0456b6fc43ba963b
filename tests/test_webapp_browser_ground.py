"""The grounding page as a first-time visitor meets it, in English and Russian: the image kept across runs and
errors, the result brought into view (on a phone too), the model's notes and the runtime's messages in the
page's language, copying the JSON report, and a keyboard-only run that ends with both downloads."""
from __future__ import annotations

import json

import pytest
from browser_kit import PHONE, browser, open_page, page  # noqa: F401  (fixtures)
from browser_kit import clipboard, expect, image_file, readme_screenshot, tab_to

from runtime.grounding import grounding_prompt, parse_boxes

pytestmark = pytest.mark.browser
LANGS = ["en", "ru"]
TEXT = {
    "en": {"ready": "Image ready", "no_phrases": "Please type at least one object to find, or choose all objects.",
           "empty_phrase": "Say what to look for: the phrase is empty.", "nothing": "Nothing was found.",
           "notes": ["No box was given for 'кошка'.", "No boxes found in the answer."]},
    "ru": {"ready": "Изображение готово",
           "no_phrases": "Пожалуйста, укажите хотя бы один объект или выберите «Все объекты».",
           "empty_phrase": "Напишите, что искать: фраза пуста.", "nothing": "Ничего не найдено.",
           "notes": ["Для «кошка» рамка не указана.", "В ответе не найдено ни одной рамки."]},
}


def find(page, phrases: str) -> None:
    page.fill("#phrases", phrases)
    page.click("form button[type=submit]")


def chosen(page, make_png, lang="en") -> str:
    """Choose a 200x100 picture and wait until it is read ahead; its image_id."""
    page.goto("/ground")
    page.set_input_files("#image", image_file(make_png, 200, 100))
    expect(page.locator("#image-status")).to_have_text(TEXT[lang]["ready"])
    return page.input_value("#image_id")


@pytest.mark.parametrize("lang", LANGS)
def test_the_image_is_kept_across_runs_and_errors(open_page, fake_engine, make_png, lang):
    page = open_page(lang)
    image_id = chosen(page, make_png, lang)
    find(page, "cat")
    expect(page.locator("#result")).to_be_focused()
    expect(page.locator("#result tbody tr")).to_have_count(1)
    expect(page.locator("img.preview")).to_be_visible()  # the image is still in the form
    expect(page.locator("#image_id")).to_have_value(image_id)
    page.check("input[name=detect_all]")  # ask again about the same image
    page.click("form button[type=submit]")
    expect(page.locator("#result tbody tr")).to_have_count(3)
    expect(page.locator("#error-image")).to_be_hidden()
    page.uncheck("input[name=detect_all]")
    find(page, "")  # an error: the image and the last result stay
    expect(page.locator("#error-phrases")).to_have_text(TEXT[lang]["no_phrases"])
    expect(page.locator("#error-phrases")).to_be_in_viewport()
    expect(page.locator("#phrases")).to_be_focused()
    expect(page.locator("img.preview")).to_be_visible()
    expect(page.locator("#result tbody tr")).to_have_count(3)
    page.keyboard.type("dog")
    expect(page.locator("#error-phrases")).to_be_hidden()
    page.keyboard.press("Enter")
    expect(page.locator("#result tbody tr td").nth(1)).to_have_text("dog")
    kinds = [c[0] for c in fake_engine.calls]
    assert kinds == ["prepare", "ground", "ground", "ground"]  # read once, never sent again
    assert all(c[1].size == (200, 100) for c in fake_engine.calls[1:])


def test_on_a_phone_the_result_and_the_errors_come_into_view(open_page, make_png):
    page = open_page(size=PHONE)
    chosen(page, make_png)
    find(page, "cat")
    expect(page.locator("#result")).to_be_in_viewport()  # below the whole form
    expect(page.locator("#result")).to_be_focused()
    page.evaluate("window.scrollTo(0, 0)")
    find(page, "")
    expect(page.locator("#error-phrases")).to_be_in_viewport()


def test_moving_the_detail_control_reads_the_kept_image_again(open_page, fake_engine, make_png):
    page = open_page()
    first = chosen(page, make_png)
    find(page, "cat")
    expect(page.locator("#result")).to_be_focused()
    page.locator("#max_tiles").fill("5")
    expect(page.locator("#image_id")).not_to_have_value(first)
    expect(page.locator("#image-status")).to_have_text("Image ready")
    assert [c[2] for c in fake_engine.calls if c[0] == "prepare"] == [2, 5]  # from its id: no upload


@pytest.mark.parametrize("lang", LANGS)
def test_notes_on_the_answer_in_the_page_language(open_page, fake_engine, make_png, lang):
    fake_engine.ground = lambda image, phrases, **kw: parse_boxes("I see <ref>кошка</ref>.", *image.size)
    page = open_page(lang)
    chosen(page, make_png, lang)
    find(page, "кошка")
    expect(page.locator("#result .notice")).to_have_text(TEXT[lang]["nothing"])
    page.locator("#result details summary").first.click()
    expect(page.locator("ul.notes li")).to_have_text(TEXT[lang]["notes"])


@pytest.mark.parametrize("lang", LANGS)
def test_a_phrase_of_markup_only_gets_its_own_message(open_page, fake_engine, make_png, lang):
    def ground(image, phrases, detect_all=False, **kw):
        grounding_prompt(phrases, detect_all)  # the real engine builds its prompt first, and refuses this
        raise AssertionError("not reached")
    fake_engine.ground = ground
    page = open_page(lang)
    chosen(page, make_png, lang)
    find(page, "<b></b>")
    expect(page.locator("#error-phrases")).to_have_text(TEXT[lang]["empty_phrase"])
    expect(page.locator("img.preview")).to_be_visible()


def test_the_json_report_is_copied(open_page):
    page = open_page(clipboard=True)
    page.goto("/ground")
    page.get_by_role("button", name="Chelsea the cat").click()
    expect(page.locator("#image-status")).to_have_text("Image ready")
    find(page, "cat, red car")
    expect(page.locator("#result tbody tr")).to_have_count(2)
    page.wait_for_function("() => document.querySelector('img.annotated').complete")
    readme_screenshot(page, "ground")
    page.get_by_role("button", name="Copy JSON report").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    copied = json.loads(clipboard(page))
    href = page.get_by_role("link", name="Download JSON report").get_attribute("href")
    assert copied == page.request.get(href).json() and [b["label"] for b in copied["boxes"]] == ["cat", "red car"]


def test_keyboard_only_grounding_with_both_downloads(open_page):
    page = open_page()
    page.goto("/ground")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # skip to the content
    tab_to(page, "button.example >> nth=0")
    page.keyboard.press("Enter")  # Chelsea the cat
    expect(page.locator("#image-status")).to_have_text("Image ready")
    tab_to(page, "#phrases")
    page.keyboard.type("cat")
    page.keyboard.press("Enter")
    expect(page.locator("#result")).to_be_focused()
    expect(page.locator("#result tbody tr")).to_have_count(1)
    for link, suffix in (("Download annotated PNG", ".png"), ("Download JSON report", ".json")):
        tab_to(page, f"a:has-text('{link}')", presses=6)
        with page.expect_download() as download:
            page.keyboard.press("Enter")
        assert download.value.suggested_filename.endswith(suffix)
