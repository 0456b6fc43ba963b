"""Bounded least-recently-used caches: image embeddings by content, KV prefixes by token sequence."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.backends.base import KVSnapshot


class LRUBytes:
    """A thread-safe LRU mapping whose values have a size in bytes; the oldest go first past max_bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    def get(self, key):
        """The value for key (and mark it recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key, value, nbytes: int) -> None:
        """Store value; evict the least recently used until the total fits (a value larger than all is dropped)."""
        with self._lock:
            if key in self._items:
                self.bytes -= self._items.pop(key)[1]
            if nbytes > self.max_bytes:
                return
            self._items[key] = (value, nbytes)
            self.bytes += nbytes
            self._evict_to(self.max_bytes)

    def make_room(self, nbytes: int) -> None:
        """Evict the least recently used until nbytes more would fit (before building a value that large)."""
        with self._lock:
            self._evict_to(self.max_bytes - nbytes)

    def _evict_to(self, limit: int) -> None:
        """Drop the least recently used until the total is at most limit (hold the lock)."""
        while self._items and self.bytes > limit:
            _, (_, size) = self._items.popitem(last=False)
            self.bytes -= size

    def values(self) -> list:
        """A snapshot of the stored values, most recent last."""
        with self._lock:
            return [v for v, _ in self._items.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class PrefixEntry:
    """A KV snapshot and the key sequence it was computed from (image positions keyed by image identity)."""

    keys: np.ndarray  # (length,) int64
    snapshot: KVSnapshot


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two 1-D arrays."""
    n = min(a.size, b.size)
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class PrefixCache:
    """Saved KV caches, looked up by the longest prefix they share with a new prompt."""

    def __init__(self, max_bytes: int):
        self.store = LRUBytes(max_bytes)

    def put(self, keys: np.ndarray, snapshot: KVSnapshot) -> None:
        """Remember snapshot as the KV of keys[:snapshot.length]."""
        keys = np.array(keys[:snapshot.length], dtype=np.int64)
        self.store.put(keys.tobytes(), PrefixEntry(keys, snapshot), snapshot.nbytes + keys.nbytes)

    def make_room(self, positions: int, bytes_per_position: float) -> None:
        """Evict old entries so that a snapshot of `positions` fits beside the rest before it is taken (it is
        copied out of the plugin in full before put() could evict anything: ~0.1 GB for an 800-token prompt)."""
        self.store.make_room(int(positions * bytes_per_position))

    def best(self, keys: np.ndarray) -> tuple[PrefixEntry | None, int]:
        """The entry sharing the longest prefix with keys, and that length (at most len(keys) - 1, so at
        least one position is left to compute the next logits from)."""
        best, best_len = None, 0
        for entry in self.store.values():
            n = min(common_prefix(entry.keys, keys), keys.size - 1)
            if n > best_len:
                best, best_len = entry, n
        if best is not None:
            self.store.get(best.keys.tobytes())
        return best, best_len
