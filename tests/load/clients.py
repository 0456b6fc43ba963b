"""Concurrent clients that mix every kind of request and check every answer.

Each HTTP request is recorded once, as one of:
  ok       a 2xx whose body matches the API's schema and invariants (streamed text == final text, boxes
           inside the image, usage adds up, downloads are a PNG and the same JSON report);
  refused  a deliberate 503 (busy, loading) or 429 (rate limit) in the one error body, with Retry-After;
  bad      anything else: a 500, a wrong status, a body that breaks the schema, a missing Retry-After;
  lost     no answer at all (connection dropped, timeout).
A run holds when sent == answered (nothing lost) and nothing is bad.
"""
from __future__ import annotations

import base64
import io
import json
import random
import threading
import time
from dataclasses import dataclass, field

import requests
from PIL import Image, ImageDraw

# kind -> weight in the mix (downloads and follow-ups come on top: after a grounding / a chat)
MIX = {"chat": 3, "chat_stream": 2, "describe": 2, "ground": 2, "openai": 2, "openai_stream": 1}
FINISH = ("stop", "length")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Record:
    """One HTTP request and what came back."""

    kind: str
    status: int  # 0 when no answer came
    seconds: float
    outcome: str  # ok | refused | bad | lost
    problem: str = ""
    tokens: int = 0  # completion tokens, for generations


@dataclass
class Mix:
    """What the clients send."""

    weights: dict = field(default_factory=lambda: dict(MIX))
    max_new_tokens: tuple[int, int] = (4, 24)  # drawn per request
    max_tiles: tuple[int, int] = (1, 2)
    image_side: tuple[int, int] = (48, 480)  # width and height drawn from this range
    followup_share: float = 0.4  # chance that a chat's next request follows it up
    timeout_s: float = 120.0
    retry_pause_s: float = 0.05  # pause after a refusal (a real client would wait Retry-After)
    api_key: str = ""


# ---------------------------------------------------------------- inputs


def make_image(rng: random.Random, sides: tuple[int, int] = (48, 480)) -> tuple[bytes, tuple[int, int], str]:
    """A never-seen-before picture (so no cache shortcuts the work): (bytes, (w, h), mime type)."""
    w, h = rng.randint(*sides), rng.randint(*sides)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.rectangle((x, y, x + rng.randint(4, w), y + rng.randint(4, h)), fill=tuple(rng.randrange(256)
                                                                                     for _ in range(3)))
    buf = io.BytesIO()
    fmt = rng.choice(["PNG", "JPEG"])
    img.save(buf, fmt)
    return buf.getvalue(), (w, h), f"image/{fmt.lower()}"


