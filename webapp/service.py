"""What a chat, describe or grounding request does, shared by the pages and the API."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from flask import url_for
from flask_babel import lazy_gettext as _l
from PIL import Image

from runtime.errors import InputTooLarge, InvalidInput, RuntimeFailure
from runtime.limits import MAX_TILES
from runtime.prepare import held_bytes
from runtime.prompts import describe_prompt
from runtime.types import Answer, GenerationOptions, GroundingResult, Turn
from webapp.errors import NotFound
from webapp.imagework import Annotation, Picture
from webapp.inputs import Payload, read_float, read_int, thumbnail_url
from webapp.security import client_key
from webapp.state import AppState
from webapp.store import Conversation, Full, Room, new_id


@dataclass
class Job:
    """One engine call, ready to run plainly or streamed; `finish` turns its Answer into the reply."""

    fn: Callable  # engine.chat / engine.describe (accepts on_text= and cancel=)
    args: tuple
    kwargs: dict
    finish: Callable[[Answer], dict]


def options_from(payload: Payload, st: AppState) -> GenerationOptions:
    """GenerationOptions from the request's max_tiles, max_new_tokens, temperature and top_p fields.

    max_new_tokens past the limit (st.max_new_tokens()) is refused; the default is clamped to it."""
    limit = st.max_new_tokens()
    return GenerationOptions(
        max_new_tokens=read_int(payload, "max_new_tokens", 1, limit, min(GenerationOptions.max_new_tokens, limit)),
        max_tiles=read_int(payload, "max_tiles", 1, MAX_TILES, None),
        temperature=read_float(payload, "temperature", 0.0, 2.0, 0.0),
        top_p=read_float(payload, "top_p", 0.0, 1.0, 1.0),
    )


def find_conversation(st: AppState, session_id: str | None) -> Conversation:
    """The conversation of an explicit session id, or a fresh one (stored once it has a turn)."""
    if session_id in (None, ""):
        return Conversation(id=new_id())
    conv = st.sessions.get(session_id if isinstance(session_id, str) else None)
    if conv is None:
        raise NotFound(_l("This conversation does not exist or has expired. Start a new one."),
                       field="session_id")
    return conv


def latest_image(conv: Conversation) -> Image.Image | None:
    """The last image sent in the conversation."""
    for turn in reversed(conv.turns):
        if turn.images:
            return turn.images[-1]
    return None


def _reserve(st: AppState, conv: Conversation, picture: Picture | None) -> Room:
    """Hold room for one more exchange: refuse a first turn without image, a turn past MAX_TURNS, an image
    past MAX_IMAGES_PER_SESSION or past the client's share of the session store."""
    if picture is None and latest_image(conv) is None:
        raise InvalidInput(_l("Please add an image first."), field="image")
    settings = st.settings
    if not conv.owner:  # a new conversation belongs to whoever starts it
        conv.owner = client_key()
    images = [picture.image] if picture is not None else []
    try:
        return conv.reserve(len(images), sum(held_bytes(im) for im in images), settings.max_turns,
                            settings.max_images, st.sessions.owner_max_bytes)
    except Full as full:
        raise _full_error(full.limit, st) from None


