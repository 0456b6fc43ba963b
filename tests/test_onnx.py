"""The ONNX Runtime path on the tiny random model: export layout, parity with PyTorch, engine tokens, KV reuse."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = "builtin:tiny-random"
QUESTION = "Describe the image."


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def cat() -> Image.Image:
    """A real photo shipped inside scikit-image's wheel (loads offline)."""
    import skimage.data

    return Image.fromarray(skimage.data.chelsea()).convert("RGB")


def settings(cache: Path, **overrides):
    """Exact fp32 runtime settings over the tiny export (ONNX Runtime unless overridden)."""
    from runtime.settings import RuntimeSettings

    values = dict(model_name=TINY, cache_dir=str(cache), precision="fp32", backend="onnxruntime", device="cpu",
                  ov_cache_dir="off", kv_cache_precision="f32")
    values.update(overrides)
    return RuntimeSettings(**values)


def make_engine(cache: Path, **overrides):
    """A loaded engine over the tiny export."""
    from runtime.engine import create_engine

    engine = create_engine(settings(cache, **overrides))
    assert engine.wait_ready(120), engine.info()
    return engine


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache holding the tiny model exported at fp32 in both formats."""
    from export.pipeline import run_export
    from export.settings import ExportSettings

    cache = tmp_path_factory.mktemp("onnx_cache")
    run_export(ExportSettings(model_name=TINY, cache_dir=str(cache), precision="fp32", formats=("openvino", "onnx")))
    return cache


@pytest.fixture(scope="module")
def export_dir(cache) -> Path:
    from runtime.settings import artifact_dir

    return artifact_dir(cache, TINY, "fp32")


@pytest.fixture(scope="module")
def reference(export_dir):
    """transformers' model and tokenizer loaded from the checkpoint the export recorded."""
    import torch
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    native = json.loads((export_dir / "manifest.json").read_text())["source"]["native_dir"]
    model = InternVLForConditionalGeneration.from_pretrained(native, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(native)


@pytest.fixture(scope="module")
def backend(cache, export_dir):
    from runtime.backends.onnx_backend import OnnxBackend

    return OnnxBackend(export_dir, settings(cache))


@pytest.fixture(scope="module")
def engines(cache):
    """ONNX Runtime and PyTorch engines over the same export."""
    pair = {name: make_engine(cache, backend=name) for name in ("onnxruntime", "torch")}
    yield pair
    for engine in pair.values():
        engine.close()


def torch_image_features(model, pixels: np.ndarray) -> np.ndarray:
    """(tiles, 3, 448, 448) -> (tiles * 256, hidden) from transformers."""
    import torch

    cfg = model.config
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=torch.from_numpy(pixels),
                                               vision_feature_layer=cfg.vision_feature_layer,
                                               vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    feats = getattr(feats, "pooler_output", feats)
    return feats.reshape(-1, feats.shape[-1]).numpy()


def test_export_writes_onnx_parts(export_dir, reference):
    """Four ONNX files; the LM has explicit past/present key-values and one row of logits."""
    import onnxruntime as ort

    onnx_dir = export_dir / "onnx"
    for name in ("vision_embeddings.onnx", "vision_embeddings_int8.onnx", "text_embeddings.onnx",
                 "language_model.onnx"):
        assert (onnx_dir / name).is_file(), name
    assert "onnx" in json.loads((export_dir / "manifest.json").read_text())["formats"]
    lm = ort.InferenceSession(str(onnx_dir / "language_model.onnx"), providers=["CPUExecutionProvider"])
    layers = reference[0].config.text_config.num_hidden_layers
    inputs = [i.name for i in lm.get_inputs()]
    outputs = [o.name for o in lm.get_outputs()]
    assert inputs[:3] == ["inputs_embeds", "attention_mask", "position_ids"]
    assert inputs[3:] == [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    assert outputs == ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


@pytest.mark.parametrize("max_tiles", [1, 6])
def test_vision_matches_torch(backend, reference, max_tiles):
    """ONNX Runtime image embeddings equal transformers' within 1e-4 relative."""
    from runtime.images import preprocess

    pixels = preprocess(cat(), max_tiles)
    assert rel_err(backend.embed_images(pixels), torch_image_features(reference[0], pixels)) < 1e-4


def test_int8_vision_is_close(cache, export_dir, backend):
    """The W8A8 vision model stays near fp32 (a few percent on random weights)."""
    from runtime.backends.onnx_backend import OnnxBackend
    from runtime.images import preprocess

    int8 = OnnxBackend(export_dir, settings(cache, onnx_vision_int8=True))
    assert int8.info()["vision_model"] == "vision_embeddings_int8.onnx"
    pixels = preprocess(cat(), 6)
    assert rel_err(int8.embed_images(pixels), backend.embed_images(pixels)) < 0.05


def test_prefill_and_decode_logits_match_torch(backend, reference):
    """Prefill of an image prompt (past length 0), then one decode step, against transformers' forward."""
    import torch

    from runtime.images import preprocess

    model, tok = reference
    pixels = preprocess(cat(), 2)  # (3, 3, 448, 448): 2 tiles and the thumbnail
    prompt = (f"<|im_start|>user\n<img>{'<IMG_CONTEXT>' * 256 * pixels.shape[0]}</img>\n{QUESTION}<|im_end|>\n"
              "<|im_start|>assistant\n")
    ids = np.array(tok(prompt).input_ids, dtype=np.int64)
    embeds = backend.embed_tokens(ids)
    embeds[ids == model.config.image_token_id] = backend.embed_images(pixels)
    seq = backend.new_sequence()
    logits = seq.forward(embeds)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)[None], pixel_values=torch.from_numpy(pixels), use_cache=True)
    assert rel_err(logits, ref.logits[0, -1].numpy()) < 1e-4
    nxt = int(logits.argmax())
    step = seq.forward(backend.embed_tokens(np.array([nxt])))
    with torch.no_grad():
        ref2 = model(input_ids=torch.tensor([[nxt]]), past_key_values=ref.past_key_values,
                     attention_mask=torch.ones(1, ids.size + 1, dtype=torch.long))
    assert seq.length == ids.size + 1
    assert rel_err(step, ref2.logits[0, -1].numpy()) < 1e-4


