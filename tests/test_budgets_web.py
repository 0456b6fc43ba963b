"""Budgets through the HTTP API: concurrent follow-ups never pass a conversation's limits, one client filling
every store leaves the others' state in place, prepared images keep their file only, heavy image work is
queued and refused past its bound."""
from __future__ import annotations

import gc
import io
import threading
import time

import pytest
from PIL import Image
from test_budgets import noise_png
from test_webapp_api import assert_error, upload

from webapp.settings import WebSettings

A, B = "10.0.0.1", "10.0.0.2"  # two clients, told apart by address
KEY_A, KEY_B = f"addr:{A}", f"addr:{B}"


def settings(**overrides) -> WebSettings:
    """The test settings, with small stores: one client's share (25 %) is 256 KiB and 2 entries of each."""
    values = dict(secret_key="test-secret-key", max_upload_mb=1, max_pixels=4_000_000, max_turns=3, max_images=2,
                  session_store_mb=1, max_sessions=8, result_store_mb=1, max_results=8, client_share=25)
    return WebSettings(**{**values, **overrides})


def web_app(engine, **overrides):
    """The app over engine with settings(**overrides)."""
    from webapp import create_app

    app = create_app(settings(**overrides), engine=engine)
    app.config["TESTING"] = True
    return app


def client_at(app, address: str):
    """A test client calling from address."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def all_at_once(calls: list) -> list:
    """Run the calls in threads released together; their results in order."""
    start, out = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i, call):
        start.wait()
        out[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


# ---------------------------------------------------------------------------- limits held atomically

@pytest.mark.parametrize("limit", ["images", "turns", "bytes"])
def test_concurrent_follow_ups_never_pass_a_limit(fake_engine, make_png, limit):
    """Eight follow-ups at once on one conversation: exactly the room left is granted, the others get the
    usual 4xx, and the conversation is kept whole and usable."""
    fake_engine.delay_s = 0.01  # answers take ~0.2 s: every follow-up is checked while the others run
    # bytes: a 200x150 image is 90 000 bytes of pixels; 256 KiB per client holds the first and one more
    app = web_app(fake_engine, max_turns=20 if limit != "turns" else 3, max_images=2 if limit == "images" else 8)
    first = client_at(app, A).post("/api/v1/chat", data={"image": upload(make_png(200, 150)), "question": "1"})
    sid = first.get_json()["session_id"]
    with_image = limit != "turns"

    def follow_up(i):
        data = {"question": f"q{i}", "session_id": sid}
        if with_image:
            data["image"] = upload(make_png(200, 150, (i, i, i)))
        return client_at(app, A).post("/api/v1/chat", data=data)

    replies = all_at_once([lambda i=i: follow_up(i) for i in range(8)])
    ok = [r for r in replies if r.status_code == 200]
    expected = {"images": (400, "invalid_input", "image"), "turns": (400, "invalid_input", "question"),
                "bytes": (413, "input_too_large", "image")}[limit]
    for refused in (r for r in replies if r.status_code != 200):
        assert_error(refused, *expected)
    assert len(ok) == (2 if limit == "turns" else 1)
    conv = app.extensions["webapp"].sessions.get(sid)
    assert conv.question_count == 1 + len(ok) and conv.image_count == 1 + len(ok) * with_image
    assert (conv.held_questions, conv.held_images, conv.held_bytes) == (0, 0, 0)
    again = client_at(app, A).post("/api/v1/chat", data={"question": "and now?", "session_id": sid})
    if limit == "turns":
        assert_error(again, *expected)
    else:
        assert again.status_code == 200 and f"{2 + len(ok) * 2 + 1} turn(s)" in again.get_json()["answer"]


def test_a_failed_or_cancelled_answer_gives_its_room_back(fake_engine, make_png):
    app = web_app(fake_engine)
    client = client_at(app, A)
    sid = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "1"}).get_json()["session_id"]
    fake_engine.busy = True
    assert_error(client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "2", "session_id": sid}),
                 503, "busy")
    fake_engine.busy, fake_engine.delay_s = False, 0.02
    resp = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "word " * 40, "stream": "1",
                                             "session_id": sid}, buffered=False)
    next(iter(resp.response))
    resp.close()  # the reader went away: the answer stops and is not kept
    assert fake_engine.cancelled.wait(5)
    conv = app.extensions["webapp"].sessions.get(sid)
    deadline = time.monotonic() + 5
    while conv.held_questions and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (conv.held_questions, conv.held_images, conv.question_count) == (0, 0, 1)
    fake_engine.delay_s = 0
    assert client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "2",
                                             "session_id": sid}).status_code == 200  # the second image fits


# ---------------------------------------------------------------------------- one client filling every store

def test_one_client_filling_the_stores_leaves_the_others_state(fake_engine, make_png):
    app = web_app(fake_engine)
    st = app.extensions["webapp"]
    a, b = client_at(app, A), client_at(app, B)
    mine = b.post("/api/v1/chat", data={"image": upload(make_png(200, 150)), "question": "mine"}).get_json()
    my_result = b.post("/api/v1/ground", data={"image": upload(noise_png(seed=1)), "phrases": "cat"}).get_json()
    for i in range(12):
        a.post("/api/v1/chat", data={"image": upload(make_png(200, 150, (i, 0, 0))), "question": "flood"})
        a.post("/api/v1/ground", data={"image": upload(noise_png(seed=10 + i)), "phrases": "cat"})
        for store in (st.sessions, st.results):
            items, held = store.usage(KEY_A)
            assert held <= store.owner_max_bytes and items <= store.owner_max_items
            assert store.bytes <= store.max_bytes
    follow = b.post("/api/v1/chat", data={"question": "still there?", "session_id": mine["session_id"]})
    assert follow.status_code == 200 and "3 turn(s)" in follow.get_json()["answer"]
    png = b.get(my_result["downloads"]["png"])
    assert png.status_code == 200 and Image.open(io.BytesIO(png.data)).size == (200, 150)
    assert st.results.usage(KEY_B)[1] < 2 * len(noise_png(seed=1))  # the file is kept, not the drawn PNG
    for store in (st.sessions, st.results):  # memory returns when the state goes
        store.clock = lambda: 1e12
        assert len(store) == 0 and store.bytes == 0


def test_prepared_images_of_one_client_leave_the_others(model_cache, tmp_path):
    """The real preparer: one client preparing image after image only pushes out its own oldest."""
    from model_fixtures import make_engine

    engine = make_engine(model_cache, prepare_store_mb=1, max_prepared=8, client_share=25)
    try:
        app = web_app(engine)
        a, b = client_at(app, A), client_at(app, B)
        kept = b.post("/api/v1/images", data={"image": upload(noise_png(seed=1)), "max_tiles": "1"})
        assert kept.status_code == 202, kept.get_data(as_text=True)
        jobs = engine._preparer.jobs
        for i in range(8):
            resp = a.post("/api/v1/images", data={"image": upload(noise_png(seed=20 + i)), "max_tiles": "1"})
            assert resp.status_code == 202, resp.get_data(as_text=True)
            items, held = jobs.usage(KEY_A)
            assert held <= jobs.owner_max_bytes and items <= jobs.owner_max_items and jobs.bytes <= jobs.max_bytes
        status = b.get(kept.get_json()["status_url"])
        assert status.status_code == 200 and status.get_json()["status"] != "cancelled"
        assert jobs.usage(KEY_B) == (1, len(noise_png(seed=1)))  # what a preparation holds: its file
    finally:
        engine.close()


LARGE = (4800, 3200)  # 46 MB of pixels; as a flat-colour PNG, a few tens of KB


def large_png(colour=(40, 120, 200), size=LARGE) -> bytes:
    """A PNG of large dimensions and a small file."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def prepare_all(client, pngs: list[bytes]) -> list[dict]:
    """POST each image to /api/v1/images, then poll until every preparation is done; their final statuses."""
    started = [client.post("/api/v1/images", data={"image": upload(p), "max_tiles": "1"}).get_json() for p in pngs]
    done, deadline = [], time.monotonic() + 120
    for body in started:
        while body["status"] in ("queued", "encoding") and time.monotonic() < deadline:
            time.sleep(0.05)
            body = client.get(body["status_url"]).get_json()
        done.append(body)
    return done


