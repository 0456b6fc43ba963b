"""Random-weight InternVL checkpoints built locally: a tiny one for tests and an exact-size one for benchmarks.

Both use the real architecture (InternViT vision tower, pixel shuffle, MLP projector, Qwen3 text model)
and a byte-level BPE tokenizer trained here with `tokenizers`, carrying the real special tokens and the
ChatML chat template. No network is touched.
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                  "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<video>", "<think>", "</think>"]
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}

# ChatML, as in transformers' InternVL conversion: each image becomes <IMG_CONTEXT> on its own line,
# which the processor expands into <img><IMG_CONTEXT>*256*tiles</img>.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# name -> (vision kwargs, text kwargs, vocabulary size of the trained tokenizer, dtype of the weights on disk)
SIZES = {
    "tiny-random": (
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=128, max_position_embeddings=8192),
        1024,
        "float32",  # the parity tests compare the export with these weights as they are
    ),
    # The exact InternVL3.5-1B configuration (model-facts.md): same compute and, in bf16 like the published
    # checkpoint, the same bytes to read and convert as the real weights.
    "random-1b": (
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
        dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
             intermediate_size=3072, max_position_embeddings=40960, rope_theta=1_000_000.0),
        151936,
        "bfloat16",
    ),
}

_WORDS = ("a the cat dog car red blue green image photo picture shows sitting on near left right top bottom "
          "of in with and is are there two one three person man woman tree sky road house table cup describe "
          "what where box region object color small large white black yellow street window door grass water "
          "please provide bounding coordinate this sentence describes detect label all objects mark positions "
          "following question answer detailed short caption").split()


def is_builtin(model_name: str) -> bool:
    """True for MODEL_NAME values such as 'builtin:tiny-random'."""
    return model_name.startswith(BUILTIN_PREFIX)


def _corpus(n_lines: int = 4000) -> list[str]:
    rng = random.Random(0)
    chars = "".join(chr(c) for c in itertools.chain(range(32, 127), range(0x410, 0x450)))  # ASCII + Cyrillic
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n_lines)]
    lines += ["".join(rng.choice(chars) for _ in range(40)) for _ in range(200)]
    lines += [f"[[{rng.randint(0, 1000)}, {rng.randint(0, 1000)}, {rng.randint(0, 1000)}, {rng.randint(0, 1000)}]]"
              for _ in range(500)]
    return lines


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer with the InternVL special tokens; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 4096), special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens=IMAGE_TOKENS, model_max_length=8192)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[3:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(size: str, tokenizer, seed: int = 0):
    """A random InternVLForConditionalGeneration of the named size, untied lm_head, in the size's dtype."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen3Config

    vision_kw, text_kw, vocab, dtype = SIZES[size]
    vocab = max(vocab, len(tokenizer))
    vision = InternVLVisionConfig(**vision_kw, attention_bias=True, image_size=[448, 448], patch_size=[14, 14],
                                  layer_norm_eps=1e-6, use_mean_pooling=False)
    text = Qwen3Config(**text_kw, vocab_size=vocab, rms_norm_eps=1e-6, tie_word_embeddings=False,
                       eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config = InternVLConfig(vision_config=vision, text_config=text, downsample_ratio=0.5, tie_word_embeddings=False,
                            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=256)
    config.architectures = ["InternVLForConditionalGeneration"]
    torch.manual_seed(seed)
    # Built in its own dtype: the full-size model never exists in fp32 (4.2 GB) on the way to disk.
    model = InternVLForConditionalGeneration._from_config(config, dtype=getattr(torch, dtype)).eval()
    if size == "tiny-random":
        _widen_init(model)
    return model


def _widen_init(model) -> None:
    """Scale up a tiny model's init so its logits depend on the image and the text (not one repeated token)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and ("projector" in name or "embed_tokens" in name or "lm_head" in name):
                p.normal_(0.0, 0.5)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.2)


def write_builtin(model_name: str, out_dir: Path) -> Path:
    """Build the named builtin checkpoint into out_dir in the native transformers layout; returns out_dir."""
    size = model_name[len(BUILTIN_PREFIX):]
    if size not in SIZES:
        from export.errors import ExportError
        raise ExportError(f"unknown builtin model {model_name!r}; choose one of: "
                          + ", ".join(BUILTIN_PREFIX + s for s in SIZES))
    tokenizer = build_tokenizer(SIZES[size][2])
    model = build_model(size, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, out_dir)
    write_image_processor(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def save_model(model, out_dir: Path) -> None:
    """config.json, generation_config.json and model.safetensors, the weights written one tensor at a time
    (save_pretrained assembles the whole file in memory first: a second copy of the model)."""
    from export.original import write_safetensors

    model.config.dtype = model.dtype
    model.config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    plan = [(name, t.dtype, list(t.shape), lambda t=t: t) for name, t in model.state_dict().items()]
    write_safetensors(out_dir / "model.safetensors", plan)


def write_image_processor(out_dir: Path, max_patches: int = 12) -> None:
    """Save the reference image processor (transformers' GotOcr2, PIL backend) configuration."""
    from transformers import GotOcr2ImageProcessor

    GotOcr2ImageProcessor(
        do_resize=True, size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1,
        max_patches=max_patches, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    ).save_pretrained(out_dir)
