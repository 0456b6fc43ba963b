"""What the web layer may ask of an engine: the one contract between `webapp` and `runtime`.

`runtime.engine.Engine` implements it; so does the web tests' stand-in (tests/fake_engine.py), and
tests/test_contract.py checks that both keep every method with the same parameters.
"""
from __future__ import annotations

from typing import Protocol

from PIL import Image

from runtime.prepare import ImageFile
from runtime.types import Answer, CancelToken, GenerationOptions, GroundingResult, Turn


class EngineContract(Protocol):
    """Loading state, generations (chat, describe, ground) and images prepared ahead of questions."""

    def start(self) -> "EngineContract":
        """Begin loading in the background (idempotent)."""

    @property
    def ready(self) -> bool:
        """True once the model is loaded."""

    def info(self) -> dict:
        """State ("loading" | "ready" | "error"), progress, error, model facts and queue depth."""

    def chat(self, turns: list[Turn], options: GenerationOptions = GenerationOptions(), on_text=None,
             cancel: CancelToken | None = None) -> Answer:
        """Answer the last user turn; streams text deltas to on_text; Busy / ModelNotReady / InvalidInput."""

    def describe(self, image: Image.Image, detail: str = "short", options: GenerationOptions = GenerationOptions(),
                 on_text=None, cancel: CancelToken | None = None) -> Answer:
        """A short or detailed caption of image."""

    def ground(self, image: Image.Image, phrases: list[str], detect_all: bool = False,
               options: GenerationOptions = GenerationOptions(), on_text=None,
               cancel: CancelToken | None = None) -> GroundingResult:
        """Boxes for each phrase (or every object) in pixels of image, with the raw model text."""

    def prepare(self, image: Image.Image | ImageFile, max_tiles: int | None = None, owner: str = "") -> dict:
        """Start preparing image in the background; its status (image_id, state, tiles)."""

    def prepare_status(self, image_id: str) -> dict:
        """queued | encoding | ready | failed | cancelled, with progress in tiles."""

    def prepared_image(self, image_id: str) -> tuple[Image.Image | ImageFile, int]:
        """The image as it was submitted and its tile budget."""

    def cancel_prepare(self, image_id: str) -> None:
        """Drop a preparation that is no longer wanted."""
