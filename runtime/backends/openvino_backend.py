"""OpenVINO engine: our own loop over the three compiled IR parts.

Why not openvino_genai.VLMPipeline: it fixes the tile budget at 12 (we need it per request), cannot keep or
restore KV prefixes across requests (follow-ups and prepared images), and cannot cancel within a token.
The loop costs ~1 ms a token in Python against ~30-60 ms in the model, and computes lm_head only for the
last position (the graph is sliced before it), as VLMPipeline does.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.backends.base import KVSnapshot
from runtime.backends.ov_batch import DecodeBatch, KVHandle
from runtime.backends.ov_state import StateReader, StateWriter
from runtime.errors import ArtifactsMissing
from runtime.memory import mapped_files, page_out_weight_files

log = logging.getLogger(__name__)
PARTS = {"vision": "openvino_vision_embeddings_model.xml", "embeddings": "openvino_text_embeddings_model.xml",
         "lm": "openvino_language_model.xml"}


def slice_before_lm_head(model) -> None:
    """Make the LM compute logits for the last position only (prefill of N tokens: one lm_head row, not N)."""
    import openvino.opset13 as ops

    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() != "MatMul":
        node = node.input_value(0).get_node()
    hidden = node.input_value(0)
    last = ops.slice(hidden, np.array([-1]), np.array([np.iinfo(np.int64).max]), np.array([1]), np.array([1]))
    node.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()


def writable_cache_dir(folder: str | None) -> str | None:
    """folder, created if needed, when this process can write there; else None with a warning (the compiled
    cache only speeds up restarts, so an unwritable one must not stop the model from loading)."""
    if not folder:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        log.warning("compiled-model cache %s is not writable (%s): loading without it; set OV_CACHE_DIR to a "
                    "writable folder, or to off", folder, exc.strerror or exc)
        return None
    return folder


def lm_feed(embeds: np.ndarray, past: int) -> dict:
    """Inputs of the stateful language model for embeds (B, T, hidden) after `past` cached positions."""
    batch, t = embeds.shape[:2]
    return {"inputs_embeds": embeds,
            "attention_mask": np.ones((batch, past + t), dtype=np.int64),
            "position_ids": np.tile(np.arange(past, past + t, dtype=np.int64), (batch, 1)),
            "beam_idx": np.arange(batch, dtype=np.int32)}


class OpenVINOSequence:
    """A KV-cached sequence over one infer request of the stateful language model.

    With a DecodeBatch, its single-token steps run batched with other sequences decoding at the same time; any
    other use first takes it out of the batch (runtime/backends/ov_batch.py).
    """

    def __init__(self, request, snapshot_dtype=np.float32, batch: DecodeBatch | None = None, compute=None):
        self.request = request
        self.compute = compute or contextlib.nullcontext()  # held around each infer (OpenVINOBackend.compute)
        self.length = 0
        self.snapshot_dtype = snapshot_dtype  # f16 halves saved KV memory when the live cache is u8 anyway
        self.batch = batch
        self.row = None  # its row while it decodes in the batch (set and cleared by the batch)
        self.detached: KVHandle | None = None  # its KV from the batch, not yet back in its own request
        self.writer = StateWriter()

    def forward(self, embeds: np.ndarray) -> np.ndarray:
        """Append embeds (T, hidden); return the last position's logits (vocab,)."""
        if self.batch is not None and embeds.shape[0] == 1:
            return self.batch.step(self, embeds[0])
        self._leave_batch(keep_kv=True)
        logits = self.infer_own(embeds)
        if self.batch is not None:
            self.batch.expect(self)  # a prompt: decoding usually follows
        return logits

    def infer_own(self, embeds: np.ndarray) -> np.ndarray:
        """forward() on this sequence's own infer request."""
        self._materialize()
        with self.compute:
            self.request.infer(lm_feed(embeds[None], self.length))  # (1, T, hidden)
        self.length += embeds.shape[0]
        return self.request.get_tensor("logits").data[0, -1].copy()

    def take_kv(self) -> Mapping:
        """Its KV, name -> (1, kv_heads, length, head_dim), for a batch it joins; read a layer at a time."""
        if self.detached is not None:
            kv, self.detached = self.detached, None
            return kv
        return StateReader(self.request)

    def reset(self) -> None:
        """Empty the KV cache."""
        self._leave_batch(keep_kv=False)
        self.request.reset_state()
        self.length = 0

    def snapshot(self) -> KVSnapshot:
        """Copy the KV state out of the plugin (dequantised to f32 when the plugin keeps it in u8)."""
        self._leave_batch(keep_kv=True)
        if self.detached is not None:  # in the batch's state until first read (KVHandle), then shared
            return KVSnapshot(self.length, self.detached, self.detached.nbytes)
        arrays = {s.name: s.state.data.astype(self.snapshot_dtype) for s in self.request.query_state()}
        return KVSnapshot(self.length, arrays, sum(a.nbytes for a in arrays.values()))

    def restore(self, snap: KVSnapshot, length: int) -> None:
        """Load the first `length` positions of snap into the plugin's state."""
        self._leave_batch(keep_kv=False)
        self._set_state(snap.data, length)

    def _set_state(self, arrays: Mapping, length: int) -> None:
        self.request.reset_state()
        for state in self.request.query_state():
            self.writer.copy_in(state, arrays[state.name][:, :, :length])  # (1, kv_heads, length, head_dim)
        self.length = length

    def _leave_batch(self, keep_kv: bool) -> None:
        if self.batch is not None:
            self.batch.leave(self, keep_kv)
        if not keep_kv:
            self.detached = None

    def _materialize(self) -> None:
        """Put KV copied out of the batch back into its own request."""
        if self.detached is not None:
            kv, self.detached = self.detached, None
            self._set_state(kv, self.length)


