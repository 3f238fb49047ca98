"""POST /api/playground/chat on the booted appliance, through Caddy: the engine's events arrive as it sends them
(not buffered by the manager or Caddy), and a client that leaves ends the engine's request at once."""
from __future__ import annotations

import time

from app.credentials import session_value
from app.render import COOKIE
from tests.manager.test_swap import wait_for


def running(app, client) -> float | None:
    """Requests the engine is working on, as the overview reads them from its metrics."""
    models = client.get(app.portal_url("/api/overview/models")).json()["models"]
    figures = next(m for m in models if m["id"] == "vllm")["figures"]
    return figures["running"] if figures else None


def test_playground_streams_as_the_engine_sends_and_a_client_leaving_cancels_it(boot):
    app = boot({"VLLM_MODEL": "acme/tiny-chat", "FAKE_VLLM_TOKEN_DELAY": "0.5"})  # a reply of 16 tokens: 8 s
    chat = {"model": "acme/tiny-chat", "max_tokens": 16,
            "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten eleven"}]}
    with app.client(timeout=30) as client:
        arrivals = []
        with client.stream("POST", app.portal_url("/api/playground/chat"), json=chat) as answer:
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
            for line in answer.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(time.monotonic())
                if len(arrivals) == 3:
                    break
            assert running(app, client) == 1
        left = time.monotonic()
        # streamed: each token came on its own, about one token delay after the one before
        assert arrivals[2] - arrivals[0] >= 0.6
        # the client left after 3 of 16 tokens: the engine's request ends well before its remaining 6.5 s
        wait_for(lambda: running(app, client) == 0, timeout=4)
        assert time.monotonic() - left < 4.5


def test_playground_with_the_cookie_needs_the_portals_own_request(appliance):
    """A form on another page of the box could post with the cookie: the guard refuses what a form can send."""
    chat = '{"model": "acme/tiny-chat", "messages": [{"role": "user", "content": "hi"}]}'
    cookie = {"Cookie": f"{COOKIE}={session_value(appliance.token)}"}
    with appliance.client(auth=False, timeout=30) as client:
        forged = client.post(appliance.portal_url("/api/playground/chat"), content=chat,
                             headers={**cookie, "Content-Type": "text/plain"})
        assert forged.status_code == 403 and "X-Portal-Request" in forged.json()["detail"]
        own = client.post(appliance.portal_url("/api/playground/chat"), content=chat,
                          headers={**cookie, "Content-Type": "application/json", "X-Portal-Request": "1"})
        assert own.status_code == 200 and own.text.rstrip().endswith("data: [DONE]")
