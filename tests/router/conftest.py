"""An appliance with several stand-in engines behind the router, shared by a module's tests."""
from __future__ import annotations

import httpx
import pytest

from tests.appliance import Appliance


def put(app: Appliance, instance_id: str, **body) -> dict:
    with app.client(timeout=120) as client:
        answer = client.put(app.portal_url(f"/api/instances/{instance_id}"), json={"wait": True, **body})
        assert answer.status_code == 200 and answer.json()["result"] == "ready", answer.text
        return answer.json()


def control(app: Appliance) -> httpx.Client:
    """The router's control socket (as the manager talks to it)."""
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(app.root / "run/appliance/router.sock")),
                        base_url="http://router", timeout=10)


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    """`vllm` (acme/tiny-chat) and `coder` (acme/tiny-coder, alias `code`)."""
    app = Appliance(tmp_path_factory.mktemp("routed"),
                    {"VLLM_MODEL": "acme/tiny-chat", "FAKE_VLLM_TOKEN_DELAY": "0.05"})
    app.start()
    try:
        put(app, "coder", model="acme/tiny-coder", aliases=["code"])
        yield app
    finally:
        app.stop()
