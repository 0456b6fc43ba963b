"""Schemathesis against our own /openapi.json: generated requests to every operation never get a 500, and
every answer matches the document (status codes, content types, bodies, headers, SSE events).

In-process over the WSGI app with the fake engine (fast, default run); `pytest -m slow` adds a long run
against the real server with the tiny model, and tests/load/fuzz.py runs the schemathesis CLI the same way.

Checked: not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
response_headers_conformance. Not checked: positive_data_acceptance and negative_data_rejection, because the
document cannot say what the API deliberately does: multipart sends every field as text, so "0" or "{}" are
read as the flag or phrase they spell, and some valid-looking requests are refused by rules across fields
(a first question needs an image; a session_id must exist).
"""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


def _app():
    """The app over the fake engine (built at import: schemathesis reads the document to make the tests)."""
    from fake_engine import FakeEngine

    from webapp import create_app
    from webapp.settings import WebSettings

    return create_app(WebSettings(secret_key="fuzz", max_upload_mb=1, max_pixels=4_000_000, max_turns=50),
                      engine=FakeEngine())


APP = _app()
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_api_answers_match_the_document(case):
    case.call_and_validate(checks=CHECKS)


@pytest.fixture(scope="module")
def live_url(model_cache, tmp_path_factory):
    """The real server over the tiny model; checks afterwards that it never logged an internal error."""
    from load.server import ServerProcess

    log = tmp_path_factory.mktemp("fuzz-live") / "server.log"
    with ServerProcess(model_cache, log, MAX_NEW_TOKENS=64) as server:
        server.wait_health()
        yield server.url
        assert server.alive() and "internal error" not in server.log()


live = schemathesis.openapi.from_dict(APP.test_client().get("/openapi.json").get_json())


@pytest.mark.slow
@live.parametrize()
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_live_server_answers_match_the_document(case, live_url):
    case.call_and_validate(base_url=live_url, checks=CHECKS, timeout=60)
