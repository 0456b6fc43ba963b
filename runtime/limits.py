"""The model's fixed facts that every stage checks against, each written once here."""
from __future__ import annotations

TILE_SIZE = 448  # side of one ViT tile, in pixels
MAX_TILES = 12  # the largest tile budget per image the model was trained with (InternVL's max_dynamic_patch)
IMAGE_SEQ_LEN = 256  # LLM tokens per tile after pixel shuffle


def check_tiles(value: int) -> bool:
    """True for a tile budget the model accepts (1..MAX_TILES)."""
    return 1 <= value <= MAX_TILES