class OpenVINOBackend:
    """Compiled vision, text-embedding and language models from an export folder."""

    name = "openvino"
    device = "CPU"

    def __init__(self, folder: Path, settings):
        import openvino as ov

        missing = [f for f in PARTS.values() if not (folder / f).is_file() or not (folder / f).with_suffix(".bin").is_file()]
        if missing:
            raise ArtifactsMissing(f"{folder} lacks {', '.join(missing)}: run `make export` again")
        self.core = ov.Core()
        cache_dir = writable_cache_dir(settings.compiled_cache_dir)
        if cache_dir:
            self.core.set_property({"CACHE_DIR": cache_dir})
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": str(settings.ov_streams)}
        if settings.ov_threads:
            config["INFERENCE_NUM_THREADS"] = str(settings.ov_threads)
        if settings.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = settings.inference_precision
        # Matmuls with compressed weights quantise their activations to int8 on the fly, in groups along the
        # reduction axis; groups of 128 instead of the plugin's 32 were faster here in both the vision model
        # and decode (bench/results.md), at an error bench/quality.md reports.
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(settings.dynamic_quant_group)
        self._weight_folders = [str(folder)] + ([cache_dir] if cache_dir else [])
        self.vision = self.core.compile_model(folder / PARTS["vision"], "CPU", config)
        mapped = self._mapped_weight_files()
        self.embeddings = self.core.compile_model(folder / PARTS["embeddings"], "CPU", config)
        # The embedding table is read a row per token from its mapped file: it is never paged out.
        self._embedding_files = frozenset(self._mapped_weight_files() - mapped)
        lm = self.core.read_model(folder / PARTS["lm"])
        slice_before_lm_head(lm)
        self.lm = self.core.compile_model(lm, "CPU", dict(config, KV_CACHE_PRECISION=settings.kv_cache_precision))
        del lm  # the IR, whose mapped .bin the compiled model does not need
        self.hidden_size = int(self.embeddings.output(0).get_partial_shape()[-1].get_length())
        self._settings = settings
        # Idle infer requests, reused: creating one per call costs on every token, and one per thread (the
        # web server's workers, a new thread per streamed answer) keeps a set of activations for each, which
        # adds up with the threads. The pool holds as many as ever ran at once (slots + preparer).
        self._idle = {"vision": queue.SimpleQueue(), "embeddings": queue.SimpleQueue()}
        # One model call at a time: two at once (a tile of one request, a decode step of others) share the cores
        # at a loss (4 clients on 2 cores: 1.05x one client's tokens/s with calls overlapping, see
        # runtime/backends/ov_batch.py), and each would hold its own working buffers.
        self.compute = threading.Lock()
        # KV copied out of the plugin: f16 halves it where the live cache is u8 anyway.
        self._snapshot_dtype = np.float32 if settings.kv_cache_precision == "f32" else np.float16
        self.batch = DecodeBatch(self.lm, self.compute, self._snapshot_dtype) if settings.batch_decode else None
        self.batched_decode = self.batch is not None
        self.warm_up()

    def warm_up(self) -> None:
        """Run each model once now, so that the plugin repacks its weights at load rather than in the first
        request, and page out the mapped weight files after each: the weights are then held once, not twice
        (runtime/memory.py), and the peak stays one model's weights above that."""
        t0, hidden = time.perf_counter(), self.hidden_size
        self.embed_tokens(np.zeros(8, dtype=np.int64))
        page_out_weight_files(self._weight_folders, self._embedding_files)  # also the LM pages read to compile
        seq = self.new_sequence()
        seq.forward(np.zeros((64, hidden), dtype=np.float32))  # prefill kernels
        seq.forward(np.zeros((1, hidden), dtype=np.float32))  # decode kernels
        seq.reset()  # no longer decoding: a batch must not take it in
        del seq
        page_out_weight_files(self._weight_folders, self._embedding_files)
        self.embed_images(np.zeros((1, 3, 448, 448), dtype=np.float32))
        advised = page_out_weight_files(self._weight_folders, self._embedding_files)
        log.info("warmed up in %.1f s; %d MiB of mapped weight files paged out", time.perf_counter() - t0,
                 advised >> 20)

    def _mapped_weight_files(self) -> set[str]:
        """Weight files (IR .bin, cached .blob) this process has mapped from the export or the compiled cache."""
        return {path for _, _, path in mapped_files(self._weight_folders)}

    @contextlib.contextmanager
    def _request(self, name: str):
        """An idle infer request of the named model (a new one when all are busy), given back after use."""
        try:
            request = self._idle[name].get_nowait()
        except queue.Empty:
            request = getattr(self, name).create_infer_request()
        try:
            yield request
        finally:
            self._idle[name].put(request)

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """(tiles, 3, 448, 448) -> (tiles * 256, hidden)."""
        with self.compute, self._request("vision") as request:  # one at a time: one request's buffers
            out = request.infer({0: pixel_values})[0]  # (tiles, 256, hidden)
            return np.array(out, dtype=np.float32).reshape(-1, out.shape[-1])  # a copy: the buffer is reused

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """(T,) -> (T, hidden)."""
        with self._request("embeddings") as request:
            out = request.infer({0: ids[None].astype(np.int64)})[0]
            return np.array(out[0], dtype=np.float32)  # a copy: the request's output buffer is reused

    def new_sequence(self) -> OpenVINOSequence:
        """A fresh sequence with its own infer request (and KV state)."""
        return OpenVINOSequence(self.lm.create_infer_request(), self._snapshot_dtype, self.batch, self.compute)

    def info(self) -> dict:
        """Versions and the knobs in force."""
        import openvino as ov

        return {"openvino": ov.get_version(), "kv_cache_precision": self._settings.kv_cache_precision,
                "inference_precision": self.lm.get_property("INFERENCE_PRECISION_HINT").name
                if hasattr(self.lm.get_property("INFERENCE_PRECISION_HINT"), "name")
                else str(self.lm.get_property("INFERENCE_PRECISION_HINT")),
                "dynamic_quant_group": self._settings.dynamic_quant_group,
                "batch_decode": self.batch is not None,
                "threads": self._settings.ov_threads or "all", "streams": self._settings.ov_streams}
