"""REST API: answers, sessions, grounding downloads, streaming, and one error body for every bad input."""
from __future__ import annotations

import base64
import io
import json
import logging
import re

import pytest
from PIL import Image


def upload(png: bytes, name: str = "photo.png"):
    """A multipart file field value."""
    return (io.BytesIO(png), name)


def assert_error(resp, status: int, code: str | None = None, param: str | None = None) -> dict:
    """The one error body, with a plain message and no traceback."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    err = body["error"]
    assert set(err) >= {"code", "message", "type"}
    assert err["message"] and "Traceback" not in err["message"]
    if code:
        assert err["code"] == code
    if param:
        assert err.get("param") == param
    return err


# ---------------------------------------------------------------------------- health and metadata

def test_health_ready(client):
    resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok", "model": "OpenGVLab/InternVL3_5-1B", "format": "native",
                               "precision": "int8", "backend": "openvino", "device": "CPU"}


def test_health_loading_then_error(client, fake_engine):
    fake_engine.state = "loading"
    resp = client.get("/health")
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert resp.get_json()["status"] == "loading" and resp.get_json()["phase"] == "loading"
    fake_engine.state, fake_engine.error = "error", "exported model not found"
    resp = client.get("/health")
    assert resp.status_code == 503
    assert resp.get_json() == {"status": "error", "phase": "failed", "error": "exported model not found"}


def test_openapi_documents_every_api_route(app, client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = re.sub(r"<[^>]+>", "{id}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, method.lower()) in documented, (path, method)


def test_metrics_count_requests_and_generations(client, make_png):
    client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "hi"})
    client.post("/api/v1/chat", data={"question": "no image"})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'webapp_requests_total{route="/api/v1/chat",status="200"} 1.0' in text
    assert 'webapp_requests_total{route="/api/v1/chat",status="400"} 1.0' in text
    assert 'webapp_errors_total{code="invalid_input"} 1.0' in text
    for name in ("webapp_queue_depth", "webapp_time_to_first_token_seconds_count",
                 "webapp_decode_tokens_per_second_count", "webapp_generated_tokens_total"):
        assert name in text


# ---------------------------------------------------------------------------- chat and describe

def test_chat_keeps_the_image_for_follow_ups(client, fake_engine, make_png):
    first = client.post("/api/v1/chat", data={"image": upload(make_png(64, 48)), "question": "What is it?"})
    body = first.get_json()
    assert first.status_code == 200
    assert body["answer"].startswith("You asked: What is it?")
    assert set(body) >= {"answer", "session_id", "timings", "usage"}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    follow = client.post("/api/v1/chat", data={"question": "And the colour?", "session_id": body["session_id"]})
    assert follow.status_code == 200
    assert "1 image(s) in 3 turn(s)" in follow.get_json()["answer"]
    turns = fake_engine.calls[-1][1]
    assert [t.role for t in turns] == ["user", "assistant", "user"]
    assert turns[1].text == body["answer"] and len(turns[0].images) == 1
    more = client.post("/api/v1/chat", data={"question": "Compare", "session_id": body["session_id"],
                                             "image": upload(make_png(30, 90))})
    assert "2 image(s) in 5 turn(s). The last image is 30x90" in more.get_json()["answer"]


@pytest.mark.parametrize("encode", [
    lambda png: base64.b64encode(png).decode(),
    lambda png: "data:image/png;base64," + base64.b64encode(png).decode(),
    lambda png: base64.urlsafe_b64encode(png).decode().rstrip("="),
], ids=["base64", "data-url", "urlsafe-unpadded"])
def test_chat_json_body_with_base64_image(client, make_png, encode):
    resp = client.post("/api/v1/chat", json={"image": encode(make_png(20, 10)), "question": "Size?",
                                             "max_tiles": 3, "max_new_tokens": 50})
    assert resp.status_code == 200
    assert "20x10" in resp.get_json()["answer"]


def test_generation_options_reach_the_engine(client, fake_engine, make_png):
    resp = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "one two three",
                                             "max_tiles": "5", "max_new_tokens": "3"})
    body = resp.get_json()
    options = fake_engine.calls[-1][2]
    assert (options.max_tiles, options.max_new_tokens) == (5, 3)
    assert body["usage"]["completion_tokens"] == 3 and body["finish_reason"] == "length"


@pytest.mark.parametrize("detail", ["short", "detailed"])
def test_describe(client, fake_engine, make_png, detail):
    resp = client.post("/api/v1/describe", data={"image": upload(make_png(40, 30)), "detail": detail})
    body = resp.get_json()
    assert resp.status_code == 200 and body["answer"].startswith("A 40x30 picture.")
    assert ("average colour" in body["answer"]) == (detail == "detailed")
    assert fake_engine.calls[-1][2] == detail
    follow = client.post("/api/v1/chat", json={"question": "More?", "session_id": body["session_id"]})
    assert "1 image(s)" in follow.get_json()["answer"]


def test_delete_session(client, make_png):
    sid = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "q"}).get_json()["session_id"]
    assert client.delete(f"/api/v1/sessions/{sid}").status_code == 204
    assert_error(client.delete(f"/api/v1/sessions/{sid}"), 404, "not_found")
    assert_error(client.post("/api/v1/chat", data={"question": "again", "session_id": sid}), 404, "not_found",
                 "session_id")


def test_api_never_sets_a_cookie(client, make_png):
    resp = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "q"})
    assert "Set-Cookie" not in resp.headers


# ---------------------------------------------------------------------------- streaming

def test_chat_stream_framing(client, make_png, read_sse):
    resp = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "Tell me", "stream": "true"})
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    events = read_sse(resp.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    deltas, final = events[:-2], events[-2]
    assert len(deltas) > 1 and all(set(e) == {"delta"} for e in deltas)
    assert "".join(e["delta"] for e in deltas) == final["answer"]
    assert final["session_id"] and final["usage"]["completion_tokens"] == len(deltas)


def test_describe_stream_json_flag(client, make_png, read_sse):
    png = base64.b64encode(make_png(12, 34)).decode()
    resp = client.post("/api/v1/describe", json={"image": png, "detail": "detailed", "stream": True})
    events = read_sse(resp.get_data(as_text=True))
    assert events[-1] == "[DONE]" and "12x34" in events[-2]["answer"]


def test_stream_busy_is_an_http_error_not_an_event(client, fake_engine, make_png):
    fake_engine.busy = True
    resp = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "q", "stream": "1"})
    assert_error(resp, 503, "busy")
    assert resp.headers["Retry-After"] == "7"


def test_client_disconnect_cancels_generation(client, fake_engine, make_png):
    fake_engine.delay_s = 0.02
    question = " ".join(["word"] * 39)  # ~50 streamed words, 20 ms each
    resp = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": question, "stream": "true"},
                       buffered=False)
    chunks = iter(resp.response)
    assert next(chunks).startswith(b"data: ")
    resp.close()  # what the WSGI server does when the client goes away
    assert fake_engine.cancelled.wait(5)


# ---------------------------------------------------------------------------- grounding and downloads

def test_ground_boxes_and_download_round_trip(client, make_png):
    resp = client.post("/api/v1/ground", data={"image": upload(make_png(200, 100)), "phrases": "cat, red car"})
    body = resp.get_json()
    assert resp.status_code == 200
    assert set(body) >= {"boxes", "image_size", "raw_text", "problems", "downloads", "timings"}
    assert [b["label"] for b in body["boxes"]] == ["cat", "red car"]
    assert body["boxes"][0]["bbox"] == [20.0, 15.0, 80.0, 60.0]  # 0..1000 scaled to 200 x 100 pixels
    assert body["boxes"][0]["bbox_norm"] == [100, 150, 400, 600]
    assert body["downloads"]["png"].endswith(".png") and body["downloads"]["json"].endswith(".json")
    png = client.get(body["downloads"]["png"])
    assert png.mimetype == "image/png"
    assert Image.open(io.BytesIO(png.data)).size == (200, 100)
    report = json.loads(client.get(body["downloads"]["json"]).data)
    assert report["image_size"] == {"width": 200, "height": 100}
    assert report["phrases"] == ["cat", "red car"] and report["model"] and report["precision"] == "int8"
    for box in report["boxes"]:
        x1, y1, x2, y2 = box["bbox"]
        assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 100
        assert all(0 <= v <= 1000 for v in box["bbox_norm"])


@pytest.mark.parametrize("send", [
    lambda c, img: c.post("/api/v1/ground", data={"image": upload(img), "phrases": ["cat", "dog"]}),
    lambda c, img: c.post("/api/v1/ground", json={"image": base64.b64encode(img).decode(), "phrases": ["cat", "dog"]}),
    lambda c, img: c.post("/api/v1/ground", json={"image": base64.b64encode(img).decode(), "phrases": "cat,dog,"}),
], ids=["repeated-fields", "json-list", "json-comma"])
def test_ground_phrase_forms(client, make_png, send):
    resp = send(client, make_png())
    assert resp.get_json()["phrases"] == ["cat", "dog"]


def test_ground_detect_all(client, make_png):
    body = client.post("/api/v1/ground", data={"image": upload(make_png()), "detect_all": "true"}).get_json()
    assert len(body["boxes"]) == 3 and body["phrases"] == [] and body["detect_all"] is True


@pytest.mark.parametrize("path", [
    "/api/v1/results/doesnotexist000000000000.png",
    "/api/v1/results/short.json",
    "/api/v1/results/..%2F..%2Fetc%2Fpasswd.json",
    "/api/v1/results/../../webapp/settings.py",
    "/api/v1/results/%2e%2e.png",
])
def test_results_unknown_or_malformed_ids(client, path):
    resp = client.get(path)
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"


def test_results_expire(client, app, make_png):
    body = client.post("/api/v1/ground", data={"image": upload(make_png()), "phrases": "cat"}).get_json()
    store = app.extensions["webapp"].results
    store.clock = lambda: 1e12  # far in the future
    assert client.get(body["downloads"]["png"]).status_code == 404


# ---------------------------------------------------------------------------- errors

def _html() -> bytes:
    return b"<!doctype html><html><body>hi</body></html>"


def _truncated(png: bytes) -> bytes:
    return png[: len(png) // 2]


BAD_REQUESTS = {
    # id: (path, kind, fields (callable of png -> dict), status, code, param)
    "missing-image": ("/api/v1/chat", "form", lambda png: {"question": "q"}, 400, "invalid_input", "image"),
    "ground-missing-image": ("/api/v1/ground", "form", lambda png: {"phrases": "cat"}, 400, "invalid_input", "image"),
    "non-image": ("/api/v1/chat", "form", lambda png: {"image": upload(_html(), "x.png"), "question": "q"},
                  415, "unsupported_media_type", "image"),
    "truncated": ("/api/v1/chat", "form", lambda png: {"image": upload(_truncated(png)), "question": "q"},
                  400, "invalid_image", "image"),
    "too-large-file": ("/api/v1/chat", "form", lambda png: {"image": upload(png + b"\0" * 2**20), "question": "q"},
                       413, "input_too_large", "image"),
    "too-large-body": ("/api/v1/chat", "form", lambda png: {"image": upload(b"\0" * 3 * 2**20), "question": "q"},
                       413, "input_too_large", None),
    "too-many-pixels": ("/api/v1/chat", "form", "big", 413, "input_too_large", "image"),
    "empty-question": ("/api/v1/chat", "form", lambda png: {"image": upload(png), "question": "   "},
                       400, "invalid_input", "question"),
    "long-question": ("/api/v1/chat", "form", lambda png: {"image": upload(png), "question": "x" * 201},
                      413, "input_too_large", "question"),
    "max-tiles-0": ("/api/v1/chat", "form", lambda png: {"image": upload(png), "question": "q", "max_tiles": "0"},
                    400, "invalid_input", "max_tiles"),
    "max-tiles-13": ("/api/v1/chat", "json", lambda png: {"image": _b64(png), "question": "q", "max_tiles": 13},
                     400, "invalid_input", "max_tiles"),
    "max-tiles-text": ("/api/v1/chat", "form", lambda png: {"image": upload(png), "question": "q", "max_tiles": "x"},
                       400, "invalid_input", "max_tiles"),
    "max-tiles-bool": ("/api/v1/chat", "json", lambda png: {"image": _b64(png), "question": "q", "max_tiles": True},
                       400, "invalid_input", "max_tiles"),
    "max-new-tokens": ("/api/v1/chat", "json", lambda png: {"image": _b64(png), "question": "q",
                                                            "max_new_tokens": 10**9}, 400, "invalid_input",
                       "max_new_tokens"),
    "bad-stream-flag": ("/api/v1/chat", "form", lambda png: {"image": upload(png), "question": "q", "stream": "maybe"},
                        400, "invalid_input", "stream"),
    "bad-json": ("/api/v1/chat", "raw", lambda png: b'{"question": "q",', 400, "invalid_json", None),
    "json-not-object": ("/api/v1/chat", "json", lambda png: ["q"], 400, "invalid_json", None),
    "bad-base64": ("/api/v1/chat", "json", lambda png: {"image": "not base64!!", "question": "q"},
                   400, "invalid_input", "image"),
    "bad-data-url": ("/api/v1/chat", "json", lambda png: {"image": "data:image/png;base64,@@@", "question": "q"},
                     400, "invalid_input", "image"),
    "image-not-text": ("/api/v1/chat", "json", lambda png: {"image": 5, "question": "q"},
                       400, "invalid_input", "image"),
    "file-url": ("/api/v1/chat", "json", lambda png: {"image": "file:///etc/passwd", "question": "q"},
                 400, "invalid_input", "image"),
    "remote-url": ("/api/v1/chat", "json", lambda png: {"image": "https://example.com/cat.png", "question": "q"},
                   400, "remote_image_refused", "image"),
    "unknown-session": ("/api/v1/chat", "form", lambda png: {"question": "q", "session_id": "A" * 32},
                        404, "not_found", "session_id"),
    "malformed-session": ("/api/v1/chat", "form", lambda png: {"question": "q", "session_id": "../../x"},
                          404, "not_found", "session_id"),
    "text-plain": ("/api/v1/chat", "text", lambda png: b"question=q", 415, "unsupported_media_type", None),
    "bad-detail": ("/api/v1/describe", "form", lambda png: {"image": upload(png), "detail": "long"},
                   400, "invalid_input", "detail"),
    "no-phrases": ("/api/v1/ground", "form", lambda png: {"image": upload(png), "phrases": " , "},
                   400, "invalid_input", "phrases"),
    "many-phrases": ("/api/v1/ground", "form", lambda png: {"image": upload(png), "phrases": "a,b,c,d"},
                     413, "input_too_large", "phrases"),
    "long-phrase": ("/api/v1/ground", "form", lambda png: {"image": upload(png), "phrases": "x" * 41},
                    413, "input_too_large", "phrases"),
}


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_requests_get_one_error_body(client, make_png, fake_engine, case):
    path, kind, fields, status, code, param = BAD_REQUESTS[case]
    png = make_png()
    if fields == "big":  # 2100 x 2000 = 4.2 MP > the 4 MP test limit, tiny as a file
        fields = lambda png: {"image": upload(make_png(2100, 2000, (0, 0, 0))), "question": "q"}  # noqa: E731
    payload = fields(png)
    if kind == "form":
        resp = client.post(path, data=payload)
    elif kind == "json":
        resp = client.post(path, json=payload)
    elif kind == "raw":
        resp = client.post(path, data=payload, content_type="application/json")
    else:
        resp = client.post(path, data=payload, content_type="text/plain")
    assert_error(resp, status, code, param)
    assert not fake_engine.calls  # nothing bad reached the engine


def test_turn_and_image_limits(client, make_png):
    sid = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "1"}).get_json()["session_id"]
    client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "2", "session_id": sid})
    assert_error(client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "3", "session_id": sid}),
                 400, "invalid_input", "image")  # max_images=2
    assert client.post("/api/v1/chat", data={"question": "3", "session_id": sid}).status_code == 200
    assert_error(client.post("/api/v1/chat", data={"question": "4", "session_id": sid}),
                 400, "invalid_input", "question")  # max_turns=3


@pytest.mark.parametrize("path", ["/api/v1/chat", "/api/v1/describe", "/api/v1/ground"])
def test_busy_gives_503_with_retry_after(client, fake_engine, make_png, path):
    fake_engine.busy = True
    resp = client.post(path, data={"image": upload(make_png()), "question": "q", "phrases": "cat"})
    assert_error(resp, 503, "busy")
    assert resp.headers["Retry-After"] == "7"


def test_loading_gives_503(client, fake_engine, make_png):
    fake_engine.state = "loading"
    resp = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "q"})
    assert_error(resp, 503, "model_not_ready")
    assert resp.headers["Retry-After"]


def test_not_found_and_method_not_allowed(client):
    assert_error(client.get("/api/v1/nothing"), 404, "not_found")
    resp = client.get("/api/v1/chat")
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


def test_bug_gives_500_with_an_id_and_no_traceback(client, fake_engine, make_png, caplog):
    fake_engine.crash = RuntimeError("secret internals")
    with caplog.at_level(logging.ERROR):
        resp = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "q"})
    err = assert_error(resp, 500, "internal_error")
    assert "secret internals" not in resp.get_data(as_text=True)
    assert err["error_id"] in err["message"] and err["error_id"] in caplog.text


def test_errors_in_russian_when_asked(client):
    resp = client.post("/api/v1/chat", data={"question": ""}, headers={"Accept-Language": "ru"})
    assert resp.status_code == 400
    assert "вопрос" in resp.get_json()["error"]["message"]


# ---------------------------------------------------------------------------- API key

@pytest.fixture
def keyed_client(web_settings, fake_engine):
    from dataclasses import replace

    from webapp import create_app

    return create_app(replace(web_settings, api_key="s3cret"), engine=fake_engine).test_client()


def test_api_key_required_when_set(keyed_client, make_png):
    assert_error(keyed_client.get("/v1/models"), 401, "unauthorized")
    assert_error(keyed_client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
    assert keyed_client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    resp = keyed_client.post("/api/v1/ground", data={"image": upload(make_png()), "phrases": "cat"},
                             headers={"X-API-Key": "s3cret"})
    assert resp.status_code == 200
    assert keyed_client.get(resp.get_json()["downloads"]["png"]).status_code == 200  # capability URL
    assert keyed_client.get("/health").status_code == 200
    page = keyed_client.get("/")  # the pages run the model too: they ask for the key (tests/test_access.py)
    assert page.status_code == 303 and page.headers["Location"].startswith("/login")


# ---------------------------------------------------------------------------- headers

@pytest.mark.parametrize("method,path", [("get", "/"), ("get", "/ground"), ("get", "/status"), ("get", "/docs"),
                                         ("get", "/health"), ("get", "/metrics"), ("get", "/openapi.json"),
                                         ("get", "/static/app.css"), ("get", "/nope"), ("post", "/api/v1/chat"),
                                         ("get", "/v1/models")])
def test_security_headers_everywhere(client, method, path):
    resp = getattr(client, method)(path)
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"]
