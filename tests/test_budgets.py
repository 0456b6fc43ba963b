"""Byte budgets and per-client shares of every store, limits held atomically, and the bounded image queue."""
from __future__ import annotations

import io
import random
import threading
import time

import pytest
from PIL import Image

from runtime.cache import BoundedLRU
from runtime.errors import Busy
from runtime.types import Turn
from webapp.imagework import ImageQueue
from webapp.store import Conversation, Full, new_id


class Clock:
    """A settable monotonic clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def noise_png(width: int = 200, height: int = 150, seed: int = 0) -> bytes:
    """A PNG that does not compress: its file is about as large as its pixels."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- the generic store

def test_one_owner_only_pushes_out_its_own_entries():
    store = BoundedLRU(max_bytes=1000, max_items=20, share=0.25)
    store.put("b1", "b", 100, owner="B")
    store.put("b2", "b", 100, owner="B")
    for i in range(50):
        store.put(f"a{i}", "a", 90, owner="A")
        items, held = store.usage("A")
        assert held <= store.owner_max_bytes == 250 and items <= store.owner_max_items == 5
        assert store.bytes <= store.max_bytes
    assert store.get("b1") and store.get("b2")  # B's entries are all there
    assert store.get("a49") and store.get("a48") and store.get("a0") is None  # A's newest kept, oldest gone


def test_a_full_store_takes_from_the_biggest_holder():
    store = BoundedLRU(max_bytes=1000, share=0.5)
    store.put("small", "s", 100, owner="S")
    for owner in "XY":
        for i in range(5):
            store.put(f"{owner}{i}", owner, 90, owner=owner)  # X and Y: 450 each, within their 500
    store.put("Z", "z", 300, owner="Z")  # 1300 > 1000: X and Y (the biggest) give up their oldest
    assert store.get("small") is not None and store.get("Z") is not None
    assert store.bytes <= 1000 and store.usage("S") == (1, 100)
    assert store.get("X0") is None and store.get("Y0") is None


def test_memory_returns_when_entries_expire_or_are_deleted():
    clock, dropped = Clock(), []
    store = BoundedLRU(max_bytes=10_000, max_items=100, ttl_s=10, share=0.5, clock=clock,
                       on_evict=lambda key, value: dropped.append(key))
    for i in range(10):
        store.put(i, object(), 300, owner=f"client{i % 3}")
    assert store.bytes == 3000
    store.pop(0)
    assert store.bytes == 2700 and 0 not in dropped  # a pop is the caller's business
    clock.now = 5
    store.get(1)  # touched: lives on
    clock.now = 11
    assert len(store) == 1 and store.bytes == 300 and sorted(dropped) == [2, 3, 4, 5, 6, 7, 8, 9]
    clock.now = 30
    assert len(store) == 0 and store.bytes == 0 and store.usage("client1") == (0, 0)


def test_the_newest_entry_is_kept_alone_when_larger_than_the_bounds():
    store = BoundedLRU(max_bytes=100, share=1.0)
    store.put("a", 1, 60)
    store.put("b", 2, 150)
    assert store.get("a") is None and store.get("b") == 2 and len(store) == 1


# ---------------------------------------------------------------------------- reserving room in a conversation

@pytest.mark.parametrize("limit,images,nbytes", [("turns", 0, 0), ("images", 1, 0), ("bytes", 0, 400)])
def test_concurrent_reservations_never_pass_a_limit(limit, images, nbytes):
    conv = Conversation(id=new_id())
    conv.add_exchange(Turn("user", "first", [Image.new("RGB", (10, 10))]), "answer")  # 1 question, 1 image
    limits = {"turns": (4, 99, 10**9), "images": (99, 4, 10**9), "bytes": (99, 99, conv.nbytes + 3 * 400)}[limit]
    start, won, lost = threading.Barrier(12), [], []

    def ask():
        start.wait()
        try:
            won.append(conv.reserve(images, nbytes, *limits))
        except Full as full:
            lost.append(full.limit)

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 3 and lost == [limit] * 9  # room for exactly three more
    conv.release(won[0])
    conv.release(won[0])  # freeing twice frees once
    conv.commit(won[1], Turn("user", "q", [Image.new("RGB", (10, 10))] * images), "a")
    again = conv.reserve(images, nbytes, *limits)  # the released room can be held again, and no more
    with pytest.raises(Full):
        conv.reserve(images, nbytes, *limits)
    conv.release(again)
    conv.release(won[2])
    assert (conv.held_questions, conv.held_images, conv.held_bytes) == (0, 0, 0)


# ---------------------------------------------------------------------------- the image queue

def test_image_queue_runs_at_most_its_workers_and_refuses_past_its_waiters():
    queue, gate = ImageQueue(workers=2, waiting=3), threading.Event()
    running, most, lock = [0], [0], threading.Lock()

    def work():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.wait(5)
        with lock:
            running[0] -= 1
        return "done"

    results = []
    threads = [threading.Thread(target=lambda: results.append(queue.run(work))) for _ in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while queue.admitted < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = []
    for _ in range(4):  # every worker and waiting place is taken: refused at once, never queued
        with pytest.raises(Busy) as busy:
            queue.run(work)
        refused.append(busy.value.retry_after)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == ["done"] * 5 and most[0] == 2 and refused == [5] * 4 and queue.admitted == 0
    assert queue.run(lambda: 42) == 42  # free again
