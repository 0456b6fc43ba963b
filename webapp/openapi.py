"""The OpenAPI 3 document of the REST API, written by hand (served at /openapi.json, listed at /docs)."""
from __future__ import annotations

from webapp.settings import WebSettings
from webapp.state import PHASES


def N_(text: str) -> str:
    """Mark text for translation (pybabel extracts it): the document stays English, /docs shows it translated."""
    return text


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    words = {400: N_("Bad input"), 401: N_("Missing or wrong API key"), 404: N_("Unknown or expired id"),
             413: N_("Too large"), 415: N_("Not an image / wrong content type"),
             429: N_("Too many requests from this client (RATE_LIMIT; see Retry-After)"),
             503: N_("Model loading or server busy (see Retry-After)")}
    return {str(c): _json(_ref("Error"), words[c]) for c in codes}


SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "description": "JSON: {\"delta\": text} events, then the final object (or an Error), "
                                     "then the literal [DONE]"}}}


def _or_stream(ok: dict) -> dict:
    """A 200 answer that is Server-Sent Events instead when the request says stream=true."""
    return {**ok, "content": {**ok["content"], "text/event-stream": {"schema": SSE_EVENT}}}


def _fields(required: list[str], **props) -> dict:
    return {"type": "object", "required": required, "properties": props}


IMAGE = {"type": "string", "format": "binary",
         "description": N_("Image file (JPEG, PNG, WebP, GIF, BMP, TIFF). In JSON: base64 or a data: URL.")}
IMAGE_UNLESS_ID = {**IMAGE, "description": N_("Image file (JPEG, PNG, WebP, GIF, BMP, TIFF). In JSON: base64 or a "
                                              "data: URL. Required unless image_id is sent.")}
GEN = {
    "max_tiles": {"type": "integer", "minimum": 1, "maximum": 12,
                  "description": N_("Tile budget per image: more tiles, more detail, slower.")},
    "max_new_tokens": {"type": "integer", "minimum": 1, "description": N_(
        "Cap on generated tokens: at most MAX_NEW_TOKENS_LIMIT or the model's own limit, whichever is lower "
        "(see /status); more is a 400.")},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2,
                    "description": N_("0 (default) answers greedily.")},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1, "description": N_("Nucleus sampling mass.")},
    "stream": {"type": "boolean", "description": N_("Answer as Server-Sent Events: {delta} events, the final "
                                                    "answer object, then [DONE].")},
}
SESSION = {"type": "string", "description": N_("Continue this conversation (from an earlier answer).")}
IMAGE_ID = {"type": "string", "description": N_(
    "Instead of image: the image_id from POST /api/v1/images (sent without image). Without max_tiles the "
    "preparation's tile budget is used and its work reused (if it is not finished, the answer waits for it); a "
    "different max_tiles is allowed but reads the image again. Unknown or expired: 404 not_found with param "
    "image_id.")}
QUESTION = {"type": "string", "example": "What is in this picture?", "description": N_(
    "The question about the image, in any language (at most MAX_QUESTION_CHARS characters). A follow-up with "
    "session_id may leave the image out: the conversation's last image is used.")}
CHAT = _fields(["question"], image=IMAGE, image_id=IMAGE_ID, question=QUESTION, session_id=SESSION, **GEN)
DESCRIBE = _fields([], image=IMAGE, image_id=IMAGE_ID,
                   detail={"type": "string", "enum": ["short", "detailed"], "example": "short",
                           "description": N_("A one-sentence caption (short, the default) or a paragraph "
                                             "(detailed).")},
                   session_id=SESSION, **GEN)
GROUND = _fields([], image=IMAGE_UNLESS_ID, image_id=IMAGE_ID,
                 detect_all={"type": "boolean", "description": N_("Find and label every object instead of the "
                                                                  "phrases.")},
                 max_tiles=GEN["max_tiles"],
                 phrases={"type": "array", "items": {"type": "string"}, "example": ["cat", "red car"],
                          "description": N_("Objects to find; comma-separated or repeated fields.")})
PREPARE = _fields([], image=IMAGE_UNLESS_ID,
                  image_id={"type": "string", "description": N_("Read an earlier preparation's image again, at "
                                                                "another max_tiles (no upload).")},
                  max_tiles={**GEN["max_tiles"], "description": N_(
                      "Tile budget to prepare for (default: the server's); send the same one (or none) with the "
                      "question to reuse the work.")})
