"""Export the three model parts, the tokenizer and the configs into the layout openvino.genai's VLMPipeline reads."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

VISION_XML = "openvino_vision_embeddings_model.xml"
TEXT_EMB_XML = "openvino_text_embeddings_model.xml"
LM_XML = "openvino_language_model.xml"
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
            "special_tokens_map.json")


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

    example = torch.zeros(1, 3, 448, 448)
    with torch.no_grad():
        ov_model = ov.convert_model(vision_module(model), example_input=example,
                                    input=[ov.PartialShape([-1, 3, 448, 448])])
    ov_model.outputs[0].get_tensor().set_names({"last_hidden_state"})
    ov_model.inputs[0].get_tensor().set_names({"pixel_values"})
    ov.save_model(ov_model, out / VISION_XML, compress_to_fp16=compress_to_fp16)


def convert_text_embeddings(model, out: Path, compress_to_fp16: bool) -> None:
    """embed_tokens -> openvino_text_embeddings_model.xml."""
    import openvino as ov
    import torch

    example = torch.zeros(1, 4, dtype=torch.int64)
    with torch.no_grad():
        ov_model = ov.convert_model(text_embedding_module(model), example_input=example,
                                    input=[ov.PartialShape([-1, -1])])
    ov_model.inputs[0].get_tensor().set_names({"input_ids"})
    ov_model.outputs[0].get_tensor().set_names({"inputs_embeds"})
    ov.save_model(ov_model, out / TEXT_EMB_XML, compress_to_fp16=compress_to_fp16)


def convert_language_model(model, out: Path, compress_to_fp16: bool) -> None:
    """The LM over inputs_embeds with a stateful KV cache, by optimum-intel's own VLM language recipe."""
    import openvino as ov
    from optimum.exporters.openvino.convert import export_models
    from optimum.exporters.openvino.model_configs import get_vlm_text_generation_config

    text_config = model.config.text_config
    cfg = get_vlm_text_generation_config(text_config.model_type, text_config, "int64", "fp32")
    tmp = out / "_lm"
    export_models({"openvino_language_model": (model, cfg)}, output_dir=tmp, stateful=True)
    lm = ov.Core().read_model(tmp / LM_XML)
    ov.save_model(lm, out / LM_XML, compress_to_fp16=compress_to_fp16)
    del lm
    shutil.rmtree(tmp)


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


def write_configs(model, src: Path, out: Path, max_tiles: int = 12) -> None:
    """config.json for VLMPipeline (model_type internvl_chat), the HF config kept as hf_config.json,
    and preprocessor_config.json with the 448-px tile size and ImageNet normalisation."""
    hf = model.config.to_dict()
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
