"""Plain data types that cross the runtime's public boundary (engine <-> web app)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate one answer. Greedy by default."""

    max_new_tokens: int = 512  # hard cap on generated tokens
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass, used when temperature > 0
    repetition_penalty: float = 1.0  # 1.0 disables it
    stop: tuple[str, ...] = ()  # extra stop strings; the text is cut before the first one
    max_tiles: int | None = None  # tile budget per image, 1..12; None = the engine's default
    ignore_eos: bool = False  # keep generating past end-of-sequence (benchmarks only)
    seed: int | None = None  # sampling seed, for reproducible sampled answers


@dataclass
class Turn:
    """One message of a dialog. Images belong to the turn they were sent in."""

    role: str  # "user" | "assistant" | "system"
    text: str
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class Timings:
    """Where the time of one request went, in seconds (decode speed in tokens/s)."""

    queue_s: float = 0.0  # waiting for the engine
    vision_s: float = 0.0  # preprocessing and vision encoder (0 when cached)
    prefill_s: float = 0.0  # prompt prefill up to the first token's logits
    ttft_s: float = 0.0  # request start (after queue) to first generated token
    decode_s: float = 0.0  # after the first token until the end
    total_s: float = 0.0
    decode_tok_s: float = 0.0
    cached_tokens: int = 0  # prompt tokens restored from the KV cache instead of prefilled

    def as_dict(self) -> dict:
        """Rounded, JSON-friendly view."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Answer:
    """The outcome of one generation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled"
    timings: Timings


@dataclass(frozen=True)
class Box:
    """One detected region. `bbox` is in pixels of the original image, `bbox_norm` in 0..1000."""

    label: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    bbox_norm: tuple[int, int, int, int]  # as the model said it, after fixing order and clipping
    flags: tuple[str, ...] = ()  # e.g. "clipped", "swapped"

    def as_dict(self) -> dict:
        """JSON-friendly view."""
        return {"label": self.label, "bbox": [round(v, 1) for v in self.bbox],
                "bbox_norm": list(self.bbox_norm), "flags": list(self.flags)}


@dataclass
class GroundingResult:
    """Boxes parsed from the model's answer, plus what could not be parsed."""

    boxes: list[Box]
    raw_text: str
    problems: list[str] = field(default_factory=list)  # human-readable notes on malformed parts
    image_size: tuple[int, int] = (0, 0)  # width, height of the original image
    answer: Answer | None = None


class CancelToken:
    """Set by the caller to stop a generation; checked by the engine once per token."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the running generation to stop."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._event.is_set()
