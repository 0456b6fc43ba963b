"""The engine the web app talks to: background loading, a bounded queue, chat / describe / ground."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
from PIL import Image

from runtime.errors import InvalidInput, ModelNotReady, RuntimeFailure
from runtime.grounding import grounding_prompt, parse_boxes
from runtime.limits import MAX_TILES, check_tiles
from runtime.manifest import read_manifest
from runtime.prompts import ROLES, describe_prompt
from runtime.prepare import ImageFile, Preparer
from runtime.runner import Runner, Slot
from runtime.settings import BATCHED_CONCURRENCY, RuntimeSettings
from runtime.slots import SlotPool
from runtime.types import Answer, CancelToken, GenerationOptions, GroundingResult, Turn

log = logging.getLogger(__name__)
MAX_IMAGES_PER_DIALOG = 8


class Engine:
    """Loads a model in the background and serves generations through a bounded queue of slots."""

    def __init__(self, settings: RuntimeSettings, loader=None):
        self.settings = settings
        self._loader = loader  # callable(settings) -> (backend, tokenizer); tests may pass their own
        self._state, self._progress, self._error = "loading", "waiting to start", None
        self._runner: Runner | None = None
        self._pool: SlotPool | None = None  # generation slots, once loaded
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._backend_info: dict = {}
        self.load_seconds = 0.0
        self._preparer = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Engine":
        """Begin loading in a background thread (idempotent); returns self."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._load, name="engine-load", daemon=True)
                self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading ends; True when ready."""
        self.start()
        self._thread.join(timeout)
        return self._state == "ready"

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self._progress = "loading the model"
            backend, tokenizer = (self._loader or default_loader)(self.settings)
            self._runner = Runner(backend, tokenizer, self.settings.image_cache_mb, self.settings.kv_cache_mb)
            # Concurrent generations only pay where their decode steps share a batched call (OpenVINO): elsewhere
            # they would split the cores, and hold a set of buffers each, for no more tokens per second.
            slots = self.settings.concurrency or (BATCHED_CONCURRENCY if backend.batched_decode else 1)
            self._pool = SlotPool([Slot(backend.new_sequence(), np.zeros(0, np.int64)) for _ in range(slots)],
                                  self.settings.max_queue)
            self._preparer = Preparer(self._runner, self._pool, self.settings.max_prepared, self.settings.prepare_ttl_s,
                                      self.settings.prepare_store_mb * 2**20, self.settings.client_share / 100)
            self._backend_info = {"backend": backend.name, "device": backend.device, **backend.info()}
            self.load_seconds = time.perf_counter() - t0
            self._state, self._progress = "ready", f"ready in {self.load_seconds:.1f} s"
            log.info("engine ready in %.1f s (%s on %s)", self.load_seconds, backend.name, backend.device)
        except Exception as exc:  # any load failure becomes a reported state, never a crash loop
            message = exc.message if isinstance(exc, RuntimeFailure) else f"{type(exc).__name__}: {exc}"
            self._state, self._error, self._progress = "error", message, "failed"
            log.error("engine failed to load: %s", message)

    @property
    def ready(self) -> bool:
        """True once the model is loaded."""
        return self._state == "ready"

    def info(self) -> dict:
        """State and facts for /health and the status page."""
        s, pool = self.settings, self._pool
        return {"state": self._state, "progress": self._progress, "error": self._error, "model": s.model_name,
                "format": _source_format(s), "precision": s.precision, "backend": self._backend_info.get("backend"),
                "device": self._backend_info.get("device"), "default_max_tiles": s.max_tiles, "max_new_tokens": s.max_new_tokens,
                "queue_depth": pool.waiting if pool else 0, "max_queue": s.max_queue,
                "concurrency": (pool.capacity if pool else 0) or s.concurrency or BATCHED_CONCURRENCY,  # (at most)
                "load_seconds": round(self.load_seconds, 2), "engine": self._backend_info}

    # ------------------------------------------------------------------ preparing images ahead of questions
    def prepare(self, image: Image.Image | ImageFile, max_tiles: int | None = None, owner: str = "") -> dict:
        """Start preparing image in the background (encode, prefill its prompt prefix); returns its status.
        An ImageFile is kept as its file, not as pixels; `owner` (a client) gets its share of the preparer."""
        if self._state != "ready":
            raise ModelNotReady(self._error or "The model is still loading, please retry shortly.")
        tiles = self._max_tiles(GenerationOptions(max_tiles=max_tiles))
        job = self._ready_preparer().submit(image, tiles, owner)
        return job.as_dict(0)

    def prepare_status(self, image_id: str) -> dict:
        """queued | encoding | ready (| failed | cancelled) with progress in tiles."""
        return self._ready_preparer().status(image_id)

    def prepared_image(self, image_id: str) -> tuple[Image.Image | ImageFile, int]:
        """The image (as it was submitted) and tile budget of a preparation, for requests that send image_id."""
        job = self._ready_preparer().get(image_id)
        return job.source, job.max_tiles

    def cancel_prepare(self, image_id: str) -> None:
        """Drop a preparation that is no longer wanted."""
        self._ready_preparer().cancel(image_id)

    def _ready_preparer(self) -> Preparer:
        if self._preparer is None:
            raise ModelNotReady(self._error or "The model is still loading, please retry shortly.")
        return self._preparer

    def close(self) -> None:
        """Drop the model (the process may then exit)."""
        self._runner, self._pool, self._state = None, None, "closed"

    # ------------------------------------------------------------------ public API
    def chat(self, turns: list[Turn], options: GenerationOptions = GenerationOptions(), on_text=None,
             cancel: CancelToken | None = None) -> Answer:
        """Answer the last user turn of the dialog; streams deltas to on_text."""
        self._check_dialog(turns)
        max_tiles = self._max_tiles(options)
        options = self._bounded(options)
        with self._slot(cancel) as (slot, queued):
            if cancel is not None and cancel.cancelled:
                return _cancelled_answer(queued)
            answer = self._runner.run(slot, turns, options, max_tiles, on_text, cancel)
        answer.timings.queue_s = queued
        return answer

    def describe(self, image: Image.Image, detail: str = "short", options: GenerationOptions = GenerationOptions(),
                 on_text=None, cancel: CancelToken | None = None) -> Answer:
        """A short or detailed caption of image."""
        return self.chat([Turn("user", describe_prompt(detail), [image])], options, on_text, cancel)

    def ground(self, image: Image.Image, phrases: list[str], detect_all: bool = False,
               options: GenerationOptions = GenerationOptions(), on_text=None,
               cancel: CancelToken | None = None) -> GroundingResult:
        """Boxes for each phrase (or every object) in pixels of image, with the raw model text."""
        phrases = [p.strip() for p in phrases if p and p.strip()]
        if not phrases and not detect_all:
            raise InvalidInput("Please type what to look for.", field="phrases")
        answer = self.chat([Turn("user", grounding_prompt(phrases, detect_all), [image])], options, on_text, cancel)
        default = phrases[0] if len(phrases) == 1 else None
        result = parse_boxes(answer.text, image.width, image.height, default_label=default)
        result.answer = answer
        return result

    # ------------------------------------------------------------------ internals
    def _check_dialog(self, turns: list[Turn]) -> None:
        if not turns or turns[-1].role != "user":
            raise InvalidInput("The dialog must end with a question.", field="question")
        if any(t.role not in ROLES for t in turns):  # a role is written into the prompt's markup
            raise InvalidInput("Each turn's role must be system, user or assistant.", field="question")
        if not turns[-1].text.strip():
            raise InvalidInput("Please type a question.", field="question")
        if sum(len(t.images) for t in turns) > MAX_IMAGES_PER_DIALOG:
            raise InvalidInput(f"A conversation may hold at most {MAX_IMAGES_PER_DIALOG} images.", field="image")

    def _max_tiles(self, options: GenerationOptions) -> int:
        tiles = options.max_tiles if options.max_tiles is not None else self.settings.max_tiles
        if not check_tiles(tiles):
            raise InvalidInput(f"max_tiles must be between 1 and {MAX_TILES}.", field="max_tiles")
        return tiles

    def _bounded(self, options: GenerationOptions) -> GenerationOptions:
        if options.max_new_tokens < 1:
            raise InvalidInput("max_new_tokens must be at least 1.", field="max_new_tokens")
        if options.temperature < 0 or not 0 < options.top_p <= 1 or options.repetition_penalty <= 0:
            raise InvalidInput("temperature must be >= 0, top_p in (0, 1], repetition_penalty > 0.")
        from dataclasses import replace
        return replace(options, max_new_tokens=min(options.max_new_tokens, self.settings.max_new_tokens))

    def _slot(self, cancel: CancelToken | None):
        """A slot from the pool (ModelNotReady before the model is loaded); see SlotPool.take."""
        if self._state != "ready" or self._pool is None:
            raise ModelNotReady(self._error or "The model is still loading, please retry shortly.")
        return self._pool.take(cancel)

def _cancelled_answer(queued: float) -> Answer:
    from runtime.types import Timings
    return Answer("", 0, 0, "cancelled", Timings(queue_s=queued))


def _source_format(settings: RuntimeSettings) -> str:
    """'builtin', 'original' or 'native', from the export manifest when there is one."""
    manifest = read_manifest(settings.export_dir)
    if manifest is not None:
        return manifest.source_format
    return "builtin" if settings.model_name.startswith("builtin:") else "unknown"


def default_loader(settings: RuntimeSettings):
    """Load the backend chosen by settings and the exported tokenizer."""
    from runtime.select import load_backend
    from runtime.tokenizer import TextTokenizer

    folder = settings.export_dir
    backend = load_backend(settings, folder)
    return backend, TextTokenizer(folder)


def create_engine(settings: RuntimeSettings | None = None, loader=None) -> Engine:
    """An engine for settings (from the environment by default); call .start() to load."""
    return Engine(settings or RuntimeSettings.from_env(), loader)
