"""Images prepared before the question: start, status and cancel, and `image_id` in place of an upload.

The engine reads (encodes) a prepared image in the background; a later chat, describe or grounding request
that names its `image_id` gets the same image and tile budget, so the engine reuses that work (and waits
for it when it is not finished). The engine keeps the image's file, not its pixels: a request naming it decodes
it again, to the same pixels, in the image queue. An unknown, expired or cancelled image_id is a 404
`not_found` with param "image_id", like an unknown session_id.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from flask import url_for
from flask_babel import lazy_gettext as _l
from runtime.errors import InvalidInput, ModelNotReady
from runtime.limits import MAX_TILES
from runtime.prepare import ImageFile
from runtime.types import GenerationOptions
from webapp.errors import NotFound
from webapp.imagework import Picture, open_picture, read_picture
from webapp.inputs import Payload, read_int
from webapp.security import client_key
from webapp.service import options_from
from webapp.state import AppState
from webapp.store import valid_id


def unknown_image() -> NotFound:
    """The error for an image_id that does not exist (any more)."""
    return NotFound(_l("This prepared image does not exist or has expired. Please send the image again."),
                    field="image_id")


def _lookup(st: AppState, fn: Callable, image_id: str):
    """fn(image_id) on the engine, its "unknown image_id" error turned into our 404."""
    if not st.engine.ready:  # nothing can have been prepared before the model is loaded
        raise ModelNotReady(st.info().get("error") or "The model is still loading, please retry shortly.")
    if not valid_id(image_id):
        raise unknown_image()
    try:
        return fn(image_id)
    except InvalidInput as exc:
        if exc.field != "image_id":
            raise
        raise unknown_image() from None


def read_image_id(payload: Payload) -> str | None:
    """The request's image_id field, or None when absent or empty."""
    value = payload.get("image_id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidInput(_l("This field must be text."), field="image_id")
    return value.strip()


def read_file_or_prepared(payload: Payload, st: AppState) -> tuple[Picture | ImageFile | None, int | None]:
    """The uploaded image, decoded (no tile budget of its own), or the file of the prepared image named by
    image_id and its budget."""
    image_id = read_image_id(payload)
    if image_id is None:
        return read_picture(payload, st.settings, st.images), None
    sent = payload.get("image")
    if "image" in payload.files or (sent is not None and sent != ""):
        raise InvalidInput(_l("Send either an image or an image_id, not both."), field="image_id")
    return _lookup(st, st.engine.prepared_image, image_id)


def read_image_or_prepared(payload: Payload, st: AppState) -> tuple[Picture | None, int | None]:
    """The request's image, uploaded or prepared (decoded again from its file), and the preparation's budget."""
    image, tiles = read_file_or_prepared(payload, st)
    return (open_picture(image, st.images) if isinstance(image, ImageFile) else image), tiles


def request_image(payload: Payload, st: AppState) -> tuple[Picture | None, GenerationOptions]:
    """The request's image and generation options. With image_id and no max_tiles, the preparation's tile
    budget is used so that its work is reused; an explicit, different max_tiles reads the image again."""
    options = options_from(payload, st)  # checked first: bad numbers never reach the engine
    image, tiles = read_image_or_prepared(payload, st)
    if tiles is not None and options.max_tiles is None:
        options = replace(options, max_tiles=tiles)
    return image, options


def with_url(status: dict, endpoint: str) -> dict:
    """A preparation's status plus the URL to poll it at."""
    return {**status, "status_url": url_for(endpoint, image_id=status["image_id"])}


def start(st: AppState, payload: Payload, endpoint: str) -> dict:
    """Start preparing the request's image (an upload, or an earlier image_id at another max_tiles)."""
    max_tiles = read_int(payload, "max_tiles", 1, MAX_TILES, None)
    image, tiles = read_file_or_prepared(payload, st)  # an image_id's file is passed on as it is, not decoded
    if image is None:
        raise InvalidInput(_l("Please add an image."), field="image")
    file = image.file if isinstance(image, Picture) else image
    tiles = max_tiles if max_tiles is not None else tiles
    return with_url(st.engine.prepare(file, tiles, owner=client_key()), endpoint)


def status(st: AppState, image_id: str, endpoint: str) -> dict:
    """queued | encoding | ready | failed, with progress in tiles and the status URL."""
    return with_url(_lookup(st, st.engine.prepare_status, image_id), endpoint)


def cancel(st: AppState, image_id: str | None) -> bool:
    """Drop a preparation that is no longer wanted; False when there was none by that id."""
    if not image_id or not st.engine.ready:
        return False
    try:
        _lookup(st, st.engine.prepare_status, image_id)
    except NotFound:
        return False
    st.engine.cancel_prepare(image_id)
    return True
