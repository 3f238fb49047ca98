"""The real vLLM (CPU build) booted by the appliance: a chat completion through Caddy, and its own metrics
re-exported by /metrics with the instance label."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engine.conftest import served

pytestmark = pytest.mark.engine


def test_real_engine_answers_a_chat_completion_through_caddy(real_app):
    app = real_app
    with app.client(timeout=120) as client:
        name = served(app, client)
        response = client.post(app.api_url("/v1/chat/completions"), json={
            "model": name, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello"}]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] > 0
    with app.client(auth=False) as client:
        assert client.get(app.api_url("/v1/models")).status_code == 401
    assert "vllm | " in app.output()


def test_the_real_engines_metrics_come_with_its_instance(real_app):
    app = real_app
    with app.client(timeout=120) as client:
        name = served(app, client)
        assert client.post(app.api_url("/v1/completions"), json={
            "model": name, "prompt": "one two", "max_tokens": 4}).status_code == 200
        text = client.get(app.portal_url("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    generated = [s for s in families["vllm:generation_tokens"].samples if s.name.endswith("_total")]
    assert generated and all(s.labels["instance"] == "vllm" and s.labels["model_name"] == name for s in generated)
    assert sum(s.value for s in generated) >= 1
    assert families["vllm:e2e_request_latency_seconds"].type == "histogram"
