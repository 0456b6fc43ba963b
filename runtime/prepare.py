"""Prepare images before the question is asked: encode and prefill at low priority, in the background."""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from PIL import Image

from runtime.errors import InvalidInput
from runtime.images import image_hash, num_tiles
from runtime.runner import Preempted

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.05


@dataclass
class PrepareJob:
    """One image being prepared for questions to come."""

    id: str
    image: Image.Image
    max_tiles: int
    tiles: int  # tiles the image costs at max_tiles (thumbnail included)
    key: tuple[str, int]  # (content hash, max_tiles): the encoding cache key
    state: str = "queued"  # queued | encoding | ready | failed | cancelled
    error: str | None = None
    created: float = field(default_factory=time.time)
    seconds: float = 0.0  # time spent preparing

    def as_dict(self, tiles_done: int) -> dict:
        """Status for the API: state and progress in tiles."""
        done = self.tiles if self.state == "ready" else min(tiles_done, self.tiles)
        return {"image_id": self.id, "status": self.state, "tiles": self.tiles, "tiles_done": done,
                "progress": round(done / self.tiles, 3) if self.tiles else 1.0, "max_tiles": self.max_tiles,
                "width": self.image.width, "height": self.image.height, "error": self.error,
                "seconds": round(self.seconds, 3)}


class Preparer:
    """A background worker that prepares queued images only while no request is waiting or running."""

    def __init__(self, engine, max_jobs: int = 256, ttl_s: float = 3600.0):
        self.engine = engine
        self.max_jobs, self.ttl_s = max_jobs, ttl_s
        self.jobs: OrderedDict[str, PrepareJob] = OrderedDict()
        self.lock = threading.Condition()
        self._seq = None  # the preparer's own KV sequence, so it never holds a request's slot
        self._thread = threading.Thread(target=self._work, name="image-preparer", daemon=True)
        self._thread.start()

    def submit(self, image: Image.Image, max_tiles: int) -> PrepareJob:
        """Queue image for preparation; returns its job at once."""
        key = (image_hash(image), max_tiles)
        job = PrepareJob(secrets.token_urlsafe(12), image, max_tiles, num_tiles(image.width, image.height, max_tiles),
                         key)
        with self.lock:
            self.jobs[job.id] = job
            self._expire()
            self.lock.notify_all()
        return job

    def get(self, image_id: str) -> PrepareJob:
        """The job named image_id; InvalidInput when unknown or expired."""
        with self.lock:
            self._expire()
            job = self.jobs.get(image_id)
        if job is None or job.state == "cancelled":
            raise InvalidInput("Unknown or expired image_id: upload the image again.", field="image_id")
        return job

    def status(self, image_id: str) -> dict:
        """The job's state and progress."""
        job = self.get(image_id)
        return job.as_dict(self.engine.runner_tiles_done(job.key))

    def cancel(self, image_id: str) -> None:
        """Drop a preparation that is no longer wanted (queued ones never start; work done is kept)."""
        with self.lock:
            job = self.jobs.pop(image_id, None)
        if job is not None and job.state in ("queued", "encoding"):
            job.state = "cancelled"

    def _expire(self) -> None:
        now = time.time()
        for job_id in [j.id for j in self.jobs.values() if now - j.created > self.ttl_s]:
            self.jobs.pop(job_id)
        while len(self.jobs) > self.max_jobs:
            self.jobs.popitem(last=False)

    def _next(self) -> PrepareJob:
        with self.lock:
            while True:
                queued = [j for j in self.jobs.values() if j.state == "queued"]
                if queued and not self.engine.busy():
                    job = queued[0]
                    job.state = "encoding"
                    return job
                self.lock.wait(IDLE_POLL_S)

    def _work(self) -> None:
        while True:
            job = self._next()
            t0 = time.perf_counter()
            try:
                self.engine.prepare_now(job, should_yield=lambda j=job: self.engine.busy() or j.state == "cancelled")
                job.state = "ready" if job.state == "encoding" else job.state
            except Preempted:
                job.state = "queued" if job.state == "encoding" else job.state  # resume when idle again
            except Exception as exc:  # reported in the job's status, never fatal for the worker
                log.exception("preparing image %s failed", job.id)
                job.state, job.error = "failed", str(exc)
            job.seconds += time.perf_counter() - t0
