"""The official openai client, unchanged, against the real server process on the tiny random model."""
from __future__ import annotations

import base64
import io

import pytest
from load.server import ServerProcess
from model_fixtures import photo

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(model_cache, tmp_path_factory):
    # Exact compute: the second request reuses the first one's KV cache, and only in f32 (no u8 KV, no int8
    # activations) are its greedy tokens those of a full prefill; the random model's logits are near ties.
    exact = {"OV_INFERENCE_PRECISION": "f32", "OV_KV_CACHE_PRECISION": "f32", "OV_DYNAMIC_QUANT_GROUP": "0"}
    with ServerProcess(model_cache, tmp_path_factory.mktemp("openai") / "server.log", **exact) as proc:
        proc.wait_health(200)
        yield proc


def image_part() -> dict:
    buf = io.BytesIO()
    photo(size=(448, 448)).save(buf, "JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def test_plain_and_streamed_completions_with_an_image(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data]
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part()]}]
    plain = client.chat.completions.create(model="any", messages=messages, max_tokens=12, temperature=0)
    assert plain.choices[0].message.role == "assistant" and plain.usage.completion_tokens > 0
    chunks = client.chat.completions.create(model="any", messages=messages, max_tokens=12, temperature=0,
                                            stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content  # greedy: the same answer either way
