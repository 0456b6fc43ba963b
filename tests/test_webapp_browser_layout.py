"""The pages on a phone and on /docs, and the start notice, in English and Russian: a header of two rows at
most, wide tables that scroll inside their box (never the page), API fields each described and translated
with a copyable example request, and the model's download progress while it is not ready."""
from __future__ import annotations

import re

import pytest
from browser_kit import PHONE, browser, open_page, page  # noqa: F401  (fixtures)
from browser_kit import clipboard, expect

pytestmark = pytest.mark.browser
LANGS = ["en", "ru"]
CYRILLIC = re.compile("[а-яА-ЯёЁ]")
PAGES = ("/", "/ground", "/status", "/docs")


def some_history(page, make_png) -> None:
    """A few requests, so that the status page has its table."""
    for question in ("one", "two"):
        page.request.post("/api/v1/chat", multipart={
            "image": {"name": "a.png", "mimeType": "image/png", "buffer": make_png()}, "question": question})


@pytest.mark.parametrize("lang", LANGS)
def test_on_a_phone_the_header_takes_two_rows_and_nothing_scrolls_sideways(open_page, make_png, lang):
    page = open_page(lang, size=PHONE)
    some_history(page, make_png)
    for path in PAGES:
        page.goto(path)
        expect(page.locator("header.top")).to_be_visible()
        rows = page.eval_on_selector_all("header.top a", "links => [...new Set(links.map(a => "
                                         "Math.round(a.getBoundingClientRect().top / 20)))].length")
        assert rows <= 2, path
        assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE[0], path


@pytest.mark.parametrize("path", ["/status", "/docs"])
def test_on_a_phone_wide_tables_scroll_inside_their_box(open_page, make_png, path):
    page = open_page(size=PHONE)
    some_history(page, make_png)
    page.goto(path)
    boxes = page.locator(".table-scroll")
    expect(boxes.first).to_be_visible()
    widths = boxes.evaluate_all("bs => bs.map(b => [b.scrollWidth, b.clientWidth])")
    assert widths and all(client <= PHONE[0] for _, client in widths)
    assert any(scroll > client for scroll, client in widths)  # the table is wider: its box scrolls
    assert boxes.first.evaluate("b => { b.scrollLeft = 100; return b.scrollLeft; }") > 0


@pytest.mark.parametrize("lang", LANGS)
def test_docs_describe_every_field_in_the_page_language(open_page, lang):
    page = open_page(lang)
    page.goto("/docs")
    question = page.locator("section.endpoint").first.locator("tr", has=page.locator("code", has_text="question"))
    expect(question.locator("td").nth(3)).not_to_be_empty()
    meanings = page.locator("section.endpoint tbody td:nth-child(4)").all_inner_texts()
    assert meanings and all(m.strip() for m in meanings)  # no field without a description
    summaries = page.locator("section.endpoint > p:not(.hint)").all_inner_texts()
    if lang == "ru":
        untranslated = [t for t in meanings + summaries if not CYRILLIC.search(t)]
        assert untranslated == []


def test_docs_have_an_example_request_to_copy(open_page):
    page = open_page(clipboard=True)
    page.goto("/docs")
    chat = page.locator("section.endpoint").first
    example = chat.locator(".example-request pre")
    expect(example).to_contain_text("-F image=@photo.jpg")
    expect(example).to_contain_text("-F 'question=What is in this picture?'")
    expect(example).to_contain_text("/api/v1/chat")
    chat.locator(".example-request button.copy").click()
    expect(chat.locator(".example-request button.copy")).to_have_text("Copied")
    assert clipboard(page) == example.inner_text()
    openai = page.locator("section.endpoint", has=page.locator("h2", has_text="/v1/chat/completions"))
    expect(openai.locator(".example-request pre")).to_contain_text('"image_url"')


class Downloading:
    """Stands in for webapp.firststart.FirstStart: the weights are being downloaded, until `done`."""

    done = False

    def info(self):
        if self.done:
            return None
        return {"state": "loading", "phase": "downloading", "progress": "model.safetensors",
                "done": 120 * 2**20, "total": 2000 * 2**20, "unit": "bytes"}


@pytest.mark.parametrize("lang", LANGS)
def test_the_start_notice_shows_the_download_until_the_model_is_ready(open_page, app, lang):
    start = app.extensions["webapp"].startup = Downloading()
    page = open_page(lang)
    page.goto("/")
    words = {"en": ("Downloading the model", "120 of 2000 MB", "The model is ready."),
             "ru": ("Загрузка модели", "120 из 2000 МБ", "Модель готова.")}[lang]
    expect(page.locator("#startup-phase")).to_have_text(words[0])
    expect(page.locator("#startup-detail")).to_contain_text(words[1], timeout=5000)  # from /health
    expect(page.locator("#startup-bar")).to_have_attribute("value", str(120 * 2**20))
    start.done = True
    expect(page.locator("#startup-phase")).to_have_text(words[2], timeout=8000)
    expect(page.locator("#startup")).to_be_hidden(timeout=10_000)
