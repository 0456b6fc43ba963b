"""PyTorch engine: transformers' InternVLForConditionalGeneration, bf16 on CUDA (the GPU fallback) and fp32 on
CPU (the reference the tests compare against). The only module of the runtime that imports torch."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from runtime.backends.base import KVSnapshot
from runtime.errors import ArtifactsMissing
from runtime.manifest import read_manifest


def native_checkpoint(export_dir: Path) -> Path:
    """The native-format checkpoint an export was made from (recorded in its manifest)."""
    manifest = read_manifest(export_dir)
    folder = manifest.native_dir if manifest is not None else None
    if folder is None:
        raise ArtifactsMissing(f"{export_dir} has no readable manifest.json: run `make export`")
    if not (folder / "config.json").is_file():
        raise ArtifactsMissing(f"the checkpoint {folder} named in the manifest is gone: run `make export`")
    return folder


class TorchSequence:
    """A KV-cached sequence over transformers' DynamicCache."""

    def __init__(self, backend: "TorchBackend"):
        self.backend = backend
        self.cache = None
        self.length = 0

    def forward(self, embeds: np.ndarray) -> np.ndarray:
        """Append embeds (T, hidden); return the last position's logits (vocab,) as float32 numpy."""
        torch = self.backend.torch
        from transformers import DynamicCache

        if self.cache is None:
            self.cache = DynamicCache(config=self.backend.model.config.text_config)
        x = torch.from_numpy(embeds).to(self.backend.device, self.backend.dtype)[None]  # (1, T, hidden)
        t = x.shape[1]
        positions = torch.arange(self.length, self.length + t, device=self.backend.device)[None]
        with torch.inference_mode():
            out = self.backend.model(inputs_embeds=x, past_key_values=self.cache, position_ids=positions,
                                     attention_mask=torch.ones(1, self.length + t, device=self.backend.device,
                                                               dtype=torch.long),
                                     use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        self.length += t
        return out.logits[0, -1].float().cpu().numpy()

    def reset(self) -> None:
        """Empty the KV cache."""
        self.cache, self.length = None, 0

    def snapshot(self) -> KVSnapshot:
        """A deep copy of the cache (stays on the device)."""
        cache = copy.deepcopy(self.cache)
        nbytes = 0
        for layer in getattr(cache, "layers", []):
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                nbytes += t.numel() * t.element_size() if t is not None else 0
        return KVSnapshot(self.length, cache, nbytes)

    def restore(self, snap: KVSnapshot, length: int) -> None:
        """Use a copy of snap's cache cut to `length` positions."""
        self.cache = copy.deepcopy(snap.data)
        if self.cache is not None:
            self.cache.crop(length)
        self.length = length


class TorchBackend:
    """transformers' native InternVL model on CUDA (bf16) or CPU (fp32)."""

    name = "torch"
    batched_decode = False  # each sequence runs its own forward calls

    def __init__(self, export_dir: Path, settings, device: str):
        import torch
        from transformers import InternVLForConditionalGeneration

        self.torch = torch
        self.device = "cuda" if device == "cuda" else "cpu"
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        folder = native_checkpoint(export_dir)
        self.model = InternVLForConditionalGeneration.from_pretrained(str(folder), dtype=self.dtype).to(self.device)
        self.model.eval()
        self.hidden_size = self.model.config.text_config.hidden_size

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """(tiles, 3, 448, 448) -> (tiles * 256, hidden)."""
        torch, cfg = self.torch, self.model.config
        px = torch.from_numpy(pixel_values).to(self.device, self.dtype)
        with torch.inference_mode():
            feats = self.model.model.get_image_features(
                pixel_values=px, vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy)
        feats = getattr(feats, "pooler_output", feats)
        return feats.reshape(-1, feats.shape[-1]).float().cpu().numpy()

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """(T,) -> (T, hidden)."""
        torch = self.torch
        with torch.inference_mode():
            out = self.model.get_input_embeddings()(torch.from_numpy(ids.astype(np.int64)).to(self.device))
        return out.float().cpu().numpy()

    def new_sequence(self) -> TorchSequence:
        """A fresh, empty sequence."""
        return TorchSequence(self)

    def info(self) -> dict:
        """Versions and dtype."""
        torch = self.torch
        gpu = torch.cuda.get_device_name(0) if self.device == "cuda" else None
        return {"torch": torch.__version__, "dtype": str(self.dtype).replace("torch.", ""), "gpu": gpu}
