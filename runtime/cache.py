"""Bounded least-recently-used maps: one generic store (bytes, count, age, a share per owner), the image
embedding and KV-prefix caches built on it."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from runtime.backends.base import KVSnapshot


@dataclass
class _Entry:
    value: Any
    nbytes: int
    owner: str
    stamp: float  # when last stored or touched, by the store's clock


class BoundedLRU:
    """A thread-safe LRU map bounded in bytes, in entries and in age, shared fairly between owners (clients).

    Each owner may hold at most `share` of the bytes and of the entries; past that its own least recently used
    entries go first. Past the store's bounds the entries of whoever holds the most go first, so nobody's
    entries are pushed out to let another owner grow beyond what they hold. The entry just stored is always
    kept (alone, when it is larger than the bounds). `on_evict(key, value)` hears of every entry dropped by
    the bounds or by age (not of pop or replacement), under the store's lock: keep it short.
    """

    def __init__(self, max_bytes: int, max_items: int | None = None, ttl_s: float | None = None,
                 share: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[Any, Any], None] | None = None):
        assert 0 < share <= 1, share
        self.max_bytes, self.max_items, self.ttl_s, self.clock = max_bytes, max_items, ttl_s, clock
        self.owner_max_bytes = int(max_bytes * share)
        self.owner_max_items = max(1, int(max_items * share)) if max_items else None
        self.on_evict = on_evict
        self.bytes = 0
        self._items: OrderedDict[Any, _Entry] = OrderedDict()  # least recently used first
        self._owners: dict[str, OrderedDict[Any, None]] = {}  # each owner's keys, least recently used first
        self._owner_bytes: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, key, touch: bool = True):
        """The value for key, or None when absent or expired; `touch` marks it recently used (and restarts
        its time to live)."""
        with self._lock:
            self._expire()
            entry = self._items.get(key)
            if entry is None:
                return None
            if touch:
                entry.stamp = self.clock()
                self._items.move_to_end(key)
                self._owners[entry.owner].move_to_end(key)
            return entry.value

    def put(self, key, value, nbytes: int, owner: str = "") -> None:
        """Store value (replacing any under key), then drop what the bounds and the owners' shares say."""
        with self._lock:
            if key in self._items:
                self._remove(key)
            self._items[key] = _Entry(value, nbytes, owner, self.clock())
            self._owners.setdefault(owner, OrderedDict())[key] = None
            self._owner_bytes[owner] = self._owner_bytes.get(owner, 0) + nbytes
            self.bytes += nbytes
            self._expire()
            self._trim_owner(owner, keep=key)
            self._trim(self.max_bytes, keep=key)

    def pop(self, key):
        """Remove key and return its value (None when absent)."""
        with self._lock:
            return self._remove(key).value if key in self._items else None

    def make_room(self, nbytes: int) -> None:
        """Drop entries until nbytes more would fit (before building a value that large)."""
        with self._lock:
            self._trim(self.max_bytes - nbytes)

    def values(self) -> list:
        """A snapshot of the live values, most recent last."""
        with self._lock:
            self._expire()
            return [e.value for e in self._items.values()]

    def usage(self, owner: str) -> tuple[int, int]:
        """(entries, bytes) held by owner."""
        with self._lock:
            self._expire()
            return len(self._owners.get(owner, ())), self._owner_bytes.get(owner, 0)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    # ---------------------------------------------------------------- internals (hold the lock)
    def _remove(self, key) -> _Entry:
        entry = self._items.pop(key)
        keys = self._owners[entry.owner]
        del keys[key]
        self._owner_bytes[entry.owner] -= entry.nbytes
        if not keys:
            del self._owners[entry.owner], self._owner_bytes[entry.owner]
        self.bytes -= entry.nbytes
        return entry

    def _evict(self, key) -> None:
        entry = self._remove(key)
        if self.on_evict is not None:
            self.on_evict(key, entry.value)

    def _expire(self) -> None:
        """Drop entries idle past the time to live (the map is in stamp order: the oldest lead)."""
        if self.ttl_s is None:
            return
        now = self.clock()
        while self._items:
            key, entry = next(iter(self._items.items()))
            if now - entry.stamp <= self.ttl_s:
                return
            self._evict(key)

    def _trim_owner(self, owner: str, keep) -> None:
        """Drop owner's least recently used entries (never `keep`) until it is within its share."""
        keys = self._owners[owner]
        while len(keys) > 1 and (self._owner_bytes[owner] > self.owner_max_bytes
                                 or (self.owner_max_items and len(keys) > self.owner_max_items)):
            self._evict(next(k for k in keys if k != keep))

    def _trim(self, max_bytes: int, keep=None) -> None:
        """Drop the biggest holder's least recently used entries (never `keep`) until the store fits."""
        while True:
            by_count = self.max_items is not None and len(self._items) > self.max_items
            if not by_count and self.bytes <= max_bytes:
                return
            held = (lambda o: len(self._owners[o])) if by_count else (lambda o: self._owner_bytes[o])
            owners = [o for o in self._owners if any(k != keep for k in self._owners[o])]
            if not owners:
                return
            victim = max(owners, key=held)
            self._evict(next(k for k in self._owners[victim] if k != keep))


class LRUBytes(BoundedLRU):
    """A BoundedLRU of one owner bounded in bytes only, where a value larger than the whole bound is not kept."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)

    def put(self, key, value, nbytes: int, owner: str = "") -> None:
        """Store value, evicting the least recently used until the total fits (a value larger than all is dropped)."""
        if nbytes > self.max_bytes:
            self.pop(key)
            return
        super().put(key, value, nbytes, owner)


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
