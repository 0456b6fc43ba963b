"""ONNX Runtime engine: our own loop over the three ONNX parts in <export>/onnx/.

The language model takes and returns its KV cache explicitly (past_key_values.* in, present.* out), so a
sequence's cache is a list of numpy arrays: a snapshot shares them (ONNX Runtime never writes into its inputs,
and each run returns new arrays) and a restore slices them. The graph computes logits for the last position
only. The vision part can run W8A8 (dynamic int8, ONNX_VISION_INT8): at full size 1.47x faster than fp32 on
an AVX2 CPU (where OpenVINO's int8 was slower than its fp32) and 1.9x on an AVX-512 VNNI one, 2 threads.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.backends.base import KVSnapshot
from runtime.errors import ArtifactsMissing

log = logging.getLogger(__name__)
SUBDIR = "onnx"
PARTS = {"vision": "vision_embeddings.onnx", "vision_int8": "vision_embeddings_int8.onnx",
         "embeddings": "text_embeddings.onnx", "lm": "language_model.onnx"}


def session_options(threads: int):
    """CPU session options: all graph optimisations, `threads` intra-op threads (0 = onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


class OnnxSequence:
    """A KV-cached sequence: the past key/value arrays, fed to and returned by every run."""

    def __init__(self, backend: "OnnxBackend"):
        self.backend = backend
        self.kv: list[np.ndarray] = backend.empty_kv()
        self.length = 0

    def forward(self, embeds: np.ndarray) -> np.ndarray:
        """Append embeds (T, hidden); return the last position's logits (vocab,)."""
        t = embeds.shape[0]
        feeds = {
            "inputs_embeds": np.ascontiguousarray(embeds, dtype=np.float32)[None],  # (1, T, hidden)
            "attention_mask": np.ones((1, self.length + t), dtype=np.int64),
            "position_ids": np.arange(self.length, self.length + t, dtype=np.int64)[None],
        }
        feeds.update(zip(self.backend.past_names, self.kv))
        logits, *present = self.backend.lm.run(None, feeds)  # (1, 1, vocab), (1, kv_heads, length + T, head_dim)
        self.kv = present
        self.length += t
        return logits[0, -1]

    def reset(self) -> None:
        """Empty the KV cache."""
        self.kv, self.length = self.backend.empty_kv(), 0

    def snapshot(self) -> KVSnapshot:
        """The current arrays themselves (never written in place, so sharing them is a copy)."""
        return KVSnapshot(self.length, list(self.kv), sum(a.nbytes for a in self.kv))

    def restore(self, snap: KVSnapshot, length: int) -> None:
        """The first `length` positions of snap's arrays."""
        self.kv = [np.ascontiguousarray(a[:, :, :length]) for a in snap.data]  # (1, kv_heads, length, head_dim)
        self.length = length


class OnnxBackend:
    """ONNX Runtime sessions over the vision, text-embedding and language models of an export folder."""

    name = "onnxruntime"
    device = "CPU"
    batched_decode = False  # each sequence runs its own session calls

    def __init__(self, folder: Path, settings):
        import onnxruntime as ort

        onnx_dir = folder / SUBDIR
        self.vision_part = "vision_int8" if settings.onnx_vision_int8 else "vision"
        wanted = [PARTS[self.vision_part], PARTS["embeddings"], PARTS["lm"]]
        missing = [f for f in wanted if not (onnx_dir / f).is_file()]
        if missing:
            raise ArtifactsMissing(f"{onnx_dir} lacks {', '.join(missing)}: export with EXPORT_FORMATS=openvino,onnx "
                                   "(`make export`) to use BACKEND=onnxruntime")
        self.threads = settings.ov_threads
        opts, providers = session_options(self.threads), ["CPUExecutionProvider"]
        self.vision = ort.InferenceSession(str(onnx_dir / PARTS[self.vision_part]), opts, providers=providers)
        self.embeddings = ort.InferenceSession(str(onnx_dir / PARTS["embeddings"]), opts, providers=providers)
        self.lm = ort.InferenceSession(str(onnx_dir / PARTS["lm"]), opts, providers=providers)
        self.hidden_size = int(self.embeddings.get_outputs()[0].shape[-1])
        self.past_names = [i.name for i in self.lm.get_inputs() if i.name.startswith("past_key_values.")]
        _, kv_heads, _, head_dim = self.lm.get_inputs()[3].shape  # (1, kv_heads, past, head_dim)
        self._kv_shape = (1, int(kv_heads), 0, int(head_dim))
        log.info("onnxruntime %s: %s, %d KV layers", ort.__version__, PARTS[self.vision_part],
                 len(self.past_names) // 2)

    def empty_kv(self) -> list[np.ndarray]:
        """Past key/values of length 0, one array per past input."""
        return [np.zeros(self._kv_shape, dtype=np.float32) for _ in self.past_names]

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """(tiles, 3, 448, 448) -> (tiles * 256, hidden)."""
        px = np.ascontiguousarray(pixel_values, dtype=np.float32)
        out = self.vision.run(None, {"pixel_values": px})[0]  # (tiles, 256, hidden)
        return out.reshape(-1, out.shape[-1])

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """(T,) -> (T, hidden)."""
        return self.embeddings.run(None, {"input_ids": ids.astype(np.int64)[None]})[0][0]

    def new_sequence(self) -> OnnxSequence:
        """A fresh, empty sequence."""
        return OnnxSequence(self)

    def info(self) -> dict:
        """Versions and the knobs in force."""
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__, "vision_model": PARTS[self.vision_part],
                "vision_precision": "int8 (W8A8 dynamic)" if self.vision_part == "vision_int8" else "fp32",
                "lm_precision": "fp32", "threads": self.threads or "all"}
