"""Image loading and InternVL preprocessing: bytes -> RGB PIL image -> (tiles, 3, 448, 448) float32.

Serving-path code: numpy and Pillow only (no torch, no transformers). `preprocess` matches transformers'
InternVL image processor with the PIL backend (`GotOcr2ImageProcessorPil`, `crop_to_patches=True`,
min 1 / max N patches, 448x448 tiles, bicubic, rescale 1/255, ImageNet mean/std) bit for bit.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from runtime.errors import InputTooLarge, InvalidImage, InvalidInput, RuntimeFailure, UnsupportedMediaType
from runtime.limits import TILE_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESCALE = 1 / 255  # transformers' default rescale_factor

# Pillow plugins we let decode uploads. Anything else (EPS, which would run Ghostscript, TGA, whose
# loose signature check accepts random text, ...) is refused before Pillow looks at it.
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
_SUPPORTED_WORDS = "JPEG, PNG, GIF, WebP, BMP or TIFF"


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded image may weigh and measure."""

    max_bytes: int = 20 * 2**20  # size of the uploaded file
    max_pixels: int = 50_000_000  # width x height, checked from the header before decoding
    min_side: int = 1  # shortest side accepted, in pixels
    max_side: int = 20_000  # longest side; 12 tiles hold at most 5376 px, so more is wasted decoding


# ---------------------------------------------------------------- loading


def load_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode uploaded bytes into an RGB image (first frame, EXIF-rotated) or raise a domain error."""
    if not data:
        raise InvalidImage("The file is empty.", field="image")
    if len(data) > limits.max_bytes:
        raise InputTooLarge(f"The image is larger than {_megabytes(limits.max_bytes)} MB.", field="image")
    kind = _sniff(bytes(data[:1024]))
    if kind not in _FORMATS:
        raise UnsupportedMediaType(_not_an_image_message(kind), field="image")
    try:
        with Image.open(io.BytesIO(data), formats=_available_formats()) as im:
            _check_dimensions(im.size, limits)
            im.load()  # decodes the first frame only
            return _to_rgb(_upright(im))
    except RuntimeFailure:
        raise
    except (Image.DecompressionBombError, MemoryError) as e:
        raise InputTooLarge("The image has too many pixels.", field="image") from e
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error...)
        raise InvalidImage(f"The {kind} image is damaged or incomplete and cannot be read.",
                           field="image") from e


def image_hash(img: Image.Image) -> str:
    """Sha256 hex digest of an image's mode, size and pixels (a cache key for its vision features)."""
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _megabytes(n: int) -> str:
    """20971520 -> '20'; 1500000 -> '1.43'."""
    return f"{n / 2**20:.3g}"


def _available_formats() -> tuple[str, ...]:
    """The allowed formats this Pillow build can decode (AVIF needs a recent Pillow)."""
    Image.init()
    return tuple(f for f in _FORMATS if f in Image.OPEN)


def _sniff(head: bytes) -> str | None:
    """Name the file type from its first bytes: a Pillow format name, a word for a non-image, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "AVIF" if brand in (b"avif", b"avis") and "AVIF" in _available_formats() else "HEIC/AVIF"
    return _sniff_other(head)


def _sniff_other(head: bytes) -> str | None:
    """Recognise common non-image uploads, to say what they are."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"%pdf"):
        return "a PDF document"
    if b"<svg" in text:
        return "an SVG drawing"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return "a web page (HTML)"
    if text.startswith(b"pk\x03\x04"):
        return "a ZIP archive or office document"
    return None


def _not_an_image_message(kind: str | None) -> str:
    """Plain-English refusal for a file that is not a supported image."""
    if kind == "HEIC/AVIF":
        return f"HEIC/HEIF images are not supported. Please convert it to {_SUPPORTED_WORDS}."
    what = f" (it looks like {kind})" if kind else ""
    return f"This file is not an image{what}. Please upload a {_SUPPORTED_WORDS} picture."


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    """Refuse zero-sized, too small, too long or too many pixels, from the header alone."""
    width, height = size
    if width <= 0 or height <= 0 or min(width, height) < limits.min_side:
        raise InvalidImage(f"The image is too small ({width}x{height} pixels).", field="image")
    if max(width, height) > limits.max_side:
        raise InputTooLarge(f"The image is too large ({width}x{height} pixels); "
                            f"the longest side may be at most {limits.max_side} pixels.", field="image")
    if width * height > limits.max_pixels:
        raise InputTooLarge(f"The image has too many pixels ({width}x{height}); "
                            f"the limit is {limits.max_pixels / 1e6:g} megapixels.", field="image")


