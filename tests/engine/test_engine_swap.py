"""One swap between two tiny models on the real vLLM (CPU), through the API, with a completion before and after."""
from __future__ import annotations

import pytest

from tests.engine.conftest import ENGINE_ARGS, READY_TIMEOUT, served

pytestmark = pytest.mark.engine


def complete(app, client, model: str) -> str:
    response = client.post(app.api_url("/v1/completions"), json={"model": model, "prompt": "one two", "max_tokens": 6})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_swap_between_two_tiny_models(real_app, tiny_model):
    app = real_app
    with app.client(timeout=READY_TIMEOUT) as client:
        before = served(app, client)
        after = "tiny-b" if before == "tiny-a" else "tiny-a"
        assert complete(app, client, before)
        answer = client.put(app.portal_url("/api/instances/vllm"), json={
            "model": str(tiny_model(after, seed=int(after == "tiny-b"))), "args": ENGINE_ARGS.split(),
            "served_model_name": after, "wait": True, "timeout": READY_TIMEOUT})
        assert answer.json()["result"] == "ready", answer.text
        assert [m["id"] for m in client.get(app.api_url("/v1/models")).json()["data"]] == [after]
        assert complete(app, client, after)
