"""Batched decode across concurrent generations (runtime/backends/ov_batch.py): same logits and answers as
decoding one sequence at a time, whatever the joins, holes, leaves and evictions."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from model_fixtures import make_engine, photo, rel_err, runtime_settings

from runtime.backends import ov_batch
from runtime.types import GenerationOptions, Turn


@pytest.fixture()
def backend(model_cache):
    from runtime.backends.openvino_backend import OpenVINOBackend

    settings = runtime_settings(model_cache)
    return OpenVINOBackend(settings.export_dir, settings)


def _pair(backend, prompt_len: int, rng):
    """A batched sequence and its reference (own request, never batched), both prefilled with one prompt."""
    from runtime.backends.openvino_backend import OpenVINOSequence

    seq = backend.new_sequence()
    ref = OpenVINOSequence(backend.lm.create_infer_request())
    prompt = rng.standard_normal((prompt_len, backend.hidden_size)).astype(np.float32)
    assert rel_err(seq.forward(prompt), ref.forward(prompt)) == 0  # both on their own request
    return seq, ref


def _token(backend, rng):
    return rng.standard_normal((1, backend.hidden_size)).astype(np.float32)


def _same_step(backend, seq, ref, rng) -> None:
    e = _token(backend, rng)
    got, want = seq.forward(e), ref.forward(e)
    assert seq.length == ref.length
    assert rel_err(got, want) < 1e-4


def test_joins_holes_leaves_and_evictions_keep_every_sequence_exact(backend):
    rng = np.random.default_rng(0)
    a, ra = _pair(backend, 20, rng)
    b, rb = _pair(backend, 7, rng)
    c, rc = _pair(backend, 33, rng)
    batch = backend.batch

    _same_step(backend, a, ra, rng)  # alone: on its own request, no batch yet
    assert a.row is None and batch.steps == 0
    _same_step(backend, b, rb, rng)  # a decoded just now: both move into the batch (a gets a hole)
    assert a.row is not None and b.row is not None and batch.steps == 1
    for _ in range(3):  # each step waits briefly for the other's token, then gives it a hole
        _same_step(backend, a, ra, rng)
        _same_step(backend, b, rb, rng)
    _same_step(backend, c, rc, rng)  # a third joins a batch with holes and different lengths
    assert c.row is not None

    snap = b.snapshot()  # b leaves with its KV; it no longer holds the batch up
    assert b.row is None and snap.length == rb.length
    assert snap.nbytes == sum(a.nbytes for a in snap.data.values()) > 0
    np.testing.assert_allclose(snap.data[next(iter(snap.data))], rb.snapshot().data[next(iter(snap.data))],
                               rtol=1e-5, atol=1e-5)
    for _ in range(2):
        _same_step(backend, a, ra, rng)
        _same_step(backend, c, rc, rng)
    _same_step(backend, b, rb, rng)  # b comes back from its detached KV
    assert b.row is not None

    for _ in range(ov_batch.IDLE_STEPS):  # c stops handing in tokens: moved out after IDLE_STEPS steps
        _same_step(backend, a, ra, rng)
    assert c.row is None and c.detached is not None
    assert c.detached.nbytes == sum(a.nbytes for a in c.detached.values()) > 0  # what the prefix cache counts
    _same_step(backend, c, rc, rng)  # and continues exactly where it was

    prompt = rng.standard_normal((5, backend.hidden_size)).astype(np.float32)
    assert rel_err(a.forward(prompt), ra.forward(prompt)) < 1e-4  # a multi-token feed leaves the batch first
    assert a.row is None
    b.reset()
    assert b.row is None and b.length == 0


def test_concurrent_chats_give_the_answers_of_one_at_a_time(model_cache):
    engine = make_engine(model_cache, concurrency=3)
    batch = engine._runner.backend.batch
    opts = GenerationOptions(max_new_tokens=24, ignore_eos=True)
    dialogs = [[Turn("user", q, [photo(name)])] for q, name in
               [("What is this?", "chelsea"), ("Describe the picture in detail.", "astronaut"),
                ("Which colours do you see?", "coffee")]]
    alone = [engine.chat(d, opts).text for d in dialogs]
    assert batch.steps == 0  # one at a time never batches

    answers, errors = [None] * len(dialogs), []
    together = threading.Barrier(len(dialogs), timeout=60)  # all three decode at once from their first token

    def ask(i: int) -> None:
        first = threading.Event()

        def on_text(_: str) -> None:
            if not first.is_set():
                first.set()
                together.wait()

        try:
            answers[i] = engine.chat(dialogs[i], opts, on_text=on_text).text
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(dialogs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert answers == alone
    assert batch.rows_stepped > batch.steps > 0  # the decodes did share steps

    follow = dialogs[0] + [Turn("assistant", answers[0]), Turn("user", "And the colours?")]
    cached = engine.chat(follow, opts)  # the KV a batched answer left behind serves its follow-up
    assert cached.timings.cached_tokens > 0
    fresh = make_engine(model_cache, concurrency=1).chat(follow, opts)
    assert cached.text == fresh.text
