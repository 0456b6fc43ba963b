"""Fuzzing image decoding: on any bytes, load_image returns an RGB image within the limits or raises one of
the runtime's own errors (never OSError, SyntaxError, struct.error, ValueError, MemoryError...).

The default run tries a few hundred inputs; `pytest -m slow tests/test_fuzz_images.py` tries thousands.
(The grounding parser has its own fuzz test in test_grounding.py.)
"""
from __future__ import annotations

import pytest
from badimages import encode, gradient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import RuntimeFailure
from runtime.images import ImageLimits, load_image

LIMITS = ImageLimits(max_bytes=2**20, max_pixels=4_000_000, max_side=4096)
FORMATS = [("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {}),
           ("TIFF", {"compression": "tiff_lzw"}), ("JPEG", {"progressive": True})]
SEEDS = [encode(gradient(24, 16).convert("P") if fmt == "GIF" else gradient(24, 16), fmt, **kw)
         for fmt, kw in FORMATS]


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 flips a byte, 1 inserts one, 2 deletes one, 3 cuts the tail."""
    out = bytearray(data)
    for kind, pos, value in edits:
        if not out:
            break
        i = pos % len(out)
        if kind == 0:
            out[i] ^= value or 1
        elif kind == 1:
            out.insert(i, value)
        elif kind == 2:
            del out[i]
        else:
            del out[i:]
    return bytes(out)


_EDIT = st.tuples(st.integers(0, 3), st.integers(0, 2**16), st.integers(0, 255))
MUTATED = st.builds(_mutate, st.sampled_from(SEEDS), st.lists(_EDIT, min_size=1, max_size=6))
HEADERED = st.builds(lambda seed, n, tail: seed[:n] + tail, st.sampled_from(SEEDS), st.integers(0, 64),
                     st.binary(max_size=512))  # a real signature and header start, then garbage


def _check(data: bytes) -> None:
    try:
        img = load_image(data, LIMITS)
    except RuntimeFailure as exc:
        assert exc.message and exc.field == "image" and 400 <= exc.status < 500, exc
        return
    assert img.mode == "RGB" and img.width * img.height <= LIMITS.max_pixels


FAST = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=20000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_an_image_or_a_domain_error(data):
    _check(data)


@FAST
@given(st.one_of(MUTATED, HEADERED))
def test_mutated_images_give_an_image_or_a_domain_error(data):
    _check(data)


@pytest.mark.slow
@LONG
@given(st.one_of(st.binary(max_size=8192), MUTATED, HEADERED))
def test_image_decoding_fuzz_long(data):
    _check(data)
