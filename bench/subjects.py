"""What the workloads drive: our Engine (any backend), or transformers' generate() (the baseline).

Both take the same dialog (runtime.types.Turn list) and return a Reply. An assistant turn's text is mapped
back to the exact token ids generated for it, by the engine's runner and here by the baseline alike, so a
follow-up's prompt is the same length for both (random weights make text round trips lossy).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.types import GenerationOptions, Turn


@dataclass
class Reply:
    """What one request cost; times in seconds."""

    ttft_s: float
    decode_tok_s: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    vision_s: float = 0.0
    prefill_s: float = 0.0
    text: str = ""


class EngineSubject:
    """Our runtime Engine, configured from the environment (BACKEND, EXPORT_PRECISION, ...)."""

    name = "engine"

    def __init__(self):
        self.engine = None
        self.info: dict = {}

    def load(self) -> None:
        """Construct the engine and block until it is ready."""
        from runtime.engine import create_engine
        from runtime.settings import RuntimeSettings

        settings = RuntimeSettings.from_env(max_new_tokens=4096)
        self.engine = create_engine(settings).start()
        if not self.engine.wait_ready():
            raise RuntimeError(f"engine failed to load: {self.engine.info().get('error')}")
        self.info = self.engine.info().get("engine", {})

    def prepare(self, image: Image.Image, max_tiles: int, timeout_s: float = 600.0) -> None:
        """Engine.prepare (what POST /api/v1/images calls), then wait until the image is ready."""
        image_id = self.engine.prepare(image, max_tiles)["image_id"]
        deadline = time.perf_counter() + timeout_s
        while (status := self.engine.prepare_status(image_id))["status"] != "ready":
            if status["status"] in ("failed", "cancelled") or time.perf_counter() > deadline:
                raise RuntimeError(f"preparing the image ended {status['status']}: {status.get('error')}")
            time.sleep(0.05)

    def chat(self, turns: list[Turn], max_new_tokens: int, max_tiles: int) -> Reply:
        """One request through Engine.chat, EOS ignored."""
        opts = GenerationOptions(max_new_tokens=max_new_tokens, ignore_eos=True, max_tiles=max_tiles)
        a = self.engine.chat(turns, opts)
        t = a.timings
        return Reply(t.ttft_s, t.decode_tok_s, a.prompt_tokens, a.completion_tokens, t.cached_tokens,
                     t.vision_s, t.prefill_s, a.text)


class _TimingStreamer:
    """A transformers streamer that notes when each generated token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class TransformersSubject:
    """InternVLForConditionalGeneration.generate in eager fp32 on the checkpoint the export was built from."""

    name = "transformers"

    def __init__(self, native_dir: Path):
        self.native_dir = Path(native_dir)
        self.answers: dict[str, list[int]] = {}  # answer text -> the ids generated for it
        self.info: dict = {}

    def prepare(self, image: Image.Image, max_tiles: int) -> None:
        """Nothing: generate() keeps nothing between calls, so a prepared image is a full request again."""

    def load(self) -> None:
        """Load the checkpoint, tokenizer and image processor."""
        import torch
        from transformers import AutoTokenizer, InternVLForConditionalGeneration

        self.torch = torch
        self.model = InternVLForConditionalGeneration.from_pretrained(str(self.native_dir), dtype=torch.float32)
        self.model.eval()
        self.tok = AutoTokenizer.from_pretrained(str(self.native_dir))
        try:  # the PIL backend: what transformers uses without torchvision, and what the runtime matches
            from transformers import GotOcr2ImageProcessorPil
            self.processor = GotOcr2ImageProcessorPil.from_pretrained(str(self.native_dir))
        except Exception:  # no image processor saved: preprocess as the runtime does (bit-identical)
            self.processor = None
        self.info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": "float32",
                     "image_processor": type(self.processor).__name__ if self.processor else "runtime.images"}

    def pixel_values(self, img, max_tiles: int):
        """(tiles, 3, 448, 448) float32 tensor, as the checkpoint's image processor makes it."""
        if self.processor is not None:
            out = self.processor(images=img, crop_to_patches=True, max_patches=max_tiles, return_tensors="pt")
            return out["pixel_values"].float()
        from runtime.images import preprocess
        return self.torch.from_numpy(preprocess(img, max_tiles))

    def prompt_ids(self, turns: list[Turn], tiles: list[list[int]]) -> list[int]:
        """ChatML ids, each assistant turn replaced by the ids generated for it."""
        from runtime.prompts import image_placeholder

        ids: list[int] = []
        for turn, counts in zip(turns, tiles):
            head = f"<|im_start|>{turn.role}\n" + "".join(image_placeholder(n) + "\n" for n in counts)
            known = self.answers.get(turn.text) if turn.role == "assistant" else None
            body = known if known is not None else self.tok.encode(turn.text, add_special_tokens=False)
            ids += self.tok.encode(head, add_special_tokens=False) + list(body)
            ids += self.tok.encode("<|im_end|>\n", add_special_tokens=False)
        return ids + self.tok.encode("<|im_start|>assistant\n", add_special_tokens=False)

    def chat(self, turns: list[Turn], max_new_tokens: int, max_tiles: int) -> Reply:
        """One generate() call over the whole dialog (no caching between calls), exactly max_new_tokens."""
        torch = self.torch
        t0 = time.perf_counter()
        pixels, tiles = [], []
        for turn in turns:
            row = [self.pixel_values(img, max_tiles) for img in turn.images]
            pixels += row
            tiles.append([p.shape[0] for p in row])
        ids = torch.tensor([self.prompt_ids(turns, tiles)], dtype=torch.long)
        kwargs = {"pixel_values": torch.cat(pixels)} if pixels else {}
        streamer = _TimingStreamer()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs,
                                      max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      do_sample=False, streamer=streamer)
        new = out[0, ids.shape[1]:].tolist()
        text = self.tok.decode(new, skip_special_tokens=False)
        self.answers[text] = new
        first, last = streamer.times[0], streamer.times[-1]
        n = len(streamer.times)
        return Reply(first - t0, (n - 1) / (last - first) if n > 1 and last > first else 0.0,
                     int(ids.shape[1]), len(new), 0, text=text)


def native_dir_of(export_dir: Path) -> Path:
    """The native checkpoint recorded in an export's manifest (source.native_dir)."""
    from runtime.manifest import read_manifest

    return read_manifest(export_dir).native_dir


def median(values: list[float]) -> float | None:
    """Median of the values, or None when there are none."""
    return float(np.median(values)) if values else None