OPENAI_CHAT = _fields(
    ["messages"],
    model={"type": "string", "description": N_("Any name: the one served model answers (see /v1/models).")},
    messages={"type": "array", "items": {"type": "object"}, "description": N_(
        "The dialog: role system, user or assistant; content a string or a list of text and image_url parts "
        "(data: URLs).")},
    stream={"type": "boolean", "description": N_("Answer as chat.completion.chunk events, then [DONE].")},
    max_tokens={"type": "integer", "description": N_("Cap on generated tokens (as max_new_tokens).")},
    temperature={"type": "number", "description": N_("0 (default) answers greedily.")},
    top_p={"type": "number", "description": N_("Nucleus sampling mass.")},
    stop={"type": "array", "items": {"type": "string"}, "description": N_("Stop before any of these strings.")},
    max_tiles=GEN["max_tiles"])
OPENAI_EXAMPLE = {"model": "OpenGVLab/InternVL3_5-1B", "messages": [{"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg..."}}]}]}

SCHEMAS = {
    "Error": _fields(["error"], error=_fields(["code", "message", "type"], code={"type": "string"},
                                              message={"type": "string"}, type={"type": "string"},
                                              param={"type": "string"}, error_id={"type": "string"})),
    "Answer": _fields(["answer", "session_id", "timings", "usage"], answer={"type": "string"},
                      session_id={"type": "string"}, finish_reason={"type": "string"},
                      timings={"type": "object"}, usage={"type": "object"}),
    "Box": _fields(["label", "bbox", "bbox_norm"], label={"type": "string"},
                   bbox={"type": "array", "items": {"type": "number"}, "description": "x1, y1, x2, y2 pixels"},
                   bbox_norm={"type": "array", "items": {"type": "integer"}, "description": "0..1000"},
                   flags={"type": "array", "items": {"type": "string"}}),
    "Preparation": _fields(["image_id", "status", "tiles", "tiles_done", "progress", "max_tiles", "status_url"],
                           image_id={"type": "string"},
                           status={"type": "string", "enum": ["queued", "encoding", "ready", "failed"],
                                   "description": "failed: the image is read when a question comes instead"},
                           tiles={"type": "integer", "description": "Tiles to read (thumbnail included)"},
                           tiles_done={"type": "integer"}, progress={"type": "number", "description": "0..1"},
                           max_tiles={"type": "integer"}, width={"type": "integer"}, height={"type": "integer"},
                           error={"type": "string", "nullable": True},
                           seconds={"type": "number", "description": "Time spent reading so far"},
                           status_url={"type": "string", "description": "GET it to follow the progress"}),
    "Grounding": _fields(["boxes", "image_size", "raw_text", "problems", "downloads", "timings"],
                         id={"type": "string"}, boxes={"type": "array", "items": _ref("Box")},
                         image_size={"type": "object"}, raw_text={"type": "string"},
                         problems={"type": "array", "items": {"type": "string"}},
                         downloads=_fields(["png", "json"], png={"type": "string"}, json={"type": "string"}),
                         timings={"type": "object"}),
}


def _body(schema: dict) -> dict:
    return {"required": True, "content": {"multipart/form-data": {"schema": schema},
                                          "application/json": {"schema": schema}}}


def _op(summary: str, body: dict | None, ok: dict, *errors: int, params: list | None = None,
        status: str = "200") -> dict:
    limited = (429,) if body is not None else ()  # RATE_LIMIT counts the requests that make work
    op = {"summary": summary, "responses": {status: ok, **_errors(*errors, *limited)}}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _path_id(name: str, description: str) -> list:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
             "description": description}]


