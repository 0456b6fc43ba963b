"""Export configuration, read once from the environment (every field also has a CLI flag)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runtime.config import read_env, setting
from runtime.settings import DEFAULT_MODEL, DEFAULT_PRECISION, artifact_dir, default_cache_dir

PRECISIONS = ("fp32", "fp16", "int8", "int4")
FORMATS = ("openvino", "onnx")


def parse_formats(text: str) -> tuple[str, ...]:
    """'openvino, onnx' -> ('openvino', 'onnx')."""
    return tuple(f.strip() for f in text.split(",") if f.strip())


@dataclass(frozen=True)
class ExportSettings:
    """What to export, from where, and how."""

    # Hub id, local folder, or builtin:tiny-random / builtin:random-1b
    model_name: str = setting("MODEL_NAME", DEFAULT_MODEL)
    # downloads, converted checkpoints and exports
    cache_dir: str = setting("HF_CACHE_DIR", "", fallback=default_cache_dir)
    # fp32 | fp16 | int8 | int4 (weights of LM / vision / embeddings)
    precision: str = setting("EXPORT_PRECISION", DEFAULT_PRECISION)
    # comma-separated subset of openvino,onnx
    formats: tuple[str, ...] = setting("EXPORT_FORMATS", ("openvino",), parse=parse_formats)
    # Hub branch, tag or commit (default: main)
    revision: str | None = setting("MODEL_REVISION", None, parse=str)
    # never touch the network
    offline: bool = setting("HF_HUB_OFFLINE", False)

    @classmethod
    def from_env(cls, **overrides) -> "ExportSettings":
        """Read the fields from the environment; keyword arguments win."""
        values = read_env(cls, overrides)
        formats = values.get("formats", cls.formats)
        onnx_served = os.environ.get("BACKEND", "").strip().lower() == "onnxruntime"
        if onnx_served and "onnx" not in formats and overrides.get("formats") is None:
            values["formats"] = (*formats, "onnx")  # serving with ONNX Runtime needs its models: export them too
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
