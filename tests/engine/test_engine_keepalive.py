"""No 502 when Caddy reuses an idle connection to the real engine (vLLM's uvicorn closes idle ones after 5 s):
200 tries over 50 connections, each about 5 s after the previous one on its connection (issue 12, item 5)."""
from __future__ import annotations

import collections
import random
import threading
import time

import pytest

from tests.engine.conftest import served

pytestmark = pytest.mark.engine
LANES, ROUNDS = 50, 4


def test_no_502_after_an_idle_keep_alive_on_the_api_port_with_the_real_engine(real_app):
    app = real_app
    with app.client() as client:
        name = served(app, client)
    statuses: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(LANES)

    def post(client) -> None:
        try:  # a POST with a body: Caddy's transport never retries it by itself, so a lost one shows as a 502
            status = client.post(app.api_url("/tokenize"), json={"model": name, "prompt": "hello"}).status_code
        except Exception as exc:  # noqa: BLE001 (counted, shown below)
            with lock:
                errors.append(repr(exc))
            return
        with lock:
            statuses.append(status)

    def lane() -> None:
        with app.client(timeout=60) as client:
            post(client)
            start.wait(120)
            for _ in range(ROUNDS):
                time.sleep(5 + random.uniform(-0.005, 0.01))
                post(client)

    threads = [threading.Thread(target=lane) for _ in range(LANES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    counts = collections.Counter(statuses)
    assert not errors, (counts, errors[:3])
    assert counts == {200: LANES * (ROUNDS + 1)}, counts
