"""Prepare images before the question is asked: encode and prefill at low priority, in the background.

A preparation keeps the image as the file it was sent in (`ImageFile`), not as decoded pixels: a 50-megapixel
upload is 150 MB decoded and a few MB as a JPEG. The pixels are decoded again, to the same values, by the one
preparer thread while it encodes the image, and by whoever asks about the image later; what the encoding
produces (embeddings, the KV of the prompt's start) lives in the runner's byte-bounded caches. A copy reduced
to what the tiler needs would not do: the tiles are resized from the full picture, and resizing a reduced copy
gives other pixels, so other answers (and another cache key than an upload of the same image).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from runtime.cache import BoundedLRU
from runtime.errors import InputTooLarge, InvalidInput
from runtime.images import ImageLimits, image_hash, load_image, num_tiles
from runtime.runner import Preempted

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.05


@dataclass(frozen=True)
class ImageFile:
    """An image kept as the bytes of its file; decode() gives the same pixels as the first decoding did."""

    data: bytes
    width: int  # of the decoded (upright) image
    height: int

    @property
    def nbytes(self) -> int:
        """Memory held: the file's size."""
        return len(self.data)

    def decode(self) -> Image.Image:
        """The RGB pixels (this file was checked when it was first decoded, so its own size is the limit)."""
        side, pixels = max(self.width, self.height), self.width * self.height
        return load_image(self.data, ImageLimits(max_bytes=len(self.data), max_pixels=pixels, max_side=side))


def held_bytes(image: Image.Image | ImageFile) -> int:
    """Memory an image holds: the file's bytes, or the decoded pixels'."""
    if isinstance(image, ImageFile):
        return image.nbytes
    return image.width * image.height * len(image.getbands())


@dataclass
class PrepareJob:
    """One image being prepared for questions to come."""

    id: str
    source: Image.Image | ImageFile  # as submitted: kept until the preparation expires
    max_tiles: int
    tiles: int  # tiles the image costs at max_tiles (thumbnail included)
    owner: str = ""  # who asked for it (a client), for its share of the preparer's memory
    key: tuple[str, int] | None = None  # (content hash, max_tiles): the encoding cache key, once decoded
    state: str = "queued"  # queued | encoding | ready | failed | cancelled
    error: str | None = None
    seconds: float = 0.0  # time spent preparing
    _pixels: Image.Image | None = field(default=None, repr=False)  # decoded while being prepared, then dropped

    @property
    def image(self) -> Image.Image:
        """The decoded pixels (decoded on first use; held until release())."""
        pixels = self._pixels  # read once: release() may run meanwhile in another thread
        if pixels is None:
            pixels = self.source.decode() if isinstance(self.source, ImageFile) else self.source
            self.key = (image_hash(pixels), self.max_tiles)
            self._pixels = pixels
        return pixels

    def release(self) -> None:
        """Drop the decoded pixels (the source stays)."""
        self._pixels = None

    def as_dict(self, tiles_done: int) -> dict:
        """Status for the API: state and progress in tiles."""
        done = self.tiles if self.state == "ready" else min(tiles_done, self.tiles)
        return {"image_id": self.id, "status": self.state, "tiles": self.tiles, "tiles_done": done,
                "progress": round(done / self.tiles, 3) if self.tiles else 1.0, "max_tiles": self.max_tiles,
                "width": self.source.width, "height": self.source.height, "error": self.error,
                "seconds": round(self.seconds, 3)}


def _drop(_key, job: PrepareJob) -> None:
    """An expired, evicted or cancelled job: stop it if it has not finished (the worker checks its state)
    and let its pixels go (an encoding in progress holds its own reference)."""
    if job.state in ("queued", "encoding"):
        job.state = "cancelled"
    job.release()


