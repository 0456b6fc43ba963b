"""Text the pages build from English data, in the reader's language: every note the grounding parser can
write, the timing line under an answer; the OpenAPI document itself stays English."""
from __future__ import annotations

import re

import pytest

from runtime.grounding import parse_boxes

CYRILLIC = re.compile("[а-яА-ЯёЁ]")
# Answers that make runtime.grounding.parse_boxes write each kind of note.
BAD_ANSWERS = (
    "I cannot see it.",
    "<ref>cat</ref><ref>dog</ref><box>[[1, 2, 3, 4]]</box>",
    "<ref>cat</ref><box>[[10, 20, 30, 40]",
    "<ref>cat</ref><box>[[10, 20, 30, 40]], [50, 60</box>",
    "<ref>cat</ref><box>[[x1, y1, x2, y2]]</box>",
    "<ref>cat</ref><box>[[10, 20, 30]]</box>",
    "<ref>cat</ref><box>[[a, b, c, d]]</box>",
    "<ref>cat</ref><box>[[5, 5, 5, 9]]</box>",
    "<ref>cat</ref><box>" + ", ".join(["[1, 2, 3, 4]"] * 101) + "</box>",
)


def all_notes() -> list[str]:
    return sorted({p for text in BAD_ANSWERS for p in parse_boxes(text, 100, 100).problems})


def test_every_note_of_the_grounding_parser_is_translated(app):
    from webapp.pages import NOTES, note_text

    notes = all_notes()
    assert all(any(pattern.fullmatch(n) for n in notes) for pattern, _ in NOTES)  # each kind is exercised
    with app.test_request_context(headers={"Accept-Language": "ru"}):
        shown = {n: note_text(n) for n in notes}
    untranslated = [n for n, text in shown.items() if text == n or not CYRILLIC.search(text)]
    assert untranslated == []
    assert shown["No box was given for 'cat'."] == "Для «cat» рамка не указана."
    with app.test_request_context(headers={"Accept-Language": "en"}):
        assert [note_text(n) for n in notes] == notes


@pytest.mark.parametrize("lang, tokens, line", [
    ("en", 1, "1.2 s · 1 token · 3.5 tokens/s"),
    ("en", 34, "1.2 s · 34 tokens · 3.5 tokens/s"),
    ("ru", 21, "1,2 с · 21 токен · 3,5 ток./с"),
    ("ru", 34, "1,2 с · 34 токена · 3,5 ток./с"),
    ("ru", 35, "1,2 с · 35 токенов · 3,5 ток./с"),
])
def test_the_timing_line_in_both_languages(app, lang, tokens, line):
    from webapp.pages import timing_line

    meta = {"timings": {"total_s": 1.23, "decode_tok_s": 3.456}, "usage": {"completion_tokens": tokens}}
    with app.test_request_context(headers={"Accept-Language": lang}):
        assert timing_line(meta) == line
        assert timing_line(None) == ""


def test_the_openapi_document_stays_english(client):
    body = client.get("/openapi.json", headers={"Accept-Language": "ru"}).get_data(as_text=True)
    assert not CYRILLIC.search(body)
    question = client.get("/openapi.json").get_json()["paths"]["/api/v1/chat"]["post"]["requestBody"]
    prop = question["content"]["multipart/form-data"]["schema"]["properties"]["question"]
    assert prop["description"] and prop["example"]
