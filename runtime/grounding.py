"""Visual grounding without a model: the prompt to ask, the parser for the answer, the picture of the boxes.

InternVL answers `<ref>name</ref><box>[[x1, y1, x2, y2], ...]</box>` with integers in 0..1000 of the
image's width and height. Real answers stray from that (boxes without tags, single brackets, corners
swapped, values past 1000, placeholders, cut-off text); `parse_boxes` keeps what it can, repairs what is
safe to repair (and flags it on the box), and lists everything else in `problems`. It never raises.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from runtime.errors import InvalidInput
from runtime.prompts import fill
from runtime.types import Box, GroundingResult

NORM = 1000  # the model's coordinate range: 0..1000 of width and height
MAX_BOXES = 100  # boxes kept from one answer; more is runaway generation
FALLBACK_LABEL = "object"

ONE_PHRASE_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"
# Not a trained format (inferred): the one-phrase wording, pluralised, with every phrase in its own <ref>.
# The model tends to answer phrase by phrase (`<ref>a</ref><box>...</box><ref>b</ref><box>...</box>`).
# One request per phrase with ONE_PHRASE_PROMPT is the format the published RefCOCO scores use.
MANY_PHRASES_PROMPT = ("Please provide the bounding box coordinates of the regions these sentences "
                       "describe: {}")
DETECT_ALL_PROMPT = "Please detect and label all objects in the following image and mark their positions."

# One scan over the answer. Labels, box bodies and bracket groups cannot contain '<' or nested brackets,
# and have length caps: that keeps the scan linear on hostile text ("[[" * 20000 + "<").
_G = r"[^\[\]<]{0,200}"  # the inside of one [...] group
_TOKEN = re.compile(
    r"<ref>(?P<ref>[^<]{0,300})</ref>"
    r"|<box>(?P<box>[^<]*)(?P<box_end></box>)?"
    rf"|(?P<bare>\[\[(?:{_G}\]\s*,?\s*\[){{0,200}}{_G}(?:\]\]|\Z))"  # [[..], [..]] or cut off at the end
    rf"|(?P<single>\[{_G}\])"
)
_GROUP = re.compile(r"\[([^\[\]]*)\]")  # innermost [...] groups of a box body
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_PLACEHOLDER = re.compile(r"[xy](?:\d|_?min|_?max)", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]*>")


# ---------------------------------------------------------------- prompt


def grounding_prompt(phrases: list[str], detect_all: bool = False) -> str:
    """The question that makes InternVL answer with boxes: one phrase, several phrases, or everything.

    The `<ref>` tags are the runtime's markup; the phrases inside them are marked as user text.
    """
    if detect_all:
        return DETECT_ALL_PROMPT
    cleaned = [p for p in (clean_phrase(p) for p in phrases) if p]
    if not cleaned:
        raise InvalidInput("Say what to look for: the phrase is empty.", field="phrases")
    if len(cleaned) == 1:
        return fill(ONE_PHRASE_PROMPT, cleaned)
    return fill(MANY_PHRASES_PROMPT.format(", ".join("<ref>{}</ref>" for _ in cleaned)), cleaned)


def clean_phrase(phrase: str) -> str:
    """A phrase on one line with no tag-like text.

    The phrase is encoded as plain text either way, but the model echoes it inside `<ref>...</ref>`, and
    `parse_boxes` reads tags from text: a `<box>` typed in a phrase would come back as a box.
    """
    return " ".join(_TAG.sub(" ", phrase).replace("<", " ").replace(">", " ").split())


# ---------------------------------------------------------------- parsing


@dataclass
class _Scan:
    """What the parser has gathered so far."""

    width: int
    height: int
    default_label: str | None
    boxes: list[Box] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pending_ref: str | None = None  # a <ref> label still waiting for its box
    last_label: str | None = None  # label of the previous box, for boxes that follow it directly
    pos: int = 0  # end of the last token used
    dropped: int = 0  # boxes past MAX_BOXES


def parse_boxes(text: str, width: int, height: int, default_label: str | None = None) -> GroundingResult:
    """Boxes (pixels of a width x height image) and problems from a grounding answer; never raises."""
    scan = _Scan(width, height, (default_label or "").strip() or None)
    for m in _TOKEN.finditer(text):
        if m.group("ref") is not None:
            _on_ref(scan, m.group("ref"))
        elif m.group("box") is not None:
            _on_boxes(scan, text[scan.pos:m.start()], m.group("box"), closed=m.group("box_end") is not None)
        elif m.group("bare") is not None:
            body = m.group("bare")
            _on_boxes(scan, text[scan.pos:m.start()], body, closed=body.endswith("]]"))
        elif _looks_like_box(m.group("single")):
            _on_boxes(scan, text[scan.pos:m.start()], m.group("single"), closed=True)
        else:
            continue  # a bracket in prose ("[1]", "[note]"): leave it in the text between tokens
        scan.pos = m.end()
    _finish(scan)
    return GroundingResult(boxes=scan.boxes, raw_text=text, problems=scan.problems,
                           image_size=(width, height))


def _on_ref(scan: _Scan, label: str) -> None:
    """Remember a <ref> label for the box that should follow it."""
    if scan.pending_ref:
        scan.problems.append(f"No box was given for '{scan.pending_ref}'.")
    scan.pending_ref = " ".join(label.split()) or None


def _on_boxes(scan: _Scan, gap: str, body: str, closed: bool) -> None:
    """Turn one box body (`<box>...</box>` contents or a bare `[[...]]`) into labelled boxes."""
    label = _label_for(scan, gap)
    if not closed:
        scan.problems.append("A box list is not closed (the answer was probably cut off).")
    groups, leftover = _split_groups(body)
    if leftover:
        scan.problems.append(f"Ignored '{leftover[:60]}': not a complete box.")
    for group in groups:
        coords = _parse_group(group, scan.problems)
        if coords is not None:
            _add_box(scan, label, coords)
    scan.pending_ref, scan.last_label = None, label


def _label_for(scan: _Scan, gap: str) -> str:
    """Label of the next box: its <ref>, the previous box's label, the phrase asked, or nearby words."""
    if scan.pending_ref:
        return scan.pending_ref
    trivial_gap = not re.search(r"\w", _TAG.sub("", gap))
    if scan.last_label and trivial_gap:
        return scan.last_label
    return scan.default_label or _fragment_label(gap) or FALLBACK_LABEL


