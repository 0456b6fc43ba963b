"""The generation slots: a fixed set of KV-cached sequences, shared by requests (which wait in a bounded
queue) and the image preparer (which only ever takes an idle one)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from runtime.errors import Busy
from runtime.runner import Slot
from runtime.types import CancelToken

WAIT_POLL_S = 0.1  # how often a waiting request checks whether it was cancelled


class SlotPool:
    """Slots for generations; at most `max_queue` requests wait for one, more are refused at once."""

    def __init__(self, slots: list[Slot], max_queue: int):
        self.capacity = len(slots)  # fixed: the free list shrinks while slots are in use
        self.max_queue = max_queue
        self._free_slots = list(slots)
        self._free = threading.Semaphore(len(slots))
        self._lock = threading.Lock()
        self._waiting = 0  # requests waiting for or holding a slot

    @property
    def waiting(self) -> int:
        """Requests waiting for or holding a slot."""
        return self._waiting

    def busy(self) -> bool:
        """True while any request is waiting for or holding a slot (preparation then stands aside)."""
        return self._waiting > 0

    @contextmanager
    def take(self, cancel: CancelToken | None = None):
        """Wait for a free slot (Busy at once when the queue is full); yields (slot, seconds waited), slot
        None when the request was cancelled while it waited."""
        with self._lock:
            if self._waiting >= self.max_queue + self.capacity:  # running + waiting
                raise Busy(retry_after=5)
            self._waiting += 1
        t0 = time.perf_counter()
        try:
            while not self._free.acquire(timeout=WAIT_POLL_S):
                if cancel is not None and cancel.cancelled:
                    yield None, time.perf_counter() - t0
                    return
            slot = self._pop()
            try:
                yield slot, time.perf_counter() - t0
            finally:
                self.give(slot)
        finally:
            with self._lock:
                self._waiting -= 1

    def take_idle(self) -> Slot | None:
        """A free slot without waiting and without counting as a request, or None when all are taken."""
        if not self._free.acquire(blocking=False):
            return None
        return self._pop()

    def give(self, slot: Slot) -> None:
        """Return a slot taken with take_idle() (take() returns its own)."""
        with self._lock:
            self._free_slots.append(slot)
        self._free.release()

    def _pop(self) -> Slot:
        with self._lock:
            return self._free_slots.pop()