def images_alive(size: tuple[int, int]) -> int:
    """PIL images of this size still referenced anywhere in this process."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), Image.Image) and o.size == size)


def test_a_prepared_image_of_large_dimensions_keeps_its_file_not_its_pixels(model_cache):
    from model_fixtures import make_engine

    from runtime.prepare import ImageFile

    size = (3200, 2400)  # 23 MB of pixels
    png = large_png(size=size)
    engine = make_engine(model_cache)
    try:
        client = client_at(web_app(engine, max_pixels=20_000_000), A)
        (body,) = prepare_all(client, [png])
        assert body["status"] == "ready" and (body["width"], body["height"]) == size
        job = engine._preparer.get(body["image_id"])
        assert isinstance(job.source, ImageFile) and job._pixels is None
        assert engine._preparer.jobs.usage(KEY_A) == (1, len(png)) and len(png) < 100_000
        assert images_alive(size) == 0
    finally:
        engine.close()


@pytest.mark.slow
def test_resident_memory_of_many_large_prepared_images(model_cache):
    """Ten prepared images of 46 MB of pixels each: resident memory grows by the decoding of about one at a
    time, not by ten decoded pictures (460 MB)."""
    import psutil
    from model_fixtures import make_engine

    engine = make_engine(model_cache)
    try:
        client = client_at(web_app(engine, max_pixels=20_000_000), A)
        prepare_all(client, [large_png()])  # the first decoding sizes the allocator's pools
        before = psutil.Process().memory_info().rss
        done = prepare_all(client, [large_png((i, 2 * i, 3 * i)) for i in range(10)])
        grown = psutil.Process().memory_info().rss - before
        assert [d["status"] for d in done] == ["ready"] * 10 and images_alive(LARGE) == 0
        assert grown < 150 * 2**20, f"resident memory grew by {grown >> 20} MiB"
    finally:
        engine.close()


# ---------------------------------------------------------------------------- the image queue over HTTP

def test_heavy_image_work_past_the_queue_is_refused_busy(fake_engine, make_png, monkeypatch):
    """One worker and one waiting place: of five downloads drawn at once two are admitted, three answered 503
    with Retry-After at once; an upload meanwhile is refused the same way, and all is served once free."""
    import webapp.imagework as imagework

    app = web_app(fake_engine, image_workers=1, image_queue=1)
    client = client_at(app, A)
    report = client.post("/api/v1/ground", data={"image": upload(make_png(200, 100)), "phrases": "cat"}).get_json()
    gate, draw = threading.Event(), imagework.annotated_png
    monkeypatch.setattr(imagework, "annotated_png", lambda *a: gate.wait(10) and draw(*a))
    queue, replies = app.extensions["webapp"].images, []
    threads = [threading.Thread(target=lambda: replies.append(client.get(report["downloads"]["png"])))
               for _ in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while (len(replies) < 3 or queue.admitted < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = list(replies)
    upload_refused = client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "q"})
    gate.set()
    for t in threads:
        t.join(10)
    assert len(refused) == 3 and queue.admitted == 0
    for resp in (*refused, upload_refused):
        assert_error(resp, 503, "busy")
        assert resp.headers["Retry-After"] == "5"
    served = [r for r in replies if r not in refused]
    assert [r.status_code for r in served] == [200, 200]
    assert Image.open(io.BytesIO(served[0].data)).size == (200, 100)
    assert client.post("/api/v1/chat", data={"image": upload(make_png()), "question": "q"}).status_code == 200
