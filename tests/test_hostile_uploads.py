"""The bad-image corpus (tests/badimages.py, written to tests/data/bad_images/) through the real server's
HTTP API, three ways (multipart upload, JSON base64, OpenAI image_url): each bad file gets its 4xx with a
plain message, each awkward-but-valid one an answer, and a few rounds leave the server's memory where it was.
"""
from __future__ import annotations

import base64
from pathlib import Path

import badimages
import pytest
import requests
from load.server import ServerProcess

DATA = Path(__file__).parent / "data" / "bad_images"
# name -> (status, code); every other file of the corpus is a valid picture and gets an answer
REFUSED = {
    "empty.png": (400, "invalid_image"), "truncated.jpg": (400, "invalid_image"),
    "truncated.png": (400, "invalid_image"), "header_only.png": (400, "invalid_image"),
    "corrupt_header.jpg": (400, "invalid_image"), "zero_width.png": (400, "invalid_image"),
    "gif_polyglot.gif": (400, "invalid_image"),
    "bomb.png": (413, "input_too_large"), "too_many_pixels.png": (413, "input_too_large"),
    "too_long.png": (413, "input_too_large"),
    **{name: (415, "unsupported_media_type") for name in (
        "drawing.svg", "drawing_xml.png", "page.png", "script.png", "notes.jpg", "doc.png", "archive.png",
        "postscript.png", "photo.heic", "random.bin")},
}
INTERNALS = ("Traceback", "OSError", "SyntaxError", "struct.error", "PIL", "File \"", "Exception")


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    """The corpus, written to tests/data/bad_images/ (for manual checks) and read back from there."""
    return {p.name: p.read_bytes() for p in badimages.write_corpus(DATA)}


@pytest.fixture(scope="module")
def server(model_cache, tmp_path_factory):
    """The real server over the tiny model."""
    with ServerProcess(model_cache, tmp_path_factory.mktemp("hostile") / "server.log") as srv:
        srv.wait_health()
        yield srv


def _send(server, way: str, name: str, data: bytes) -> requests.Response:
    b64 = base64.b64encode(data).decode()
    small = {"max_tiles": 1}
    if way == "multipart":
        return requests.post(f"{server.url}/api/v1/describe", files={"image": (name, data)},
                             data={"max_new_tokens": 4, **small}, timeout=60)
    if way == "json":
        return requests.post(f"{server.url}/api/v1/chat", timeout=60,
                             json={"image": b64, "question": "What is it?", "max_new_tokens": 4, **small})
    content = [{"type": "text", "text": "What is it?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}]
    return requests.post(f"{server.url}/v1/chat/completions", timeout=60,
                         json={"max_tokens": 4, **small, "messages": [{"role": "user", "content": content}]})


def _check(way: str, name: str, resp: requests.Response) -> str:
    """'' when the answer is right for this file, else what is wrong."""
    if name not in REFUSED:
        return "" if resp.status_code == 200 else f"{resp.status_code} {resp.text[:200]}"
    status, code = REFUSED[name]
    if way == "json" and name == "empty.png":  # empty base64 reads as "no image": asked to add one
        code = "invalid_input"
    if resp.status_code != status:
        return f"{resp.status_code} instead of {status}: {resp.text[:200]}"
    err = resp.json()["error"]
    if err["code"] != code or err.get("param") not in ("image", "messages"):
        return f"code {err['code']} / param {err.get('param')} instead of {code}"
    message = err["message"]
    if not 10 < len(message) < 300 or any(word in message for word in INTERNALS):
        return f"not a plain message: {message!r}"
    return ""


def test_every_bad_image_gets_its_4xx_and_memory_comes_back(server, corpus):
    assert set(REFUSED) < set(corpus)
    wrong, rss = [], []
    for round_ in range(4):  # the whole corpus once, then the refused files three more times
        for name, data in corpus.items():
            for way in ("multipart", "json", "openai") if round_ == 0 or name in REFUSED else ():
                problem = _check(way, name, _send(server, way, name, data))
                if problem:
                    wrong.append(f"{name} via {way}: {problem}")
        rss.append(server.rss_mb())
    assert not wrong, "\n".join(wrong)
    # round 1 fills what is meant to be filled (caches, allocator); the refusals after it add nothing
    assert rss[-1] - rss[0] < 20, f"RSS MiB after each round: {rss}"
    assert server.alive() and "internal error" not in server.log()
