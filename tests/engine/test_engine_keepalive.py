"""No 502 when Caddy reuses an idle connection to the real engine (vLLM's uvicorn closes idle ones after 5 s):
200 tries over 50 connections, each about 5 s after the previous one on its connection (issue 12, item 5)."""
from __future__ import annotations

import pytest

from tests.engine.conftest import served
from tests.security.test_keepalive import LANES, ROUNDS, after_idle

pytestmark = pytest.mark.engine


def test_no_502_after_an_idle_keep_alive_on_the_api_port_with_the_real_engine(real_app):
    app = real_app
    with app.client() as client:
        name = served(app, client)
    url = app.api_url("/tokenize")  # a POST with a body: Caddy never retries it, so a lost one shows as a 502
    counts, errors = after_idle(lambda: app.client(timeout=60),
                                lambda c: c.post(url, json={"model": name, "prompt": "hello"}).status_code)
    assert not errors, (counts, errors[:3])
    assert counts == {200: LANES * (ROUNDS + 1)}, counts
