"""The engine on the tiny random model: parity with PyTorch, streaming, follow-ups, cancellation, the queue."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from model_fixtures import make_engine, photo, reference_generate

from runtime.errors import Busy, InvalidInput, ModelNotReady
from runtime.types import CancelToken, GenerationOptions, Turn

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "what is this?"
IMAGES = {"1-tile": (photo(size=(448, 448)), 1), "multi-tile": (photo(), 6)}


@pytest.fixture(scope="module")
def torch_engine(model_cache):
    return make_engine(model_cache, backend="torch")


@pytest.mark.parametrize("case", IMAGES)
@pytest.mark.parametrize("backend", ["openvino", "torch"])
def test_greedy_answer_equals_transformers_generate(request, reference, case, backend):
    engine = request.getfixturevalue("ov_engine" if backend == "openvino" else "torch_engine")
    image, tiles = IMAGES[case]
    answer = engine.chat([Turn("user", QUESTION, [image])], GenerationOptions(max_new_tokens=20, max_tiles=tiles))
    assert answer.text == reference_generate(reference, image, QUESTION, tiles, 20)
    assert answer.completion_tokens == 20 or answer.finish_reason == "stop"


def test_streamed_text_equals_final_text(ov_engine):
    deltas = []
    answer = ov_engine.chat([Turn("user", QUESTION, [photo()])], GenerationOptions(max_new_tokens=24),
                            on_text=deltas.append)
    assert len(deltas) > 1 and "".join(deltas) == answer.text


def test_stop_string_cuts_text_and_stream_alike(ov_engine):
    full = ov_engine.chat([Turn("user", QUESTION, [photo()])], GenerationOptions(max_new_tokens=24)).text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    deltas = []
    cut = ov_engine.chat([Turn("user", QUESTION, [photo()])], GenerationOptions(max_new_tokens=24, stop=(stop,)),
                         on_text=deltas.append)
    assert cut.text == full[:full.index(stop)] and "".join(deltas) == cut.text and cut.finish_reason == "stop"


def test_follow_up_reuses_cache_and_equals_a_fresh_run(model_cache):
    warm = make_engine(model_cache)
    opts = GenerationOptions(max_new_tokens=12, max_tiles=2)
    first = warm.chat([Turn("user", QUESTION, [photo()])], opts)
    dialog = [Turn("user", QUESTION, [photo()]), Turn("assistant", first.text), Turn("user", "and the colour?")]
    second = warm.chat(dialog, opts)
    assert second.timings.vision_s == 0.0  # no vision re-encoding
    assert second.timings.cached_tokens >= first.prompt_tokens  # no re-prefill of the first turn
    fresh = make_engine(model_cache).chat(dialog, opts)
    assert fresh.timings.cached_tokens == 0 and second.text == fresh.text


def test_image_in_a_later_turn_and_two_images(ov_engine):
    opts = GenerationOptions(max_new_tokens=8, max_tiles=1)
    dialog = [Turn("user", "hello"), Turn("assistant", "hi"),
              Turn("user", "compare", [photo(size=(448, 448)), photo("astronaut", (448, 448))])]
    answer = ov_engine.chat(dialog, opts)
    assert answer.prompt_tokens > 2 * 256 and answer.completion_tokens > 0


def test_describe_and_ground(ov_engine):
    image = photo()
    caption = ov_engine.describe(image, "detailed", GenerationOptions(max_new_tokens=8))
    assert caption.completion_tokens > 0
    result = ov_engine.ground(image, ["cat"], options=GenerationOptions(max_new_tokens=16))
    assert result.raw_text == result.answer.text
    for box in result.boxes:
        x1, y1, x2, y2 = box.bbox
        assert 0 <= x1 <= x2 <= image.width and 0 <= y1 <= y2 <= image.height
    with pytest.raises(InvalidInput):
        ov_engine.ground(image, ["  "])


def test_cancel_stops_within_a_token_and_frees_the_engine(ov_engine):
    cancel = CancelToken()
    seen = []

    def on_text(delta):
        seen.append(delta)
        cancel.cancel()

    answer = ov_engine.chat([Turn("user", QUESTION, [photo()])],
                            GenerationOptions(max_new_tokens=200, ignore_eos=True), on_text=on_text, cancel=cancel)
    assert answer.finish_reason == "cancelled" and answer.completion_tokens <= 2
    after = ov_engine.chat([Turn("user", QUESTION, [photo()])], GenerationOptions(max_new_tokens=4))
    assert after.completion_tokens > 0


def test_full_queue_refuses_at_once(model_cache):
    engine = make_engine(model_cache, max_queue=0, concurrency=1)  # one slot, no queue
    started = threading.Event()
    long_call = threading.Thread(target=engine.chat, kwargs=dict(
        turns=[Turn("user", QUESTION, [photo()])], options=GenerationOptions(max_new_tokens=400, ignore_eos=True),
        on_text=lambda _: started.set()))
    long_call.start()
    assert started.wait(30)
    t0 = time.perf_counter()
    with pytest.raises(Busy) as exc:
        engine.chat([Turn("user", QUESTION)], GenerationOptions(max_new_tokens=2))
    assert time.perf_counter() - t0 < 0.5 and exc.value.retry_after > 0
    long_call.join(60)


def test_bad_options_are_invalid_input(ov_engine):
    for opts in (GenerationOptions(max_tiles=13), GenerationOptions(max_tiles=0), GenerationOptions(max_new_tokens=0),
                 GenerationOptions(top_p=0)):
        with pytest.raises(InvalidInput):
            ov_engine.chat([Turn("user", QUESTION)], opts)
    with pytest.raises(InvalidInput):
        ov_engine.chat([Turn("user", "   ")])


def test_missing_artifacts_are_reported_not_raised(tmp_path):
    from runtime.engine import create_engine
    from runtime.settings import RuntimeSettings

    engine = create_engine(RuntimeSettings(model_name="builtin:tiny-random", cache_dir=str(tmp_path)))
    assert not engine.wait_ready(30)
    info = engine.info()
    assert info["state"] == "error" and "make export" in info["error"]
    with pytest.raises(ModelNotReady):
        engine.chat([Turn("user", QUESTION)])


def test_cuda_without_gpu_is_a_clear_error(model_cache):
    from runtime.select import torch_cuda_available

    if torch_cuda_available():
        pytest.skip("a GPU is present")
    from runtime.engine import create_engine
    from model_fixtures import runtime_settings

    engine = create_engine(runtime_settings(model_cache, device="cuda"))
    assert not engine.wait_ready(30) and "no CUDA GPU" in engine.info()["error"]


def test_cpu_serving_path_does_not_import_torch(model_cache):
    code = f"""
import sys, json
from runtime.engine import create_engine
from runtime.settings import RuntimeSettings
from runtime.types import Turn, GenerationOptions
from PIL import Image
e = create_engine(RuntimeSettings(model_name="builtin:tiny-random", cache_dir={str(model_cache)!r}, precision="int8",
                                  device="auto", ov_cache_dir="off"))
assert e.wait_ready(60), e.info()
e.chat([Turn("user", "hi", [Image.new("RGB", (64, 64), "red")])], GenerationOptions(max_new_tokens=3))
print(json.dumps({{"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                   "backend": e.info()["backend"]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts == {"torch": False, "transformers": False, "backend": "openvino"}
