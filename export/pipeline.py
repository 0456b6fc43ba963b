"""The export stage end to end: source -> artifacts in <cache>/exported/<model>/<precision>/, atomically."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from export import compress, openvino_parts, progress
from export.atomic import atomic_dir, export_lock
from export.errors import ExportError
from export.manifest import MANIFEST, build_manifest, is_complete
from export.settings import ExportSettings

log = logging.getLogger(__name__)
EXPORT_VERSION = 1  # bump when the layout or recipe changes, so old exports are rebuilt


def manifest_inputs(settings: ExportSettings) -> dict:
    """What an export is a function of (besides formats, which may grow)."""
    return {"model": settings.model_name, "revision": settings.revision, "precision": settings.precision,
            "export_version": EXPORT_VERSION}


def is_exported(settings: ExportSettings) -> bool:
    """True when a finished export for these settings is already in the cache."""
    return is_complete(settings.output_dir, manifest_inputs(settings), settings.formats)


def run_export(settings: ExportSettings) -> Path:
    """Export settings.model_name unless a finished export is there; returns the export folder."""
    out = settings.output_dir
    if is_exported(settings):
        log.info("export already complete: %s", out)
        return out
    with export_lock(out):
        if is_exported(settings):  # another process finished it while we waited
            return out
        return _build(settings, out)


def _build(settings: ExportSettings, out: Path) -> Path:
    from export.source import resolve_source

    started = time.time()
    source = resolve_source(settings)
    log.info("exporting %s (%s format) at %s into %s", settings.model_name, source.original_format,
             settings.precision, out)
    with atomic_dir(out) as tmp:
        progress.report("exporting", "loading the checkpoint")
        model = _load_native(source.native_dir)
        hidden = model.config.text_config.hidden_size
        if "openvino" in settings.formats:
            _export_openvino(model, source.native_dir, tmp, settings.precision, hidden)
        if "onnx" in settings.formats:
            from export import onnx_parts
            onnx_parts.export_onnx(model, tmp / "onnx")
        openvino_parts.convert_tokenizer(source.native_dir, tmp)
        openvino_parts.write_configs(model, source.native_dir, tmp)
        del model
        source_info = {"id": source.model_id, "format": source.original_format, "revision": source.revision,
                       "native_dir": str(source.native_dir)}
        manifest = build_manifest(tmp, manifest_inputs(settings), sorted(settings.formats), source_info,
                                  compress.part_precisions(settings.precision), started)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("export finished in %.1f s: %s", time.time() - started, out)
    return out


def _load_native(folder: Path):
    import torch
    from transformers import InternVLForConditionalGeneration

    try:
        return InternVLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    except Exception as exc:  # transformers and safetensors raise many types for a bad checkpoint
        raise ExportError(f"cannot load the checkpoint in {folder}: {str(exc).splitlines()[0]}") from None


def _export_openvino(model, src: Path, out: Path, precision: str, hidden: int) -> None:
    fp16 = precision != "fp32"
    steps = [("vision encoder", lambda: openvino_parts.convert_vision(model, out, fp16)),
             ("text embeddings", lambda: openvino_parts.convert_text_embeddings(model, out, fp16)),
             ("language model", lambda: openvino_parts.convert_language_model(model, out, fp16))]
    files = {"lm": openvino_parts.LM_XML, "vision": openvino_parts.VISION_XML,
             "embeddings": openvino_parts.TEXT_EMB_XML}
    for part, mode in compress.PLAN[precision].items():
        steps.append((f"compressing {part} to {mode}",
                      lambda part=part, mode=mode: compress.compress_file(out / files[part], mode, hidden)))
    for k, (name, step) in enumerate(steps):
        progress.report("exporting", name, k, len(steps), "parts")
        step()
    progress.report("exporting", "tokenizer and configs", len(steps), len(steps), "parts")
