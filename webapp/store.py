"""Bounded, expiring, thread-safe server-side stores: conversations and grounding downloads."""
from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from runtime.types import Turn

ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_id() -> str:
    """An unguessable URL-safe id (192 bits)."""
    return secrets.token_urlsafe(24)


def valid_id(value: str | None) -> bool:
    """True when `value` has the shape of an id we hand out (nothing like a path)."""
    return bool(value) and ID_RE.fullmatch(value) is not None


@dataclass
class Conversation:
    """One dialog: its turns (with PIL images) and a thumbnail per image-bearing user turn."""

    id: str
    turns: list[Turn] = field(default_factory=list)
    thumbs: dict[int, str] = field(default_factory=dict)  # turn index -> data: URL of a small JPEG
    kinds: dict[int, str] = field(default_factory=dict)  # turn index -> "describe_short"... (shown translated)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one generation at a time
    nbytes: int = 0  # memory held by the turns' images

    @property
    def image_count(self) -> int:
        """Images sent so far."""
        return sum(len(t.images) for t in self.turns)

    @property
    def question_count(self) -> int:
        """User turns so far."""
        return sum(t.role == "user" for t in self.turns)

    def add_exchange(self, user: Turn, answer: str, thumb: str | None = None, kind: str = "chat") -> None:
        """Append a user turn and the assistant's answer to it."""
        if thumb:
            self.thumbs[len(self.turns)] = thumb
        if kind != "chat":
            self.kinds[len(self.turns)] = kind
        self.turns.append(user)
        self.turns.append(Turn(role="assistant", text=answer))
        self.nbytes += sum(_image_bytes(im) for im in user.images)


def _image_bytes(img) -> int:
    return img.width * img.height * len(img.getbands())


class _Bounded:
    """An LRU map with a time to live, a count limit and a byte limit."""

    def __init__(self, ttl_s: float, max_items: int, max_bytes: int, clock=time.monotonic):
        self.ttl_s, self.max_items, self.max_bytes, self.clock = ttl_s, max_items, max_bytes, clock
        self._items: OrderedDict[str, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def _size(self, value) -> int:
        return 0

    def _evict(self, keep: str | None = None) -> None:
        now = self.clock()
        for key in [k for k, (t, _) in self._items.items() if now - t > self.ttl_s]:
            del self._items[key]
        while len(self._items) > self.max_items or (
                len(self._items) > 1 and sum(self._size(v) for _, v in self._items.values()) > self.max_bytes):
            oldest = next(iter(self._items))
            if oldest == keep:
                break
            del self._items[oldest]

    def _put(self, key: str, value) -> None:
        with self._lock:
            self._items[key] = (self.clock(), value)
            self._items.move_to_end(key)
            self._evict(keep=key)

    def _get(self, key: str | None, touch: bool = True):
        if not valid_id(key):
            return None
        with self._lock:
            self._evict()
            item = self._items.get(key)
            if item is None:
                return None
            if touch:
                self._items[key] = (self.clock(), item[1])
                self._items.move_to_end(key)
            return item[1]

    def delete(self, key: str | None) -> bool:
        """Forget one entry; False when it was not there."""
        if not valid_id(key):
            return False
        with self._lock:
            return self._items.pop(key, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._evict()
            return len(self._items)


class SessionStore(_Bounded):
    """Conversations by id; idle ones expire, the least recently used go first when full."""

    def _size(self, value: Conversation) -> int:
        return value.nbytes

    def get(self, session_id: str | None) -> Conversation | None:
        """The conversation, or None if the id is malformed, unknown or expired."""
        return self._get(session_id)

    def touch(self, conv: Conversation) -> None:
        """Store a conversation, or re-account it after it grew (may evict others to stay in bounds)."""
        self._put(conv.id, conv)


@dataclass(frozen=True)
class Result:
    """A finished grounding: the annotated PNG and the JSON report, ready for download."""

    id: str
    png: bytes
    report: bytes


class ResultStore(_Bounded):
    """Grounding downloads by unguessable id, expiring after their time to live."""

    def _size(self, value: Result) -> int:
        return len(value.png) + len(value.report)

    def add(self, png: bytes, report: bytes, result_id: str | None = None) -> Result:
        """Keep one result and return it."""
        result = Result(id=result_id or new_id(), png=png, report=report)
        self._put(result.id, result)
        return result

    def get(self, result_id: str | None) -> Result | None:
        """The result, or None if the id is malformed, unknown or expired."""
        return self._get(result_id, touch=False)
