"""Token selection and the decode loop, shared by every backend (pure numpy, no model knowledge)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from runtime.tokenizer import StreamDecoder
from runtime.types import CancelToken, GenerationOptions


class Sampler:
    """Greedy, or temperature / top-p sampling, with an optional repetition penalty."""

    def __init__(self, options: GenerationOptions):
        self.options = options
        self.rng = np.random.default_rng(options.seed)

    def __call__(self, logits: np.ndarray, seen: np.ndarray) -> int:
        """Pick the next token id from logits (vocab,); `seen` are the ids penalised for repetition."""
        opts = self.options
        if opts.repetition_penalty != 1.0 and seen.size:
            logits = logits.copy()
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / opts.repetition_penalty, vals * opts.repetition_penalty)
        if opts.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / opts.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        if opts.top_p < 1.0:
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < opts.top_p
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))


@dataclass
class DecodeResult:
    """Generated ids (the fed ones and the last), text, why it stopped, and when the first token came."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    first_token_at: float = 0.0


def decode(step: Callable[[int], np.ndarray], first_logits: np.ndarray, prompt_ids: np.ndarray,
           options: GenerationOptions, eos: tuple[int, ...], detok: StreamDecoder,
           on_text: Callable[[str], None] | None, cancel: CancelToken | None) -> DecodeResult:
    """Generate up to max_new_tokens; `step(token)` feeds one token and returns the next logits.

    Stops at an EOS id (not fed, not in the text), a stop string (text cut before it), the token budget,
    or cancellation (checked before every token, so a cancel frees the engine within one token).
    """
    sampler, out, logits = Sampler(options), DecodeResult(), first_logits
    seen = list(np.unique(prompt_ids)) if options.repetition_penalty != 1.0 else []
    emitted = 0  # characters of detok.text already given to on_text
    holdback = max((len(s) for s in options.stop), default=1) - 1
    for i in range(options.max_new_tokens):
        if cancel is not None and cancel.cancelled:
            out.finish_reason = "cancelled"
            break
        token = sampler(logits, np.asarray(seen, dtype=np.int64))
        if i == 0:
            out.first_token_at = time.perf_counter()
        if token in eos and not options.ignore_eos:
            out.finish_reason = "stop"
            break
        out.ids.append(token)
        seen.append(token)
        detok.push(token)
        if _find_stop(detok.text, options.stop) is not None:
            out.finish_reason = "stop"
            break
        safe = len(detok.text) - holdback if options.stop else len(detok.text)
        if on_text and safe > emitted:
            on_text(detok.text[emitted:safe])
            emitted = safe
        if i + 1 < options.max_new_tokens:
            logits = step(token)
    cut = _find_stop(detok.text, options.stop)
    out.text = detok.text if cut is None else detok.text[:cut]
    if on_text and len(out.text) > emitted:
        on_text(out.text[emitted:])
    return out


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index of the earliest stop string in text, or None."""
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
