"""Tiny random InternVL fixtures: built and exported once per test session, shared by the model tests."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

TINY = "builtin:tiny-random"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """A cache folder holding the tiny model exported at fp32 (parity) and int8 (serving)."""
    from export.pipeline import run_export
    from export.settings import ExportSettings

    cache = tmp_path_factory.mktemp("model_cache")
    for precision in ("fp32", "int8"):
        run_export(ExportSettings(model_name=TINY, cache_dir=str(cache), precision=precision))
    return cache


@pytest.fixture(scope="session")
def tiny_native_dir(model_cache):
    """The tiny checkpoint in the transformers-native layout."""
    return model_cache / "builtin" / "builtin--tiny-random"


def runtime_settings(cache, **overrides):
    """Exact (f32 everywhere) runtime settings over the tiny model, overridable per test."""
    from runtime.settings import RuntimeSettings

    values = dict(model_name=TINY, cache_dir=str(cache), precision="fp32", device="cpu", backend="openvino",
                  kv_cache_precision="f32", inference_precision="f32", ov_cache_dir="off")
    values.update(overrides)
    return RuntimeSettings(**values)


def make_engine(cache, **overrides):
    """A loaded engine over the tiny export."""
    from runtime.engine import create_engine

    engine = create_engine(runtime_settings(cache, **overrides))
    assert engine.wait_ready(120), engine.info()
    return engine


@pytest.fixture(scope="session")
def ov_engine(model_cache):
    """The OpenVINO engine at fp32, shared by tests that do not change its state."""
    return make_engine(model_cache)


@pytest.fixture(scope="session")
def reference(tiny_native_dir):
    """transformers' model and tokenizer on the same weights (the parity reference)."""
    import torch
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    model = InternVLForConditionalGeneration.from_pretrained(str(tiny_native_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_native_dir)), tiny_native_dir


def reference_generate(reference, image: Image.Image, question: str, max_tiles: int, max_new_tokens: int) -> str:
    """Greedy answer from transformers' generate() with the reference processor's pixels and prompt."""
    import torch
    from transformers import GotOcr2ImageProcessorPil

    model, tok, folder = reference
    processor = GotOcr2ImageProcessorPil.from_pretrained(str(folder), max_patches=max_tiles)
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    context = "<IMG_CONTEXT>" * 256 * pixels.shape[0]
    prompt = f"<|im_start|>user\n<img>{context}</img>\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    if new and new[-1] == tok.convert_tokens_to_ids("<|im_end|>"):
        new = new[:-1]  # the engine stops at end-of-turn without adding it to the text
    return tok.decode(new, skip_special_tokens=False)


def photo(name: str = "chelsea", size: tuple[int, int] | None = None) -> Image.Image:
    """A real photo shipped inside scikit-image's wheel (loads offline), optionally resized."""
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return img.resize(size, Image.Resampling.BICUBIC) if size else img


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
