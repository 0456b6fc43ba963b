"""OpenAI-compatible /v1/chat/completions and /v1/models: shapes checked by hand and by the openai client."""
from __future__ import annotations

import base64

import pytest


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def vision_messages(png: bytes, text: str = "What is this?") -> list:
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": data_url(png)}}]}]


def test_models(client):
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list"
    assert body["data"] == [{"id": "OpenGVLab/InternVL3_5-1B", "object": "model", "created": 0,
                             "owned_by": "internvl-webapp"}]


def test_completion_shape(client, fake_engine, make_png):
    resp = client.post("/v1/chat/completions", json={"model": "x", "messages": vision_messages(make_png(33, 44))})
    body = resp.get_json()
    assert resp.status_code == 200
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "OpenGVLab/InternVL3_5-1B"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and "33x44" in choice["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    turns = fake_engine.calls[-1][1]
    assert [t.role for t in turns] == ["system", "user"] and len(turns[1].images) == 1


def test_options_map_to_the_engine(client, fake_engine, make_png):
    resp = client.post("/v1/chat/completions", json={
        "messages": vision_messages(make_png()), "max_tokens": 4, "temperature": 0.7, "top_p": 0.9,
        "stop": ["never"], "seed": 3, "max_tiles": 6})
    options = fake_engine.calls[-1][2]
    assert (options.max_new_tokens, options.temperature, options.top_p, options.stop, options.seed,
            options.max_tiles) == (4, 0.7, 0.9, ("never",), 3, 6)
    body = resp.get_json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 4


def test_text_only_conversation(client, fake_engine):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Again"}]
    body = client.post("/v1/chat/completions", json={"messages": messages}).get_json()
    assert body["choices"][0]["message"]["content"].startswith("You asked: Again")


def test_stream_chunks(client, make_png, read_sse):
    resp = client.post("/v1/chat/completions", json={"messages": vision_messages(make_png()), "stream": True,
                                                     "stream_options": {"include_usage": True}})
    assert resp.mimetype == "text/event-stream"
    events = read_sse(resp.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("You asked: What is this?")
    assert finals[0]["usage"]["completion_tokens"] == len(text.split())
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == finals[0]["usage"]


BAD = {
    "no-messages": ({"model": "x"}, 400, "messages"),
    "empty-messages": ({"messages": []}, 400, "messages"),
    "bad-role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    "last-not-user": ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
                      400, "messages"),
    "bad-part": ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, 400, "messages"),
    "remote-image": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]},
        400, "messages"),
    "bad-base64": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}]}]},
        400, "messages"),
    "max-tokens": ({"messages": [{"role": "user", "content": "q"}], "max_tokens": 0}, 400, "max_tokens"),
    "temperature": ({"messages": [{"role": "user", "content": "q"}], "temperature": 9}, 400, "temperature"),
    "stop": ({"messages": [{"role": "user", "content": "q"}], "stop": [1]}, 400, "stop"),
    "n": ({"messages": [{"role": "user", "content": "q"}], "n": 2}, 400, "n"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_completions(client, fake_engine, case):
    payload, status, param = BAD[case]
    resp = client.post("/v1/chat/completions", json=payload)
    assert resp.status_code == status
    err = resp.get_json()["error"]
    assert set(err) >= {"code", "message", "type"} and err.get("param") == param
    assert not fake_engine.calls


def test_too_many_images(client, make_png):
    parts = [{"type": "image_url", "image_url": {"url": data_url(make_png())}}] * 3  # test limit is 2
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]})
    assert resp.status_code == 413


def test_remote_images_allowed_still_refuse_private_addresses(web_settings, fake_engine):
    from dataclasses import replace

    from webapp import create_app

    client = create_app(replace(web_settings, allow_remote_images=True), engine=fake_engine).test_client()
    messages = [{"role": "user", "content": [{"type": "text", "text": "q"},
                                             {"type": "image_url", "image_url": "http://127.0.0.1:9/a.png"}]}]
    resp = client.post("/v1/chat/completions", json={"messages": messages})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "remote_image_refused"


def test_remote_image_fetch_when_allowed(web_settings, fake_engine, make_png, monkeypatch):
    from dataclasses import replace

    from webapp import create_app, inputs

    seen = {}

    def fake_fetch(url, settings, name="image"):
        seen["url"] = url
        return make_png(7, 9)
    monkeypatch.setattr(inputs, "fetch_remote", fake_fetch)
    client = create_app(replace(web_settings, allow_remote_images=True), engine=fake_engine).test_client()
    resp = client.post("/api/v1/chat", json={"image": "https://example.com/cat.png", "question": "size?"})
    assert resp.status_code == 200 and "7x9" in resp.get_json()["answer"]
    assert seen["url"] == "https://example.com/cat.png"


def test_busy_and_loading(client, fake_engine):
    fake_engine.busy = True
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}]})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "7"
    fake_engine.busy, fake_engine.state = False, "loading"
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}], "stream": True})
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "model_not_ready"


def test_the_openai_client_understands_us(app, make_png):
    httpx = pytest.importorskip("httpx")
    openai = pytest.importorskip("openai")
    http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://testserver")
    client = openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=http, max_retries=0)
    assert [m.id for m in client.models.list()] == ["OpenGVLab/InternVL3_5-1B"]
    reply = client.chat.completions.create(model="internvl", messages=vision_messages(make_png(8, 6)), max_tokens=50)
    assert "8x6" in reply.choices[0].message.content and reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(model="internvl", messages=vision_messages(make_png(8, 6)), stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="internvl", messages=[])


def test_an_image_without_text_is_described(client, fake_engine, make_png):
    from runtime.prompts import describe_prompt

    parts = [{"type": "image_url", "image_url": {"url": data_url(make_png(12, 8))}}]
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]})
    assert resp.status_code == 200
    turn = fake_engine.calls[-1][1][-1]
    assert turn.text == describe_prompt("detailed") and len(turn.images) == 1
    assert resp.get_json()["choices"][0]["message"]["content"].startswith(f"You asked: {describe_prompt('detailed')}")
    empty_text = [{"type": "text", "text": "  "}, *parts]  # blank text counts as none
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": empty_text}]})
    assert resp.status_code == 200 and fake_engine.calls[-1][1][-1].text == describe_prompt("detailed")


def test_text_alone_still_needs_words(client, fake_engine):
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": ""}]})
    assert resp.status_code == 400


@pytest.mark.parametrize("path,field", [("/api/v1/chat", "max_new_tokens"), ("/v1/chat/completions", "max_tokens"),
                                        ("/v1/chat/completions", "max_completion_tokens")])
def test_the_engine_token_cap_is_the_limit_when_lower(client, fake_engine, make_png, path, field):
    fake_engine.max_new_tokens = 40  # MAX_NEW_TOKENS of the engine, below MAX_NEW_TOKENS_LIMIT (2048)
    body = ({"messages": vision_messages(make_png())} if path.startswith("/v1") else
            {"image": data_url(make_png()), "question": "q"})
    resp = client.post(path, json={**body, field: 41})
    assert resp.status_code == 400
    err = resp.get_json()["error"]
    assert err["param"] == field and "40" in err["message"]
    assert client.post(path, json={**body, field: 40}).status_code == 200
    assert fake_engine.calls[-1][2].max_new_tokens == 40
    assert client.post(path, json=body).status_code == 200
    assert fake_engine.calls[-1][2].max_new_tokens == 40  # the default (512) is clamped to the cap
