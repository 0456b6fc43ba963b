"""A deterministic stand-in for runtime.engine.Engine that follows the engine contract, for web tests.

Answers are derived from the prompt and the images (so tests can check what reached the engine), text is
streamed word by word through on_text, a CancelToken stops it, and `state` / `busy` make it raise
ModelNotReady / Busy like the real engine. Images can be prepared ahead (`prepare`): a clock-driven state
machine, queued -> encoding (one tile every `prepare_tile_s`) -> ready, whose work later calls on the same
content and tile budget reuse (`timings.cached_tokens`), waiting for it first when it is not done yet.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from runtime.errors import Busy, InvalidInput, ModelNotReady
from runtime.grounding import clean_phrase, parse_boxes
from runtime.images import image_hash, num_tiles
from runtime.prepare import ImageFile
from runtime.types import Answer, CancelToken, GenerationOptions, GroundingResult, Timings, Turn

# Boxes the fake "sees", in 0..1000, cycled over the phrases asked for.
BOXES = ((100, 150, 400, 600), (500, 200, 900, 950), (50, 50, 950, 300))
DEFAULT_MAX_TILES = 2


@dataclass(frozen=True)
class DecodedFile(ImageFile):
    """An ImageFile that keeps its pixels: decode() hands back the very image prepared (the fake's memory is no
    concern), so tests can check that the prepared image itself reached the engine."""

    image: Image.Image | None = None

    def decode(self) -> Image.Image:
        """The kept pixels."""
        return self.image


@dataclass
class FakePreparation:
    """One image prepared ahead; its state follows the clock (see FakeEngine.prepare_status)."""

    id: str
    image: Image.Image
    max_tiles: int
    tiles: int
    key: tuple[str, int]  # (content hash, max_tiles), like the real engine's cache key
    file: DecodedFile  # what prepared_image hands back, like the real engine's ImageFile
    owner: str  # the client that asked
    starts: float  # monotonic time the encoding starts (after the queue wait)
    tile_s: float
    error: str | None = None  # the preparation fails with this message once "encoded"
    cancelled_at: float | None = None

    @property
    def done_at(self) -> float:
        """When the last tile is encoded."""
        return self.starts + self.tiles * self.tile_s

    def status(self, now: float) -> tuple[str, int]:
        """(queued | encoding | ready | failed, tiles done) at time now."""
        if now < self.starts:
            return "queued", 0
        if now < self.done_at:
            return "encoding", min(self.tiles - 1, int((now - self.starts) / self.tile_s))
        return ("failed" if self.error else "ready"), self.tiles


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
        self.max_new_tokens = 1024  # reported by info() like the real engine's MAX_NEW_TOKENS
        self.prepare_queue_s = 0.02  # a preparation waits this long before its first tile
        self.prepare_tile_s = 0.05  # then takes this long per tile
        self.prepare_error: str | None = None  # preparations started from now on fail with this message
        self.preparations: dict[str, FakePreparation] = {}  # by image_id, cancelled ones kept (work is kept)

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
                "device": "CPU", "default_max_tiles": DEFAULT_MAX_TILES, "max_new_tokens": self.max_new_tokens,
                "queue_depth": 0, "max_queue": 8}

    def close(self) -> None:
        """Nothing to free."""
        self.state = "closed"

    # ------------------------------------------------------------------ preparing images ahead of questions
    def prepare(self, image: Image.Image | ImageFile, max_tiles: int | None = None, owner: str = "") -> dict:
        """Queue image (pixels or a file, decoded here) for preparation and return its status at once."""
        if self.state != "ready":
            raise ModelNotReady(self.error or "The model is still loading, please retry shortly.")
        tiles = DEFAULT_MAX_TILES if max_tiles is None else max_tiles
        if not 1 <= tiles <= 12:
            raise InvalidInput("max_tiles must be between 1 and 12.", field="max_tiles")
        data = image.data if isinstance(image, ImageFile) else b""
        image = image.decode() if isinstance(image, ImageFile) else image
        file = DecodedFile(data, image.width, image.height, image)
        job = FakePreparation(secrets.token_urlsafe(12), image, tiles, num_tiles(image.width, image.height, tiles),
                              (image_hash(image), tiles), file, owner, time.monotonic() + self.prepare_queue_s,
                              self.prepare_tile_s, self.prepare_error)
        self.preparations[job.id] = job
        self.calls.append(("prepare", image, tiles))
        return self._status(job)

    def prepare_status(self, image_id: str) -> dict:
        """queued | encoding | ready | failed with progress in tiles; InvalidInput when unknown."""
        return self._status(self._job(image_id))

    def prepared_image(self, image_id: str) -> tuple[ImageFile, int]:
        """The file and tile budget of a preparation; InvalidInput when unknown, cancelled or expired."""
        job = self._job(image_id)
        return job.file, job.max_tiles

    def cancel_prepare(self, image_id: str) -> None:
        """Forget a preparation (unknown ids are ignored); work already done stays reusable."""
        job = self.preparations.get(image_id)
        if job is not None and job.cancelled_at is None:
            job.cancelled_at = time.monotonic()

    def _job(self, image_id: str) -> FakePreparation:
        job = self.preparations.get(image_id)
        if job is None or job.cancelled_at is not None:
            raise InvalidInput("Unknown or expired image_id: upload the image again.", field="image_id")
        return job

    def _status(self, job: FakePreparation) -> dict:
        now = time.monotonic()
        status, done = job.status(now)
        return {"image_id": job.id, "status": status, "tiles": job.tiles, "tiles_done": done,
                "progress": round(done / job.tiles, 3), "max_tiles": job.max_tiles, "width": job.image.width,
                "height": job.image.height, "error": job.error if status == "failed" else None,
                "seconds": round(max(0.0, min(now, job.done_at) - job.starts), 3)}

    def _reuse(self, images: list[Image.Image], options: GenerationOptions) -> int:
        """Prompt tokens the preparations of these images save, after waiting for unfinished ones."""
        tiles = options.max_tiles or DEFAULT_MAX_TILES
        keys = {(image_hash(im), tiles) for im in images} if self.preparations else set()
        saved = 0
        for key in keys:
            jobs = [j for j in self.preparations.values() if j.key == key and not j.error
                    and (j.cancelled_at is None or j.cancelled_at >= j.done_at)]
            if jobs:
                job = min(jobs, key=lambda j: j.done_at)
                time.sleep(max(0.0, job.done_at - time.monotonic()))  # asking early waits, never encodes twice
                saved += 256 * job.tiles
        return saved

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
        return self._emit(text, options, on_text, cancel, prompt_tokens=10 * len(turns) + 256 * len(images),
                          cached=self._reuse(images, options))

    def describe(self, image: Image.Image, detail: str = "short", options: GenerationOptions = GenerationOptions(),
                 on_text=None, cancel: CancelToken | None = None) -> Answer:
        """A caption naming the size and the mean colour."""
        self._gate()
        self.calls.append(("describe", image, detail, options))
        r, g, b = (round(float(v)) for v in np.asarray(image.convert("RGB")).reshape(-1, 3).mean(axis=0))
        text = f"A {image.width}x{image.height} picture."
        if detail == "detailed":
            text += f" Its average colour is rgb({r}, {g}, {b})."
        return self._emit(text, options, on_text, cancel, prompt_tokens=300, cached=self._reuse([image], options))

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
        answer = self._emit(f"Looking for {said}: " + "".join(parts), options, on_text, cancel, prompt_tokens=300,
                            cached=self._reuse([image], options))
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
              prompt_tokens: int, cached: int = 0) -> Answer:
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
                          decode_tok_s=len(out) / total if total > 0 else 0.0, cached_tokens=cached)
        return Answer("".join(out), prompt_tokens, len(out), reason, timings)
