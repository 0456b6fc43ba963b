"""Pages: chat with and without JavaScript, grounding, status, docs, language switch, CSRF, escaping."""
from __future__ import annotations

import io
import re

import pytest


def upload(png: bytes, name: str = "photo.png"):
    """A multipart file field value."""
    return (io.BytesIO(png), name)


def csrf(client) -> str:
    """Load a page and take its CSRF token from the meta tag."""
    html = client.get("/").get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', html).group(1)


def field_error(html: str, field: str) -> str:
    """The text shown next to a form field."""
    match = re.search(rf'<p class="field-error" id="error-{field}" role="alert"\s*>(.*?)</p>', html, re.S)
    return match.group(1).strip() if match else ""


# ---------------------------------------------------------------------------- chat without JavaScript

def test_chat_form_post_then_page_shows_dialog(client, make_png):
    token = csrf(client)
    resp = client.post("/chat", data={"csrf_token": token, "image": upload(make_png()), "question": "What is it?",
                                      "action": "ask", "max_tiles": "4"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/")
    html = client.get("/").get_data(as_text=True)
    assert "What is it?" in html and "You asked: What is it?" in html
    assert 'class="thumb" src="data:image/jpeg;base64,' in html
    assert 'value="4" data-tiles' in html  # the detail control remembers the last choice
    resp = client.post("/chat", data={"csrf_token": token, "question": "Follow-up", "action": "ask"})
    assert resp.status_code == 303
    assert "1 image(s) in 3 turn(s)" in client.get("/").get_data(as_text=True)


def test_describe_buttons_use_the_conversation_image(client, fake_engine, make_png):
    token = csrf(client)
    client.post("/chat", data={"csrf_token": token, "image": upload(make_png(50, 20)), "action": "describe_short"})
    client.post("/chat", data={"csrf_token": token, "action": "describe_detailed"})
    assert [c[2] for c in fake_engine.calls] == ["short", "detailed"]
    assert fake_engine.calls[-1][1].size == (50, 20)
    html = client.get("/").get_data(as_text=True)
    assert html.count("A 50x20 picture.") == 2 and "Describe (detailed)" in html


def test_new_conversation_clears_the_dialog(client, make_png):
    token = csrf(client)
    client.post("/chat", data={"csrf_token": token, "image": upload(make_png()), "question": "Remember me"})
    assert "Remember me" in client.get("/").get_data(as_text=True)
    assert client.post("/chat/new", data={"csrf_token": token}).status_code == 303
    html = client.get("/").get_data(as_text=True)
    assert "Remember me" not in html and 'id="dialog-empty"' in html


def test_chat_errors_are_shown_next_to_their_field(client, make_png):
    token = csrf(client)
    resp = client.post("/chat", data={"csrf_token": token, "question": "No image yet"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "Please add an image first." in field_error(html, "image")
    assert "No image yet" in html  # the question is kept
    resp = client.post("/chat", data={"csrf_token": token, "image": upload(make_png()), "question": ""})
    assert resp.status_code == 400 and field_error(resp.get_data(as_text=True), "question")
    resp = client.post("/chat", data={"csrf_token": token, "image": upload(b"<html></html>"), "question": "q"})
    assert resp.status_code == 415 and "not an image" in field_error(resp.get_data(as_text=True), "image")
    resp = client.post("/chat", data={"csrf_token": token, "image": upload(b"\0" * 3 * 2**20), "question": "q"})
    assert resp.status_code == 413 and "too large" in field_error(resp.get_data(as_text=True), "image")
    assert "Traceback" not in resp.get_data(as_text=True)


def test_page_error_when_the_model_is_loading(client, fake_engine, make_png):
    fake_engine.state = "loading"
    html = client.get("/").get_data(as_text=True)
    assert 'id="startup"' in html and "Loading the model" in html  # the start notice, kept current by startup.js
    resp = client.post("/chat", data={"csrf_token": csrf(client), "image": upload(make_png()), "question": "q"})
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert "still loading" in field_error(resp.get_data(as_text=True), "form")


# ---------------------------------------------------------------------------- chat with JavaScript (fetch + SSE)

def test_chat_fetch_streams_and_records(client, make_png, read_sse):
    headers = {"Accept": "text/event-stream", "X-CSRF-Token": csrf(client)}
    resp = client.post("/chat", data={"image": upload(make_png()), "question": "Stream it"}, headers=headers)
    assert resp.mimetype == "text/event-stream"
    events = read_sse(resp.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    assert "".join(e["delta"] for e in events[:-2]) == events[-2]["answer"]
    assert events[-2]["answer"] in client.get("/").get_data(as_text=True)


def test_chat_fetch_error_is_json_with_the_field(client):
    headers = {"Accept": "text/event-stream", "X-CSRF-Token": csrf(client)}
    resp = client.post("/chat", data={"question": "q"}, headers=headers)
    assert resp.status_code == 400 and resp.get_json()["error"]["param"] == "image"


# ---------------------------------------------------------------------------- CSRF and sessions

@pytest.mark.parametrize("token", [None, "wrong"])
def test_page_posts_need_the_csrf_token(client, make_png, token):
    csrf(client)
    for path in ("/chat", "/ground", "/chat/new"):
        data = {"image": upload(make_png()), "question": "q", "phrases": "cat"}
        if token:
            data["csrf_token"] = token
        resp = client.post(path, data=data)
        assert resp.status_code == 403, path
        assert "reload the page" in resp.get_data(as_text=True)


def test_browsers_cannot_see_each_others_dialogs_or_results(app, make_png):
    alice, bob = app.test_client(), app.test_client()
    token = csrf(alice)
    alice.post("/chat", data={"csrf_token": token, "image": upload(make_png()), "question": "Alice's secret"})
    alice.post("/ground", data={"csrf_token": token, "image": upload(make_png()), "phrases": "alice-thing"})
    assert "Alice&#39;s secret" in alice.get("/").get_data(as_text=True)
    assert "alice-thing" in alice.get("/ground").get_data(as_text=True)
    assert "Alice" not in bob.get("/").get_data(as_text=True)
    assert "alice-thing" not in bob.get("/ground").get_data(as_text=True)
    resp = bob.post("/chat", data={"csrf_token": csrf(bob), "question": "What did Alice send?"})
    assert resp.status_code == 400  # Bob has no image: Alice's is not his
    with alice.session_transaction() as s:
        alice_sid = s["sid"]
    with bob.session_transaction() as s:
        s["sid"] = "forged" + "x" * 20  # an id that was never handed out
    assert "Alice" not in bob.get("/").get_data(as_text=True)
    assert alice_sid not in bob.get("/").get_data(as_text=True)


# ---------------------------------------------------------------------------- grounding page

def test_ground_page_shows_boxes_downloads_and_raw_text(client, make_png):
    token = csrf(client)
    resp = client.post("/ground", data={"csrf_token": token, "image": upload(make_png(300, 200)),
                                        "phrases": "cat, red car"})
    assert resp.status_code == 303
    html = client.get("/ground").get_data(as_text=True)
    png = re.search(r'<img class="annotated" src="([^"]+\.png)"', html).group(1)
    assert client.get(png).mimetype == "image/png"
    assert re.search(r'href="/api/v1/results/[A-Za-z0-9_-]+\.json" download', html)
    assert "<td>red car</td>" in html and "<details><summary>Raw model answer</summary>" in html
    assert 'value="cat, red car"' in html


def test_ground_page_all_objects_and_errors(client, make_png):
    token = csrf(client)
    assert client.post("/ground", data={"csrf_token": token, "image": upload(make_png()),
                                        "detect_all": "1"}).status_code == 303
    assert client.get("/ground").get_data(as_text=True).count("<td>object</td>") == 3
    resp = client.post("/ground", data={"csrf_token": token, "image": upload(make_png()), "phrases": ""})
    assert resp.status_code == 400 and field_error(resp.get_data(as_text=True), "phrases")
    resp = client.post("/ground", data={"csrf_token": token, "phrases": "cat"})
    assert resp.status_code == 400 and field_error(resp.get_data(as_text=True), "image")
    assert 'value="cat"' in resp.get_data(as_text=True)


XSS = "<script>alert(1)</script>"


def test_user_and_model_text_is_escaped(client, make_png):
    token = csrf(client)
    client.post("/ground", data={"csrf_token": token, "image": upload(make_png()), "phrases": XSS})
    html = client.get("/ground").get_data(as_text=True)
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    client.post("/chat", data={"csrf_token": token, "image": upload(make_png()), "question": XSS})
    html = client.get("/").get_data(as_text=True)
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    resp = client.post("/ground", data={"csrf_token": token, "phrases": XSS})  # an error page with the value
    assert XSS not in resp.get_data(as_text=True)


def test_xss_phrase_is_valid_json_in_the_api(client, make_png):
    body = client.post("/api/v1/ground", data={"image": upload(make_png()), "phrases": XSS}).get_json()
    assert body["phrases"] == [XSS] and XSS in body["raw_text"]
    report = client.get(body["downloads"]["json"])
    assert report.mimetype == "application/json" and report.get_json()["phrases"] == [XSS]


# ---------------------------------------------------------------------------- status and docs

def test_status_page(client, fake_engine, make_png):
    client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "q"})
    html = client.get("/status").get_data(as_text=True)
    for word in ("OpenGVLab/InternVL3_5-1B", "openvino", "CPU", "int8", "native", "Ready"):
        assert word in html
    assert "<td>Chat</td>" in html and "<td>end of answer</td>" in html and 'http-equiv="refresh"' not in html
    assert "Longest answer" in html and "1024 tokens" in html  # the engine's cap, below MAX_NEW_TOKENS_LIMIT
    fake_engine.state, fake_engine.progress = "loading", "compiling the language model"
    html = client.get("/status").get_data(as_text=True)
    assert 'http-equiv="refresh"' in html and "compiling the language model" in html


def test_status_page_survives_a_broken_engine(client, fake_engine):
    fake_engine.info = lambda: 1 / 0
    resp = client.get("/status")
    assert resp.status_code == 200 and "division by zero" in resp.get_data(as_text=True)
    assert client.get("/health").get_json()["status"] == "error"


def test_docs_page_lists_the_api(client):
    html = client.get("/docs").get_data(as_text=True)
    for path in ("/api/v1/chat", "/api/v1/ground", "/v1/chat/completions", "/health", "question", "max_tiles"):
        assert path in html
    assert "cdn" not in html.lower()


# ---------------------------------------------------------------------------- languages

def test_accept_language_ru_gives_russian(client):
    html = client.get("/", headers={"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}).get_data(as_text=True)
    assert '<html lang="ru">' in html and "Новый разговор" in html
    html = client.get("/ground", headers={"Accept-Language": "ru"}).get_data(as_text=True)
    assert "Найти" in html


def test_language_switch_is_remembered(client):
    resp = client.get("/lang/ru?next=/status")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/status")
    assert "Состояние" in client.get("/status").get_data(as_text=True)
    client.get("/lang/en?next=/")
    html = client.get("/", headers={"Accept-Language": "ru"}).get_data(as_text=True)
    assert "New conversation" in html  # the switch beats the browser's preference


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "javascript:alert(1)", ""])
def test_language_switch_never_redirects_away(client, target):
    resp = client.get("/lang/ru", query_string={"next": target})
    assert resp.status_code == 303 and resp.headers["Location"] in ("/", "http://localhost/")


def test_unknown_language_is_404(client):
    assert client.get("/lang/xx").status_code == 404


def test_page_errors_are_translated(client, make_png):
    client.get("/lang/ru")
    resp = client.post("/ground", data={"csrf_token": csrf(client), "phrases": "cat"})
    assert "Пожалуйста" in field_error(resp.get_data(as_text=True), "image")
    resp = client.post("/chat", data={"csrf_token": csrf(client), "image": upload(b"%PDF-1.4"), "question": "q"})
    assert resp.status_code == 415
    assert re.search("[а-яА-Я]", field_error(resp.get_data(as_text=True), "image"))


def test_tile_cost_words_in_both_languages(client):
    assert "up to 2 tiles ~ fast" in client.get("/").get_data(as_text=True)
    client.get("/lang/ru")
    assert "до 2 фрагментов" in client.get("/").get_data(as_text=True)


def test_pages_load_scripts_only_from_files(client):
    for path in ("/", "/ground", "/status", "/docs"):
        html = client.get(path).get_data(as_text=True)
        for tag in re.findall(r"<script[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, tag
        assert not re.search(r"<[^>]+\son[a-z]+=", html), path  # no inline event handlers
