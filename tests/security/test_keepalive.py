"""No 502 when a request reuses an upstream connection that uvicorn (5 s keep-alive) is just closing (issue 12, 5).

Each of 50 client connections sends a request, waits about 5 s, sends the next: Caddy then reuses an upstream
connection idle for about 5 s, which uvicorn closes at 5 s. The requests are POSTs with a body, which Go's
transport never retries by itself, so a request lost to the race shows as a 502.
"""
from __future__ import annotations

import collections
import random
import threading
import time

from tests.security.recorder import Recorder

LANES, ROUNDS = 50, 4  # 200 tries, in about 25 s


def test_caddy_closes_an_idle_upstream_connection_before_uvicorn_would(secured):
    """uvicorn closes an idle connection after 5 s: Caddy must let go of it first, so it never reuses one that
    the upstream is closing just then."""
    Recorder.closed.clear()
    with secured.client() as client:
        assert client.get(secured.url(secured.app_port, "/page")).status_code == 200
    answered = time.monotonic()
    deadline = answered + 6
    while not Recorder.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Recorder.closed, "Caddy kept the idle upstream connection open for more than 6 s"
    assert Recorder.closed[0] - answered < 4.5



def after_idle(client, send, lanes: int = LANES, rounds: int = ROUNDS) -> tuple[collections.Counter, list[str]]:
    """`lanes` connections (from `client()`) each send a request, wait about 5 s, send again, `rounds` times;
    returns the statuses counted and the errors. `send(client)` sends one request and returns its status."""
    statuses: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(lanes)

    def one(connection) -> None:
        try:
            status = send(connection)
        except Exception as exc:  # noqa: BLE001 (counted, shown by the caller)
            with lock:
                errors.append(repr(exc))
            return
        with lock:
            statuses.append(status)

    def lane() -> None:
        with client() as connection:
            one(connection)  # opens the connection (and one upstream connection behind it)
            start.wait(120)
            for _ in range(rounds):
                time.sleep(5 + random.uniform(-0.005, 0.01))  # uvicorn closes at 5 s
                one(connection)

    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return collections.Counter(statuses), errors


def test_no_502_after_an_idle_keep_alive_on_the_portal_port(secured):
    url = secured.portal_url("/api/health")
    counts, errors = after_idle(lambda: secured.client(timeout=30), lambda c: c.post(url, json={}).status_code)
    assert not errors, (counts, errors[:3])
    assert counts[502] == 0, f"{counts[502]} of {sum(counts.values())} got 502: {counts}"
    assert counts == {405: LANES * (ROUNDS + 1)}  # each reached the manager (POST on a GET route)
