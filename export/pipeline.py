"""The export stage end to end: source -> artifacts in <cache>/exported/<model>/<precision>/, atomically."""
from __future__ import annotations

import functools
import gc
import json
import logging
import time
from pathlib import Path

from export import compress, openvino_parts, progress
from export.atomic import atomic_dir, export_lock
from export.errors import ExportError
from export.manifest import MANIFEST, build_manifest, is_complete
from export.settings import ExportSettings
from runtime.memory import tune_malloc

log = logging.getLogger(__name__)
EXPORT_VERSION = 1  # bump when the layout or recipe changes, so old exports are rebuilt
PART_NAMES = {"vision": "vision encoder", "embeddings": "text embeddings", "lm": "language model"}
PART_FILES = {"vision": openvino_parts.VISION_XML, "embeddings": openvino_parts.TEXT_EMB_XML,
              "lm": openvino_parts.LM_XML}


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
    tune_malloc()  # large blocks go back to the system when freed, so one part's peak does not linger
    with atomic_dir(out) as tmp:
        progress.report("exporting", "loading the checkpoint")
        config = _load_config(source.native_dir)
        if "openvino" in settings.formats:
            _export_openvino(source.native_dir, tmp, settings.precision, config.text_config.hidden_size)
        if "onnx" in settings.formats:
            from export import onnx_parts
            model = _load_native(source.native_dir)
            onnx_parts.export_onnx(model, tmp / "onnx")
            del model
            release_memory()
        openvino_parts.convert_tokenizer(source.native_dir, tmp)
        openvino_parts.write_configs(config, tmp)
        source_info = {"id": source.model_id, "format": source.original_format, "revision": source.revision,
                       "native_dir": str(source.native_dir)}
        manifest = build_manifest(tmp, manifest_inputs(settings), sorted(settings.formats), source_info,
                                  compress.part_precisions(settings.precision), started)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("export finished in %.1f s: %s", time.time() - started, out)
    return out


def _load_config(folder: Path):
    """The checkpoint's InternVLConfig, saying the dtype the exported graphs compute in (fp32)."""
    import torch
    from transformers import InternVLConfig

    try:
        config = InternVLConfig.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many types for a bad config
        raise ExportError(f"cannot load the checkpoint in {folder}: {str(exc).splitlines()[0]}") from None
    config._name_or_path = str(folder)
    for part in (config, config.text_config, config.vision_config):
        part.dtype = torch.float32
    return config


def _load_native(folder: Path):
    """The whole model in fp32 (the ONNX export traces it in one piece)."""
    import torch
    from transformers import InternVLForConditionalGeneration

    try:
        return InternVLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    except Exception as exc:  # transformers and safetensors raise many types for a bad checkpoint
        raise ExportError(f"cannot load the checkpoint in {folder}: {str(exc).splitlines()[0]}") from None


def _export_openvino(src: Path, out: Path, precision: str, hidden: int) -> None:
    """Convert, then compress, one part at a time, reporting each step as part k of n."""
    dtype = _checked(src, lambda: openvino_parts.load_dtype(src, precision))
    fp16 = precision != "fp32"
    converters = {"vision": openvino_parts.convert_vision, "embeddings": openvino_parts.convert_text_embeddings,
                  "lm": openvino_parts.convert_language_model}
    steps = [(PART_NAMES[part], lambda part=part: _convert_part(src, part, out, dtype, fp16, converters[part]))
             for part in ("vision", "embeddings", "lm")]
    for part, mode in compress.PLAN[precision].items():
        steps.append((f"compressing {part} to {mode}",
                      lambda part=part, mode=mode: compress.compress_file(out / PART_FILES[part], mode, hidden)))
    for k, (name, step) in enumerate(steps):
        progress.report("exporting", name, k, len(steps), "parts")
        step()
        release_memory()
    progress.report("exporting", "tokenizer and configs", len(steps), len(steps), "parts")


def _convert_part(src: Path, part: str, out: Path, dtype, fp16: bool, convert) -> None:
    """Load one part's weights, convert it to IR, and let go of the weights before the next part."""
    model = _checked(src, lambda: openvino_parts.load_part(src, part, dtype))
    convert(model, out, fp16)


def _checked(folder: Path, load):
    """load(), with a damaged checkpoint reported as one ExportError line."""
    try:
        return load()
    except ExportError as exc:
        if str(exc).startswith("cannot load the checkpoint"):
            raise
        raise ExportError(f"cannot load the checkpoint in {folder}: {exc}") from None


def release_memory() -> None:
    """Collect what the last step left and hand glibc's free pages back to the system, so that the next step's
    peak starts from the floor rather than from the last step's high-water mark."""
    gc.collect()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _libc():
    """The C library (None where there is none to load)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
