"""One request on one generation slot: prompt ids, cached image and KV prefixes, prefill, decode."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from runtime.backends.base import Backend, Sequence
from runtime.cache import LRUBytes, PrefixCache, common_prefix
from runtime.generate import decode
from runtime.images import image_hash, preprocess
from runtime.limits import IMAGE_SEQ_LEN, MAX_TILES
from runtime.prompts import ROLES, Prompt, image_placeholder
from runtime.tokenizer import StreamDecoder, TextTokenizer
from runtime.types import Answer, CancelToken, GenerationOptions, Timings, Turn


MIN_REUSE_TOKENS = 64  # reuse a cached KV prefix only when it saves at least this many prompt tokens


@dataclass
class EncodedImage:
    """An image's embeddings for one tile budget."""

    key: int  # negative id used in KV-prefix keys for this image's positions
    tiles: int
    embeds: np.ndarray  # (tiles * 256, hidden)


class Preempted(Exception):
    """A low-priority preparation stopped between tiles because a request is waiting."""


@dataclass
class _PartialEncode:
    """Tiles of one image encoded so far; whoever holds `lock` may continue it."""

    pixels: np.ndarray | None = None  # (tiles, 3, 448, 448)
    done: list = field(default_factory=list)  # (256, hidden) per finished tile
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Slot:
    """A generation slot: a KV-cached sequence and the keys of what is in it."""

    seq: Sequence
    keys: np.ndarray


def image_key(digest: str, max_tiles: int) -> int:
    """A negative int64 naming (image content, tile budget) inside KV-prefix keys."""
    return -1 - (int(digest[:12], 16) * (MAX_TILES + 1) + max_tiles)


