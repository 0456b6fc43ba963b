"""Preparing images before the question: same answers, bounded caches, and never in a request's way."""
from __future__ import annotations

import time

import numpy as np
import pytest
from model_fixtures import make_engine, photo

from runtime.backends.base import KVSnapshot
from runtime.cache import LRUBytes, PrefixCache
from runtime.engine import create_engine
from runtime.errors import InvalidInput
from runtime.settings import RuntimeSettings
from runtime.types import GenerationOptions, Turn

OPTS = GenerationOptions(max_new_tokens=12, max_tiles=2)


def wait_ready(engine, image_id, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = engine.prepare_status(image_id)
        if status["status"] in ("ready", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"not ready: {status}")


@pytest.mark.parametrize("task", ["chat", "describe", "ground"])
def test_prepared_and_unprepared_give_the_same_tokens(model_cache, task):
    image = photo()
    calls = {"chat": lambda e: e.chat([Turn("user", "what is this?", [image])], OPTS).text,
             "describe": lambda e: e.describe(image, "short", OPTS).text,
             "ground": lambda e: e.ground(image, ["cat"], options=OPTS).raw_text}
    cold = make_engine(model_cache)
    expected = calls[task](cold)
    warm = make_engine(model_cache)
    status = wait_ready(warm, warm.prepare(image, 2)["image_id"])
    assert status["status"] == "ready" and status["tiles_done"] == status["tiles"] == 3
    answer = {"chat": lambda e: e.chat([Turn("user", "what is this?", [image])], OPTS),
              "describe": lambda e: e.describe(image, "short", OPTS),
              "ground": lambda e: e.ground(image, ["cat"], options=OPTS).answer}[task](warm)
    assert answer.timings.vision_s == 0.0 and answer.timings.cached_tokens >= 3 * 256
    assert calls[task](warm) == expected


def test_unknown_and_cancelled_image_ids(model_cache):
    engine = make_engine(model_cache)
    with pytest.raises(InvalidInput):
        engine.prepare_status("nope")
    image_id = engine.prepare(photo(), 1)["image_id"]
    engine.cancel_prepare(image_id)
    with pytest.raises(InvalidInput):
        engine.prepared_image(image_id)


def test_caches_stay_within_their_memory_bound():
    cache = LRUBytes(1000)
    for i in range(50):
        cache.put(i, object(), 300)
        assert cache.bytes <= 1000
    assert len(cache) == 3 and cache.get(49) is not None and cache.get(0) is None
    prefixes = PrefixCache(10_000)
    for i in range(20):
        prefixes.put(np.arange(i, i + 100), KVSnapshot(100, None, 4000))
        assert prefixes.store.bytes <= 10_000


def test_room_is_made_before_a_kv_snapshot_is_taken(model_cache):
    """A snapshot is copied out of the engine in full before put() could evict anything: the prefix cache makes
    room first, so the cache and the snapshot being taken never hold more than the cap together."""
    from runtime.runner import Runner, Slot
    from runtime.tokenizer import TextTokenizer

    held = []

    class Measured(SlowSequence):
        def snapshot(self):
            held.append(runner.prefixes.store.bytes + 8 * self.length)  # SlowSequence: 8 bytes a position
            return super().snapshot()

    runner = Runner(SlowVisionBackend(), TextTokenizer(RuntimeSettings(
        model_name="builtin:tiny-random", cache_dir=str(model_cache), precision="fp32").export_dir), 1, 0)
    runner.prefixes = PrefixCache(2_000)
    slot = Slot(Measured(), np.zeros(0, np.int64))
    for i in range(6):  # different questions: each answer's KV is a new entry of ~100 positions
        runner.run(slot, [Turn("user", f"question number {i} " * 8)], GenerationOptions(max_new_tokens=4), 1,
                   None, None)
    assert len(held) == 6 and max(held[1:]) <= 2_000  # (the first teaches the runner a snapshot's size)
    assert len(runner.prefixes.store) >= 1


class SlowSequence:
    def __init__(self):
        self.length = 0

    def forward(self, embeds):
        self.length += embeds.shape[0]
        logits = np.zeros(64, np.float32)
        logits[5 + self.length % 7] = 1.0
        return logits

    def reset(self):
        self.length = 0

    def snapshot(self):
        return KVSnapshot(self.length, None, 8 * self.length)

    def restore(self, snap, length):
        self.length = length


class SlowVisionBackend:
    """A fake engine whose vision encoder takes TILE_S per tile: the cost preparation must never impose."""

    name, device, hidden_size, batched_decode = "fake", "CPU", 8, False
    TILE_S = 0.4

    def embed_images(self, pixels):
        time.sleep(self.TILE_S * pixels.shape[0])
        return np.zeros((pixels.shape[0] * 256, 8), np.float32)

    def embed_tokens(self, ids):
        return np.zeros((ids.size, 8), np.float32)

    def new_sequence(self):
        return SlowSequence()

    def info(self):
        return {}


@pytest.fixture
def slow_engine(model_cache):
    from runtime.tokenizer import TextTokenizer

    settings = RuntimeSettings(model_name="builtin:tiny-random", cache_dir=str(model_cache), precision="fp32")
    engine = create_engine(settings, loader=lambda s: (SlowVisionBackend(), TextTokenizer(s.export_dir)))
    assert engine.wait_ready(10)
    return engine


def test_preparation_never_delays_a_waiting_request(slow_engine):
    big = photo(size=(1600, 400))  # 4 + 1 tiles at max_tiles=4: 2 s of slow vision
    slow_engine.prepare(big, 4)
    time.sleep(0.1)  # the preparer is now inside its first tile
    t0 = time.perf_counter()
    answer = slow_engine.chat([Turn("user", "hello")], GenerationOptions(max_new_tokens=3))
    waited = time.perf_counter() - t0
    assert answer.completion_tokens == 3
    assert waited < SlowVisionBackend.TILE_S + 0.3  # at most the tile in flight, never the whole preparation


def test_asking_before_ready_waits_and_does_not_encode_twice(slow_engine):
    image = photo(size=(1600, 400))
    calls = []
    original = slow_engine._runner.backend.embed_images
    slow_engine._runner.backend.embed_images = lambda px: calls.append(px.shape[0]) or original(px)
    image_id = slow_engine.prepare(image, 4)["image_id"]
    time.sleep(0.6)  # one or two tiles done by the preparer
    prepared, tiles = slow_engine.prepared_image(image_id)
    slow_engine.chat([Turn("user", "what?", [prepared])], GenerationOptions(max_new_tokens=2, max_tiles=tiles))
    assert sum(calls) == 5  # every tile encoded exactly once between the preparer and the request


# ---------------------------------------------------------------------------- through the web API

def test_web_api_prepared_image_answers_like_an_upload(model_cache, web_settings):
    """POST /api/v1/images, poll until ready, then /api/v1/chat with image_id: the same greedy answer as
    an upload on a fresh engine, without reading the image again."""
    import io

    from webapp import create_app

    buf = io.BytesIO()
    photo().save(buf, "PNG")
    png = buf.getvalue()
    ask = {"question": "what is this?", "max_new_tokens": "12"}
    cold = create_app(web_settings, engine=make_engine(model_cache)).test_client()
    expected = cold.post("/api/v1/chat", data={"image": (io.BytesIO(png), "cat.png"), "max_tiles": "2", **ask})
    assert expected.status_code == 200, expected.get_data(as_text=True)

    client = create_app(web_settings, engine=make_engine(model_cache)).test_client()
    started = client.post("/api/v1/images", data={"image": (io.BytesIO(png), "cat.png"), "max_tiles": "2"})
    assert started.status_code == 202, started.get_data(as_text=True)
    status, deadline = started.get_json(), time.time() + 60
    while status["status"] in ("queued", "encoding") and time.time() < deadline:
        time.sleep(0.05)
        status = client.get(started.get_json()["status_url"]).get_json()
    assert status["status"] == "ready" and status["tiles_done"] == status["tiles"] == 3
    answer = client.post("/api/v1/chat", data={"image_id": status["image_id"], **ask})  # its max_tiles: 2
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["answer"] == expected.get_json()["answer"] and body["usage"]["completion_tokens"] > 0
    assert body["timings"]["vision_s"] == 0.0 and body["timings"]["cached_tokens"] >= 3 * 256
