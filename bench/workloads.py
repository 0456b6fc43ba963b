"""The inputs (real photos from scikit-image) and the timed workloads, run the same way on every subject.

Every timed request uses an image no earlier request has seen (a one-pixel variant of the photo), so no
image-embedding cache hit flatters a first-turn number; the warm-up requests are not counted.
"""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image

from runtime.types import Turn

log = logging.getLogger("bench")
NEW_TOKENS = 64  # generated per timed request, EOS ignored
PREPARED_NEW_TOKENS = 16  # the prepared-image requests only time the first token
QUESTION = "What is the animal in this picture doing, and what colour is its fur?"  # ~15 tokens
QUESTION_WIDE = "What is the person in this picture wearing, and what is behind them?"
FOLLOW_UP = "Where exactly is it in the picture, on the left or on the right side?"
NEW_QUESTION = "Describe the background of this picture and the colours you can see."
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
_WORDS = ("the picture shows a cat sitting on a table near the window with a red cup and a blue book while "
          "a person in a white shirt stands on the left side of the street under the green tree and two cars "
          "are parked by the yellow house there is grass water sky road and a small black dog").split()


def write_images(folder: Path) -> dict[str, Path]:
    """Save the benchmark photos as PNG (once): square 448x448, wide 800x400, and four 448x448 for the
    concurrent clients. Workers read these files, so they never import scikit-image."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"square": folder / "square_448.png", "wide": folder / "wide_800x400.png"}
    paths.update({f"client{i}": folder / f"client{i}_{name}_448.png" for i, name in enumerate(PHOTOS)})
    if all(p.is_file() for p in paths.values()):
        return paths
    Image.fromarray(data.chelsea()).resize((448, 448), Image.Resampling.BICUBIC).save(paths["square"])
    astronaut = Image.fromarray(data.astronaut())  # 512x512
    astronaut.crop((0, 0, 512, 256)).resize((800, 400), Image.Resampling.BICUBIC).save(paths["wide"])
    for i, name in enumerate(PHOTOS):
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        img.resize((448, 448), Image.Resampling.BICUBIC).save(paths[f"client{i}"])
    return paths


def variant(img: Image.Image, k: int) -> Image.Image:
    """The photo with one pixel nudged: same compute, a different content hash (no cache hit)."""
    out = img.copy()
    x, y = k % out.width, (k // out.width) % out.height
    r, g, b = out.getpixel((x, y))[:3]
    out.putpixel((x, y), ((r + 1 + k // 256) % 256, g, b))
    return out


def long_prompt(seed: int, words: int = 215) -> str:
    """A ~300-token text-only question (a different one per seed, so no KV prefix is shared)."""
    rng = random.Random(seed)
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    return f"Read this note and then continue it: {body}"


def run_all(subject, images: dict[str, Image.Image], repeats: int, progress) -> dict:
    """Warm up, then `repeats` rounds of every workload; returns {metric: [samples]} and details."""
    square, wide = images["square"], images["wide"]
    samples: dict[str, list] = defaultdict(list)
    progress("warm-up (not counted)")
    first = [Turn("user", QUESTION, [variant(square, 10_000)])]
    a = subject.chat(first, NEW_TOKENS, 1)
    subject.chat(first + [Turn("assistant", a.text), Turn("user", FOLLOW_UP)], 8, 1)
    subject.chat([Turn("user", QUESTION_WIDE, [variant(wide, 10_000)])], 8, 2)
    subject.chat([Turn("user", long_prompt(10_000))], 8, 1)
    for i in range(repeats):
        _round(subject, square, wide, i, samples, progress, repeats)
    return dict(samples)


def _round(subject, square, wide, i: int, samples: dict, progress, repeats: int) -> None:
    """One repeat of every workload, appending to samples."""
    tag = f"[{i + 1}/{repeats}]"
    img = variant(square, i)
    first = [Turn("user", QUESTION, [img])]
    a = _timed(subject, first, NEW_TOKENS, 1, samples, "1tile")
    progress(f"{tag} 1 tile: TTFT {a.ttft_s:.2f} s ({a.prompt_tokens} prompt tokens), {a.decode_tok_s:.1f} tok/s")
    b = _timed(subject, first + [Turn("assistant", a.text), Turn("user", FOLLOW_UP)], NEW_TOKENS, 1, samples,
               "turn2")
    progress(f"{tag} second turn: TTFT {b.ttft_s:.2f} s ({b.cached_tokens} of {b.prompt_tokens} tokens cached)")
    # A prepared image: sent ahead (POST /api/v1/images -> Engine.prepare) while the user types, its
    # embeddings and `<|im_start|>user\n<img>...</img>\n` KV prefix made in the background; the first question
    # on it is timed. A new variant, so nothing earlier is reused.
    p = variant(square, 1_000 + i)
    subject.prepare(p, 1)
    c = _timed(subject, [Turn("user", NEW_QUESTION, [p])], PREPARED_NEW_TOKENS, 1, samples, "prepared_1tile")
    progress(f"{tag} prepared image, 1 tile: TTFT {c.ttft_s:.2f} s ({c.cached_tokens} cached)")
    w = variant(wide, i)
    d = _timed(subject, [Turn("user", QUESTION_WIDE, [w])], NEW_TOKENS, 2, samples, "3tile")
    progress(f"{tag} 3 tiles: TTFT {d.ttft_s:.2f} s ({d.prompt_tokens} prompt tokens)")
    pw = variant(wide, 1_000 + i)
    subject.prepare(pw, 2)
    e = _timed(subject, [Turn("user", NEW_QUESTION, [pw])], PREPARED_NEW_TOKENS, 2, samples, "prepared_3tile")
    progress(f"{tag} prepared image, 3 tiles: TTFT {e.ttft_s:.2f} s ({e.cached_tokens} cached)")
    f = _timed(subject, [Turn("user", long_prompt(i))], NEW_TOKENS, 1, samples, "decode")
    progress(f"{tag} decode after a {f.prompt_tokens}-token prompt: {f.decode_tok_s:.1f} tok/s")


def _timed(subject, turns, new_tokens: int, max_tiles: int, samples: dict, name: str):
    """Run one request and record its figures under name."""
    r = subject.chat(turns, new_tokens, max_tiles)
    samples[f"ttft_{name}_s"].append(r.ttft_s)
    samples[f"decode_tok_s_{name}"].append(r.decode_tok_s)
    samples[f"prompt_tokens_{name}"].append(r.prompt_tokens)
    samples[f"cached_tokens_{name}"].append(r.cached_tokens)
    samples[f"vision_s_{name}"].append(r.vision_s)
    samples[f"completion_tokens_{name}"].append(r.completion_tokens)
    return r
