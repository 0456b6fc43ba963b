"""Run a callback-streaming engine call in a worker thread and expose it as an iterator (for SSE)."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

from runtime.types import CancelToken

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def stream_call(fn: Callable, *args, **kwargs) -> Iterator:
    """Yield each text delta fn produces, then fn's return value last; closing the iterator cancels fn.

    fn must accept `on_text=` and `cancel=` keywords (Engine.chat, describe and ground do). Exceptions
    raised by fn are re-raised from the iterator.
    """
    cancel = kwargs.pop("cancel", None) or CancelToken()
    items: queue.Queue = queue.Queue()

    def worker():
        try:
            result = fn(*args, on_text=items.put, cancel=cancel, **kwargs)
            items.put((_DONE, result))
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(_Failure(exc))

    thread = threading.Thread(target=worker, name="stream-call", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if isinstance(item, _Failure):
                raise item.exc
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _DONE:
                yield item[1]
                return
            yield item
    finally:
        cancel.cancel()  # no-op when finished; stops generation when the consumer went away