class Preparer:
    """A background worker that prepares queued images only while no request is waiting or running.

    Its jobs are bounded in number, age and bytes (the files they keep), and each owner may hold at most
    `share` of the bounds: past it, that owner's oldest preparations go first."""

    def __init__(self, runner, pool, max_jobs: int = 256, ttl_s: float = 3600.0, max_bytes: int = 256 * 2**20,
                 share: float = 1.0):
        self.runner, self.pool = runner, pool  # runtime.runner.Runner, runtime.slots.SlotPool
        self.jobs = BoundedLRU(max_bytes, max_jobs, ttl_s, share, on_evict=_drop)
        self.lock = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="image-preparer", daemon=True)
        self._thread.start()

    def submit(self, image: Image.Image | ImageFile, max_tiles: int, owner: str = "") -> PrepareJob:
        """Queue image for preparation; returns its job at once. InputTooLarge when the image alone holds
        more than one owner may keep."""
        nbytes = held_bytes(image)
        if nbytes > self.jobs.owner_max_bytes:
            raise InputTooLarge("This image is too large to be read ahead; send it with the question instead.",
                                field="image")
        job = PrepareJob(secrets.token_urlsafe(12), image, max_tiles, num_tiles(image.width, image.height, max_tiles),
                         owner)
        self.jobs.put(job.id, job, nbytes, owner)
        with self.lock:
            self.lock.notify_all()
        return job

    def get(self, image_id: str) -> PrepareJob:
        """The job named image_id; InvalidInput when unknown or expired."""
        job = self.jobs.get(image_id, touch=False)  # an id lives PREPARE_TTL_S from its upload, used or not
        if job is None or job.state == "cancelled":
            raise InvalidInput("Unknown or expired image_id: upload the image again.", field="image_id")
        return job

    def status(self, image_id: str) -> dict:
        """The job's state and progress."""
        job = self.get(image_id)
        return job.as_dict(self.runner.tiles_done(job.key))

    def cancel(self, image_id: str) -> None:
        """Drop a preparation that is no longer wanted (queued ones never start; work done is kept)."""
        job = self.jobs.pop(image_id)
        if job is not None:
            _drop(image_id, job)

    def _next(self) -> PrepareJob:
        with self.lock:
            while True:
                queued = [j for j in self.jobs.values() if j.state == "queued"]
                if queued and not self.pool.busy():
                    job = queued[0]
                    job.state = "encoding"
                    return job
                self.lock.wait(IDLE_POLL_S)

    def _prepare(self, job: PrepareJob, should_yield) -> None:
        """Encode job's image and prefill its prompt's start in an idle slot; Preempted when a request comes.

        In an idle slot rather than a sequence of its own: a second infer request with its KV state and buffers
        raised the peak by ~0.13 GB on the 1B model (1.59 vs 1.45 GB over one round of the bench's workloads).
        The slot's last answer is already saved as a KV prefix, and a question on this image finds its prefix
        in place. A request that arrives meanwhile waits for this one prefill (< 1 s)."""
        enc, _ = self.runner.encode_image(job.image, job.max_tiles, should_yield=should_yield)
        slot = None if should_yield() else self.pool.take_idle()
        if slot is None:
            raise Preempted()  # a request came, or every slot is taken: prefill when idle again
        try:
            self.runner.prefill_image_prefix(slot, enc)
        finally:
            self.pool.give(slot)

    def _work(self) -> None:
        while True:
            job = self._next()
            t0 = time.perf_counter()
            try:
                self._prepare(job, should_yield=lambda j=job: self.pool.busy() or j.state == "cancelled")
                job.state = "ready" if job.state == "encoding" else job.state
            except Preempted:
                job.state = "queued" if job.state == "encoding" else job.state  # resume when idle again
            except Exception as exc:  # reported in the job's status, never fatal for the worker
                log.exception("preparing image %s failed", job.id)
                job.state, job.error = "failed", str(exc)
            if job.state != "queued":  # a preempted job is taken up again first: it keeps its pixels till then
                job.release()
            job.seconds += time.perf_counter() - t0