def _upright(im: Image.Image) -> Image.Image:
    """A copy turned as its EXIF orientation says; unrotated if the EXIF block is unreadable."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block should not reject a decodable picture
        return im.copy()


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha is dropped, as transformers' convert_to_rgb does.

    High-bit-depth grey ('I;16', 'I', 'F') is scaled into 0..255 first: Pillow's own convert()
    clips it, which turns most 16-bit pictures white.
    """
    if im.mode.startswith("I") or im.mode == "F":
        im = Image.fromarray(_grey_to_uint8(np.asarray(im), im.mode))  # mode L
    out = im if im.mode == "RGB" else im.convert("RGB")
    out.info = {}  # drop EXIF/ICC bytes carried over from the file
    return out


def _grey_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale one-channel high-depth pixels into uint8: 'I;16' always as 16-bit, 'I' and 'F' by their range."""
    floats = a.dtype.kind == "f"
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(a.max()) if a.size else 0.0
    if mode.startswith("I;16") or top > 255.0:
        a = a * (255.0 / 65535.0)
    elif floats and top <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- tiling (transformers parity)


def choose_grid(width: int, height: int, max_tiles: int) -> tuple[int, int]:
    """Tile grid (cols, rows) whose aspect ratio is closest to the image's, as transformers picks it."""
    _check_max_tiles(max_tiles)
    # candidate grids in transformers' order: by tile count, then by cols, then by rows
    grids = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                    if c * r <= max_tiles), key=lambda g: g[0] * g[1])
    aspect, area = width / height, width * height
    best_diff, best = float("inf"), (1, 1)
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * TILE_SIZE * TILE_SIZE * cols * rows:
            best = (cols, rows)  # a tie: prefer more tiles while the image still fills them
    return best


def num_tiles(width: int, height: int, max_tiles: int) -> int:
    """How many 448x448 tiles (thumbnail included) an image of this size costs, without resizing it."""
    cols, rows = choose_grid(width, height, max_tiles)
    return cols * rows + (1 if cols * rows > 1 else 0)


def tile_image(img: Image.Image, max_tiles: int) -> list[Image.Image]:
    """Cut an RGB image into grid tiles (row-major) plus a whole-image thumbnail when there are several."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    cols, rows = choose_grid(img.width, img.height, max_tiles)
    canvas = img.resize((cols * TILE_SIZE, rows * TILE_SIZE), resample=Image.Resampling.BICUBIC)
    tiles = [canvas.crop((c * TILE_SIZE, r * TILE_SIZE, (c + 1) * TILE_SIZE, (r + 1) * TILE_SIZE))
             for r in range(rows) for c in range(cols)]
    if len(tiles) > 1:
        tiles.append(img.resize((TILE_SIZE, TILE_SIZE), resample=Image.Resampling.BICUBIC))
    return tiles


def to_pixel_values(tiles: list[Image.Image]) -> np.ndarray:
    """RGB tiles -> normalised float32 array (tiles, 3, 448, 448), as transformers rescales and normalises."""
    pixels = np.stack([np.asarray(t.convert("RGB") if t.mode != "RGB" else t) for t in tiles])  # (n, H, W, 3)
    table = _normalise_table()  # (3, 256)
    out = np.empty((pixels.shape[0], 3, pixels.shape[1], pixels.shape[2]), dtype=np.float32)
    for c in range(3):
        out[:, c] = table[c][pixels[..., c]]
    return out


def preprocess(img: Image.Image, max_tiles: int) -> np.ndarray:
    """RGB image -> pixel values (tiles, 3, 448, 448) float32 for the vision encoder."""
    return to_pixel_values(tile_image(img, max_tiles))


def _normalise_table() -> np.ndarray:
    """(3, 256) float32 lookup: the value transformers computes for each uint8 level of each channel.

    transformers does float64 * (1/255) -> float32, then (x - mean) / std in float32; doing those exact
    operations once per level gives the same bits as doing them per pixel.
    """
    levels = (np.arange(256, dtype=np.uint8).astype(np.float64) * RESCALE).astype(np.float32)
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None]
    return (levels[None, :] - mean) / std


def _check_max_tiles(max_tiles: int) -> None:
    """Tile budgets start at one."""
    if not isinstance(max_tiles, (int, np.integer)) or max_tiles < 1:
        raise InvalidInput(f"max_tiles must be a whole number of at least 1, got {max_tiles!r}.",
                           field="max_tiles")
