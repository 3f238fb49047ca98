"""The router with the real vLLM (CPU): two tiny models on one base URL, and a blue/green swap under a steady client
with no failed request."""
from __future__ import annotations

import threading

import openai
import pytest

from tests.engine.conftest import ENGINE_ARGS, READY_TIMEOUT, served

pytestmark = pytest.mark.engine


def put(app, client, instance_id: str, model, **fields):
    answer = client.put(app.portal_url(f"/api/instances/{instance_id}"), json={
        "model": str(model), "args": ENGINE_ARGS.split(), "wait": True, "timeout": READY_TIMEOUT, **fields})
    assert answer.json()["result"] == "ready", answer.text
    return answer.json()


def test_two_real_models_on_one_base_url_then_a_blue_green_swap_fails_no_request(real_app, tiny_model):
    app = real_app
    with app.client(timeout=READY_TIMEOUT) as http:
        first = served(app, http)
        put(app, http, "pair", tiny_model("tiny-b", seed=1), served_model_name="pair")
        try:
            ai = openai.OpenAI(base_url=app.api_url("/v1"), api_key=app.token, http_client=http, max_retries=0)
            listed = {m.id for m in ai.models.list().data}
            assert {first, "pair"} <= listed
            for model in (first, "pair"):
                reply = ai.chat.completions.create(model=model, max_tokens=4,
                                                   messages=[{"role": "user", "content": "one two"}])
                assert reply.model == model and reply.usage.completion_tokens > 0
                events = [c for c in ai.chat.completions.create(
                    model=model, max_tokens=6, stream=True, messages=[{"role": "user", "content": "three four"}])
                    if c.choices]  # a random tiny model's tokens may decode to empty text: count the events
                assert len(events) >= 2 and events[-1].choices[0].finish_reason in ("length", "stop")
                assert {e.model for e in events} == {model}

            results: list[str] = []
            stop = threading.Event()

            def steady() -> None:
                with app.client(timeout=120) as own:
                    while not stop.is_set():
                        answer = own.post(app.api_url("/v1/completions"),
                                          json={"model": "pair", "prompt": "five six", "max_tokens": 2})
                        results.append("ok" if answer.status_code == 200 else f"{answer.status_code} {answer.text}")

            worker = threading.Thread(target=steady)
            worker.start()
            try:
                swapped = put(app, http, "pair", tiny_model("tiny-c", seed=2), served_model_name="pair",
                              strategy="blue_green")
            finally:
                count = len(results)  # a few more requests after the switch, then stop
                while len(results) < count + 3 and worker.is_alive():
                    worker.join(0.2)
                stop.set()
                worker.join(120)
            assert swapped["model"].endswith("tiny-c")
            assert len(results) > 3
            assert [r for r in results if r != "ok"] == []
        finally:
            http.delete(app.portal_url("/api/instances/pair"))
