"""Load and soak against the real server (`python -m webapp`, tiny random model), small versions by default.

The full runs are `make test-slow` (or the scripts: python tests/load/run_load.py, tests/load/soak.py);
figures land in tests/artifacts/ (load-*.json, soak-*.csv/png/json).
"""
from __future__ import annotations

import time

import pytest
from load.clients import Mix
from load.report import failures, table
from load.run_load import load_failures, run_load
from load.soak import run_soak


def test_mixed_load_holds(model_cache):
    """4 clients x 25 requests of every kind, a queue so short that some are refused: every answer is right
    or a deliberate 503 with Retry-After, and the server counted exactly what the clients sent."""
    mix = Mix(retry_pause_s=0.3)  # a refused client waits a little before its next request
    summary = run_load(model_cache, clients=4, per_client=25, name="load-fast", mix=mix, MAX_QUEUE=2)
    print(table(summary))
    assert not load_failures(summary)
    assert summary["sent"] == 100 and summary["outcomes"]["ok"] >= 40
    assert set(summary["statuses"]) <= {"200", "503"}
    assert summary["logged_internal_errors"] == 0


HOSTILE_RSS_MB = 1500  # the tiny model's server with every store at its default byte budget stays under this


def test_hostile_clients_beside_ordinary_ones(model_cache):
    """2 hostile clients (load/hostile.py: nested JSON, markup in questions and phrases, bodies over the hard
    limit, 36-MP images to prepare, bad images, redirect injection...) beside 3 ordinary ones: no 5xx but
    deliberate 503s, nothing lost, every ordinary answer right, and the server's memory within its bound."""
    from load.hostile import HOSTILE

    summary = run_load(model_cache, clients=3, per_client=15, name="load-hostile", hostile=2,
                       mix=Mix(retry_pause_s=0.3), MAX_QUEUE=4)
    print(table(summary), summary["rss_mb"])
    assert not load_failures(summary)
    assert summary["sent"] == 75 and summary["logged_internal_errors"] == 0
    assert all(s == "503" or not s.startswith("5") for s in summary["statuses"]), summary["statuses"]
    hostile_kinds = set(summary["kinds"]) & set(HOSTILE)
    assert len(hostile_kinds) >= 4  # the classes were really sent
    assert summary["rss_mb"]["peak"] < HOSTILE_RSS_MB, summary["rss_mb"]


def test_rate_limited_load_holds(model_cache):
    """With RATE_LIMIT on, the requests past the budget get a deliberate 429 with Retry-After; none is lost."""
    pytest.importorskip("flask_limiter")
    mix = Mix(weights={"chat": 1, "openai": 1, "describe": 1})
    summary = run_load(model_cache, clients=2, per_client=12, name="load-rate-limited", mix=mix,
                       RATE_LIMIT="10/minute")
    print(table(summary))
    assert not load_failures(summary)
    assert summary["statuses"].get("429", 0) >= 10 and summary["outcomes"]["ok"] >= 10


def test_mini_soak_memory_levels_off(model_cache):
    """300 mixed requests with every store bounded small: after the first 150 (which fill the caches, the
    stores and the allocator), the server's resident memory grows by less than 80 MiB. The pictures are large
    (800-1600 px, up to 7 MiB decoded) and read at one tile: keeping each for good would add about 600 MiB
    over the 150, while the run stays short."""
    mix = Mix(image_side=(800, 1600), max_tiles=(1, 1), max_new_tokens=(2, 8))
    summary = run_soak(model_cache, total=300, clients=4, warmup=150, name="soak-mini", every=10, mix=mix)
    print(table(summary), summary["rss"])
    assert not failures(summary)
    rss = summary["rss"]
    assert rss["max_after_warmup_mb"] - rss["at_warmup_mb"] < 80, rss


def test_health_stays_quick_while_generations_fill_the_queue(model_cache, tmp_path, make_png):
    """More long generations than the queue holds: the extra ones are refused at once (503, Retry-After), and
    /health keeps answering quickly from the threads the queue cannot take (WEB_THREADS > MAX_QUEUE +
    CONCURRENCY), as a container health check needs."""
    import concurrent.futures

    import requests
    from load.server import ServerProcess

    env = {"WEB_THREADS": 6, "MAX_QUEUE": 2, "CONCURRENCY": 1, "MAX_NEW_TOKENS": 1500, "MAX_NEW_TOKENS_LIMIT": 1500}
    with ServerProcess(model_cache, tmp_path / "server.log", **env) as server:
        server.wait_health()

        def long_answer(_):
            return requests.post(f"{server.url}/v1/chat/completions", timeout=120, json={
                "max_tokens": 1500, "messages": [{"role": "user", "content": "Tell me everything."}]})

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = pool.map(long_answer, range(6))
            time.sleep(0.5)
            health = []
            for _ in range(5):
                t0 = time.perf_counter()
                assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
                health.append(time.perf_counter() - t0)
            statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 3 + [503] * 3, statuses  # one running and MAX_QUEUE=2 waiting are served
    assert max(health) < 0.5, health


@pytest.mark.slow
def test_full_load_holds(model_cache):
    """16 clients x 50 requests against a queue of 4: some 503s, no 500, nothing lost, /health quick."""
    summary = run_load(model_cache, clients=16, per_client=50, name="load", mix=Mix(retry_pause_s=0.5),
                       MAX_QUEUE=4)
    print(table(summary))
    assert not load_failures(summary)
    assert summary["statuses"].get("503", 0) > 0


@pytest.mark.slow
def test_soak_1200_requests(model_cache):
    """1200 requests: memory levels off after the first 400."""
    summary = run_soak(model_cache, total=1200, clients=4, warmup=400, name="soak")
    print(table(summary), summary["rss"])
    assert not failures(summary)
    rss = summary["rss"]
    assert rss["max_after_warmup_mb"] - rss["at_warmup_mb"] < 60 and rss["slope_mb_per_1000"] < 50, rss
