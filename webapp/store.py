"""Bounded, expiring, thread-safe server-side stores: conversations and grounding downloads.

Both are `BoundedLRU`s (bytes, count, idle time, and a share per client): one client filling a store only
pushes out its own older entries. A conversation's limits (questions, images, bytes) are held for an answer
while it is generated (`Conversation.reserve`), so concurrent follow-ups can never take it past them.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field

from runtime.cache import BoundedLRU
from runtime.prepare import held_bytes
from runtime.types import Turn

ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_id() -> str:
    """An unguessable URL-safe id (192 bits)."""
    return secrets.token_urlsafe(24)


def valid_id(value: str | None) -> bool:
    """True when `value` has the shape of an id we hand out (nothing like a path)."""
    return bool(value) and ID_RE.fullmatch(value) is not None


class Full(Exception):
    """A conversation has no room for one more exchange; `limit` is "turns", "images" or "bytes"."""

    def __init__(self, limit: str):
        super().__init__(limit)
        self.limit = limit


@dataclass
class Room:
    """Room held in a conversation for one exchange while its answer is generated; freed exactly once."""

    images: int
    nbytes: int
    held: bool = True


@dataclass
class Conversation:
    """One dialog: its turns (with PIL images) and a thumbnail per image-bearing user turn."""

    id: str
    turns: list[Turn] = field(default_factory=list)
    thumbs: dict[int, str] = field(default_factory=dict)  # turn index -> data: URL of a small JPEG
    kinds: dict[int, str] = field(default_factory=dict)  # turn index -> "describe_short"... (shown translated)
    metas: dict[int, dict] = field(default_factory=dict)  # answer's turn index -> its timings and usage (shown)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # guards turns and held room
    nbytes: int = 0  # memory held by the turns: images, thumbnails, text
    owner: str = ""  # the client that started it, whose share of the store it counts against
    held_questions: int = 0  # exchanges being generated (reserved, not yet committed)
    held_images: int = 0
    held_bytes: int = 0

    @property
    def image_count(self) -> int:
        """Images sent so far."""
        return sum(len(t.images) for t in self.turns)

    @property
    def question_count(self) -> int:
        """User turns so far."""
        return sum(t.role == "user" for t in self.turns)

    def reserve(self, images: int, nbytes: int, max_turns: int, max_images: int, max_bytes: int) -> Room:
        """Hold room for one more question bringing `images` images of `nbytes`; Full naming the limit it
        would pass, counting the exchanges still being generated."""
        with self.lock:
            if self.question_count + self.held_questions >= max_turns:
                raise Full("turns")
            if images and self.image_count + self.held_images + images > max_images:
                raise Full("images")
            if nbytes and self.nbytes + self.held_bytes + nbytes > max_bytes:
                raise Full("bytes")
            self.held_questions, self.held_images, self.held_bytes = (
                self.held_questions + 1, self.held_images + images, self.held_bytes + nbytes)
            return Room(images, nbytes)

    def release(self, room: Room) -> None:
        """Give back room held for an exchange that will not be kept (failed or cancelled)."""
        with self.lock:
            self._free(room)

    def commit(self, room: Room, user: Turn, answer: str, thumb: str | None = None, kind: str = "chat",
               meta: dict | None = None) -> None:
        """Keep the exchange the room was held for."""
        with self.lock:
            self._free(room)
            self._append(user, answer, thumb, kind, meta)

    def add_exchange(self, user: Turn, answer: str, thumb: str | None = None, kind: str = "chat") -> None:
        """Append a user turn and the assistant's answer to it."""
        with self.lock:
            self._append(user, answer, thumb, kind)

    def _free(self, room: Room) -> None:
        if room.held:
            room.held = False
            self.held_questions -= 1
            self.held_images -= room.images
            self.held_bytes -= room.nbytes

    def _append(self, user: Turn, answer: str, thumb: str | None, kind: str, meta: dict | None = None) -> None:
        if meta:
            self.metas[len(self.turns) + 1] = meta
        if thumb:
            self.thumbs[len(self.turns)] = thumb
        if kind != "chat":
            self.kinds[len(self.turns)] = kind
        self.turns.append(user)
        self.turns.append(Turn(role="assistant", text=answer))
        self.nbytes += exchange_bytes(user, answer, thumb)


def exchange_bytes(user: Turn, answer: str, thumb: str | None = None) -> int:
    """Memory one exchange adds to a conversation: its images' pixels, the thumbnail and the texts."""
    return sum(held_bytes(im) for im in user.images) + len(thumb or "") + len(user.text) + len(answer)


class _Store(BoundedLRU):
    """A BoundedLRU keyed by ids we hand out; malformed ids are simply absent."""

    def __init__(self, ttl_s: float, max_items: int, max_bytes: int, share: float = 1.0, clock=time.monotonic):
        super().__init__(max_bytes, max_items, ttl_s, share, clock)

    def delete(self, key: str | None) -> bool:
        """Forget one entry; False when it was not there."""
        return valid_id(key) and self.pop(key) is not None


class SessionStore(_Store):
    """Conversations by id; idle ones expire, the least recently used go first when full."""

    def get(self, session_id: str | None) -> Conversation | None:
        """The conversation, or None if the id is malformed, unknown or expired."""
        return super().get(session_id) if valid_id(session_id) else None

    def touch(self, conv: Conversation) -> None:
        """Store a conversation, or re-account it after it grew (may evict others to stay in bounds)."""
        self.put(conv.id, conv, conv.nbytes, conv.owner)


@dataclass(frozen=True)
class Result:
    """A finished grounding ready for download: the JSON report, and the annotated PNG or what draws it."""

    id: str
    drawing: object  # the PNG's bytes, or an object whose render() draws them (webapp.imagework.Annotation)
    report: bytes

    @property
    def png(self) -> bytes:
        """The annotated PNG (drawn now when only what draws it was kept)."""
        return self.drawing if isinstance(self.drawing, bytes) else self.drawing.render()

    @property
    def nbytes(self) -> int:
        """Memory held."""
        drawn = len(self.drawing) if isinstance(self.drawing, bytes) else self.drawing.nbytes
        return drawn + len(self.report)


class ResultStore(_Store):
    """Grounding downloads by unguessable id, expiring after their time to live."""

    def add(self, png, report: bytes, result_id: str | None = None, owner: str = "") -> Result:
        """Keep one result (`png`: its bytes, or what draws them) and return it."""
        result = Result(id=result_id or new_id(), drawing=png, report=report)
        self.put(result.id, result, result.nbytes, owner)
        return result

    def get(self, result_id: str | None) -> Result | None:
        """The result, or None if the id is malformed, unknown or expired."""
        return super().get(result_id, touch=False) if valid_id(result_id) else None
