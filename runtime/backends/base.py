"""The contract every inference engine implements: vision, embeddings, and a KV-cached language model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class KVSnapshot:
    """A saved KV cache: `length` positions, in whatever form the engine keeps them."""

    length: int
    data: Any  # engine-specific (numpy arrays for OpenVINO / ONNX Runtime, torch tensors for torch)
    nbytes: int


class Sequence(Protocol):
    """One KV-cached token sequence (a generation slot). Not thread-safe: one user at a time."""

    length: int  # positions currently in the KV cache

    def forward(self, embeds: np.ndarray) -> np.ndarray:
        """Append embeds (T, hidden) after the cached positions; return the last position's logits (vocab,)."""

    def reset(self) -> None:
        """Empty the KV cache."""

    def snapshot(self) -> KVSnapshot:
        """A copy of the current KV cache."""

    def restore(self, snap: KVSnapshot, length: int) -> None:
        """Replace the KV cache with the first `length` positions of snap."""


class Backend(Protocol):
    """An engine holding the three compiled model parts."""

    name: str  # "openvino" | "onnxruntime" | "torch"
    device: str  # "CPU" | "cuda"
    hidden_size: int
    # True when the single-token steps of sequences decoding at the same time share one batched model call,
    # so that running generations side by side pays (the engine then runs several at once)
    batched_decode: bool

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """(tiles, 3, 448, 448) float32 -> (tiles * 256, hidden) image embeddings."""

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """(T,) int64 -> (T, hidden) text embeddings."""

    def new_sequence(self) -> Sequence:
        """A fresh, empty KV-cached sequence."""

    def info(self) -> dict:
        """Engine-specific facts for the status page (versions, precisions, threads)."""
