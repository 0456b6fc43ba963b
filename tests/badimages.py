"""A corpus of awkward and hostile uploads, made in memory (no files checked in).

`corpus()` maps a case name to its bytes; `write_corpus(folder)` saves them as files for manual checks
(e.g. `python tests/badimages.py /tmp/bad` then upload them through the web page).
Some files carry a misleading extension in their name on purpose: loaders must look at content only.
"""
from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    """Save an image to bytes in the given Pillow format."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth RGB test picture, so that JPEG round trips stay recognisable."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(rgb)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (1-bit grey) over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def exif_rotated_jpeg(orientation: int = 6, size: tuple[int, int] = (40, 20)) -> bytes:
    """A JPEG stored landscape whose EXIF says 'rotate 90 degrees clockwise to view' (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(gradient(*size), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    """Two frames: pure red, then pure blue."""
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def grey16_png() -> bytes:
    """A 16-bit greyscale PNG ('I;16') with a ramp across 0..65535."""
    ramp = np.linspace(0, 65535, 64, dtype=np.float64).astype(np.uint16)
    return encode(Image.fromarray(np.tile(ramp, (16, 1))), "PNG")


def rgba_png() -> bytes:
    """An RGBA PNG: left half opaque red, right half fully transparent green."""
    a = np.zeros((16, 32, 4), dtype=np.uint8)
    a[:, :16] = (255, 0, 0, 255)
    a[:, 16:] = (0, 255, 0, 0)
    return encode(Image.fromarray(a), "PNG")


def float_tiff() -> bytes:
    """A 32-bit float ('F') TIFF with values in 0..1."""
    return encode(Image.fromarray(np.linspace(0, 1, 64 * 8, dtype=np.float32).reshape(8, 64)), "TIFF")


def corpus() -> dict[str, bytes]:
    """Every case by name (the name's extension is what a user might have called the file)."""
    jpeg, png = encode(gradient(), "JPEG", quality=90), encode(gradient(), "PNG")
    gif = encode(gradient().convert("P"), "GIF")
    return {
        "empty.png": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "header_only.png": png[:8],
        "corrupt_header.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "bomb.png": png_declaring(30000, 30000),
        "too_many_pixels.png": png_declaring(8000, 8000),
        "too_long.png": png_declaring(25000, 10),
        "zero_width.png": png_declaring(0, 10),
        "one_pixel.png": encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"),
        "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        "drawing_xml.png": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
        "page.png": b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
        "script.png": b"#!/bin/sh\necho hello\n",
        "notes.jpg": b"just some text, not a picture\n",
        "doc.png": b"%PDF-1.7\n1 0 obj << >> endobj\n",
        "archive.png": b"PK\x03\x04" + bytes(40),
        "postscript.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        "photo.heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        "random.bin": np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes(),
        "gif_polyglot.gif": b"GIF89a/*\x00\x00*/=1;alert(document.cookie);//",
        "jpeg_trailing_html.jpg": jpeg + b"<html><script>alert(1)</script></html>",
        "gif_trailing_script.gif": gif + b"<script>alert(1)</script>",
        "animated.gif": animated_gif(),
        "cmyk.jpg": encode(gradient().convert("CMYK"), "JPEG"),
        "grey16.png": grey16_png(),
        "rgba.png": rgba_png(),
        "grey_alpha.png": encode(gradient().convert("LA"), "PNG"),
        "palette.png": encode(gradient().convert("P"), "PNG"),
        "bilevel.bmp": encode(gradient().convert("1"), "BMP"),
        "float.tif": float_tiff(),
        "photo.webp": encode(gradient(), "WEBP"),
        "exif_rotated.jpg": exif_rotated_jpeg(),
    }


def write_corpus(folder: str | Path) -> list[Path]:
    """Write every case into `folder` (created if needed); returns the paths written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in corpus().items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths


if __name__ == "__main__":
    for p in write_corpus(sys.argv[1] if len(sys.argv) > 1 else "tests/data/bad_images"):
        print(p)