class Runner:
    """Turns dialogs into answers on a backend, reusing image embeddings and KV prefixes."""

    def __init__(self, backend: Backend, tokenizer: TextTokenizer, image_cache_mb: int, kv_cache_mb: int):
        self.backend, self.tok = backend, tokenizer
        self.images = LRUBytes(image_cache_mb * 2**20)
        self.prefixes = PrefixCache(kv_cache_mb * 2**20)
        self.answers = LRUBytes(4 * 2**20)  # answer text -> the exact ids generated for it
        self._partials: dict[tuple[str, int], _PartialEncode] = {}
        self._partials_lock = threading.Lock()
        self._kv_bytes_per_position = 0.0  # of a KV snapshot, learnt from the first one

    def encode_image(self, img: Image.Image, max_tiles: int, should_yield=None) -> tuple[EncodedImage, float]:
        """Embeddings of img at max_tiles (cached by content); returns them and the seconds spent.

        An encoding in progress elsewhere (a preparation) is waited for and continued, never repeated.
        Tiles are encoded one at a time; with `should_yield`, Preempted is raised between them when it returns
        True (the tiles done so far are kept for whoever continues).
        """
        digest = image_hash(img)
        key = (digest, max_tiles)
        hit = self.images.get(key)
        if hit is not None:
            return hit, 0.0
        t0 = time.perf_counter()
        with self._partials_lock:
            part = self._partials.setdefault(key, _PartialEncode())
        with part.lock:
            hit = self.images.get(key)
            if hit is not None:
                return hit, time.perf_counter() - t0
            if part.pixels is None:
                part.pixels = preprocess(img, max_tiles)  # (tiles, 3, 448, 448)
            while len(part.done) < part.pixels.shape[0]:
                if should_yield is not None and should_yield():
                    raise Preempted()
                # One tile at a time: within ~5% of a batch's speed (a tile is already 1025 rows per matmul;
                # 3 tiles, 1B model: 4.5 s one by one, 4.3 s batched), and the vision model's buffers stay
                # sized for one tile (~0.1 GB) however many an image has.
                n = len(part.done)
                part.done.append(self.backend.embed_images(part.pixels[n:n + 1]))  # (256, hidden)
            enc = EncodedImage(image_key(digest, max_tiles), part.pixels.shape[0], np.concatenate(part.done))
            self.images.put(key, enc, enc.embeds.nbytes)
        self.forget_partial(key)
        return enc, time.perf_counter() - t0

    def forget_partial(self, key: tuple[str, int]) -> None:
        """Drop the tiles of an abandoned encoding."""
        with self._partials_lock:
            self._partials.pop(key, None)

    def tiles_done(self, key: tuple[str, int]) -> int:
        """How many tiles of an encoding in progress are finished."""
        part = self._partials.get(key)
        return len(part.done) if part is not None else 0

    def prefill_image_prefix(self, slot: Slot, enc: EncodedImage) -> None:
        """Compute and save the KV of `<|im_start|>user\n<img>...</img>\n`, the start of any question on enc,
        in slot (which then holds it)."""
        ids = self.tok.encode("<|im_start|>user\n" + image_placeholder(enc.tiles) + "\n")
        keys = np.array(self._keys(ids, [enc]), dtype=np.int64)
        if self.prefixes.best(np.append(keys, 0))[1] >= keys.size:
            return  # already cached
        slot.keys = keys[:0]
        slot.seq.reset()
        slot.seq.forward(self.embed(np.array(ids, dtype=np.int64), [enc], 0))
        slot.keys = keys
        self._save_prefix(slot)

    def _save_prefix(self, slot: Slot) -> None:
        """Snapshot the slot's KV into the prefix cache, evicting first what would not fit beside it."""
        if self._kv_bytes_per_position:
            self.prefixes.make_room(slot.seq.length, self._kv_bytes_per_position)
        snap = slot.seq.snapshot()
        if snap.length:
            self._kv_bytes_per_position = snap.nbytes / snap.length
        self.prefixes.put(slot.keys, snap)

    def prompt_ids(self, turns: list[Turn], encoded: list[list[EncodedImage]]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, keys) of the ChatML prompt; keys equal ids except at image positions (the image's key)."""
        ids, keys = [], []
        for turn, images in zip(turns, encoded):
            assert turn.role in ROLES, turn.role  # the engine refuses other roles: a role is markup
            head = f"<|im_start|>{turn.role}\n" + "".join(image_placeholder(e.tiles) + "\n" for e in images)
            body = self._known_answer(turn) or self.text_ids(turn.text)
            part = self.tok.encode(head) + list(body) + self.tok.encode("<|im_end|>\n")
            ids += part
            keys += self._keys(part, images)
        tail = self.tok.encode("<|im_start|>assistant\n")
        return np.array(ids + tail, dtype=np.int64), np.array(keys + tail, dtype=np.int64)

    def _known_answer(self, turn: Turn) -> list[int] | None:
        """The ids generated here for an assistant turn's text (so its KV is reused), unless they hold an added
        token: a `<ref>` or a random model's `<IMG_CONTEXT>` sent back is user text like any other."""
        known = self.answers.get(turn.text) if turn.role == "assistant" else None
        return known if known is not None and self.tok.added.isdisjoint(known) else None

    def text_ids(self, text: str) -> list[int]:
        """Ids of a turn's text: all of it user text, except the runtime's own parts of a Prompt (its markup)."""
        parts = text.parts if isinstance(text, Prompt) else ((text, True),)
        return [i for part, users in parts for i in (self.tok.encode_text(part) if users else self.tok.encode(part))]

    def _keys(self, part: list[int], images: list[EncodedImage]) -> list[int]:
        keys = list(part)
        ctx = self.tok.special.img_context
        positions = [i for i, t in enumerate(part) if t == ctx]
        start = 0
        for enc in images:
            n = enc.tiles * IMAGE_SEQ_LEN
            for i in positions[start:start + n]:
                keys[i] = enc.key
            start += n
        return keys

    def embed(self, ids: np.ndarray, images: list[EncodedImage], start: int) -> np.ndarray:
        """Embeddings of ids[start:], image positions filled from the images' embeddings in order."""
        embeds = self.backend.embed_tokens(ids[start:])  # (T, hidden)
        ctx_all = np.flatnonzero(ids == self.tok.special.img_context)
        if ctx_all.size:
            image_rows = np.concatenate([e.embeds for e in images])  # (n_ctx, hidden)
            sel = ctx_all >= start
            embeds[ctx_all[sel] - start] = image_rows[sel]
        return embeds

    def run(self, slot: Slot, turns: list[Turn], options: GenerationOptions, max_tiles: int,
            on_text, cancel: CancelToken | None) -> Answer:
        """Generate the assistant's reply to turns on slot."""
        t_start, timings = time.perf_counter(), Timings()
        encoded = []
        for turn in turns:
            row = []
            for img in turn.images:
                enc, secs = self.encode_image(img, max_tiles)
                row.append(enc)
                timings.vision_s += secs
            encoded.append(row)
        ids, keys = self.prompt_ids(turns, encoded)
        start = self._restore_prefix(slot, keys)
        timings.cached_tokens = start
        t_prefill = time.perf_counter()
        logits = slot.seq.forward(self.embed(ids, [e for row in encoded for e in row], start))
        timings.prefill_s = time.perf_counter() - t_prefill
        slot.keys = keys

        def step(token: int) -> np.ndarray:
            slot.keys = np.append(slot.keys, token)
            return slot.seq.forward(self.backend.embed_tokens(np.array([token], dtype=np.int64)))

        result = decode(step, logits, ids, options, self.tok.special.eos, StreamDecoder(self.tok), on_text, cancel)
        end = time.perf_counter()  # the answer is complete (and streamed); saving its KV is not part of it
        self._remember(slot, result.ids, result.text)
        timings.ttft_s = (result.first_token_at or end) - t_start
        timings.decode_s = end - (result.first_token_at or end)
        timings.total_s = end - t_start
        n = len(result.ids)
        timings.decode_tok_s = (n - 1) / timings.decode_s if n > 1 and timings.decode_s > 0 else 0.0
        return Answer(result.text, int(ids.size), n, result.finish_reason, timings)

    def _restore_prefix(self, slot: Slot, keys: np.ndarray) -> int:
        """Reuse the longest cached KV prefix (the slot's own state or a saved one); returns its length."""
        own = min(common_prefix(slot.keys, keys), keys.size - 1, slot.seq.length)
        entry, saved = self.prefixes.best(keys)
        if max(own, saved) < MIN_REUSE_TOKENS:
            # A few shared tokens (the chat header) save nothing, and OpenVINO prefills a long prompt ~2.5x
            # slower behind a non-empty cache than from an empty one (measured on the 1B model).
            slot.seq.reset()
            return 0
        if own >= saved and own > 0:
            if own < slot.seq.length:
                snap = slot.seq.snapshot()
                slot.seq.restore(snap, own)
            return own
        if entry is not None and saved > 0:
            slot.seq.restore(entry.snapshot, saved)
            return saved
        slot.seq.reset()
        return 0

    def _remember(self, slot: Slot, generated: list[int], text: str) -> None:
        """Save the slot's KV for follow-ups, and the exact ids of this answer's text."""
        slot.keys = slot.keys[:slot.seq.length]
        self._save_prefix(slot)
        if generated and self.tok.decode(generated) == text:
            self.answers.put(text, list(generated), len(generated) * 8 + len(text))
