"""Prompt building: ChatML dialogs with images, description and grounding prompts (pure functions)."""
from __future__ import annotations

from runtime.errors import InvalidInput

IMAGE_SEQ_LEN = 256  # LLM tokens per 448x448 tile after pixel shuffle
DESCRIBE_PROMPTS = {
    "short": "Describe this image in one sentence.",
    "detailed": "Describe this image in detail.",
}


def image_placeholder(num_tiles: int) -> str:
    """`<img>` + `<IMG_CONTEXT>` x 256 per tile + `</img>`."""
    return "<img>" + "<IMG_CONTEXT>" * (IMAGE_SEQ_LEN * num_tiles) + "</img>"


def build_prompt(turns: list[tuple[str, str, list[int]]]) -> str:
    """ChatML text for (role, text, tiles of each image in that turn) turns, ending with the assistant's cue.

    Each image is placed before the turn's text on its own line, as the reference chat template does.
    """
    if not turns or turns[-1][0] != "user":
        raise InvalidInput("the dialog must end with a user turn", field="question")
    parts = []
    for role, text, tiles in turns:
        if role not in ("system", "user", "assistant"):
            raise InvalidInput(f"unknown role {role!r}")
        images = "".join(image_placeholder(n) + "\n" for n in tiles)
        parts.append(f"<|im_start|>{role}\n{images}{text}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def describe_prompt(detail: str) -> str:
    """The captioning question for 'short' or 'detailed'."""
    if detail not in DESCRIBE_PROMPTS:
        raise InvalidInput("detail must be 'short' or 'detailed'", field="detail")
    return DESCRIBE_PROMPTS[detail]