def _full_error(limit: str, st: AppState) -> RuntimeFailure:
    """The refusal for a conversation with no room left for `limit` ("turns", "images" or "bytes")."""
    if limit == "turns":
        return InvalidInput(_l("This conversation is full (%(n)d questions). Please start a new conversation.",
                               n=st.settings.max_turns), field="question")
    if limit == "images":
        return InvalidInput(_l("This conversation already has %(n)d images. Please start a new conversation "
                               "to add another.", n=st.settings.max_images), field="image")
    return InputTooLarge(_l("The images of this conversation would take more than %(mb)d MB. Please start a new "
                            "conversation or send a smaller image.", mb=st.sessions.owner_max_bytes // 2**20),
                         field="image")


def answer_body(answer: Answer, conv: Conversation | None = None) -> dict:
    """The JSON reply of /api/v1/chat and /api/v1/describe (and the final SSE event)."""
    body = {"answer": answer.text, "finish_reason": answer.finish_reason, "timings": answer.timings.as_dict(),
            "usage": usage(answer)}
    if conv is not None:
        body["session_id"] = conv.id
    return body


def usage(answer: Answer) -> dict:
    """Token counts in OpenAI's shape."""
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _holding(st: AppState, fn: Callable, conv: Conversation, room: Room, user: Turn, kind: str,
             thumb: str | None) -> Callable:
    """fn (an engine call) that settles the room when it ends: the exchange kept when answered, the room
    given back when it fails or is cancelled. It runs to its end even when a stream's reader goes away."""
    def call(*args, **kwargs) -> Answer:
        try:
            answer = fn(*args, **kwargs)
        except BaseException:
            conv.release(room)
            raise
        if answer.finish_reason == "cancelled":
            conv.release(room)
        else:
            conv.commit(room, user, answer.text, thumb, kind=kind,
                        meta={"timings": answer.timings.as_dict(), "usage": usage(answer)})
            st.sessions.touch(conv)
        return answer
    return call


def _recorder(st: AppState, conv: Conversation, kind: str):
    """A `finish` callback: count the generation, build the reply."""
    def finish(answer: Answer) -> dict:
        st.metrics.generation(kind, answer.timings, answer.completion_tokens, answer.finish_reason)
        return answer_body(answer, conv)
    return finish


def _reserve_with_thumbnail(st: AppState, conv: Conversation, picture: Picture | None) -> tuple[Room, str | None]:
    """The room held for an exchange, and the dialog's thumbnail of its new image (made in the image queue)."""
    room = _reserve(st, conv, picture)
    try:
        return room, st.images.run(thumbnail_url, picture.image) if picture is not None else None
    except BaseException:
        conv.release(room)
        raise


def chat_job(st: AppState, conv: Conversation, image: Picture | None, question: str,
             options: GenerationOptions) -> Job:
    """A follow-up or first question on a conversation, the new image (if any) attached to it."""
    room, thumb = _reserve_with_thumbnail(st, conv, image)
    user = Turn(role="user", text=question, images=[image.image] if image is not None else [])
    turns = [*conv.turns, user]
    fn = _holding(st, st.engine.chat, conv, room, user, "chat", thumb)
    return Job(fn, (turns,), {"options": options}, _recorder(st, conv, "chat"))


def describe_job(st: AppState, conv: Conversation, image: Picture | None, detail: str,
                 options: GenerationOptions) -> Job:
    """Describe the new image, or the conversation's latest one; recorded as a dialog turn."""
    room, thumb = _reserve_with_thumbnail(st, conv, image)
    target = image.image if image is not None else latest_image(conv)
    # recorded with the engine's own captioning question, so that follow-ups see the dialog it answered
    user = Turn(role="user", text=describe_prompt(detail), images=[image.image] if image is not None else [])
    kind = f"describe_{detail}"
    fn = _holding(st, st.engine.describe, conv, room, user, kind, thumb)
    return Job(fn, (target,), {"detail": detail, "options": options}, _recorder(st, conv, kind))


def run_job(job: Job) -> dict:
    """Run a job to completion and return its reply."""
    return job.finish(job.fn(*job.args, **job.kwargs))


def ground(st: AppState, image: Picture, phrases: list[str], detect_all: bool,
           options: GenerationOptions) -> dict:
    """Ground the phrases, keep what draws the annotated PNG and the JSON report for download, return the reply."""
    started = time.perf_counter()
    result: GroundingResult = st.engine.ground(image.image, phrases, detect_all=detect_all, options=options)
    if result.answer is not None:
        st.metrics.generation("ground", result.answer.timings, result.answer.completion_tokens,
                              result.answer.finish_reason)
    report = grounding_report(st, image.image, phrases, detect_all, result, time.perf_counter() - started)
    report["id"] = rid = new_id()
    report["downloads"] = {"png": url_for("api.result_png", rid=rid), "json": url_for("api.result_json", rid=rid)}
    # The PNG is drawn when downloaded: kept drawn, a big image's PNG would hold many times its file's size.
    drawing = Annotation(image.file, tuple(result.boxes), st.images)
    st.results.add(drawing, json.dumps(report, ensure_ascii=False, indent=2).encode("utf-8"), result_id=rid,
                   owner=client_key())
    return report


def grounding_report(st: AppState, image: Image.Image, phrases: list[str], detect_all: bool,
                     result: GroundingResult, seconds: float) -> dict:
    """The JSON report: image size, phrases, boxes (pixels and 0..1000), model, precision, timings."""
    info = st.info()
    answer = result.answer
    timings = answer.timings.as_dict() if answer is not None else {}
    timings["request_s"] = round(seconds, 4)
    return {
        "image_size": {"width": image.width, "height": image.height},
        "phrases": phrases,
        "detect_all": detect_all,
        "boxes": [b.as_dict() for b in result.boxes],
        "problems": list(result.problems),
        "raw_text": result.raw_text,
        "model": info.get("model"), "precision": info.get("precision"), "format": info.get("format"),
        "backend": info.get("backend"), "device": info.get("device"),
        "timings": timings,
        "usage": usage(answer) if answer is not None else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
