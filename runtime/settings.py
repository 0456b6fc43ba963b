"""Runtime configuration, read once from the environment (and `.env`, see runtime/config.py)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from runtime.config import read_env, setting
from runtime.limits import MAX_TILES as LIMIT_TILES
from runtime.limits import check_tiles

DEFAULT_MODEL = "OpenGVLab/InternVL3_5-1B"
DEFAULT_PRECISION = "int8"  # the export built and served unless EXPORT_PRECISION says otherwise
DEFAULT_CLIENT_SHARE = 25  # % of each store one client may hold (read by the runtime and the web app)


def default_cache_dir() -> str:
    """`./data/model_cache` of the working folder (the images set HF_CACHE_DIR=/cache themselves)."""
    return str(Path("data/model_cache").resolve())


def model_slug(model_name: str) -> str:
    """A folder-safe name for a model id or path: 'OpenGVLab/InternVL3_5-1B' -> 'OpenGVLab--InternVL3_5-1B'."""
    name = model_name.rstrip("/")
    if os.path.isabs(name) or name.startswith("."):
        name = "local--" + Path(name).name
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name)


def artifact_dir(cache_dir: str | os.PathLike, model_name: str, precision: str) -> Path:
    """Where the export of `model_name` at `precision` lives: <cache>/exported/<slug>/<precision>."""
    return Path(cache_dir) / "exported" / model_slug(model_name) / precision


BATCHED_CONCURRENCY = 4  # generations at once by default where their decode steps are batched (OpenVINO)


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything the engine needs to load and serve a model."""

    model_name: str = setting("MODEL_NAME", DEFAULT_MODEL)  # Hub id, local folder or builtin:tiny-random
    # downloads, exports and compiled-model cache
    cache_dir: str = setting("HF_CACHE_DIR", "", fallback=default_cache_dir)
    precision: str = setting("EXPORT_PRECISION", DEFAULT_PRECISION)  # which export to serve (fp16 | int8 | int4)
    device: str = setting("DEVICE", "auto", parse=str.lower)  # auto | cpu | cuda
    backend: str = setting("BACKEND", "auto", parse=str.lower)  # auto | openvino | onnxruntime | torch
    max_tiles: int = setting("MAX_TILES", 2)  # default tile budget per image (1..12)
    max_new_tokens: int = setting("MAX_NEW_TOKENS", 512)  # default and upper bound of generated tokens
    ov_threads: int = setting("OV_NUM_THREADS", 0)  # inference threads, 0 = all cores
    ov_streams: int = setting("OV_NUM_STREAMS", 1)  # parallel inference streams on CPU
    # u8 (smaller, default) or f32 (exact)
    kv_cache_precision: str = setting("OV_KV_CACHE_PRECISION", "u8", parse=str.lower)
    # "" = plugin default (bf16 on CPUs with it), f32, bf16
    inference_precision: str = setting("OV_INFERENCE_PRECISION", "", parse=str.lower)
    dynamic_quant_group: int = setting("OV_DYNAMIC_QUANT_GROUP", 128)  # activations to int8 in groups of N, 0 = off
    # compiled-model cache for fast restarts ("" = <cache>/ov_cache, "off")
    ov_cache_dir: str = setting("OV_CACHE_DIR", "")
    # BACKEND=onnxruntime runs the W8A8 vision model (faster)
    onnx_vision_int8: bool = setting("ONNX_VISION_INT8", False)
    # generations run at once; 0 = BATCHED_CONCURRENCY where decode is batched, else 1
    concurrency: int = setting("CONCURRENCY", 0)
    # generations decoding at once share one batched LM call (OpenVINO)
    batch_decode: bool = setting("BATCH_DECODE", True)
    max_queue: int = setting("MAX_QUEUE", 8)  # requests allowed to wait; more get Busy
    image_cache_mb: int = setting("IMAGE_CACHE_MB", 512)  # memory for cached image embeddings
    kv_cache_mb: int = setting("KV_CACHE_MB", 128)  # memory for saved KV-cache prefixes (follow-ups, prepared images)
    max_prepared: int = setting("MAX_PREPARED", 256)  # prepared images remembered at once (oldest dropped first)
    prepare_ttl_s: int = setting("PREPARE_TTL_S", 3600)  # a prepared image's id expires after this many seconds
    prepare_store_mb: int = setting("PREPARE_STORE_MB", 256)  # memory for the files of prepared images
    # most of each store (prepared images here; conversations, downloads in the web app) one client may hold, in %
    client_share: int = setting("CLIENT_SHARE_PERCENT", DEFAULT_CLIENT_SHARE)

    @classmethod
    def from_env(cls, **overrides) -> "RuntimeSettings":
        """Read every field from its environment variable; keyword arguments win."""
        settings = cls(**read_env(cls, overrides))
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        choices = {"device": ("auto", "cpu", "cuda"), "backend": ("auto", "openvino", "onnxruntime", "torch"),
                   "precision": ("fp32", "fp16", "int8", "int4"), "kv_cache_precision": ("u8", "f16", "f32"),
                   "inference_precision": ("", "f32", "bf16", "f16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not check_tiles(self.max_tiles):
            raise ValueError(f"MAX_TILES must be between 1 and {LIMIT_TILES}, got {self.max_tiles}")
        if not 1 <= self.client_share <= 100:
            raise ValueError(f"CLIENT_SHARE_PERCENT must be between 1 and 100, got {self.client_share}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{f.name} must not be negative, got {value}")

    @property
    def export_dir(self) -> Path:
        """The exported artifacts this runtime serves."""
        return artifact_dir(self.cache_dir, self.model_name, self.precision)

    @property
    def compiled_cache_dir(self) -> str | None:
        """OpenVINO's compiled-model cache folder, or None when turned off."""
        if self.ov_cache_dir == "off":
            return None
        return self.ov_cache_dir or str(Path(self.cache_dir) / "ov_cache")
