"""Export the three model parts, the tokenizer and the configs into the layout openvino.genai's VLMPipeline reads.

Each part is loaded on its own (`load_part`): the model is built on the meta device and only that part's
tensors are read from the checkpoint, so converting the language model never holds the vision tower's weights.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

from export.errors import ExportError
from export.original import read_tensor, safetensors_index

log = logging.getLogger(__name__)

VISION_XML = "openvino_vision_embeddings_model.xml"
TEXT_EMB_XML = "openvino_text_embeddings_model.xml"
LM_XML = "openvino_language_model.xml"
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
            "special_tokens_map.json")
# part -> name prefixes of its parameters in the native model (the language model's embedding table is its own part)
PARTS = {"vision": ("model.vision_tower.", "model.multi_modal_projector."),
         "embeddings": ("model.language_model.embed_tokens.",),
         "lm": ("model.language_model.", "lm_head.")}
FP16_MAX = 65504.0
_ORIG_FORWARD = "_openvino_module_extension_patch_orig_forward"  # where OpenVINO's 16-bit patch keeps forwards


def load_dtype(folder: Path, precision: str):
    """torch.float32 for an fp32 export or an fp32 checkpoint; torch.float16 otherwise: the IR stores weights in
    fp16 anyway, and a 16-bit checkpoint loaded as such takes half the memory of fp32."""
    import torch

    index = safetensors_index(folder)
    floats = [entry["dtype"] for _, entry in index.values() if entry["dtype"] in ("F32", "F16", "BF16")]
    if precision == "fp32" or not floats or max(set(floats), key=floats.count) == "F32":
        return torch.float32
    return torch.float16


def load_part(folder: Path, part: str, dtype):
    """InternVLForConditionalGeneration with only `part`'s weights read from the checkpoint; every other
    parameter stays on the meta device and takes no memory. Linear and embedding parameters are loaded in
    dtype, the others (norms, layer scales, the patch convolution, position tables: small) in fp32."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    config = InternVLConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config).eval()
    meta = model.state_dict()
    sources = _checkpoint_names(model, folder)
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    matrices = _matrix_names(model)
    for name in sorted(part_names(meta, part)):
        found = sources.get(name) or sources.get(tied.get(name, ""))
        if found is None or list(found[1]["shape"]) != list(meta[name].shape):
            problem = "is missing" if found is None else f"has the shape {found[1]['shape']}"
            raise ExportError(f"cannot load the checkpoint in {folder}: {name} {problem}")
        _set_tensor(model, name, _cast(read_tensor(*found), dtype if name in matrices else torch.float32))
    _rebuild_computed_buffers(model)
    return model


def part_names(names, part: str) -> set[str]:
    """The parameter names of one part (the language model without its embedding table)."""
    own = {n for n in names if n.startswith(PARTS[part])}
    return own - part_names(names, "embeddings") if part == "lm" else own


def _checkpoint_names(model, folder: Path) -> dict:
    """Native parameter name -> (file, entry) of each checkpoint tensor, renamed as transformers' loader does
    (files saved by transformers 5 use legacy names such as language_model.lm_head.weight)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    renamings = [r for r in get_model_conversion_mapping(model) if isinstance(r, WeightRenaming)]
    meta = model.state_dict()
    out = {}
    for key, found in safetensors_index(folder).items():
        name, _ = rename_source_key(key, renamings, [], model.base_model_prefix, meta)
        out[name if name in meta or key not in meta else key] = found
    return out


def _matrix_names(model) -> set[str]:
    """Names of the Linear and Embedding parameters: the ones OpenVINO's 16-bit tracing keeps in 16 bits."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Embedding)
    return {f"{mod}.{p}" for mod, m in model.named_modules() if isinstance(m, kinds) for p in ("weight", "bias")}


def _cast(tensor, dtype):
    """tensor in dtype; to fp16 clamped to its range, as ov.save_model's fp16 compression does."""
    import torch

    if not tensor.is_floating_point() or tensor.dtype == dtype:
        return tensor
    tensor = tensor.to(dtype)
    return tensor.clamp_(-FP16_MAX, FP16_MAX) if dtype == torch.float16 else tensor


