"""The export holds one part's weights at a time, and a 16-bit checkpoint exports to the same IR as its fp32 copy."""
from __future__ import annotations

import json
import shutil
import weakref

from model_fixtures import TINY, rel_err

from export import openvino_parts
from export.pipeline import run_export
from export.settings import ExportSettings

CONVERTERS = {"convert_vision": "vision", "convert_text_embeddings": "embeddings", "convert_language_model": "lm"}


def test_each_part_is_converted_alone(tiny_native_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_native_dir, cache / "builtin" / tiny_native_dir.name)
    seen, earlier = [], []

    def spy(convert, part):
        def wrapped(model, out, fp16):
            loaded = {name for name, p in model.named_parameters() if not p.is_meta}
            seen.append((part, loaded == openvino_parts.part_names(model.state_dict(), part),
                         all(ref() is None for ref in earlier)))
            earlier.append(weakref.ref(model))
            return convert(model, out, fp16)
        return wrapped

    for name, part in CONVERTERS.items():
        monkeypatch.setattr(openvino_parts, name, spy(getattr(openvino_parts, name), part))
    run_export(ExportSettings(model_name=TINY, cache_dir=str(cache), precision="int8"))
    # each converter saw only its own part's weights, and the parts before it were gone
    assert seen == [("vision", True, True), ("embeddings", True, True), ("lm", True, True)]


def _copy_in(src, dst, dtype):
    """A copy of the checkpoint at src with its weights saved in dtype (zero biases made random: OpenVINO
    drops an fp32 zero bias but keeps a 16-bit one, so the graphs would differ where real weights never do)."""
    import torch
    from transformers import InternVLForConditionalGeneration

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    model = InternVLForConditionalGeneration.from_pretrained(str(src), dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    model.to(getattr(torch, dtype)).save_pretrained(dst)
    return dst


def _graph(xml) -> tuple:
    """(op type counts, sorted bytes of every floating-point constant) of an IR: its ops and weights regardless
    of the order the converter emitted them in (a bias may be stored as (n,) or as (1, 1, n))."""
    from collections import Counter

    import openvino as ov

    ops = ov.Core().read_model(xml).get_ordered_ops()
    consts = sorted(op.get_data().tobytes() for op in ops
                    if op.get_type_name() == "Constant" and op.get_element_type().is_real())
    return Counter(op.get_type_name() for op in ops), consts


def _outputs(folder) -> list:
    """Vision features and prefill logits of an export, computed in f32."""
    import numpy as np
    import openvino as ov

    core, rng = ov.Core(), np.random.default_rng(0)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    vision = core.compile_model(folder / openvino_parts.VISION_XML, "CPU", f32)
    lm = core.compile_model(folder / openvino_parts.LM_XML, "CPU", f32).create_infer_request()
    hidden = json.loads((folder / "hf_config.json").read_text())["text_config"]["hidden_size"]
    lm.infer({"inputs_embeds": rng.standard_normal((1, 9, hidden)).astype(np.float32),
              "attention_mask": np.ones((1, 9), np.int64), "position_ids": np.arange(9)[None],
              "beam_idx": np.zeros(1, np.int32)})
    return [vision(rng.standard_normal((1, 3, 448, 448)).astype(np.float32))[0], lm.get_tensor("logits").data.copy()]


def test_bf16_checkpoint_exports_what_its_fp32_copy_exports(tiny_native_dir, tmp_path):
    half = _copy_in(tiny_native_dir, tmp_path / "half", "bfloat16")  # as the published checkpoint
    full = _copy_in(half, tmp_path / "full", "float32")  # the same values, upcast
    assert openvino_parts.load_dtype(half, "fp16") != openvino_parts.load_dtype(full, "fp16")
    outs = [run_export(ExportSettings(model_name=str(folder), cache_dir=str(tmp_path / "cache"), precision="fp16"))
            for folder in (half, full)]
    for name in (openvino_parts.TEXT_EMB_XML, openvino_parts.LM_XML):
        assert _graph(outs[0] / name) == _graph(outs[1] / name), name
    # The vision encoder has the same ops and weights, but from fp32 weights OpenVINO folds the layer scale
    # into the biases before they are stored in fp16; 16-bit biases are scaled as the graph runs instead.
    assert _graph(outs[0] / openvino_parts.VISION_XML)[0] == _graph(outs[1] / openvino_parts.VISION_XML)[0]
    (vision, logits), (want_vision, want_logits) = _outputs(outs[0]), _outputs(outs[1])
    assert rel_err(vision, want_vision) < 1e-5
    assert (logits == want_logits).all()
