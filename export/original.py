"""Convert an original-format InternVL checkpoint (`internvl_chat`) to the transformers-native layout.

Our own key mapping (as in transformers' convert_internvl_weights_to_hf.py); no code from the Hub runs.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from export.errors import ExportError

# Applied in order to every vision/projector key.
_VISION_RULES = [
    (r"^vision_model\.", "model.vision_tower."),
    (r"\.layers\.", ".layer."),
    (r"class_embedding", "cls_token"),
    (r"position_embedding$", "position_embeddings"),
    (r"patch_embedding\.", "patch_embeddings.projection."),
    (r"\.ls(\d)$", r".lambda_\1"),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.", ".attention."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
]
_PROJECTOR = {"mlp1.0.": "model.multi_modal_projector.layer_norm.", "mlp1.1.": "model.multi_modal_projector.linear_1.",
              "mlp1.3.": "model.multi_modal_projector.linear_2."}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                    "added_tokens.json", "generation_config.json")


def map_key(key: str) -> str:
    """Native name of one original parameter name (fused qkv keys keep '.attention.qkv.')."""
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model."):]
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    for prefix, new in _PROJECTOR.items():
        if key.startswith(prefix):
            return new + key[len(prefix):]
    if key.startswith("vision_model."):
        for pattern, repl in _VISION_RULES:
            key = re.sub(pattern, repl, key)
        return key
    raise ExportError(f"unexpected parameter {key!r} in the original checkpoint")


def convert_state_dict(state: dict, vision_hidden: int) -> dict:
    """Rename every tensor and split fused vision qkv rows into q_proj / k_proj / v_proj."""
    out = {}
    for key, tensor in state.items():
        new = map_key(key)
        if ".attention.qkv." in new:
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[new.replace(".qkv.", f".{name}.")] = tensor[i * vision_hidden:(i + 1) * vision_hidden].clone()
        else:
            out[new] = tensor
    return out


def convert_config(original: dict, image_token_id: int):
    """An InternVLConfig built from an original config.json (llm_config / vision_config)."""
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen3Config

    llm = dict(original["llm_config"])
    if llm.get("model_type") not in ("qwen3", None):
        raise ExportError(f"unsupported language model type {llm.get('model_type')!r} (InternVL3.5 uses qwen3)")
    vis = dict(original["vision_config"])
    vision = InternVLVisionConfig(
        hidden_size=vis["hidden_size"], num_hidden_layers=vis["num_hidden_layers"],
        num_attention_heads=vis["num_attention_heads"], intermediate_size=vis["intermediate_size"],
        attention_bias=vis.get("qkv_bias", True), use_qk_norm=vis.get("qk_normalization", False),
        layer_norm_eps=vis.get("layer_norm_eps", 1e-6), hidden_act=vis.get("hidden_act", "gelu"),
        image_size=[vis.get("image_size", 448)] * 2, patch_size=[vis.get("patch_size", 14)] * 2,
        norm_type=vis.get("norm_type", "layer_norm"), use_mean_pooling=False)
    keep = {k: v for k, v in llm.items() if k in Qwen3Config().to_dict() and k not in ("architectures", "model_type")}
    text = Qwen3Config(**keep)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                            downsample_ratio=original.get("downsample_ratio", 0.5),
                            vision_feature_layer=original.get("select_layer", -1),
                            tie_word_embeddings=llm.get("tie_word_embeddings", False))
    config.architectures = ["InternVLForConditionalGeneration"]
    return config


def load_safetensors_folder(folder: Path) -> dict:
    """All tensors of a (possibly sharded) safetensors checkpoint; clear errors for missing or corrupt files."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"no *.safetensors weights in {folder}")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise ExportError(f"corrupt weights file {f.name}: {exc}") from None
    return state


def convert_original(src: Path, dst: Path) -> Path:
    """Write a native-format copy of the original checkpoint at src into dst; returns dst."""
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    from export.builtin import CHAT_TEMPLATE, IMAGE_TOKENS, write_image_processor

    original = json.loads((src / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(src), extra_special_tokens=IMAGE_TOKENS, trust_remote_code=False)
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    config = convert_config(original, image_token_id)
    state = convert_state_dict(load_safetensors_folder(src), config.vision_config.hidden_size)
    model = InternVLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ExportError(f"original checkpoint does not match InternVL: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    dst.mkdir(parents=True, exist_ok=True)
    model.to(next(iter(state.values())).dtype).save_pretrained(dst)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dst)
    write_image_processor(dst, original.get("max_dynamic_patch", 12))
    for name in ("generation_config.json",):
        if (src / name).is_file() and not (dst / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst
