"""The chat page as a first-time visitor meets it, in English and Russian: a file over the limit refused
before it is sent, example pictures, paste, Ctrl+Enter, the focus after an answer, errors in view and gone
once fixed, Stop before the first word, copying an answer, the dialog after a reload, the detail words."""
from __future__ import annotations

import re

import pytest
from browser_kit import browser, open_page, page  # noqa: F401  (fixtures)
from browser_kit import clipboard, expect, image_file, readme_screenshot, tab_to

pytestmark = pytest.mark.browser
LANGS = ["en", "ru"]
TEXT = {
    "en": {"too_large": "The upload is too large (the limit is 1 MB).", "no_image": "Please add an image first.",
           "no_question": "Please type a question.", "thinking": "Thinking…", "ready": "Image ready",
           "stopped": "Stopped. This answer is not kept in the conversation.", "copied": "Copied",
           "cat": "Chelsea the cat",
           "timing": r"^\d+\.\d s · \d+ tokens? · \d+\.\d tokens/s$",
           "speeds": ["fastest, least detail", "fast", "medium", "slow", "slowest, most detail"]},
    "ru": {"too_large": "Загружаемый файл слишком большой (предел 1 МБ).",
           "no_image": "Пожалуйста, сначала добавьте изображение.", "no_question": "Пожалуйста, введите вопрос.",
           "thinking": "Думаю…", "ready": "Изображение готово",
           "stopped": "Остановлено. Этот ответ не сохранится в разговоре.", "copied": "Скопировано",
           "cat": "Кошка Челси",
           "timing": r"^\d+,\d с · \d+ токен(а|ов)? · \d+,\d ток\./с$",
           "speeds": ["быстрее всего, меньше деталей", "быстро", "средне", "медленно",
                      "медленнее всего, больше всего деталей"]},
}
OVER_LIMIT = {"name": "big.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20)}


def ask(page, question: str) -> None:
    page.fill("#question", question)
    page.click("button[value=ask]")


def bubble_heights(page) -> list:
    page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth)")
    return page.eval_on_selector_all(".bubble", "bs => bs.map(b => Math.round(b.getBoundingClientRect().height))")


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("path", ["/", "/ground"])
def test_a_file_over_the_limit_is_refused_before_it_is_sent(open_page, fake_engine, lang, path):
    page = open_page(lang)
    bodies = []
    page.on("request", lambda r: bodies.append(len(r.post_data_buffer or b"")) if r.method == "POST" else None)
    page.goto(path)
    page.set_input_files("#image", OVER_LIMIT)
    expect(page.locator("#error-image")).to_have_text(TEXT[lang]["too_large"])
    expect(page.locator("img.preview")).to_be_hidden()
    if path == "/":
        ask(page, "What is it?")
        expect(page.locator("#error-image")).to_have_text(TEXT[lang]["no_image"])
    else:
        page.fill("#phrases", "cat")
        page.click("button[type=submit]")
        expect(page.locator("#error-image")).not_to_be_empty()  # "Please add an image.", in the form again
        expect(page.locator("#phrases")).to_have_value("cat")
    expect(page.locator("body")).not_to_contain_text("Request Entity Too Large")
    assert fake_engine.calls == [] and max(bodies, default=0) < 2**20  # the file never left the browser


@pytest.mark.parametrize("lang", LANGS)
def test_example_pictures_fill_the_image_field(open_page, lang):
    page = open_page(lang)
    page.goto("/")
    page.get_by_role("button", name=TEXT[lang]["cat"]).click()
    expect(page.locator("img.preview")).to_be_visible()
    expect(page.locator("#image-status")).to_have_text(TEXT[lang]["ready"])
    ask(page, "What is in this picture?")
    expect(page.locator(".bubble.assistant .text").last).to_contain_text("451x300")
    expect(page.locator(".bubble.assistant .timing").last).to_have_text(re.compile(TEXT[lang]["timing"]))
    expect(page.locator(".bubble.user img.thumb")).to_have_count(1)
    if lang == "en":
        readme_screenshot(page, "chat")


@pytest.mark.parametrize("lang", LANGS)
def test_the_dialog_after_a_reload_is_drawn_as_before(open_page, make_png, lang):
    page = open_page(lang)
    page.goto("/")
    page.set_input_files("#image", image_file(make_png))
    ask(page, "What is it?")
    timing = page.locator(".bubble.assistant .timing").last
    expect(timing).to_have_text(re.compile(TEXT[lang]["timing"]))
    line, heights = timing.inner_text(), bubble_heights(page)
    page.reload()
    expect(page.locator(".bubble.assistant .timing").last).to_have_text(line)  # kept, in the same words
    assert bubble_heights(page) == heights  # no blank lines around the parts of a bubble