def _set_tensor(model, name: str, tensor) -> None:
    """Put tensor in place of the (meta) parameter or buffer called name."""
    import torch

    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path)
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def _rebuild_computed_buffers(model) -> None:
    """Rebuild, on the CPU, the modules whose buffers are computed rather than stored (the rotary tables):
    the meta device left them empty."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)) and hasattr(module, "config"):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, type(module)(config=module.config))


@contextlib.contextmanager
def tracing(model):
    """Trace model for OpenVINO and forget the trace afterwards. 16-bit Linear and Embedding weights stay as they
    are (OpenVINO's own patch, as optimum-intel applies to bf16 models): their arithmetic is skipped while
    tracing and no fp32 copy is made. TorchScript's class registry would otherwise keep the traced modules, and
    with them their weights, for the life of the process."""
    import torch
    from openvino.frontend.pytorch.patch_model import __make_16bit_traceable as make_traceable
    from openvino.frontend.pytorch.patch_model import unpatch_model
    from optimum.exporters.openvino.utils import clear_class_registry

    sixteen = any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters())
    if sixteen:
        make_traceable(model)
    try:
        with torch.no_grad():
            yield
    finally:
        if sixteen:
            unpatch_model(model, _ORIG_FORWARD)  # also restores torch.bmm, which the patch replaces process-wide
        clear_class_registry()


def vision_module(model):
    """A torch module mapping pixel_values (N,3,448,448) to image embeddings (N,256,hidden)."""
    import torch

    class VisionEmbeddings(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            cfg = self.m.config
            feats = self.m.model.get_image_features(
                pixel_values=pixel_values, vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy)
            feats = getattr(feats, "pooler_output", feats)
            return feats.reshape(pixel_values.shape[0], -1, feats.shape[-1])  # (N, 256, hidden)

    return VisionEmbeddings(model).eval()


def text_embedding_module(model):
    """A torch module mapping input_ids (B,T) to embeddings (B,T,hidden)."""
    import torch

    class TextEmbeddings(torch.nn.Module):
        def __init__(self, emb):
            super().__init__()
            self.emb = emb

        def forward(self, input_ids):
            return self.emb(input_ids)

    return TextEmbeddings(model.get_input_embeddings()).eval()


def convert_vision(model, out: Path, compress_to_fp16: bool) -> None:
    """Vision tower + pixel shuffle + projector -> openvino_vision_embeddings_model.xml."""
    import openvino as ov
    import torch

    ov_model = _convert(model, vision_module(model), torch.zeros(1, 3, 448, 448), [-1, 3, 448, 448])
    ov_model.outputs[0].get_tensor().set_names({"last_hidden_state"})
    ov_model.inputs[0].get_tensor().set_names({"pixel_values"})
    ov.save_model(ov_model, out / VISION_XML, compress_to_fp16=compress_to_fp16)


def convert_text_embeddings(model, out: Path, compress_to_fp16: bool) -> None:
    """embed_tokens -> openvino_text_embeddings_model.xml."""
    import openvino as ov
    import torch

    ov_model = _convert(model, text_embedding_module(model), torch.zeros(1, 4, dtype=torch.int64), [-1, -1])
    ov_model.inputs[0].get_tensor().set_names({"input_ids"})
    ov_model.outputs[0].get_tensor().set_names({"inputs_embeds"})
    ov.save_model(ov_model, out / TEXT_EMB_XML, compress_to_fp16=compress_to_fp16)


def _convert(model, module, example, shape: list[int]):
    """ov.convert_model of a wrapper module around parts of model, traced once."""
    import openvino as ov
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with tracing(model):
        # torch.jit.trace's own check runs the model twice more, for 60% of the vision encoder's conversion
        # time; the exported graphs are compared with PyTorch's outputs by the parity tests instead.
        decoder = TorchScriptPythonDecoder(module, example_input=example, trace_kwargs={"check_trace": False})
        return ov.convert_model(decoder, example_input=example, input=[ov.PartialShape(shape)])


def convert_language_model(model, out: Path, compress_to_fp16: bool) -> None:
    """The LM over inputs_embeds with a stateful KV cache, by optimum-intel's own VLM language recipe."""
    import torch
    from optimum.exporters.openvino.convert import export_models
    from optimum.exporters.openvino.model_configs import get_vlm_text_generation_config
    from optimum.intel import OVConfig

    text_config = model.config.text_config
    cfg = get_vlm_text_generation_config(text_config.model_type, text_config, "int64", "fp32")
    export_models({LM_XML[:-len(".xml")]: (model, cfg)}, output_dir=out, stateful=True,
                  ov_config=OVConfig(dtype="fp16") if compress_to_fp16 else None,
                  patch_16bit_model=model.lm_head.weight.dtype in (torch.float16, torch.bfloat16))


def convert_tokenizer(src: Path, out: Path) -> None:
    """openvino_tokenizer.xml / openvino_detokenizer.xml, plus the HF tokenizer files the runtime reads."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer as ov_convert
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    # Keep the default skip_special_tokens=True: with False the detokenizer's skip list folds to an empty
    # constant and openvino.genai's Tokenizer (which adds a runtime skip switch on top of it) fails to compile
    # ("ReadValue contains dead weak ptr"). Skipping is chosen per decode call at run time anyway.
    ov_tok, ov_detok = ov_convert(tok, with_detokenizer=True)
    ov.save_model(ov_tok, out / TOKENIZER_XML)
    ov.save_model(ov_detok, out / DETOKENIZER_XML)
    tok.save_pretrained(out / "_tok")
    for name in HF_FILES:
        for folder in (src, out / "_tok"):
            if (folder / name).is_file():
                shutil.copy(folder / name, out / name)
                break
    shutil.rmtree(out / "_tok")


def write_configs(config, out: Path, max_tiles: int = 12) -> None:
    """config.json for VLMPipeline (model_type internvl_chat), the HF config kept as hf_config.json,
    and preprocessor_config.json with the 448-px tile size and ImageNet normalisation."""
    hf = config.to_dict()
    (out / "hf_config.json").write_text(json.dumps(hf, indent=2))
    genai = dict(hf, model_type="internvl_chat", architectures=["InternVLChatModel"],
                 llm_config=hf["text_config"], force_image_size=448, downsample_ratio=hf["downsample_ratio"],
                 template="internvl2_5", max_dynamic_patch=max_tiles, min_dynamic_patch=1, use_thumbnail=True)
    (out / "config.json").write_text(json.dumps(genai, indent=2))
    pre = {"size": {"shortest_edge": 448, "height": 448, "width": 448}, "crop_size": {"height": 448, "width": 448},
           "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True, "crop_to_patches": True,
           "min_patches": 1, "max_patches": max_tiles, "resample": 3, "image_seq_length": hf["image_seq_length"]}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
