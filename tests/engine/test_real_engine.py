"""The real vLLM (CPU build) booted by the appliance, answering a chat completion through Caddy."""
from __future__ import annotations

import pytest

from tests.engine.conftest import ENGINE_ARGS, READY_TIMEOUT

pytestmark = pytest.mark.engine


def test_real_engine_answers_a_chat_completion_through_caddy(boot, engine_bin, tiny_model):
    model = tiny_model("tiny-a")
    app = boot({"VLLM_MODEL": str(model), "VLLM_ARGS": f"{ENGINE_ARGS} --served-model-name tiny-a"},
               start=False, path_prefix=[engine_bin])
    app.start(timeout=READY_TIMEOUT)
    with app.client(timeout=120) as client:
        assert [m["id"] for m in client.get(app.api_url("/v1/models")).json()["data"]] == ["tiny-a"]
        response = client.post(app.api_url("/v1/chat/completions"), json={
            "model": "tiny-a", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello"}]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] > 0
    with app.client(auth=False) as client:
        assert client.get(app.api_url("/v1/models")).status_code == 401
    assert "vllm | " in app.output()
