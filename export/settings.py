"""Export configuration, read once from the environment (every field also has a CLI flag)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runtime.settings import DEFAULT_MODEL, artifact_dir, default_cache_dir

PRECISIONS = ("fp32", "fp16", "int8", "int4")
FORMATS = ("openvino", "onnx")


@dataclass(frozen=True)
class ExportSettings:
    """What to export, from where, and how."""

    model_name: str = DEFAULT_MODEL  # MODEL_NAME: Hub id, local folder, or builtin:tiny-random / builtin:random-1b
    cache_dir: str = ""  # HF_CACHE_DIR: downloads, converted checkpoints and exports
    precision: str = "int8"  # EXPORT_PRECISION: fp32 | fp16 | int8 | int4 (weights of LM / vision / embeddings)
    formats: tuple[str, ...] = ("openvino",)  # EXPORT_FORMATS: comma-separated subset of openvino,onnx
    revision: str | None = None  # MODEL_REVISION: Hub branch, tag or commit (default: main)
    offline: bool = False  # HF_HUB_OFFLINE: never touch the network

    @classmethod
    def from_env(cls, **overrides) -> "ExportSettings":
        """Read the fields from the environment; keyword arguments win."""
        formats = os.environ.get("EXPORT_FORMATS") or "openvino"
        if os.environ.get("BACKEND", "").lower() == "onnxruntime" and "onnx" not in formats:
            formats += ",onnx"  # serving with ONNX Runtime needs its models: export them on demand
        values = {
            "model_name": os.environ.get("MODEL_NAME") or DEFAULT_MODEL,
            "cache_dir": os.environ.get("HF_CACHE_DIR") or default_cache_dir(),
            "precision": os.environ.get("EXPORT_PRECISION") or "int8",
            "formats": tuple(f.strip() for f in formats.split(",") if f.strip()),
            "revision": os.environ.get("MODEL_REVISION") or None,
            "offline": os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming a setting that is out of range."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"EXPORT_PRECISION must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"EXPORT_FORMATS must be a comma-separated subset of {','.join(FORMATS)}, got {bad}")

    @property
    def output_dir(self) -> Path:
        """The finished export's folder."""
        return artifact_dir(self.cache_dir, self.model_name, self.precision)
