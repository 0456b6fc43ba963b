"""Convert an original-format InternVL checkpoint (`internvl_chat`) to the transformers-native layout.

Our own key mapping (as in transformers' convert_internvl_weights_to_hf.py); no code from the Hub runs.
Tensors are read and written one at a time with plain file reads and writes (never mapped), so the
conversion holds at most one tensor (the largest is the 300 MB embedding table) however large the model.
"""
from __future__ import annotations

import json
import math
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
# safetensors dtype name -> (torch dtype name, bytes per element)
_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
           "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
           "BOOL": ("bool", 1)}
_MAX_HEADER = 100 * 2**20  # a larger header means a damaged file, not a model


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


def native_pieces(key: str, vision_hidden: int) -> list[tuple[str, slice | None]]:
    """(native name, rows of the original tensor or None for all of it) for one original tensor: fused vision
    qkv rows split into q_proj / k_proj / v_proj."""
    new = map_key(key)
    if ".attention.qkv." not in new:
        return [(new, None)]
    return [(new.replace(".qkv.", f".{name}."), slice(i * vision_hidden, (i + 1) * vision_hidden))
            for i, name in enumerate(("q_proj", "k_proj", "v_proj"))]


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


# ---------------------------------------------------------------- safetensors, one tensor at a time


def safetensors_index(folder: Path) -> dict[str, tuple[Path, dict]]:
    """name -> (file, header entry) of every tensor of a (possibly sharded) safetensors checkpoint; nothing is
    read but the headers. Clear errors for missing or damaged files."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ExportError(f"no *.safetensors weights in {folder}")
    index = {}
    for path in files:
        for name, entry in _read_header(path).items():
            index[name] = (path, entry)
    return index


def _read_header(path: Path) -> dict:
    """The tensor entries of one safetensors file, each with its absolute byte range ('begin', 'end')."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= min(_MAX_HEADER, size - 8):
                raise ValueError("header length out of range")
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        for name, entry in header.items():
            itemsize = _DTYPES[entry["dtype"]][1]
            start, stop = entry["data_offsets"]
            entry["begin"], entry["end"] = 8 + length + start, 8 + length + stop
            if stop - start != math.prod(entry["shape"]) * itemsize or entry["end"] > size:
                raise ValueError(f"tensor {name} lies outside the file")
    except (OSError, ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ExportError(f"corrupt weights file {path.name}: {exc}") from None
    return header


def read_tensor(path: Path, entry: dict):
    """One tensor read with plain file reads: mapped pages would count as this process's memory until unmapped."""
    import torch

    data = torch.empty(entry["end"] - entry["begin"], dtype=torch.uint8)
    with path.open("rb") as f:
        f.seek(entry["begin"])
        if f.readinto(data.numpy()) != len(data):
            raise ExportError(f"corrupt weights file {path.name}: it ends inside tensor data")
    return data.view(getattr(torch, _DTYPES[entry["dtype"]][0])).reshape(entry["shape"])


def write_safetensors(path: Path, plan: list[tuple[str, object, list[int], object]]) -> None:
    """Write a safetensors file from (name, dtype, shape, produce) rows, calling produce() for one tensor at a
    time; dtype is a safetensors name ('BF16') or a torch dtype."""
    import torch

    codes = {getattr(torch, name): code for code, (name, _) in _DTYPES.items()}
    entries, offset = {}, 0
    for name, dtype, shape, _ in plan:
        dtype = codes.get(dtype, dtype)
        size = math.prod(shape) * _DTYPES[dtype][1]
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with path.open("wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        for _, _, _, produce in plan:
            f.write(produce().contiguous().reshape(-1).view(torch.uint8).numpy())


# ---------------------------------------------------------------- the conversion


def convert_weights(src: Path, dst_file: Path, config) -> str:
    """Stream the original tensors of src into dst_file under their native names; returns the weights' dtype name."""
    index = safetensors_index(src)
    expected = _native_shapes(config)
    plan = []
    for key, (path, entry) in sorted(index.items()):
        for name, rows in native_pieces(key, config.vision_config.hidden_size):
            shape = list(entry["shape"])
            if rows is not None:
                shape[0] = rows.stop - rows.start
            plan.append((name, entry["dtype"], shape, _producer(path, entry, rows)))
    names = {name for name, *_ in plan}
    missing = [k for k in expected if k not in names and not (k == "lm_head.weight" and config.tie_word_embeddings)]
    unexpected = sorted(names - expected.keys())
    wrong = [n for n, _, shape, _ in plan if n in expected and expected[n] != shape]
    if missing or unexpected or wrong:
        raise ExportError(f"original checkpoint does not match InternVL: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    write_safetensors(dst_file, plan)
    floats = [dtype for _, dtype, _, _ in plan if dtype in ("F32", "F16", "BF16")]
    return _DTYPES[max(set(floats), key=floats.count)][0] if floats else "float32"


def _producer(path: Path, entry: dict, rows: slice | None):
    """A callable reading one tensor, or some of its rows (a fused qkv tensor is small: read once per piece)."""
    return lambda: read_tensor(path, entry) if rows is None else read_tensor(path, entry)[rows]


def _native_shapes(config) -> dict[str, list[int]]:
    """Parameter name -> shape of the native model, from a model built on the meta device (no memory)."""
    import torch
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def convert_original(src: Path, dst: Path) -> Path:
    """Write a native-format copy of the original checkpoint at src into dst; returns dst."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    from export.builtin import CHAT_TEMPLATE, IMAGE_TOKENS, write_image_processor

    original = json.loads((src / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(src), extra_special_tokens=IMAGE_TOKENS, trust_remote_code=False)
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    config = convert_config(original, image_token_id)
    dst.mkdir(parents=True, exist_ok=True)
    config.dtype = getattr(torch, convert_weights(src, dst / "model.safetensors", config))
    config.save_pretrained(dst)
    GenerationConfig.from_model_config(config).save_pretrained(dst)  # what the model's save_pretrained writes
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dst)
    write_image_processor(dst, original.get("max_dynamic_patch", 12))
    for name in ("generation_config.json",):
        if (src / name).is_file() and not (dst / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst
