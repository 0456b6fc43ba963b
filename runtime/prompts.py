"""Prompt building: ChatML dialogs with images, description and grounding prompts (pure functions)."""
from __future__ import annotations

from runtime.errors import InvalidInput
from runtime.limits import IMAGE_SEQ_LEN

ROLES = ("system", "user", "assistant")  # a role is written into the markup, so only these are accepted
DESCRIBE_PROMPTS = {
    "short": "Describe this image in one sentence.",
    "detailed": "Describe this image in detail.",
}


class Prompt(str):
    """Text the runtime wrote around user text, with the user's parts marked.

    The runner encodes a turn's text as user text (every added-token string stays ordinary text), except a
    Prompt's own parts, which may hold the runtime's markup (`<ref>`). Any string operation on a Prompt
    returns a plain str, which loses the markup, never gains it.
    """

    parts: tuple[tuple[str, bool], ...]  # (text, written by the user) in order

    def __new__(cls, parts):
        parts = tuple(parts)
        self = super().__new__(cls, "".join(text for text, _ in parts))
        self.parts = parts
        return self

    def __getnewargs__(self):
        return (self.parts,)  # copy and pickle rebuild the parts, not one unmarked string


def fill(template: str, values: list[str]) -> Prompt:
    """The template with each `{}` replaced by the next value, the values marked as user text."""
    literals = template.split("{}")
    assert len(literals) == len(values) + 1, "one value per {} of the template"
    parts = [(literals[0], False)]
    for value, literal in zip(values, literals[1:]):
        parts += [(value, True), (literal, False)]
    return Prompt(parts)


def image_placeholder(num_tiles: int) -> str:
    """`<img>` + `<IMG_CONTEXT>` x 256 per tile + `</img>`."""
    return "<img>" + "<IMG_CONTEXT>" * (IMAGE_SEQ_LEN * num_tiles) + "</img>"


def build_prompt(turns: list[tuple[str, str, list[int]]]) -> Prompt:
    """ChatML text for (role, text, tiles of each image in that turn) turns, ending with the assistant's cue.

    Each image is placed before the turn's text on its own line, as the reference chat template does; each
    turn's text is marked as user text.
    """
    if not turns or turns[-1][0] != "user":
        raise InvalidInput("the dialog must end with a user turn", field="question")
    parts = []
    for role, text, tiles in turns:
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}")
        images = "".join(image_placeholder(n) + "\n" for n in tiles)
        parts += [(f"<|im_start|>{role}\n{images}", False), (text, True), ("<|im_end|>\n", False)]
    parts.append(("<|im_start|>assistant\n", False))
    return Prompt(parts)


def describe_prompt(detail: str) -> str:
    """The captioning question for 'short' or 'detailed'."""
    if detail not in DESCRIBE_PROMPTS:
        raise InvalidInput("detail must be 'short' or 'detailed'", field="detail")
    return DESCRIBE_PROMPTS[detail]