def _fragment_label(gap: str) -> str | None:
    """The few words right before an untagged box (`car[[...]]` -> 'car'), if they look like a label."""
    tail = re.split(r"[.!?:;,\n]", _TAG.sub(" ", gap))[-1]
    words = tail.strip(" \t-*\u2022\"'()").split()
    if words and words[0].lower() in ("and", "or", "&"):
        words = words[1:]
    if not 1 <= len(words) <= 5:
        return None
    return " ".join(words)[:60]


def _split_groups(body: str) -> tuple[list[str], str]:
    """Innermost `[...]` groups of a box body, plus any unclosed `[...` tail; bare numbers as a fallback."""
    groups = _GROUP.findall(body)
    tail = body[body.rfind("]") + 1:] if "]" in body else body
    leftover = tail[tail.find("["):].strip() if "[" in tail else ""
    if not groups and not leftover:
        numbers = _NUMBER.findall(body)  # e.g. `<box>100, 200, 300, 400</box>`
        if numbers:
            groups = [", ".join(numbers[i:i + 4]) for i in range(0, len(numbers), 4)]
    return groups, leftover


def _looks_like_box(group: str) -> bool:
    """Whether a single-bracket group outside <box> is a box (4 numbers) or a placeholder."""
    parts = _parts(group[1:-1])
    return len(parts) == 4 and all(_NUMBER.fullmatch(p) or _PLACEHOLDER.fullmatch(p) for p in parts)


def _parts(group: str) -> list[str]:
    """'1, 2 ,3,4' -> ['1', '2', '3', '4']; whitespace separates when there are no commas."""
    group = group.strip()
    if not group:
        return []
    return [p.strip() for p in (group.split(",") if "," in group else group.split())]


def _parse_group(group: str, problems: list[str]) -> tuple[float, float, float, float] | None:
    """Four numbers from one group, or None with the reason added to `problems`."""
    parts = _parts(group)
    shown = f"[{group.strip()[:60]}]"
    if parts and all(_PLACEHOLDER.fullmatch(p) for p in parts):
        problems.append(f"Ignored {shown}: a placeholder, not coordinates.")
    elif len(parts) != 4:
        problems.append(f"Ignored {shown}: a box needs 4 numbers, found {len(parts)}.")
    elif not all(_NUMBER.fullmatch(p) for p in parts):
        problems.append(f"Ignored {shown}: coordinates must be numbers.")
    else:
        x1, y1, x2, y2 = (float(p) for p in parts)
        return x1, y1, x2, y2
    return None


