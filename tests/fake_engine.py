"""A deterministic stand-in for runtime.engine.Engine that follows the engine contract, for web tests.

Answers are derived from the prompt and the images (so tests can check what reached the engine), text is
streamed word by word through on_text, a CancelToken stops it, and `state` / `busy` make it raise
ModelNotReady / Busy like the real engine.
"""
from __future__ import annotations

import re
import threading
import time

import numpy as np
from PIL import Image

from runtime.errors import Busy, InvalidInput, ModelNotReady
from runtime.grounding import clean_phrase, parse_boxes
from runtime.types import Answer, CancelToken, GenerationOptions, GroundingResult, Timings, Turn

# Boxes the fake "sees", in 0..1000, cycled over the phrases asked for.
BOXES = ((100, 150, 400, 600), (500, 200, 900, 950), (50, 50, 950, 300))


class FakeEngine:
    """Implements info / ready / start / close / chat / describe / ground like runtime.engine.Engine."""

    def __init__(self, state: str = "ready", model: str = "OpenGVLab/InternVL3_5-1B", delay_s: float = 0.0):
        self.state = state  # "loading" | "ready" | "error"
        self.error: str | None = None
        self.progress = "loading the model"
        self.model = model
        self.busy = False  # True: every call raises Busy
        self.retry_after = 7
        self.delay_s = delay_s  # pause before each streamed word
        self.crash: Exception | None = None  # raised by the next call, to test the 500 path
        self.calls: list[tuple] = []  # (method, args...) of every accepted call
        self.cancelled = threading.Event()  # set when a generation saw its CancelToken cancelled
        self.started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeEngine":
        """Nothing to load."""
        self.started = True
        return self

    @property
    def ready(self) -> bool:
        """True in state "ready"."""
        return self.state == "ready"

    def info(self) -> dict:
        """The same keys as the real engine's info()."""
        return {"state": self.state, "progress": "ready" if self.ready else self.progress, "error": self.error,
                "model": self.model, "format": "native", "precision": "int8", "backend": "openvino",
                "device": "CPU", "default_max_tiles": 2, "queue_depth": 0, "max_queue": 8}

    def close(self) -> None:
        """Nothing to free."""
        self.state = "closed"

    # ------------------------------------------------------------------ public API
    def chat(self, turns: list[Turn], options: GenerationOptions = GenerationOptions(), on_text=None,
             cancel: CancelToken | None = None) -> Answer:
        """Echo the question and describe the images of the dialog."""
        self._gate()
        if not turns or turns[-1].role != "user" or not turns[-1].text.strip():
            raise InvalidInput("Please type a question.", field="question")
        self.calls.append(("chat", turns, options))
        images = [im for t in turns for im in t.images]
        seen = f" The last image is {images[-1].width}x{images[-1].height} pixels." if images else ""
        text = f"You asked: {turns[-1].text} I see {len(images)} image(s) in {len(turns)} turn(s).{seen}"
        return self._emit(text, options, on_text, cancel, prompt_tokens=10 * len(turns) + 256 * len(images))

    def describe(self, image: Image.Image, detail: str = "short", options: GenerationOptions = GenerationOptions(),
                 on_text=None, cancel: CancelToken | None = None) -> Answer:
        """A caption naming the size and the mean colour."""
        self._gate()
        self.calls.append(("describe", image, detail, options))
        r, g, b = (round(float(v)) for v in np.asarray(image.convert("RGB")).reshape(-1, 3).mean(axis=0))
        text = f"A {image.width}x{image.height} picture."
        if detail == "detailed":
            text += f" Its average colour is rgb({r}, {g}, {b})."
        return self._emit(text, options, on_text, cancel, prompt_tokens=300)

    def ground(self, image: Image.Image, phrases: list[str], detect_all: bool = False,
               options: GenerationOptions = GenerationOptions(), on_text=None,
               cancel: CancelToken | None = None) -> GroundingResult:
        """One box per phrase (or three 'object' boxes), parsed by runtime.grounding like the real engine."""
        self._gate()
        phrases = [p.strip() for p in phrases if p and p.strip()]
        if not phrases and not detect_all:
            raise InvalidInput("Please type what to look for.", field="phrases")
        self.calls.append(("ground", image, phrases, detect_all, options))
        names = ["object"] * 3 if detect_all else [clean_phrase(p) or "object" for p in phrases]
        said = ", ".join(phrases) if phrases else "all objects"
        parts = [f"<ref>{n}</ref><box>[[{', '.join(map(str, BOXES[i % len(BOXES)]))}]]</box>"
                 for i, n in enumerate(names)]
        answer = self._emit(f"Looking for {said}: " + "".join(parts), options, on_text, cancel, prompt_tokens=300)
        result = parse_boxes(answer.text, image.width, image.height,
                             default_label=names[0] if len(names) == 1 else None)
        result.answer = answer
        return result

    # ------------------------------------------------------------------ internals
    def _gate(self) -> None:
        if self.crash is not None:
            crash, self.crash = self.crash, None
            raise crash
        if self.state != "ready":
            raise ModelNotReady(self.error or "The model is still loading, please retry shortly.")
        if self.busy:
            raise Busy(retry_after=self.retry_after)

    def _emit(self, text: str, options: GenerationOptions, on_text, cancel: CancelToken | None,
              prompt_tokens: int) -> Answer:
        """Stream `text` word by word (one word = one token), honouring max_new_tokens, stop and cancel."""
        start = time.perf_counter()
        for stop in options.stop:
            text = text.split(stop)[0] if stop else text
        pieces, out, reason = re.findall(r"\S+\s*", text), [], "stop"
        for i, piece in enumerate(pieces):
            if cancel is not None and cancel.cancelled:
                self.cancelled.set()
                reason = "cancelled"
                break
            if i >= options.max_new_tokens:
                reason = "length"
                break
            if self.delay_s:
                time.sleep(self.delay_s)
            out.append(piece)
            if on_text is not None:
                on_text(piece)
        total = time.perf_counter() - start
        timings = Timings(ttft_s=0.01, decode_s=total, total_s=total + 0.01,
                          decode_tok_s=len(out) / total if total > 0 else 0.0)
        return Answer("".join(out), prompt_tokens, len(out), reason, timings)