def test_snapshot_and_restore(backend):
    """Restoring a prefix and replaying the rest gives the same logits; the snapshot survives later steps."""
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(n, backend.hidden_size)).astype(np.float32) for n in (5, 3))
    seq = backend.new_sequence()
    seq.forward(a)
    expected = seq.forward(b)
    snap = seq.snapshot()
    seq.forward(b[:1])  # moves on; snap must not change
    seq.restore(snap, 5)
    assert seq.length == 5
    np.testing.assert_allclose(seq.forward(b), expected, rtol=1e-5, atol=1e-5)
    seq.reset()
    assert seq.length == 0
    np.testing.assert_allclose(seq.forward(np.concatenate([a, b])), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("max_tiles", [1, 6])
def test_engine_tokens_match_torch(engines, max_tiles):
    """Greedy answers of the ONNX Runtime engine equal the PyTorch engine's."""
    from runtime.types import GenerationOptions, Turn

    opts = GenerationOptions(max_new_tokens=20, max_tiles=max_tiles)
    answers = {name: engine.chat([Turn("user", QUESTION, [cat()])], opts) for name, engine in engines.items()}
    assert answers["onnxruntime"].completion_tokens > 0
    assert answers["onnxruntime"].text == answers["torch"].text
    assert answers["onnxruntime"].completion_tokens == answers["torch"].completion_tokens


def test_second_turn_equals_fresh_engine(cache, engines):
    """A follow-up reusing the cached KV prefix answers as a fresh engine does over the whole dialog."""
    from runtime.types import GenerationOptions, Turn

    opts = GenerationOptions(max_new_tokens=20, max_tiles=2)
    engine = engines["onnxruntime"]
    first = engine.chat([Turn("user", QUESTION, [cat()])], opts)
    dialog = [Turn("user", QUESTION, [cat()]), Turn("assistant", first.text), Turn("user", "What colour is it?")]
    second = engine.chat(dialog, opts)
    assert second.timings.cached_tokens > 0
    fresh = make_engine(cache)
    try:
        assert fresh.chat(dialog, opts).text == second.text
    finally:
        fresh.close()


def test_missing_onnx_folder_is_reported(tmp_path, cache):
    """An export without onnx/ raises ArtifactsMissing; the engine reports it instead of crashing."""
    from runtime.backends.onnx_backend import OnnxBackend
    from runtime.errors import ArtifactsMissing
    from runtime.engine import create_engine

    with pytest.raises(ArtifactsMissing, match="EXPORT_FORMATS"):
        OnnxBackend(tmp_path, settings(cache))
    folder = tmp_path / "exported" / "builtin--tiny-random" / "fp32"
    folder.mkdir(parents=True)
    engine = create_engine(settings(tmp_path))
    assert not engine.wait_ready(30)
    assert engine.info()["state"] == "error" and "onnx" in engine.info()["error"]


def test_info(backend):
    """info() names the onnxruntime version and the vision model in use."""
    import onnxruntime as ort

    info = backend.info()
    assert info["onnxruntime"] == ort.__version__
    assert info["vision_model"] == "vision_embeddings.onnx"