def data_url(data: bytes, mime: str) -> str:
    """bytes -> data: URL."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------- checks (return a problem, or "")


def check_usage(usage, max_new_tokens: int | None = None) -> str:
    """OpenAI-shaped token counts that add up."""
    if not isinstance(usage, dict) or not all(isinstance(usage.get(k), int) and usage[k] >= 0
                                              for k in ("prompt_tokens", "completion_tokens", "total_tokens")):
        return f"bad usage {usage!r}"
    if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
        return f"usage does not add up {usage!r}"
    if max_new_tokens is not None and usage["completion_tokens"] > max_new_tokens:
        return f"{usage['completion_tokens']} tokens > max_new_tokens {max_new_tokens}"
    return ""


def check_answer(body, max_new_tokens: int) -> str:
    """The Answer object of /api/v1/chat and /api/v1/describe."""
    if not isinstance(body, dict) or not isinstance(body.get("answer"), str):
        return f"no answer in {str(body)[:200]}"
    if not isinstance(body.get("session_id"), str) or len(body["session_id"]) < 16:
        return "no session_id"
    if body.get("finish_reason") not in FINISH or not isinstance(body.get("timings"), dict):
        return f"bad finish_reason/timings {body.get('finish_reason')!r}"
    return check_usage(body.get("usage"), max_new_tokens)


def check_grounding(body, size: tuple[int, int]) -> str:
    """The Grounding object: every box inside the image, norm coordinates in 0..1000, download links."""
    if not isinstance(body, dict) or body.get("image_size") != {"width": size[0], "height": size[1]}:
        return f"bad image_size in {str(body)[:200]}"
    for key, kind in (("boxes", list), ("problems", list), ("raw_text", str), ("timings", dict), ("id", str)):
        if not isinstance(body.get(key), kind):
            return f"{key} is not a {kind.__name__}"
    for box in body["boxes"]:
        x1, y1, x2, y2 = box["bbox"]
        if not (0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]) or not isinstance(box.get("label"), str):
            return f"box outside the image: {box}"
        if not all(isinstance(v, int) and 0 <= v <= 1000 for v in box["bbox_norm"]):
            return f"bad bbox_norm {box}"
    links = body.get("downloads") or {}
    if not all(str(links.get(k, "")).startswith("/api/v1/results/") for k in ("png", "json")):
        return f"bad downloads {links}"
    return ""


def check_completion(body, max_tokens: int) -> str:
    """An OpenAI chat.completion object."""
    try:
        choice = body["choices"][0]
        ok = (body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
              and choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
              and choice["finish_reason"] in FINISH)
    except (KeyError, IndexError, TypeError, AttributeError):
        ok = False
    return check_usage(body.get("usage"), max_tokens) if ok else f"bad chat.completion {str(body)[:200]}"


def sse_events(resp: requests.Response) -> list:
    """The data: payloads of an event stream, JSON-decoded except [DONE]."""
    events = []
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def check_answer_stream(events: list, max_new_tokens: int) -> tuple[str, dict]:
    """{delta} events, the final Answer, [DONE]; the deltas spell the final answer."""
    if len(events) < 2 or events[-1] != "[DONE]":
        return "stream did not end with [DONE]", {}
    final, deltas = events[-2], events[:-2]
    if not all(isinstance(e, dict) and set(e) == {"delta"} for e in deltas):
        return f"bad delta events {str(deltas)[:200]}", {}
    problem = check_answer(final, max_new_tokens)
    if not problem and "".join(e["delta"] for e in deltas) != final["answer"]:
        problem = "streamed text != final answer"
    return problem, final


def check_chunk_stream(events: list, max_tokens: int) -> tuple[str, dict]:
    """chat.completion.chunk events: role first, content deltas, one finish_reason with usage, [DONE]."""
    if len(events) < 3 or events[-1] != "[DONE]":
        return "stream did not end with [DONE]", {}
    chunks = events[:-1]
    if any(not isinstance(c, dict) or c.get("object") != "chat.completion.chunk" for c in chunks):
        return f"not a chunk: {str(chunks)[:200]}", {}
    if len({c.get("id") for c in chunks}) != 1 or chunks[0]["choices"][0]["delta"].get("role") != "assistant":
        return "chunks disagree on id, or no role chunk first", {}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    if len(finals) != 1 or finals[0]["choices"][0]["finish_reason"] not in FINISH:
        return f"expected one finish_reason, got {len(finals)}", {}
    usage = finals[0].get("usage", {})
    return check_usage(usage, max_tokens), usage


def refusal(resp: requests.Response) -> str:
    """'' when resp is a deliberate 503/429 (error body, Retry-After), else what is wrong with it."""
    if resp.status_code not in (429, 503):
        return f"unexpected status {resp.status_code}: {resp.text[:300]}"
    retry = resp.headers.get("Retry-After", "")
    if not retry.isdigit():
        return f"{resp.status_code} without Retry-After"
    try:
        err = resp.json()["error"]
        assert err["code"] in ("busy", "model_not_ready", "rate_limited") and err["message"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"{resp.status_code} without the error body: {resp.text[:200]}"
    return ""


# ---------------------------------------------------------------- one client


class Client:
    """One simulated user: its own connection, its own random stream, its own conversation."""

    def __init__(self, url: str, mix: Mix, seed: int, records: list, lock: threading.Lock):
        self.url, self.mix, self.rng = url, mix, random.Random(seed)
        self.http = requests.Session()
        if mix.api_key:
            self.http.headers["Authorization"] = f"Bearer {mix.api_key}"
        self.records, self.lock = records, lock
        self.session_id: str | None = None

    def run(self, n: int, on_done=None) -> None:
        """Send n requests (downloads and follow-ups count), one after another."""
        sent = 0
        while sent < n:
            k = self.step(n - sent)
            sent += k
            if on_done is not None:
                on_done(k)  # requests just answered (a grounding and its downloads are 3)

    def step(self, budget: int) -> int:
        """One scenario (one request, or a grounding and its downloads within budget); returns requests sent."""
        if self.session_id:  # right after its chat, so the conversation cannot have been evicted meanwhile
            return self.followup()
        kinds, weights = zip(*self.mix.weights.items())
        kind = self.rng.choices(kinds, weights)[0]
        if kind == "ground":
            return self.ground(budget)
        return getattr(self, kind)()

    # ------------------------------------------------------------ plumbing
    def _options(self) -> tuple[int, int]:
        return self.rng.randint(*self.mix.max_new_tokens), self.rng.randint(*self.mix.max_tiles)

    def _send(self, kind: str, method: str, path: str, check, **kw) -> Record:
        """Send one request, classify its answer with check(resp) -> (problem, tokens), record it."""
        t0 = time.perf_counter()
        try:
            resp = self.http.request(method, self.url + path, timeout=self.mix.timeout_s, **kw)
        except requests.RequestException as exc:
            rec = Record(kind, 0, time.perf_counter() - t0, "lost", f"{type(exc).__name__}: {exc}"[:300])
        else:
            rec = self._judge(kind, resp, check, t0)
        with self.lock:
            self.records.append(rec)
        if rec.outcome == "refused":
            time.sleep(self.mix.retry_pause_s)
        return rec

    @staticmethod
    def _judge(kind: str, resp: requests.Response, check, t0: float) -> Record:
        """Read and check one answer (its body may still be streaming in)."""
        tokens = 0
        with resp:
            try:
                if resp.status_code >= 300:
                    problem, outcome = refusal(resp), "refused"
                else:
                    (problem, tokens), outcome = check(resp), "ok"
            except requests.RequestException as exc:  # the body was cut off: no complete answer came
                return Record(kind, resp.status_code, time.perf_counter() - t0, "lost", f"{type(exc).__name__}")
            except Exception as exc:  # a body that does not parse, or lacks a field the check reads
                problem, outcome = f"{type(exc).__name__}: {exc}"[:300], "bad"
        return Record(kind, resp.status_code, time.perf_counter() - t0, "bad" if problem else outcome, problem,
                      tokens)

    # ------------------------------------------------------------ scenarios
    def chat(self) -> int:
        data, _, mime = make_image(self.rng, self.mix.image_side)
        mnt, tiles = self._options()

        def check(resp):
            body = resp.json()
            problem = check_answer(body, mnt)
            if not problem and self.rng.random() < self.mix.followup_share:
                self.session_id = body["session_id"]
            return problem, body.get("usage", {}).get("completion_tokens", 0)
        self._send("chat", "POST", "/api/v1/chat", check, files={"image": ("photo", data, mime)},
                   data={"question": "What is in this picture?", "max_new_tokens": mnt, "max_tiles": tiles})
        return 1

    def followup(self) -> int:
        mnt, _ = self._options()
        sid, self.session_id = self.session_id, None  # one follow-up per conversation keeps within MAX_TURNS

        def check(resp):
            body = resp.json()
            problem = check_answer(body, mnt) or ("" if body["session_id"] == sid else "another session_id")
            return problem, body.get("usage", {}).get("completion_tokens", 0)
        self._send("followup", "POST", "/api/v1/chat", check,
                   json={"session_id": sid, "question": "And what colour is it?", "max_new_tokens": mnt})
        return 1

    def chat_stream(self) -> int:
        data, _, mime = make_image(self.rng, self.mix.image_side)
        mnt, tiles = self._options()

        def check(resp):
            problem, final = check_answer_stream(sse_events(resp), mnt)
            return problem, final.get("usage", {}).get("completion_tokens", 0)
        self._send("chat_stream", "POST", "/api/v1/chat", check, stream=True, files={"image": ("photo", data, mime)},
                   data={"question": "Describe the colours.", "max_new_tokens": mnt, "max_tiles": tiles,
                         "stream": "true"})
        return 1

    def describe(self) -> int:
        data, _, _ = make_image(self.rng, self.mix.image_side)
        mnt, tiles = self._options()

        def check(resp):
            body = resp.json()
            return check_answer(body, mnt), body.get("usage", {}).get("completion_tokens", 0)
        self._send("describe", "POST", "/api/v1/describe", check,
                   json={"image": base64.b64encode(data).decode(), "detail": self.rng.choice(["short", "detailed"]),
                         "max_new_tokens": mnt, "max_tiles": tiles})
        return 1

    def ground(self, budget: int) -> int:
        data, size, mime = make_image(self.rng, self.mix.image_side)
        mnt, tiles = self._options()
        report = {}

        def check(resp):
            body = resp.json()
            report.update(body)
            return check_grounding(body, size), (body.get("usage") or {}).get("completion_tokens", 0)
        rec = self._send("ground", "POST", "/api/v1/ground", check, files={"image": ("photo", data, mime)},
                         data={"phrases": "cat, red car", "max_new_tokens": mnt, "max_tiles": tiles})
        if rec.outcome != "ok" or budget < 3:
            return 1

        def check_png(resp):
            ok = resp.headers.get("Content-Type") == "image/png" and resp.content.startswith(PNG_MAGIC)
            return ("" if ok else "download is not a PNG"), 0

        def check_json(resp):
            same = resp.json().get("boxes") == report["boxes"] and resp.json().get("id") == report["id"]
            return ("" if same else "JSON download differs from the answer"), 0
        self._send("download", "GET", report["downloads"]["png"], check_png)
        self._send("download", "GET", report["downloads"]["json"], check_json)
        return 3

    def openai(self) -> int:
        data, _, mime = make_image(self.rng, self.mix.image_side)
        mnt, tiles = self._options()

        def check(resp):
            body = resp.json()
            return check_completion(body, mnt), body.get("usage", {}).get("completion_tokens", 0)
        self._send("openai", "POST", "/v1/chat/completions", check, json=self._messages(data, mime, mnt, tiles))
        return 1

    def openai_stream(self) -> int:
        data, _, mime = make_image(self.rng, self.mix.image_side)
        mnt, tiles = self._options()

        def check(resp):
            problem, usage = check_chunk_stream(sse_events(resp), mnt)
            return problem, usage.get("completion_tokens", 0)
        self._send("openai_stream", "POST", "/v1/chat/completions", check, stream=True,
                   json={**self._messages(data, mime, mnt, tiles), "stream": True})
        return 1

    @staticmethod
    def _messages(data: bytes, mime: str, mnt: int, tiles: int) -> dict:
        content = [{"type": "text", "text": "What is shown?"},
                   {"type": "image_url", "image_url": {"url": data_url(data, mime)}}]
        return {"model": "internvl", "messages": [{"role": "user", "content": content}], "max_tokens": mnt,
                "max_tiles": tiles}


# ---------------------------------------------------------------- many clients


def run_clients(url: str, clients: int, requests_per_client: int, mix: Mix | None = None, seed: int = 0,
                on_done=None, hostile: int = 0) -> tuple[list[Record], float]:
    """Run the clients (and `hostile` hostile ones beside them, load/hostile.py) concurrently to the end;
    returns (records, wall seconds)."""
    from load.hostile import HostileClient

    mix = mix or Mix()
    records: list[Record] = []
    lock = threading.Lock()
    people = [Client(url, mix, seed * 1000 + i, records, lock) for i in range(clients)]
    people += [HostileClient(url, mix, seed * 1000 + 500 + i, records, lock) for i in range(hostile)]
    workers = [threading.Thread(target=c.run, args=(requests_per_client, on_done), name=f"client-{i}")
               for i, c in enumerate(people)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return records, time.perf_counter() - t0
