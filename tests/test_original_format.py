"""The original checkpoint format (`internvl_chat`, published key names) converts to the native one exactly."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from model_fixtures import TINY, make_engine, photo
from safetensors.torch import load_file, save_file

from export.pipeline import run_export
from export.settings import ExportSettings
from runtime.types import GenerationOptions, Turn

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def to_original_key(key: str) -> str:
    """The published (remote-code) name of a native parameter name; the inverse of export.original.map_key."""
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    for native, original in (("layer_norm.", "0."), ("linear_1.", "1."), ("linear_2.", "3.")):
        if key.startswith("model.multi_modal_projector." + native):
            return "mlp1." + original + key.split(native, 1)[1]
    key = key.replace("model.vision_tower.", "vision_model.").replace(".layer.", ".layers.")
    for native, original in (("cls_token", "class_embedding"), ("position_embeddings", "position_embedding"),
                             ("patch_embeddings.projection.", "patch_embedding."), ("lambda_1", "ls1"),
                             ("lambda_2", "ls2"), ("attention.projection_layer.", "attn.proj."),
                             ("attention.", "attn."), ("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
        key = key.replace(native, original)
    return key


def native_state(folder) -> dict:
    """Parameters by their in-memory native names (the file on disk may use transformers' legacy names)."""
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).state_dict()


def write_original(native_dir, out):
    """A tiny checkpoint in the original layout: fused qkv, published names, llm_config / vision_config."""
    out.mkdir(parents=True)
    state = native_state(native_dir)
    original, fused = {}, {}
    for key, tensor in state.items():
        if ".attention.q_proj." in key or ".attention.k_proj." in key or ".attention.v_proj." in key:
            fused.setdefault(key.replace(".q_proj.", ".qkv.").replace(".k_proj.", ".qkv.")
                             .replace(".v_proj.", ".qkv."), {})[key.split(".")[-2]] = tensor
        else:
            original[to_original_key(key)] = tensor
    for key, parts in fused.items():
        original[to_original_key(key)] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    save_file({k: v.contiguous() for k, v in original.items()}, str(out / "model.safetensors"))
    native = json.loads((native_dir / "config.json").read_text())
    vision = native["vision_config"]
    llm = dict(native["text_config"], architectures=["Qwen3ForCausalLM"])
    config = {"model_type": "internvl_chat", "architectures": ["InternVLChatModel"], "downsample_ratio": 0.5,
              "select_layer": -1, "template": "internvl2_5", "force_image_size": 448, "ps_version": "v2",
              "max_dynamic_patch": 12, "use_thumbnail": True, "llm_config": llm,
              "vision_config": {"hidden_size": vision["hidden_size"], "num_hidden_layers": vision["num_hidden_layers"],
                                "num_attention_heads": vision["num_attention_heads"], "qkv_bias": True,
                                "intermediate_size": vision["intermediate_size"], "qk_normalization": False,
                                "layer_norm_eps": 1e-6, "image_size": 448, "patch_size": 14,
                                "norm_type": "layer_norm", "hidden_act": "gelu"}}
    (out / "config.json").write_text(json.dumps(config))
    for name in TOKENIZER_FILES:
        if (native_dir / name).is_file():
            shutil.copy(native_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory, tiny_native_dir):
    return write_original(tiny_native_dir, tmp_path_factory.mktemp("orig") / "InternVL3_5-tiny")


def test_original_keys_are_the_published_ones(original_dir):
    keys = set(load_file(str(original_dir / "model.safetensors")))
    assert "vision_model.embeddings.class_embedding" in keys and "mlp1.1.weight" in keys
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in keys and "language_model.lm_head.weight" in keys
    assert "vision_model.encoder.layers.0.ls1" in keys


def test_conversion_reproduces_the_native_weights(original_dir, tiny_native_dir, tmp_path):
    from export.original import convert_original

    converted = convert_original(original_dir, tmp_path / "native")
    got, want = native_state(converted), native_state(tiny_native_dir)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_original_format_exports_and_answers(original_dir, tmp_path, precision):
    cache = tmp_path / "cache"
    out = run_export(ExportSettings(model_name=str(original_dir), cache_dir=str(cache), precision=precision))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["format"] == "original" and manifest["precision"]["lm"] == precision
    engine = make_engine(cache, model_name=str(original_dir), precision=precision)
    assert engine.chat([Turn("user", "what is this?", [photo()])], GenerationOptions(max_new_tokens=6)).text


def test_original_and_native_exports_answer_alike(original_dir, model_cache, tmp_path):
    cache = tmp_path / "cache"
    run_export(ExportSettings(model_name=str(original_dir), cache_dir=str(cache), precision="fp32"))
    turns = [Turn("user", "what is this?", [photo()])]
    opts = GenerationOptions(max_new_tokens=16, max_tiles=2)
    from_original = make_engine(cache, model_name=str(original_dir)).chat(turns, opts).text
    assert from_original == make_engine(model_cache, model_name=TINY).chat(turns, opts).text
