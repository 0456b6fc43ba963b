"""Server-Sent Events: stream an engine call as `data:` events and cancel it when the client leaves."""
from __future__ import annotations

import json
import logging
import secrets
from itertools import chain
from typing import Callable, Iterator

from flask import Response, jsonify, request, stream_with_context
from flask_babel import gettext

from runtime.errors import RuntimeFailure
from runtime.streaming import stream_call
from webapp.errors import display_message, error_body
from webapp.service import Job, run_job

log = logging.getLogger(__name__)
DONE = "data: [DONE]\n\n"


def event(obj: dict) -> str:
    """One SSE event carrying a JSON object."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def open_stream(fn: Callable, *args, **kwargs) -> tuple[object, Iterator]:
    """Start streaming `fn` and wait for its first item, so that errors raised before any text
    (Busy, ModelNotReady, bad input) still become a normal HTTP error answer."""
    items = stream_call(fn, *args, **kwargs)
    try:
        first = next(items)
    except BaseException:
        items.close()  # cancels the generation
        raise
    return first, items


def job_events(first, items: Iterator, finish: Callable) -> Iterator[dict]:
    """`{"delta": ...}` per text delta, then `finish(result)` as the final event."""
    try:
        for item in chain([first], items):
            if isinstance(item, str):
                if item:
                    yield {"delta": item}
            else:
                yield finish(item)
    finally:
        items.close()


def sse_response(events: Iterator[dict]) -> Response:
    """Send events as text/event-stream, then `data: [DONE]`; an error mid-stream becomes an error event.

    When the client disconnects the server closes this generator, which closes `events` and so
    cancels the generation (stream_call's contract).
    """
    disconnected = request.environ.get("waitress.client_disconnected", lambda: False)

    def body() -> Iterator[str]:
        try:
            try:
                for ev in events:
                    if disconnected():
                        return
                    yield event(ev)
            except RuntimeFailure as exc:
                yield event(error_body(exc.code, display_message(exc), exc.status, param=exc.field))
            except Exception:  # a bug after the headers went out: log it, tell the client its id
                error_id = secrets.token_hex(6)
                log.exception("internal error %s while streaming %s", error_id, request.path)
                message = gettext("Internal error. Please report this id: %(id)s", id=error_id)
                yield event(error_body("internal_error", message, 500, error_id=error_id))
            yield DONE
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(body()), mimetype="text/event-stream", headers=headers)


def reply_job(job: Job, stream: bool):
    """Answer a service Job: its JSON reply, or (stream=True) its deltas as SSE then the reply."""
    if not stream:
        return jsonify(run_job(job))
    first, items = open_stream(job.fn, *job.args, **job.kwargs)
    return sse_response(job_events(first, items, job.finish))
