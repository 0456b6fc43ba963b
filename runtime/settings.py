"""Runtime configuration, read once from the environment (and `.env`)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_MODEL = "OpenGVLab/InternVL3_5-1B"


def load_dotenv(path: str | os.PathLike = ".env") -> None:
    """Copy KEY=VALUE lines of a .env file into os.environ without overriding what is already set."""
    p = Path(path)
    if not p.is_file():
        return
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip().strip('"').strip("'")
        os.environ.setdefault(key.strip(), value)


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


def _env(name: str, default, cast=str):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if cast is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {'whole number' if cast is int else cast.__name__}, got {raw!r}") from None


BATCHED_CONCURRENCY = 4  # generations at once by default where their decode steps are batched (OpenVINO)


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything the engine needs to load and serve a model."""

    model_name: str = DEFAULT_MODEL  # MODEL_NAME: Hub id, local folder or builtin:tiny-random
    cache_dir: str = ""  # HF_CACHE_DIR: downloads, exports and compiled-model cache
    precision: str = "int8"  # EXPORT_PRECISION: which export to serve (fp16 | int8 | int4)
    device: str = "auto"  # DEVICE: auto | cpu | cuda
    backend: str = "auto"  # BACKEND: auto | openvino | onnxruntime | torch
    max_tiles: int = 2  # MAX_TILES: default tile budget per image (1..12)
    max_new_tokens: int = 512  # MAX_NEW_TOKENS: default and upper bound of generated tokens
    ov_threads: int = 0  # OV_NUM_THREADS: inference threads, 0 = all cores
    ov_streams: int = 1  # OV_NUM_STREAMS: parallel inference streams on CPU
    kv_cache_precision: str = "u8"  # OV_KV_CACHE_PRECISION: u8 (smaller, default) or f32 (exact)
    inference_precision: str = ""  # OV_INFERENCE_PRECISION: "" = plugin default (bf16 on CPUs with it), f32, bf16
    dynamic_quant_group: int = 128  # OV_DYNAMIC_QUANT_GROUP: activations to int8 in groups of N, 0 = off
    ov_cache_dir: str = ""  # OV_CACHE_DIR: compiled-model cache for fast restarts ("" = <cache>/ov_cache, "off")
    onnx_vision_int8: bool = False  # ONNX_VISION_INT8: BACKEND=onnxruntime runs the W8A8 vision model (faster)
    concurrency: int = 0  # CONCURRENCY: generations run at once; 0 = BATCHED_CONCURRENCY where decode is batched, else 1
    batch_decode: bool = True  # BATCH_DECODE: generations decoding at once share one batched LM call (OpenVINO)
    max_queue: int = 8  # MAX_QUEUE: requests allowed to wait; more get Busy
    image_cache_mb: int = 512  # IMAGE_CACHE_MB: memory for cached image embeddings
    kv_cache_mb: int = 128  # KV_CACHE_MB: memory for saved KV-cache prefixes (follow-ups, prepared images)
    max_prepared: int = 256  # MAX_PREPARED: prepared images remembered at once (oldest dropped first)
    prepare_ttl_s: int = 3600  # PREPARE_TTL_S: a prepared image's id expires after this many seconds

    @classmethod
    def from_env(cls, **overrides) -> "RuntimeSettings":
        """Read every field from its environment variable; keyword arguments win."""
        env = {
            "model_name": _env("MODEL_NAME", DEFAULT_MODEL),
            "cache_dir": _env("HF_CACHE_DIR", "") or default_cache_dir(),
            "precision": _env("EXPORT_PRECISION", "int8"),
            "device": _env("DEVICE", "auto").lower(),
            "backend": _env("BACKEND", "auto").lower(),
            "max_tiles": _env("MAX_TILES", 2, int),
            "max_new_tokens": _env("MAX_NEW_TOKENS", 512, int),
            "ov_threads": _env("OV_NUM_THREADS", 0, int),
            "ov_streams": _env("OV_NUM_STREAMS", 1, int),
            "kv_cache_precision": _env("OV_KV_CACHE_PRECISION", "u8").lower(),
            "inference_precision": _env("OV_INFERENCE_PRECISION", "").lower(),
            "dynamic_quant_group": _env("OV_DYNAMIC_QUANT_GROUP", 128, int),
            "ov_cache_dir": _env("OV_CACHE_DIR", ""),
            "onnx_vision_int8": _env("ONNX_VISION_INT8", False, bool),
            "concurrency": _env("CONCURRENCY", 0, int),
            "batch_decode": _env("BATCH_DECODE", True, bool),
            "max_queue": _env("MAX_QUEUE", 8, int),
            "image_cache_mb": _env("IMAGE_CACHE_MB", 512, int),
            "kv_cache_mb": _env("KV_CACHE_MB", 128, int),
            "max_prepared": _env("MAX_PREPARED", 256, int),
            "prepare_ttl_s": _env("PREPARE_TTL_S", 3600, int),
        }
        env.update(overrides)
        settings = cls(**env)
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
        if not 1 <= self.max_tiles <= 12:
            raise ValueError(f"MAX_TILES must be between 1 and 12, got {self.max_tiles}")
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