def _add_box(scan: _Scan, label: str, coords: tuple[float, float, float, float]) -> None:
    """Repair order and range, refuse empty boxes, scale to pixels and keep the box."""
    x1, y1, x2, y2 = coords
    flags = []
    if x1 > x2 or y1 > y2:
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        flags.append("swapped")
    fixed = [min(max(v, 0.0), float(NORM)) for v in (x1, y1, x2, y2)]
    if fixed != [x1, y1, x2, y2]:
        flags.append("clipped")
    x1, y1, x2, y2 = fixed
    if x1 == x2 or y1 == y2:
        shown = ", ".join(f"{v:g}" for v in coords)
        scan.problems.append(f"Ignored [{shown}] for '{label}': the box has no area inside the image.")
        return
    if len(scan.boxes) >= MAX_BOXES:
        scan.dropped += 1
        return
    bbox = (x1 / NORM * scan.width, y1 / NORM * scan.height, x2 / NORM * scan.width, y2 / NORM * scan.height)
    norm = (round(x1), round(y1), round(x2), round(y2))
    scan.boxes.append(Box(label=label, bbox=bbox, bbox_norm=norm, flags=tuple(flags)))


def _finish(scan: _Scan) -> None:
    """Report a dangling <ref>, dropped boxes and an answer without any box."""
    if scan.dropped:
        scan.problems.append(f"Kept the first {MAX_BOXES} boxes; {scan.dropped} more were dropped.")
    if scan.pending_ref:
        scan.problems.append(f"No box was given for '{scan.pending_ref}'.")
    if not scan.boxes:
        scan.problems.append("No boxes found in the answer.")


# ---------------------------------------------------------------- drawing

# DejaVu Sans (runtime/fonts/LICENSE): Latin, Cyrillic, Greek and more. Pillow's built-in font has no
# Cyrillic, so a Russian label would be drawn as empty rectangles.
LABEL_FONT = Path(__file__).parent / "fonts" / "DejaVuSans.ttf"


def label_font(size: int) -> ImageFont.FreeTypeFont:
    """The font box labels are drawn in, at `size` pixels (a fresh object per drawing: ~0.3 ms, and no
    FreeType face shared between the threads that draw)."""
    return ImageFont.truetype(str(LABEL_FONT), size)


PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (255, 225, 25))


def draw_boxes(img: Image.Image, boxes: list[Box]) -> Image.Image:
    """An RGB copy of `img` with each box outlined and labelled; one colour per label."""
    out = img.convert("RGB") if img.mode != "RGB" else img.copy()
    draw = ImageDraw.Draw(out)
    line = max(1, round(max(out.size) / 250))
    font = label_font(max(10, round(min(out.size) * 0.03)))
    colours: dict[str, tuple[int, int, int]] = {}
    for box in boxes:
        colour = colours.setdefault(box.label, PALETTE[len(colours) % len(PALETTE)])
        rect = _pixel_rect(box.bbox, out.size)
        draw.rectangle(rect, outline=colour, width=line)
        _draw_label(draw, box.label, rect, colour, font, out.size)
    return out


def _pixel_rect(bbox: tuple[float, ...], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel-grid rectangle (inclusive corners) for a float box, kept inside the image."""
    w, h = size
    x1, x2 = (min(max(round(v), 0), w - 1) for v in (bbox[0], bbox[2] - 1))
    y1, y2 = (min(max(round(v), 0), h - 1) for v in (bbox[1], bbox[3] - 1))
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _draw_label(draw: ImageDraw.ImageDraw, text: str, rect: tuple[int, int, int, int],
                colour: tuple[int, int, int], font, size: tuple[int, int]) -> None:
    """Label on a filled tab above the box's top-left corner (inside it when there is no room above)."""
    text = text if len(text) <= 40 else text[:39] + "\u2026"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(rect[0], 0), max(size[0] - tw, 0))
    y = rect[1] - th if rect[1] - th >= 0 else min(rect[1], max(size[1] - th, 0))
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=colour)
    ink = (0, 0, 0) if sum(c * k for c, k in zip(colour, (299, 587, 114))) > 128_000 else (255, 255, 255)
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)