def _paths() -> dict:
    """Every path of the API with its operations."""
    answer = _or_stream(_json(_ref("Answer"), N_("The answer (or text/event-stream when stream=true)")))
    any_json = {"type": "object"}
    image_id = _path_id("id", N_("image_id from POST /api/v1/images"))
    result_id = _path_id("id", N_("Result id from /api/v1/ground"))
    paths = {
        "/api/v1/chat": {"post": _op(N_("Ask about an image; follow up with session_id"), _body(CHAT), answer,
                                     400, 401, 404, 413, 415, 503)},
        "/api/v1/describe": {"post": _op(N_("Describe an image (short or detailed)"), _body(DESCRIBE), answer,
                                         400, 401, 404, 413, 415, 503)},
        "/api/v1/ground": {"post": _op(N_("Find labelled boxes for phrases, or all objects"), _body(GROUND),
                                       _json(_ref("Grounding"), N_("Boxes and download links")),
                                       400, 401, 404, 413, 415, 503)},
        "/api/v1/images": {"post": _op(
            N_("Read an image before the question is asked; then send its image_id to chat, describe or ground"),
            _body(PREPARE), _json(_ref("Preparation"), N_("Accepted: the image is being read (Location: status_url)")),
            400, 401, 404, 413, 415, 503, status="202")},
        "/api/v1/images/{id}": {
            "get": _op(N_("How far the reading of a prepared image has got"), None,
                       _json(_ref("Preparation"), N_("The preparation's status")), 401, 404, 503, params=image_id),
            "delete": {"summary": N_("Drop a preparation that is no longer wanted"), "parameters": image_id,
                       "responses": {"204": {"description": N_("Dropped")}, **_errors(401, 404, 429)}}},
        "/api/v1/results/{id}.png": {"get": _op(N_("Annotated image of a grounding result"), None,
                                                {"description": "PNG", "content": {"image/png": {}}}, 404,
                                                params=result_id)},
        "/api/v1/results/{id}.json": {"get": _op(N_("JSON report of a grounding result"), None,
                                                 _json(any_json, N_("Report")), 404, params=result_id)},
        "/api/v1/sessions/{id}": {"delete": {"summary": N_("Forget a conversation"),
                                             "parameters": _path_id("id", N_("session_id of the conversation")),
                                             "responses": {"204": {"description": N_("Deleted")},
                                                           **_errors(401, 404, 429)}}},
        "/v1/chat/completions": {"post": _op(
            N_("OpenAI-compatible chat (text and image_url data: URLs; stream, max_tokens, temperature, top_p, "
               "stop); a user message with only an image is answered with a detailed description"),
            {"required": True, "content": {"application/json": {"schema": OPENAI_CHAT, "example": OPENAI_EXAMPLE}}},
            _or_stream(_json(any_json, N_("chat.completion (or chat.completion.chunk events)"))), 400, 401, 413,
            503)},
        "/v1/models": {"get": _op(N_("The served model"), None, _json(any_json, N_("Model list")), 401)},
        "/health": {"get": {"summary": N_("200 when ready; 503 while loading or after a load error"),
                            "responses": {"200": _json(any_json, N_("Ready")),
                                          "503": _json(HEALTH_503, N_("Loading (with the phase and its progress) "
                                                                      "or error (with the reason)"))}}},
        "/metrics": {"get": {"summary": N_("Prometheus metrics"),
                             "responses": {"200": {"description": N_("text/plain exposition format")}}}},
        "/openapi.json": {"get": {"summary": N_("This document"),
                                  "responses": {"200": _json(any_json, N_("OpenAPI 3 document"))}}},
    }
    return paths


HEALTH_503 = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["loading", "error"]},
    "phase": {"type": "string", "enum": [p for p in PHASES if p != "ready"],
              "description": "what the first start is doing: downloading the weights, converting an "
                             "original-format checkpoint, exporting to OpenVINO, loading the engine"},
    "progress": {"type": "string", "description": "what is being done now, in words"},
    "done": {"type": "integer", "description": "bytes downloaded or parts exported so far, where known"},
    "total": {"type": "integer", "description": "bytes or parts in all, where known"},
    "unit": {"type": "string", "enum": ["bytes", "parts"]},
    "error": {"type": "string", "description": "why the start failed (status error)"}}}


def openapi_spec(settings: WebSettings) -> dict:
    """The whole OpenAPI 3.0 document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "InternVL3.5 web API", "version": "1.0",
                 "description": f"Vision-language answers on CPU. Uploads up to {settings.max_upload_mb} MB. "
                                "Errors: {\"error\": {\"code\", \"message\", \"type\"}}."},
        "paths": _paths(),
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "security": [{"bearer": []}, {"apiKey": []}, {}] if settings.api_key else [],
    }