@pytest.mark.parametrize("lang", LANGS)
def test_errors_are_shown_in_view_and_go_when_fixed(open_page, make_png, lang):
    page = open_page(lang)
    page.goto("/")
    ask(page, "A question before any image")
    expect(page.locator("#error-image")).to_have_text(TEXT[lang]["no_image"])
    expect(page.locator("#error-image")).to_be_in_viewport()
    expect(page.locator("#dialog-empty")).to_be_visible()  # the hint stays while there are no messages
    page.set_input_files("#image", image_file(make_png))
    expect(page.locator("#error-image")).to_be_hidden()  # fixed: the message goes
    ask(page, "Is there anything on it? " * 6)
    expect(page.locator(".bubble.assistant .timing").first).not_to_be_empty()  # answered
    ask(page, "And what colour is it? " * 6)
    expect(page.locator(".bubble.assistant .timing").nth(1)).not_to_be_empty()
    page.evaluate("window.scrollTo(0, 0)")
    page.click("button[value=ask]")  # an empty question, with the dialog above the form
    error = page.locator("#error-question")
    expect(error).to_have_text(TEXT[lang]["no_question"])
    expect(error).to_be_in_viewport()
    expect(page.locator("#question")).to_be_focused()
    page.keyboard.type("Which")
    expect(error).to_be_hidden()


@pytest.mark.parametrize("lang", LANGS)
def test_stop_before_the_first_word(open_page, fake_engine, make_png, lang):
    fake_engine.delay_s = 1.0
    page = open_page(lang)
    page.goto("/")
    page.set_input_files("#image", image_file(make_png))
    ask(page, "What is it?")
    reply = page.locator(".bubble.assistant").last
    expect(reply.locator(".text")).to_have_text(TEXT[lang]["thinking"])
    page.click("#stop")
    expect(reply.locator(".timing")).to_have_text(TEXT[lang]["stopped"])
    expect(reply.locator(".text")).to_be_hidden()  # no "Thinking…" next to "Stopped"
    expect(reply).not_to_have_class(re.compile("pending"))


def test_keyboard_only_paste_ask_with_ctrl_enter_and_read(open_page, make_png):
    page = open_page(clipboard=True)
    page.goto("/")
    page.keyboard.press("Tab")
    expect(page.locator("a.skip")).to_be_focused()
    expect(page.locator("a.skip")).to_be_in_viewport()
    page.keyboard.press("Enter")  # past the header's links
    tab_to(page, "#question")
    page.evaluate("""async () => {  // an image on the clipboard, as a screenshot tool leaves it
        const c = document.createElement("canvas"); c.width = 200; c.height = 100;
        c.getContext("2d").fillRect(0, 0, 200, 100);
        const png = await new Promise(done => c.toBlob(done, "image/png"));
        await navigator.clipboard.write([new ClipboardItem({"image/png": png})]);
    }""")
    page.keyboard.press("Control+V")
    expect(page.locator("img.preview")).to_be_visible()
    expect(page.locator("#image-status")).to_have_text("Image ready")
    page.keyboard.type("What is it?")
    page.keyboard.press("Control+Enter")
    answer = page.locator(".bubble.assistant .text").last
    expect(answer).to_contain_text("The last image is 200x100 pixels.")
    expect(answer).to_be_in_viewport()
    expect(page.locator("#question")).to_be_focused()  # ready for the next question, not back at the top
    page.keyboard.type("And now?")
    page.keyboard.press("Meta+Enter")
    expect(page.locator(".bubble.assistant .text")).to_have_count(2)


def test_an_answer_is_copied(open_page, make_png):
    page = open_page(clipboard=True)
    page.goto("/")
    page.set_input_files("#image", image_file(make_png))
    ask(page, "What is it?")
    answer = page.locator(".bubble.assistant .text").last
    expect(page.locator(".bubble.assistant .timing").last).not_to_be_empty()
    copy = page.locator(".bubble.assistant button.copy").last
    copy.click()
    expect(copy).to_have_text("Copied")
    assert clipboard(page) == answer.inner_text()
    page.reload()  # the buttons drawn by the server copy too
    page.locator(".bubble.assistant button.copy").last.click()
    expect(page.locator(".bubble.assistant button.copy").last).to_have_text("Copied")
    assert clipboard(page).startswith("You asked: What is it?")


@pytest.mark.parametrize("lang", LANGS)
def test_detail_words_go_from_fast_to_slow(open_page, lang):
    page = open_page(lang)
    page.goto("/")
    fastest, fast, medium, slow, slowest = TEXT[lang]["speeds"]
    words = [fastest, fast, medium, medium] + [slow] * 4 + [slowest] * 4
    for tiles, word in enumerate(words, start=1):
        page.locator("#max_tiles").fill(str(tiles))
        expect(page.locator("#tiles-cost")).to_have_text(re.compile(re.escape(" ~ " + word) + "$"))
