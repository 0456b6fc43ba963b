"""The text side of the model: token ids for prompts, streaming detokenisation, and the special tokens."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from runtime.errors import ArtifactsMissing


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the engine needs (read from the exported tokenizer, never hard-coded)."""

    img_start: int
    img_end: int
    img_context: int
    eos: tuple[int, ...]  # any of these ends a generation


class TextTokenizer:
    """A `tokenizers` tokenizer loaded from the export folder's tokenizer.json."""

    def __init__(self, folder: Path):
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ArtifactsMissing(f"{path} is missing: re-run the export")
        self.tok = Tokenizer.from_file(str(path))
        self.special = self._special_ids(folder)
        self.added = frozenset(self.tok.get_added_tokens_decoder())  # ids of every added token, special or not
        # the pipeline behind the added vocabulary, for encode_text
        self._normalizer, self._pre_tokenizer, self._model = (self.tok.normalizer, self.tok.pre_tokenizer,
                                                              self.tok.model)

    def _special_ids(self, folder: Path) -> SpecialIds:
        ids = {t: self.tok.token_to_id(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>", "<|im_end|>", "<|endoftext|>")}
        if None in (ids["<img>"], ids["</img>"], ids["<IMG_CONTEXT>"], ids["<|im_end|>"]):
            raise ArtifactsMissing("the exported tokenizer lacks the InternVL special tokens")
        eos = {ids["<|im_end|>"]}
        gen = folder / "generation_config.json"
        if gen.is_file():
            value = json.loads(gen.read_text()).get("eos_token_id")
            eos.update(value if isinstance(value, list) else [value] if value is not None else [])
        return SpecialIds(ids["<img>"], ids["</img>"], ids["<IMG_CONTEXT>"], tuple(sorted(eos)))

    def encode(self, text: str) -> list[int]:
        """Token ids of the runtime's own markup: added tokens (`<|im_start|>`, `<img>`, `<ref>`...) recognised."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of user text: every character stays text, as if the tokenizer had no added tokens.

        Added tokens, special or not, are matched by the added vocabulary in front of the pipeline; running
        the normaliser, pre-tokeniser and model directly skips it, so a typed `<|im_start|>` or `<IMG_CONTEXT>`
        becomes ordinary tokens. Text without added-token strings gets exactly the ids `encode` gives it.
        """
        if self._normalizer is not None:
            text = self._normalizer.normalize_str(text)
        pieces = self._pre_tokenizer.pre_tokenize_str(text) if self._pre_tokenizer is not None else [(text, None)]
        return [token.id for piece, _ in pieces for token in self._model.tokenize(piece)]

    def decode(self, ids: list[int]) -> str:
        """Text of ids, keeping special tokens such as <ref> and <box> (the grounding tags)."""
        return self.tok.decode(ids, skip_special_tokens=False)


class StreamDecoder:
    """Turns a growing list of token ids into text deltas, holding back incomplete UTF-8 sequences."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        full = self.tokenizer.decode(self.ids)
        if full.endswith("\ufffd"):
            return ""
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text = full if full.startswith(self.text) else self.text
        return delta
