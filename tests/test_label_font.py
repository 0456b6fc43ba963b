"""Box labels are drawn in a font with every script the pages offer: a Russian label comes out as letters,
not as the empty rectangles a font without Cyrillic draws for every letter."""
from __future__ import annotations

import string

from PIL import Image, ImageFont

from runtime.grounding import LABEL_FONT, draw_boxes, label_font
from runtime.types import Box

RUSSIAN = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
NOT_IN_ANY_FONT = "\ue000"  # private use: every font draws its "missing glyph" for it


def glyph(font, char: str) -> bytes:
    """The rendered mask of one character (size and pixels)."""
    mask = font.getmask(char)
    return bytes(str(mask.size), "ascii") + bytes(mask)


def label_area(label: str) -> bytes:
    """The pixels of the label tab drawn above a box on a white image."""
    box = Box(label=label, bbox=(100.0, 120.0, 300.0, 280.0), bbox_norm=(250, 400, 750, 933))
    out = draw_boxes(Image.new("RGB", (400, 300), "white"), [box])
    return out.crop((100, 60, 400, 120)).tobytes()


def test_every_letter_of_both_interface_languages_has_its_own_glyph():
    font = label_font(20)
    missing = glyph(font, NOT_IN_ANY_FONT)
    letters = RUSSIAN + RUSSIAN.upper() + string.ascii_letters + string.digits
    assert [c for c in letters if glyph(font, c) == missing] == []
    assert len({glyph(font, c) for c in RUSSIAN}) == len(RUSSIAN)  # all different, none a shared box


def test_a_cyrillic_label_is_drawn_as_letters():
    assert label_area("кошка") != label_area("собака")
    assert label_area("Ж") != label_area("Ш")
    assert label_area("Ж") != label_area(NOT_IN_ANY_FONT)


def test_the_check_tells_letters_from_missing_glyphs():
    builtin = ImageFont.load_default(size=20)  # the font the labels used to be drawn in
    assert glyph(builtin, "Ж") == glyph(builtin, "Ш")  # both the missing-glyph box
    assert LABEL_FONT.is_file() and (LABEL_FONT.parent / "LICENSE").is_file()
