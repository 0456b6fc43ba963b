"""Heavy image work (decoding uploads, thumbnails, drawing boxes, encoding PNGs) in a bounded queue.

A 50-megapixel upload takes about a second and 150 MB to decode, and as long again to draw on and encode: run
unbounded, a burst of them takes every core and gigabytes. `ImageQueue` lets IMAGE_WORKERS of them run at once
and IMAGE_QUEUE more wait; past that a request is refused with the engine's `Busy` (503 and Retry-After).
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Callable

from flask_babel import lazy_gettext as _l
from PIL import Image

from runtime.errors import Busy, InvalidInput
from runtime.grounding import draw_boxes
from runtime.prepare import ImageFile
from runtime.types import Box
from webapp.inputs import Payload, decode_image, image_bytes_from_text
from webapp.settings import WebSettings

RETRY_AFTER_S = 5  # what a refused request is told to wait, as the engine's queue says


class ImageQueue:
    """Runs image jobs in the calling thread, at most `workers` at once, with at most `waiting` queued."""

    def __init__(self, workers: int, waiting: int, retry_after: int = RETRY_AFTER_S):
        self.workers, self.waiting, self.retry_after = workers, waiting, retry_after
        self._free = threading.Semaphore(workers)
        self._lock = threading.Lock()
        self.admitted = 0  # running + waiting

    def run(self, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs) once a worker is free; Busy at once when every worker and waiting place is taken."""
        with self._lock:
            if self.admitted >= self.workers + self.waiting:
                raise Busy(retry_after=self.retry_after)
            self.admitted += 1
        try:
            with self._free:
                return fn(*args, **kwargs)
        finally:
            with self._lock:
                self.admitted -= 1


@dataclass(frozen=True)
class Picture:
    """A request's image: its file (what is kept when the image must outlive the request) and its pixels."""

    file: ImageFile
    image: Image.Image  # RGB, upright


def read_picture(payload: Payload, settings: WebSettings, queue: ImageQueue, name: str = "image") -> Picture | None:
    """The uploaded image (file, base64, data: URL or allowed http URL), decoded in the queue; None when absent."""
    data = upload_bytes(payload, settings, name)
    if data is None:
        return None
    image = queue.run(decode_image, data, settings)
    return Picture(ImageFile(data, image.width, image.height), image)


def upload_bytes(payload: Payload, settings: WebSettings, name: str = "image") -> bytes | None:
    """The bytes of the request's image field, unchecked; None when absent."""
    upload = payload.files.get(name)
    if upload is not None:
        return upload.stream.read(settings.max_upload_bytes + 1)
    value = payload.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidInput(_l("The image must be a file, base64 text or a data: URL."), field=name)
    return image_bytes_from_text(value.strip(), settings, name)


def open_picture(file: ImageFile, queue: ImageQueue) -> Picture:
    """A kept file with its pixels decoded again (in the queue)."""
    return Picture(file, queue.run(file.decode))


def annotated_png(file: ImageFile, boxes: tuple[Box, ...]) -> bytes:
    """The image of file with its boxes drawn, as PNG bytes."""
    buf = io.BytesIO()
    draw_boxes(file.decode(), list(boxes)).save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


@dataclass(frozen=True)
class Annotation:
    """What draws a grounding's annotated PNG when it is downloaded: the image's file and the boxes, a fraction
    of the PNG's size (a 50-megapixel PNG is ~100 MB; its JPEG a few)."""

    file: ImageFile
    boxes: tuple[Box, ...]
    queue: ImageQueue

    @property
    def nbytes(self) -> int:
        """Memory held: the file, and a little per box."""
        return self.file.nbytes + 256 * len(self.boxes)

    def render(self) -> bytes:
        """The annotated PNG, drawn in the queue (Busy when it is full)."""
        return self.queue.run(annotated_png, self.file, self.boxes)
