"""Translations: every user-visible string of the web app is in the Russian catalog, and the committed
.mo matches the .po."""
from __future__ import annotations

import re
from pathlib import Path

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[1]
LC = ROOT / "webapp" / "translations" / "ru" / "LC_MESSAGES"
PLACEHOLDER = re.compile(r"%\((\w+)\)")


def source_messages() -> set:
    """Message ids found in webapp/ by the extraction rules of webapp/babel.cfg."""
    with open(ROOT / "webapp" / "babel.cfg", encoding="utf-8") as f:
        method_map, options_map = parse_mapping_cfg(f)
    keywords = {**DEFAULT_KEYWORDS, "_l": None, "lazy_gettext": None}
    found = extract_from_dir(str(ROOT), method_map, options_map, keywords=keywords)
    return {message for _, _, message, _, _ in found}


def test_every_string_is_translated():
    with open(LC / "messages.po", "rb") as f:
        catalog = read_po(f)
    translated = {m.id: m for m in catalog if m.id}
    missing = [m for m in source_messages() if m not in translated]
    assert not missing, f"add these to messages.po: {missing}"
    for message in translated.values():
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(strings) and not message.fuzzy, message.id
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        wanted = set(PLACEHOLDER.findall(ids[-1]))
        for s in strings:
            assert set(PLACEHOLDER.findall(s)) <= wanted | {"num"}, message.id


def _entries(catalog) -> dict:
    def norm(v):
        return tuple(v) if isinstance(v, (list, tuple)) else v
    return {norm(m.id): norm(m.string) for m in catalog if m.id}


def test_compiled_catalog_matches_the_po():
    with open(LC / "messages.po", "rb") as po, open(LC / "messages.mo", "rb") as mo:
        assert _entries(read_mo(mo)) == _entries(read_po(po)), "run: pybabel compile -d webapp/translations"
