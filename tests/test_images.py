"""runtime.images: loading uploads safely, and preprocessing bit-identical to transformers' InternVL processor."""
from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import InputTooLarge, InvalidImage, InvalidInput, UnsupportedMediaType
from runtime.images import (IMAGENET_MEAN, IMAGENET_STD, TILE_SIZE, ImageLimits, choose_grid, image_hash,
                            load_image, num_tiles, preprocess, tile_image, to_pixel_values)

sys.path.insert(0, str(Path(__file__).parent))
import badimages  # noqa: E402  (a helper beside this file, not a package)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- parity with transformers


@pytest.fixture(scope="module")
def reference():
    """transformers' InternVL image processor, PIL backend, configured as InternVL3.5 uses it."""
    got_ocr2 = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")

    def run(img: Image.Image, max_tiles: int) -> np.ndarray:
        proc = got_ocr2.GotOcr2ImageProcessorPil(
            crop_to_patches=True, min_patches=1, max_patches=max_tiles, size={"height": 448, "width": 448},
            resample=Image.Resampling.BICUBIC, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
        return proc(images=img, return_tensors="np")["pixel_values"]

    return run


def _noise(width: int, height: int) -> Image.Image:
    """Random RGB pixels: every resampling difference shows."""
    rng = np.random.default_rng(width * 7919 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _photo(name: str) -> Image.Image:
    """A real photograph shipped with scikit-image (offline)."""
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(getattr(data, name)())


PICTURES = {
    "448x448": lambda: _noise(448, 448),
    "800x400": lambda: _noise(800, 400),
    "400x800": lambda: _noise(400, 800),
    "1000x300": lambda: _noise(1000, 300),
    "10x10": lambda: _noise(10, 10),
    "1x1": lambda: _noise(1, 1),
    "2000x1500": lambda: _noise(2000, 1500),
    "chelsea": lambda: _photo("chelsea"),
    "astronaut": lambda: _photo("astronaut"),
    "coffee": lambda: _photo("coffee"),
    "rocket": lambda: _photo("rocket"),
}


@pytest.mark.filterwarnings("ignore")  # transformers warns about ambiguous channels on 1-pixel images
@pytest.mark.parametrize("max_tiles", [1, 2, 6, 12])
@pytest.mark.parametrize("picture", PICTURES)
def test_preprocess_matches_transformers(reference, picture, max_tiles):
    img = PICTURES[picture]()
    expected = reference(img, max_tiles)
    ours = preprocess(img, max_tiles)
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape == (num_tiles(img.width, img.height, max_tiles), 3, 448, 448)
    assert np.abs(ours - expected).max() <= 1e-6


def _sizes() -> list[tuple[int, int]]:
    """Widths and heights on a log scale, plus exact multiples of 448 where grids tie."""
    sides = sorted({1, 2, 3, 10, 100, 223, 224, 300, 447, 448, 449, 600, 896, 1000, 1344, 1792, 2240,
                    2688, 3000, 4480, 5376, 10000})
    return [(w, h) for w in sides for h in sides]


def test_choose_grid_matches_transformers_including_ties():
    got_ocr2 = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")
    for width, height in _sizes():
        for max_tiles in range(1, 13):
            expected = got_ocr2.get_optimal_tiled_canvas((height, width), (448, 448), 1, max_tiles)
            assert choose_grid(width, height, max_tiles) == expected, (width, height, max_tiles)


def test_num_tiles_matches_transformers():
    got_ocr2 = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")
    proc = got_ocr2.GotOcr2ImageProcessorPil(crop_to_patches=True, size={"height": 448, "width": 448})
    for width, height in _sizes():
        for max_tiles in (2, 6, 12):
            expected = proc.get_number_of_image_patches(height, width, {"max_patches": max_tiles})
            assert num_tiles(width, height, max_tiles) == expected, (width, height, max_tiles)


@pytest.mark.parametrize("size, max_tiles, grid", [
    ((448, 448), 12, (1, 1)), ((896, 448), 12, (2, 1)), ((3000, 1500), 12, (4, 2)), ((100, 1000), 6, (1, 6)),
])
def test_tile_image_cuts_the_grid_then_adds_a_thumbnail(size, max_tiles, grid):
    img = _noise(*size)
    tiles = tile_image(img, max_tiles)
    cols, rows = choose_grid(*size, max_tiles)
    assert (cols, rows) == grid
    assert len(tiles) == cols * rows + (cols * rows > 1)
    assert all(t.size == (TILE_SIZE, TILE_SIZE) and t.mode == "RGB" for t in tiles)
    if len(tiles) > 1:  # the thumbnail is the whole picture, last
        thumb = img.resize((448, 448), Image.Resampling.BICUBIC)
        assert np.array_equal(np.asarray(tiles[-1]), np.asarray(thumb))


def test_to_pixel_values_shape_and_range():
    values = to_pixel_values([Image.new("RGB", (448, 448), (0, 0, 0)), Image.new("RGB", (448, 448), (255,) * 3)])
    assert values.shape == (2, 3, 448, 448) and values.dtype == np.float32
    np.testing.assert_allclose(values[0, :, 0, 0], -np.array(IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(values[1, :, 0, 0], (1 - np.array(IMAGENET_MEAN)) / IMAGENET_STD, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_max_tiles_must_be_positive_whole_number(bad):
    with pytest.raises(InvalidInput):
        choose_grid(100, 100, bad)


# ---------------------------------------------------------------- loading uploads

REFUSED = {
    "empty.png": InvalidImage,
    "truncated.jpg": InvalidImage,
    "truncated.png": InvalidImage,
    "header_only.png": InvalidImage,
    "corrupt_header.jpg": InvalidImage,
    "zero_width.png": InvalidImage,
    "gif_polyglot.gif": InvalidImage,  # claims to be a GIF, is a script: not decodable
    "bomb.png": InputTooLarge,
    "too_many_pixels.png": InputTooLarge,
    "too_long.png": InputTooLarge,
    "drawing.svg": UnsupportedMediaType,
    "drawing_xml.png": UnsupportedMediaType,
    "page.png": UnsupportedMediaType,
    "script.png": UnsupportedMediaType,
    "notes.jpg": UnsupportedMediaType,
    "doc.png": UnsupportedMediaType,
    "archive.png": UnsupportedMediaType,
    "postscript.png": UnsupportedMediaType,  # EPS would run Ghostscript: never handed to Pillow
    "photo.heic": UnsupportedMediaType,
    "random.bin": UnsupportedMediaType,
}

# accepted: name -> expected size after loading (always RGB)
ACCEPTED = {
    "one_pixel.png": (1, 1),
    "jpeg_trailing_html.jpg": (64, 48),  # trailing bytes are ignored: only decoded pixels are ever used
    "gif_trailing_script.gif": (64, 48),
    "animated.gif": (32, 32),
    "cmyk.jpg": (64, 48),
    "grey16.png": (64, 16),
    "rgba.png": (32, 16),
    "grey_alpha.png": (64, 48),
    "palette.png": (64, 48),
    "bilevel.bmp": (64, 48),
    "float.tif": (64, 8),
    "photo.webp": (64, 48),
    "exif_rotated.jpg": (20, 40),  # stored 40x20, EXIF orientation 6: shown upright
}


@pytest.fixture(scope="module")
def corpus():
    return badimages.corpus()


def test_corpus_is_fully_covered(corpus):
    assert set(corpus) == set(REFUSED) | set(ACCEPTED)


@pytest.mark.parametrize("name", REFUSED)
def test_bad_uploads_are_refused_with_a_message(corpus, name):
    expected = REFUSED[name]
    with pytest.raises(expected) as info:
        load_image(corpus[name])
    err = info.value
    assert type(err) is expected and err.field == "image"
    assert 400 <= err.status < 500 and err.message.endswith(".") and len(err.message) < 200


@pytest.mark.parametrize("name", ACCEPTED)
def test_awkward_images_load_as_rgb(corpus, name):
    img = load_image(corpus[name])
    assert img.mode == "RGB" and img.size == ACCEPTED[name]
    assert type(img) is Image.Image and img.info == {}  # detached from the file and its metadata


def test_not_an_image_messages_say_what_it_is(corpus):
    with pytest.raises(UnsupportedMediaType, match="This file is not an image .*SVG"):
        load_image(corpus["drawing.svg"])
    with pytest.raises(UnsupportedMediaType, match="HEIC"):
        load_image(corpus["photo.heic"])


def test_animated_gif_gives_its_first_frame(corpus):
    assert load_image(corpus["animated.gif"]).getpixel((5, 5)) == (255, 0, 0)


def test_exif_orientation_6_turns_clockwise():
    stored = badimages.gradient(40, 20)
    img = load_image(badimages.exif_rotated_jpeg(6))
    upright = np.asarray(stored.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    assert np.abs(np.asarray(img, dtype=np.int16) - upright).mean() < 4  # JPEG noise only


def test_sixteen_bit_grey_is_scaled_not_clipped(corpus):
    row = np.asarray(load_image(corpus["grey16.png"]))[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and 100 < row[32] < 160  # a ramp, not a white sheet


def test_alpha_is_dropped_like_transformers(corpus):
    img = load_image(corpus["rgba.png"])
    assert img.getpixel((2, 2)) == (255, 0, 0) and img.getpixel((30, 2)) == (0, 255, 0)


def test_byte_limit_message_is_plain_english():
    data = b"\x89PNG\r\n\x1a\n" + bytes(21 * 2**20)
    with pytest.raises(InputTooLarge, match="The image is larger than 20 MB.") as info:
        load_image(data)
    assert info.value.status == 413


def test_custom_limits():
    png = badimages.encode(badimages.gradient(64, 48), "PNG")
    with pytest.raises(InputTooLarge):
        load_image(png, ImageLimits(max_bytes=100))
    with pytest.raises(InputTooLarge):
        load_image(png, ImageLimits(max_pixels=1000))
    with pytest.raises(InvalidImage, match="too small"):
        load_image(png, ImageLimits(min_side=50))
    assert load_image(png, ImageLimits(min_side=48)).size == (64, 48)


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee", "rocket"])
def test_real_photos_round_trip(name):
    photo = _photo(name)
    assert np.array_equal(np.asarray(load_image(badimages.encode(photo, "PNG"))), np.asarray(photo))
    assert load_image(badimages.encode(photo, "JPEG", quality=85)).size == photo.size


def test_image_hash_depends_on_pixels_mode_and_size():
    a = badimages.gradient(32, 16)
    b = a.copy()
    b.putpixel((3, 3), (1, 2, 3))
    assert image_hash(a) == image_hash(a.copy()) and len(image_hash(a)) == 64
    assert len({image_hash(a), image_hash(b), image_hash(a.convert("RGBA")), image_hash(a.resize((16, 32)))}) == 4
    png = badimages.encode(a, "PNG")
    assert image_hash(load_image(png)) == image_hash(load_image(png)) == image_hash(a)


def test_loading_leaves_no_python_memory_behind(corpus):
    jpeg = badimages.encode(badimages.gradient(256, 256), "JPEG")
    load_image(jpeg)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(100):
        load_image(jpeg)
        with pytest.raises(InvalidImage):
            load_image(corpus["truncated.png"])
    growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert growth < 64 * 1024


def test_serving_path_does_not_import_torch_or_transformers():
    code = ("import sys, runtime.images, runtime.grounding; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
