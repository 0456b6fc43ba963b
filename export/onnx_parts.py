"""Export the three model parts to ONNX for the ONNX Runtime backend, plus a W8A8 vision model.

Exporter: torch.onnx.export(dynamo=False), the TorchScript tracer. It needs nothing beyond torch (the dynamo
exporter needs onnxscript, which is not among the export dependencies), and it traces the same wrapper
modules the OpenVINO export converts. The language model is traced once with a non-empty dummy past; sizes
read from tensors stay symbolic in the trace, so any past length (0 included) and prompt length work.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from export.openvino_parts import text_embedding_module, vision_module

log = logging.getLogger(__name__)

VISION = "vision_embeddings.onnx"
VISION_INT8 = "vision_embeddings_int8.onnx"
TEXT_EMB = "text_embeddings.onnx"
LM = "language_model.onnx"
OPSET = 17
EXTERNAL_DATA_BYTES = 1 << 30  # parameters above this go to a side file (protobuf caps a file at 2 GB)


def causal_mask(attention_mask, position_ids):
    """(B, past+T) padding mask and (B, T) positions -> (B, 1, T, past+T) bool, True where a query may look.

    Built here rather than by transformers: its mask helpers take traced sizes for deprecated cache_position
    tensors and break the TorchScript trace; a 4D mask is passed through to attention untouched.
    """
    import torch

    keys = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (past+T,)
    causal = keys[None, None, :] <= position_ids[:, :, None]  # (B, T, past+T)
    return (causal & attention_mask.bool()[:, None, :])[:, None]


def language_module(model):
    """A torch module: (inputs_embeds, attention_mask, position_ids, *flat past) -> (last logits, *flat present)."""
    import torch
    from transformers import DynamicCache

    class LanguageModelWithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.lm, self.lm_head = m.model.language_model, m.lm_head
            self.config = m.config.text_config

        def forward(self, inputs_embeds, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.config)
            for i in range(len(past) // 2):
                cache.update(past[2 * i], past[2 * i + 1], i)  # (1, kv_heads, past, head_dim) each
            mask = causal_mask(attention_mask, position_ids)  # (1, 1, T, past + T)
            out = self.lm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True)
            logits = self.lm_head(out.last_hidden_state[:, -1:, :])  # (1, 1, vocab): lm_head on one row only
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (logits, *present)

    return LanguageModelWithPast(model).eval()


def lm_io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of language_model.onnx."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["inputs_embeds", "attention_mask", "position_ids", *past], ["logits", *present]


def export_onnx(model, out: Path) -> None:
    """Write vision_embeddings(.onnx, _int8.onnx), text_embeddings.onnx and language_model.onnx into out/."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    export_vision(model, out / VISION)
    export_text_embeddings(model, out / TEXT_EMB)
    export_language_model(model, out / LM)
    quantize_vision(out / VISION, out / VISION_INT8)
    log.info("onnx export finished in %.1f s: %s", time.time() - started, out)


def export_vision(model, path: Path) -> None:
    """pixel_values (N,3,448,448) float32 -> image embeddings (N,256,hidden)."""
    import torch

    _export(vision_module(model), (torch.zeros(1, 3, 448, 448),), path, ["pixel_values"], ["image_embeds"],
            {"pixel_values": {0: "tiles"}, "image_embeds": {0: "tiles"}})


def export_text_embeddings(model, path: Path) -> None:
    """input_ids (B,T) int64 -> embeddings (B,T,hidden)."""
    import torch

    _export(text_embedding_module(model), (torch.zeros(1, 4, dtype=torch.int64),), path, ["input_ids"],
            ["inputs_embeds"], {"input_ids": {0: "batch", 1: "tokens"}, "inputs_embeds": {0: "batch", 1: "tokens"}})


def export_language_model(model, path: Path) -> None:
    """The LM over inputs_embeds with explicit past/present key-values, logits for the last position only."""
    import torch

    cfg = model.config.text_config
    layers, kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    past_len, t = 3, 2  # a non-empty dummy past, so the trace keeps the concat with it
    past = [torch.zeros(1, kv_heads, past_len, head_dim) for _ in range(2 * layers)]
    args = (torch.zeros(1, t, cfg.hidden_size), torch.ones(1, past_len + t, dtype=torch.int64),
            torch.arange(past_len, past_len + t)[None], *past)
    inputs, outputs = lm_io_names(layers)
    axes = {"inputs_embeds": {1: "tokens"}, "attention_mask": {1: "total"}, "position_ids": {1: "tokens"}}
    axes.update({name: {2: "past"} for name in inputs[3:]})
    axes.update({name: {2: "total"} for name in outputs[1:]})
    _export(language_module(model), args, path, inputs, outputs, axes)


def _export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    """torch.onnx.export (TorchScript tracer); weights over ~1 GB go to one side file, path.name + '.data'."""
    import onnx
    import torch

    big = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
    scratch = path.parent / f"_{path.stem}"  # the tracer writes one file per tensor above 2 GB: keep them apart
    scratch.mkdir(exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, args, str(scratch / path.name), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(scratch / path.name))
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    del proto
    if big:
        shutil.copymode(path, path.with_name(path.name + ".data"))  # onnx creates it 0600; keep it readable
    shutil.rmtree(scratch)
    log.info("wrote %s%s", path.name, " (+ external data)" if big else "")


def quantize_vision(src: Path, dst: Path) -> None:
    """Dynamic W8A8 quantisation of the vision model: int8 weights per output channel, u8 activations
    quantised at run time, MatMul/Gemm only. On the tiny model (max relative error vs fp32), on a CPU with
    AVX-512 VNNI: per-channel 1.5e-2 against 2.1e-2 per-tensor; also quantising the patch-embedding Conv 4.6e-2;
    7-bit weights (reduce_range) 2.5e-2. On a CPU with AVX2 only, 8-bit weights give 1.0e-1: ONNX Runtime's
    u8 x s8 kernel there (vpmaddubsw) saturates its 16-bit sums, which 7-bit weights cannot reach. An export
    may be served on another CPU than the one that made it, so the weights are 7-bit everywhere."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # it logs a line per tensor, and advice to pre-process, on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.disable(quiet)
    log.info("wrote %s", dst.name)
