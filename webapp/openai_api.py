"""OpenAI-compatible `/v1/chat/completions` and `/v1/models` (text parts and `image_url` data: URLs)."""
from __future__ import annotations

import secrets
import time
from itertools import chain
from typing import Iterator

from flask import jsonify, request
from flask_babel import lazy_gettext as _l

from runtime.errors import InputTooLarge, InvalidInput
from runtime.limits import MAX_TILES
from runtime.prompts import describe_prompt
from runtime.types import Answer, GenerationOptions, Turn
from webapp.inputs import BadJson, Payload, decode_image, image_bytes_from_text, read_bool, read_float, read_int
from webapp.service import usage
from webapp.sse import open_stream, sse_response
from webapp.state import AppState, state

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def model_id(st: AppState) -> str:
    """The served model's name as OpenAI clients see it."""
    return st.info().get("model") or "internvl"


def list_models():
    """GET /v1/models: the one model this server runs."""
    st = state()
    return jsonify({"object": "list", "data": [{"id": model_id(st), "object": "model", "created": 0,
                                                "owned_by": "internvl-webapp"}]})


def chat_completions():
    """POST /v1/chat/completions: one answer, or `chat.completion.chunk` events when stream=true."""
    st = state()
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict):
        raise BadJson(_l("The request body must be a JSON object with a messages list."))
    payload = Payload(values={k: [v] for k, v in body.items()})
    options = completion_options(payload, st)
    stream = read_bool(payload, "stream")
    include_usage = isinstance(body.get("stream_options"), dict) and bool(body["stream_options"].get("include_usage"))
    turns = messages_to_turns(body.get("messages"), st)
    head = {"id": "chatcmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": model_id(st)}
    if not stream:
        answer = st.engine.chat(turns, options=options)
        st.metrics.generation("openai", answer.timings, answer.completion_tokens, answer.finish_reason)
        return jsonify(completion(head, answer))
    first, items = open_stream(st.engine.chat, turns, options=options)
    return sse_response(chunk_events(st, head, first, items, include_usage))


def completion_options(payload: Payload, st: AppState) -> GenerationOptions:
    """GenerationOptions from max_tokens / max_completion_tokens, temperature, top_p, stop, seed, max_tiles."""
    limit = st.max_new_tokens()  # past it: 400, as on /api/v1 (the default is clamped to it)
    max_tokens = read_int(payload, "max_completion_tokens", 1, limit, None)
    if max_tokens is None:
        max_tokens = read_int(payload, "max_tokens", 1, limit, min(GenerationOptions.max_new_tokens, limit))
    read_int(payload, "n", 1, 1, 1)  # one choice only
    return GenerationOptions(
        max_new_tokens=max_tokens,
        temperature=read_float(payload, "temperature", 0.0, 2.0, 0.0),
        top_p=read_float(payload, "top_p", 0.0, 1.0, 1.0),
        stop=read_stop(payload.get("stop")),
        seed=read_int(payload, "seed", -2**63, 2**63 - 1, None),
        max_tiles=read_int(payload, "max_tiles", 1, MAX_TILES, None),
    )


def read_stop(value) -> tuple[str, ...]:
    """`stop`: a string or a list of up to 4 non-empty strings."""
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or len(values) > 4 or not all(isinstance(v, str) and v for v in values):
        raise InvalidInput(_l("stop must be a string or a list of up to 4 strings."), field="stop")
    return tuple(values)


def messages_to_turns(messages, st: AppState) -> list[Turn]:
    """OpenAI messages -> runtime Turns, images decoded; the last message must be the user's."""
    settings = st.settings
    if not isinstance(messages, list) or not messages:
        raise InvalidInput(_l("messages must be a non-empty list."), field="messages")
    if len(messages) > 2 * settings.max_turns + 1:
        raise InputTooLarge(_l("Too many messages (at most %(n)d).", n=2 * settings.max_turns + 1),
                            field="messages")
    turns, budget = [], [settings.max_images]
    for message in messages:
        turns.append(message_to_turn(message, st, budget))
    if turns[-1].role != "user":
        raise InvalidInput(_l("The last message must be the user's."), field="messages")
    if sum(len(t.text) for t in turns) > settings.max_question_chars * settings.max_turns:
        raise InputTooLarge(_l("The messages are too long."), field="messages")
    return turns


def message_to_turn(message, st: AppState, budget: list[int]) -> Turn:
    """One message (content a string or a list of text / image_url parts) -> a Turn."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise InvalidInput(_l("Each message needs a role: system, user or assistant."), field="messages")
    role, content = ROLES[message["role"]], message.get("content")
    if content is None or isinstance(content, str):
        return Turn(role=role, text=content or "")
    if not isinstance(content, list):
        raise InvalidInput(_l("A message's content must be a string or a list of parts."), field="messages")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and role == "user":
            budget[0] -= 1
            if budget[0] < 0:
                raise InputTooLarge(_l("Too many images (at most %(n)d).", n=st.settings.max_images),
                                    field="messages")
            images.append(decode_image(image_bytes_from_text(_image_url(part), st.settings, "messages"),
                                       st.settings))
        else:
            raise InvalidInput(_l("Unsupported content part: use text, or image_url in a user message."),
                               field="messages")
    text = "\n".join(texts)
    if images and not text.strip():  # an image alone asks what it shows
        text = describe_prompt("detailed")
    return Turn(role=role, text=text, images=images)


def _image_url(part: dict) -> str:
    """The URL of an image_url part ({"url": ...} or a bare string)."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise InvalidInput(_l("An image_url part needs a url."), field="messages")
    return url


def finish_reason(answer: Answer) -> str:
    """OpenAI's finish reasons: "stop" or "length"."""
    return "length" if answer.finish_reason == "length" else "stop"


def completion(head: dict, answer: Answer) -> dict:
    """A `chat.completion` object."""
    choice = {"index": 0, "message": {"role": "assistant", "content": answer.text}, "logprobs": None,
              "finish_reason": finish_reason(answer)}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(answer),
            "timings": answer.timings.as_dict()}


def chunk(head: dict, delta: dict, reason: str | None = None, **extra) -> dict:
    """A `chat.completion.chunk` object with one choice."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
    return {**head, "object": "chat.completion.chunk", "choices": [choice], **extra}


def chunk_events(st: AppState, head: dict, first, items: Iterator, include_usage: bool) -> Iterator[dict]:
    """Role chunk, one chunk per delta, a final chunk with finish_reason and usage (and, when asked
    with stream_options.include_usage, OpenAI's extra usage-only chunk)."""
    try:
        yield chunk(head, {"role": "assistant", "content": ""})
        for item in chain([first], items):
            if isinstance(item, str):
                if item:
                    yield chunk(head, {"content": item})
                continue
            st.metrics.generation("openai", item.timings, item.completion_tokens, item.finish_reason)
            yield chunk(head, {}, finish_reason(item), usage=usage(item), timings=item.timings.as_dict())
            if include_usage:
                yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(item)}
    finally:
        items.close()
