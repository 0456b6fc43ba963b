"""Images read before the question: POST /api/v1/images, its status, image_id on chat / describe / ground,
the page routes the chat and grounding pages use, and one error body for every bad request."""
from __future__ import annotations

import base64
import io
import json
import re
import time

import pytest
from test_webapp_api import assert_error

TILES = 3  # a 200 x 100 image at max_tiles=2: a 2 x 1 grid and the thumbnail


def upload(png: bytes, name: str = "photo.png"):
    """A multipart file field value."""
    return (io.BytesIO(png), name)


def prepare(client, png: bytes, **fields) -> dict:
    """POST /api/v1/images; the 202 body."""
    resp = client.post("/api/v1/images", data={"image": upload(png), **fields})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.get_json()


def wait_ready(client, url: str, timeout: float = 5.0) -> list[dict]:
    """Poll a status URL until the preparation is ready; every status seen, in order."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = client.get(url)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        seen.append(resp.get_json())
        if seen[-1]["status"] not in ("queued", "encoding"):
            return seen
        time.sleep(0.01)
    raise AssertionError(f"not ready: {seen[-1]}")


def csrf(client) -> str:
    """Load a page and take its CSRF token from the meta tag."""
    html = client.get("/").get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', html).group(1)


# ---------------------------------------------------------------------------- POST /api/v1/images and its status

def test_prepare_answers_202_then_progresses_to_ready(client, fake_engine, make_png):
    resp = client.post("/api/v1/images", data={"image": upload(make_png(200, 100)), "max_tiles": "2"})
    body = resp.get_json()
    assert resp.status_code == 202
    assert set(body) >= {"image_id", "status", "tiles", "tiles_done", "progress", "max_tiles", "width", "height",
                         "error", "seconds", "status_url"}
    assert body["status"] in ("queued", "encoding") and body["tiles"] == TILES and body["max_tiles"] == 2
    assert (body["width"], body["height"]) == (200, 100)
    assert body["status_url"] == f"/api/v1/images/{body['image_id']}" and resp.headers["Location"] == body["status_url"]
    seen = wait_ready(client, body["status_url"])
    done = [s["tiles_done"] for s in seen]
    assert done == sorted(done) and seen[-1]["status"] == "ready"
    assert seen[-1]["tiles_done"] == seen[-1]["tiles"] == TILES and seen[-1]["progress"] == 1.0
    assert fake_engine.calls[0][0] == "prepare" and fake_engine.calls[0][2] == 2
    assert "Set-Cookie" not in resp.headers


@pytest.mark.parametrize("encode", [lambda png: base64.b64encode(png).decode(),
                                    lambda png: "data:image/png;base64," + base64.b64encode(png).decode()],
                         ids=["base64", "data-url"])
def test_prepare_json_body(client, make_png, encode):
    resp = client.post("/api/v1/images", json={"image": encode(make_png(200, 100)), "max_tiles": 4})
    assert resp.status_code == 202 and resp.get_json()["max_tiles"] == 4


def test_prepare_without_max_tiles_uses_the_default(client, make_png):
    assert prepare(client, make_png(200, 100))["max_tiles"] == 2  # the fake's default_max_tiles


def test_prepare_again_at_another_budget_from_the_image_id(client, fake_engine, make_png):
    first = prepare(client, make_png(200, 100), max_tiles="2")
    resp = client.post("/api/v1/images", json={"image_id": first["image_id"], "max_tiles": 6})
    again = resp.get_json()
    assert resp.status_code == 202 and again["image_id"] != first["image_id"]
    assert again["max_tiles"] == 6 and (again["width"], again["height"]) == (200, 100)
    assert fake_engine.calls[-1][1] is fake_engine.calls[0][1]  # the same image, not a new upload


def test_delete_drops_the_preparation(client, make_png):
    body = prepare(client, make_png(200, 100))
    assert client.delete(body["status_url"]).status_code == 204
    assert_error(client.get(body["status_url"]), 404, "not_found", "image_id")
    assert_error(client.delete(body["status_url"]), 404, "not_found", "image_id")
    assert_error(client.post("/api/v1/chat", data={"image_id": body["image_id"], "question": "q"}),
                 404, "not_found", "image_id")


def test_failed_preparation_is_reported_and_the_image_still_answers(client, fake_engine, make_png):
    fake_engine.prepare_error = "vision encoder crashed"
    body = prepare(client, make_png(200, 100))
    final = wait_ready(client, body["status_url"])[-1]
    assert final["status"] == "failed" and final["error"] == "vision encoder crashed"
    resp = client.post("/api/v1/chat", data={"image_id": body["image_id"], "question": "Size?"})
    assert resp.status_code == 200 and "200x100" in resp.get_json()["answer"]


# ---------------------------------------------------------------------------- image_id on chat, describe, ground

def test_chat_with_image_id_reuses_the_preparation(client, fake_engine, make_png):
    body = prepare(client, make_png(200, 100), max_tiles="2")
    wait_ready(client, body["status_url"])
    resp = client.post("/api/v1/chat", json={"image_id": body["image_id"], "question": "Size?"})
    answer = resp.get_json()
    assert resp.status_code == 200 and "The last image is 200x100 pixels." in answer["answer"]
    assert answer["timings"]["cached_tokens"] == 256 * TILES
    _, turns, options = fake_engine.calls[-1]
    assert options.max_tiles == 2 and turns[-1].images[0] is fake_engine.calls[0][1]
    follow = client.post("/api/v1/chat", json={"question": "More?", "session_id": answer["session_id"]})
    assert "1 image(s) in 3 turn(s)" in follow.get_json()["answer"]


def test_asking_before_ready_waits_for_the_preparation(client, fake_engine, make_png):
    fake_engine.prepare_tile_s = 0.2
    body = prepare(client, make_png(200, 100))
    started = time.monotonic()
    resp = client.post("/api/v1/chat", data={"image_id": body["image_id"], "question": "Now?"})
    assert resp.status_code == 200 and resp.get_json()["timings"]["cached_tokens"] == 256 * TILES
    assert time.monotonic() - started >= 0.3  # it waited for the reading instead of reading again
    assert client.get(body["status_url"]).get_json()["status"] == "ready"


def test_a_different_max_tiles_is_allowed_but_reads_the_image_again(client, fake_engine, make_png):
    body = prepare(client, make_png(200, 100), max_tiles="2")
    wait_ready(client, body["status_url"])
    resp = client.post("/api/v1/chat", data={"image_id": body["image_id"], "question": "q", "max_tiles": "4"})
    assert resp.status_code == 200 and resp.get_json()["timings"]["cached_tokens"] == 0
    assert fake_engine.calls[-1][2].max_tiles == 4
    resp = client.post("/api/v1/chat", data={"image_id": body["image_id"], "question": "q", "max_tiles": "2"})
    assert resp.get_json()["timings"]["cached_tokens"] == 256 * TILES  # the same budget, said explicitly


@pytest.mark.parametrize("detail", ["short", "detailed"])
def test_describe_with_image_id(client, fake_engine, make_png, detail):
    body = prepare(client, make_png(200, 100))
    resp = client.post("/api/v1/describe", data={"image_id": body["image_id"], "detail": detail})
    answer = resp.get_json()
    assert resp.status_code == 200 and answer["answer"].startswith("A 200x100 picture.")
    assert answer["timings"]["cached_tokens"] == 256 * TILES and fake_engine.calls[-1][2] == detail


def test_ground_with_image_id(client, make_png):
    body = prepare(client, make_png(200, 100))
    resp = client.post("/api/v1/ground", json={"image_id": body["image_id"], "phrases": ["cat"]})
    report = resp.get_json()
    assert resp.status_code == 200 and report["image_size"] == {"width": 200, "height": 100}
    assert report["boxes"][0]["bbox"] == [20.0, 15.0, 80.0, 60.0] and report["timings"]["cached_tokens"] > 0


def test_stream_with_image_id(client, make_png, read_sse):
    body = prepare(client, make_png(200, 100))
    resp = client.post("/api/v1/chat", data={"image_id": body["image_id"], "question": "Tell me", "stream": "1"})
    events = read_sse(resp.get_data(as_text=True))
    assert events[-1] == "[DONE]" and "".join(e["delta"] for e in events[:-2]) == events[-2]["answer"]


# ---------------------------------------------------------------------------- errors

def _html() -> bytes:
    return b"<!doctype html><html><body>hi</body></html>"


UNKNOWN = "A" * 16
BAD = {
    # id: (method, path, kind, fields (callable of png -> body), status, code, param)
    "prepare-non-image": ("post", "/api/v1/images", "form", lambda png: {"image": upload(_html(), "x.png")},
                          415, "unsupported_media_type", "image"),
    "prepare-truncated": ("post", "/api/v1/images", "form", lambda png: {"image": upload(png[:40])},
                          400, "invalid_image", "image"),
    "prepare-no-image": ("post", "/api/v1/images", "form", lambda png: {"max_tiles": "2"},
                         400, "invalid_input", "image"),
    "prepare-too-large": ("post", "/api/v1/images", "form", lambda png: {"image": upload(png + b"\0" * 2**20)},
                          413, "input_too_large", "image"),
    "prepare-tiles-0": ("post", "/api/v1/images", "form", lambda png: {"image": upload(png), "max_tiles": "0"},
                        400, "invalid_input", "max_tiles"),
    "prepare-tiles-13": ("post", "/api/v1/images", "json", lambda png: {"image": _b64(png), "max_tiles": 13},
                         400, "invalid_input", "max_tiles"),
    "prepare-tiles-text": ("post", "/api/v1/images", "form", lambda png: {"image": upload(png), "max_tiles": "x"},
                           400, "invalid_input", "max_tiles"),
    "prepare-bad-json": ("post", "/api/v1/images", "raw", lambda png: b'{"image": ', 400, "invalid_json", None),
    "prepare-text-plain": ("post", "/api/v1/images", "text", lambda png: b"image=x", 415,
                           "unsupported_media_type", None),
    "prepare-unknown-id": ("post", "/api/v1/images", "json", lambda png: {"image_id": UNKNOWN, "max_tiles": 3},
                           404, "not_found", "image_id"),
    "status-unknown": ("get", f"/api/v1/images/{UNKNOWN}", None, None, 404, "not_found", "image_id"),
    "status-malformed": ("get", "/api/v1/images/..%2F..%2Fetc", None, None, 404, "not_found", None),
    "delete-unknown": ("delete", f"/api/v1/images/{UNKNOWN}", None, None, 404, "not_found", "image_id"),
    "chat-unknown-id": ("post", "/api/v1/chat", "form", lambda png: {"image_id": UNKNOWN, "question": "q"},
                        404, "not_found", "image_id"),
    "chat-malformed-id": ("post", "/api/v1/chat", "json", lambda png: {"image_id": "../../x", "question": "q"},
                          404, "not_found", "image_id"),
    "chat-id-not-text": ("post", "/api/v1/chat", "json", lambda png: {"image_id": 5, "question": "q"},
                         400, "invalid_input", "image_id"),
    "chat-image-and-id": ("post", "/api/v1/chat", "form", lambda png: {"image": upload(png), "image_id": UNKNOWN,
                                                                       "question": "q"},
                          400, "invalid_input", "image_id"),
    "chat-id-bad-tiles": ("post", "/api/v1/chat", "form", lambda png: {"image_id": UNKNOWN, "question": "q",
                                                                       "max_tiles": "99"},
                          400, "invalid_input", "max_tiles"),
    "describe-unknown-id": ("post", "/api/v1/describe", "json", lambda png: {"image_id": UNKNOWN},
                            404, "not_found", "image_id"),
    "ground-unknown-id": ("post", "/api/v1/ground", "json", lambda png: {"image_id": UNKNOWN, "phrases": "cat"},
                          404, "not_found", "image_id"),
}


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_requests_get_one_error_body(client, fake_engine, make_png, case):
    method, path, kind, fields, status, code, param = BAD[case]
    payload = fields(make_png()) if fields else None
    if kind == "form":
        resp = client.open(path, method=method, data=payload)
    elif kind == "json":
        resp = client.open(path, method=method, json=payload)
    elif kind in ("raw", "text"):
        resp = client.open(path, method=method, data=payload,
                           content_type="application/json" if kind == "raw" else "text/plain")
    else:
        resp = client.open(path, method=method)
    assert_error(resp, status, code, param)
    assert not fake_engine.calls  # nothing bad reached the engine


def test_model_loading_gives_503(client, fake_engine, make_png):
    body = prepare(client, make_png())
    fake_engine.state = "loading"
    assert_error(client.post("/api/v1/images", data={"image": upload(make_png())}), 503, "model_not_ready")
    resp = client.get(body["status_url"])
    assert_error(resp, 503, "model_not_ready")
    assert resp.headers["Retry-After"]


def test_unknown_image_id_message_in_russian(client):
    resp = client.post("/api/v1/chat", json={"image_id": UNKNOWN, "question": "q"}, headers={"Accept-Language": "ru"})
    assert resp.status_code == 404 and re.search("[а-яА-Я]", resp.get_json()["error"]["message"])


# ---------------------------------------------------------------------------- the page routes

def test_page_prepare_needs_the_csrf_token(client, make_png):
    csrf(client)
    resp = client.post("/images", data={"image": upload(make_png())}, headers={"Accept": "application/json"})
    assert_error(resp, 403, "csrf_failed")


def test_page_prepare_replaces_the_previous_image_of_the_browser(client, make_png):
    headers = {"Accept": "application/json", "X-CSRF-Token": csrf(client)}
    first = client.post("/images", data={"image": upload(make_png(200, 100))}, headers=headers)
    assert first.status_code == 202
    first = first.get_json()
    assert first["status_url"] == f"/images/{first['image_id']}"
    assert wait_ready(client, first["status_url"])[-1]["status"] == "ready"
    second = client.post("/images", data={"image": upload(make_png(30, 20))}, headers=headers).get_json()
    poll = {"Accept": "application/json"}  # as prepare.js asks (a browser tab opening the URL gets a page)
    assert_error(client.get(first["status_url"], headers=poll), 404, "not_found", "image_id")  # replaced: dropped
    assert client.get(second["status_url"], headers=poll).status_code == 200
    client.post("/chat/new", data={"csrf_token": headers["X-CSRF-Token"]})
    assert_error(client.get(second["status_url"], headers=poll), 404, "not_found", "image_id")  # so does "new"


def test_page_prepare_errors_are_json_by_the_image_field(client):
    headers = {"Accept": "application/json", "X-CSRF-Token": csrf(client)}
    resp = client.post("/images", data={"image": upload(_html(), "x.png")}, headers=headers)
    assert_error(resp, 415, "unsupported_media_type", "image")


def test_chat_and_ground_pages_share_one_preparation(client, fake_engine, make_png, read_sse):
    token = csrf(client)
    headers = {"Accept": "application/json", "X-CSRF-Token": token}
    body = client.post("/images", data={"image": upload(make_png(200, 100)), "max_tiles": "2"},
                       headers=headers).get_json()
    resp = client.post("/chat", data={"image_id": body["image_id"], "question": "Size?", "max_tiles": "2"},
                       headers={"Accept": "text/event-stream", "X-CSRF-Token": token})
    final = read_sse(resp.get_data(as_text=True))[-2]
    assert "200x100" in final["answer"] and final["timings"]["cached_tokens"] == 256 * TILES
    resp = client.post("/ground", data={"csrf_token": token, "image_id": body["image_id"], "phrases": "cat",
                                        "max_tiles": "2"})
    assert resp.status_code == 303
    html = client.get("/ground").get_data(as_text=True)
    assert "<td>cat</td>" in html and 'width="200" height="100"' in html
    assert [c[0] for c in fake_engine.calls] == ["prepare", "chat", "ground"]  # read once, used twice


def test_page_post_with_an_expired_image_id_shows_the_error_by_the_image(client):
    token = csrf(client)
    resp = client.post("/ground", data={"csrf_token": token, "image_id": UNKNOWN, "phrases": "cat"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 404
    assert "does not exist or has expired" in re.search(r'id="error-image"[^>]*>(.*?)</p>', html, re.S).group(1)


def page_strings(html: str) -> dict:
    """The translated strings a page hands its scripts."""
    return json.loads(re.search(r'<script type="application/json" id="i18n">(.*?)</script>', html, re.S).group(1))


def test_pages_carry_the_preparation_hooks(client):
    for path in ("/", "/ground"):
        html = client.get(path).get_data(as_text=True)
        assert 'data-prepare="/images"' in html and 'name="image_id"' in html and 'id="image-status"' in html
        assert "/static/prepare.js" in html
        strings = page_strings(html)
        assert strings["prep_reading"] == "Reading the image… %(done)d/%(total)d"  # prepare.js fills it in
        assert strings["prep_ready"] == "Image ready"
    client.get("/lang/ru")
    strings = page_strings(client.get("/ground").get_data(as_text=True))
    assert strings["prep_ready"] == "Изображение готово" and strings["prep_reading"].endswith("%(done)d/%(total)d")


# ---------------------------------------------------------------------------- documentation

def test_openapi_and_docs_describe_the_preparation(client):
    spec = client.get("/openapi.json").get_json()
    post = spec["paths"]["/api/v1/images"]["post"]
    assert "202" in post["responses"] and "415" in post["responses"]
    assert set(spec["paths"]["/api/v1/images/{id}"]) == {"get", "delete"}
    for path in ("/api/v1/chat", "/api/v1/describe", "/api/v1/ground"):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert "image_id" in schema["properties"] and "404" in spec["paths"][path]["post"]["responses"]
    assert "max_tiles" in spec["paths"]["/api/v1/chat"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["image_id"]["description"]
    html = client.get("/docs").get_data(as_text=True)
    assert "/api/v1/images" in html and "/api/v1/images/{id}" in html and "image_id" in html
