"""One swap between two tiny models on the real vLLM (CPU), through the API, with a completion before and after."""
from __future__ import annotations

import pytest

from tests.engine.conftest import ENGINE_ARGS, READY_TIMEOUT

pytestmark = pytest.mark.engine


def complete(app, client, model: str) -> str:
    response = client.post(app.api_url("/v1/completions"), json={"model": model, "prompt": "one two", "max_tokens": 6})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_swap_between_two_tiny_models(boot, engine_bin, tiny_model):
    first, second = tiny_model("tiny-a"), tiny_model("tiny-b", seed=1)
    app = boot({"VLLM_MODEL": str(first), "VLLM_ARGS": f"{ENGINE_ARGS} --served-model-name tiny-a"},
               start=False, path_prefix=[engine_bin])
    app.start(timeout=READY_TIMEOUT)
    with app.client(timeout=READY_TIMEOUT) as client:
        assert complete(app, client, "tiny-a")
        answer = client.put(app.portal_url("/api/instances/vllm"), json={
            "model": str(second), "args": ENGINE_ARGS.split(), "served_model_name": "tiny-b",
            "wait": True, "timeout": READY_TIMEOUT})
        assert answer.json()["result"] == "ready", answer.text
        assert [m["id"] for m in client.get(app.api_url("/v1/models")).json()["data"]] == ["tiny-b"]
        assert complete(app, client, "tiny-b")
