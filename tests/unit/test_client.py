"""The Python client's logic (client/vllm_appliance_client) against an httpx MockTransport: order, bounded
concurrency, retries on 503 with Retry-After, typed errors, return_extra, embeddings in batches, replica plans."""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from vllm_appliance_client import (
    Appliance,
    AsyncAppliance,
    BadRequestError,
    NotFoundError,
    UnavailableError,
    core,
)

REPO = Path(__file__).resolve().parents[2]
URL = "https://box:1111"
API = "https://box:8000"


def completion(body: dict) -> dict:
    """An engine's answer that echoes the request's prompt (or last message), so order can be checked."""
    if "messages" in body:
        text = body["messages"][-1]["content"]
        choice = {"index": 0, "message": {"role": "assistant", "content": f"re: {text}"}, "finish_reason": "stop",
                  "logprobs": {"content": [{"token": "re", "logprob": -0.5}]} if body.get("logprobs") else None}
    else:
        choice = {"index": 0, "text": f"re: {body['prompt']}", "finish_reason": "length", "logprobs": None}
    return {"model": body["model"], "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


class Engine:
    """A MockTransport handler: answers chat, completions and embeddings; counts requests in flight."""

    def __init__(self, delay: float = 0.0, failures: dict | None = None):
        self.delay, self.failures = delay, failures or {}
        self.in_flight = self.peak = self.calls = 0
        self.lock = threading.Lock()
        self.seen: list = []

    def answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        key = body.get("prompt") or (body.get("messages") or [{}])[-1].get("content") or str(body.get("input"))
        with self.lock:
            self.calls += 1
            self.seen.append(key)
            failure = self.failures.get(key)
            if failure and failure[0] > 0:
                failure[0] -= 1
                return failure[1]()
        if request.url.path == "/v1/embeddings":
            return httpx.Response(200, json={"data": [{"index": i, "embedding": [float(len(t)), float(i)]}
                                                      for i, t in reversed(list(enumerate(body["input"])))]})
        return httpx.Response(200, json=completion(body))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay:
                time.sleep(random.uniform(0, self.delay))
            return self.answer(request)
        finally:
            with self.lock:
                self.in_flight -= 1


def appliance(engine: Engine) -> Appliance:
    app = Appliance(URL, "tok", api_url=API)
    app._inference = httpx.Client(base_url=API, transport=httpx.MockTransport(engine))
    return app


def busy(seconds: str = "0"):
    return lambda: httpx.Response(503, headers={"Retry-After": seconds},
                                  json={"error": {"message": "queue full", "type": "ServiceUnavailable"}})


def test_results_come_in_input_order_with_bounded_concurrency():
    engine = Engine(delay=0.02)
    prompts = [f"prompt {i}" for i in range(40)]
    answers = appliance(engine).model("m").generate(prompts, concurrency=4, progress=False)
    assert answers == [f"re: {p}" for p in prompts]
    assert engine.peak <= 4 and engine.calls == 40


def test_503_is_retried_after_retry_after(monkeypatch):
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    engine = Engine(failures={"hello": [2, busy("0.25")]})
    assert appliance(engine).model("m").chat(["hello", "other"]) == ["re: hello", "re: other"]
    assert waits == [0.25, 0.25] and engine.calls == 4


def test_503_without_retry_after_backs_off_then_gives_up_with_the_servers_message(monkeypatch):
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    app = appliance(Engine(failures={"x": [100, lambda: httpx.Response(503, json={"detail": "queue full"})]}))
    app.retry.retries = 3
    with pytest.raises(UnavailableError) as caught:
        app.model("m").generate(["x"])
    assert caught.value.status == 503 and caught.value.message == "queue full" and caught.value.index == 0
    assert waits == [0.5, 1.0, 2.0]


def test_an_error_names_the_item_and_stops_the_batch():
    bad = lambda: httpx.Response(400, json={"error": {"message": "max_tokens is too large", "type": "BadRequest"}})
    engine = Engine(delay=0.01, failures={"p 3": [1, bad]})
    with pytest.raises(BadRequestError) as caught:
        appliance(engine).model("m").generate([f"p {i}" for i in range(200)], concurrency=2)
    assert caught.value.index == 3 and "max_tokens is too large" in str(caught.value)
    assert engine.calls < 200  # the rest were not sent


def test_typed_errors_carry_the_servers_message():
    app = appliance(Engine(failures={"q": [1, lambda: httpx.Response(
        404, json={"error": {"message": "The model `nope` does not exist.", "code": "model_not_found"}})]}))
    with pytest.raises(NotFoundError, match="does not exist"):
        app.model("nope").generate(["q"])


def test_return_extra_gives_finish_reason_logprobs_and_usage():
    served = appliance(Engine()).model("m")
    [result] = served.chat([[{"role": "user", "content": "hi"}]], return_extra=True, logprobs=True, max_tokens=4)
    assert result.text == "re: hi" and result.finish_reason == "stop"
    assert result.logprobs == {"content": [{"token": "re", "logprob": -0.5}]}
    assert result.usage.completion_tokens == 2 and result.model == "m"


def test_sampling_parameters_reach_the_request():
    seen = []
    def handler(request):
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=completion(seen[-1]))
    app = Appliance(URL, "tok", api_url=API)
    app._inference = httpx.Client(base_url=API, transport=httpx.MockTransport(handler))
    app.model("m").generate(["a"], max_tokens=7, temperature=0.2, model="my-lora")
    assert seen == [{"max_tokens": 7, "temperature": 0.2, "model": "my-lora", "prompt": "a"}]


def test_embeddings_go_in_batches_and_come_back_in_order():
    engine = Engine()
    texts = ["x" * (i % 7 + 1) for i in range(150)]
    vectors = appliance(engine).model("e").embed(texts, batch_size=64)
    assert engine.calls == 3 and [v[0] for v in vectors] == [float(len(t)) for t in texts]


def test_progress_bar_for_long_batches(capsys):
    appliance(Engine()).model("m").generate([str(i) for i in range(core.PROGRESS_FROM)])
    assert f"generate {core.PROGRESS_FROM}/{core.PROGRESS_FROM}" in capsys.readouterr().err
    appliance(Engine()).model("m").generate(["short"])
    assert capsys.readouterr().err == ""


def test_async_twin_orders_bounds_and_retries(monkeypatch):
    engine = Engine(failures={"p 5": [1, busy("0")]})
    gate = {"now": 0, "peak": 0}

    async def handler(request):
        gate["now"] += 1
        gate["peak"] = max(gate["peak"], gate["now"])
        await asyncio.sleep(random.uniform(0, 0.01))
        gate["now"] -= 1
        return engine.answer(request)

    async def main():
        app = AsyncAppliance(URL, "tok", api_url=API)
        app._inference = httpx.AsyncClient(base_url=API, transport=httpx.MockTransport(handler))
        served = app.model("m")
        answers = await served.generate([f"p {i}" for i in range(30)], concurrency=3)
        vectors = await served.embed(["a", "bb"], batch_size=1)
        await app.aclose()
        return answers, vectors

    answers, vectors = asyncio.run(main())
    assert answers == [f"re: p {i}" for i in range(30)] and gate["peak"] <= 3
    assert engine.seen.count("p 5") == 2
    assert vectors == [[1.0, 0.0], [2.0, 0.0]]


def test_inference_address_comes_from_the_appliances_ports():
    def handler(request):
        assert request.url.path == "/api/apps" and request.headers["authorization"] == "Bearer tok"
        return httpx.Response(200, json={"https": True, "api_port": 8000, "portal_port": 1111, "apps": []})
    app = Appliance("https://box.example:1111/", "tok")
    app.http = httpx.Client(base_url=app.url, headers=app.headers, transport=httpx.MockTransport(handler))
    assert app.api_url == "https://box.example:8000"
    assert core.api_url_from("http://[::1]:1111", {"https": False, "api_port": 9000}) == "http://[::1]:9000"


def test_replica_plans():
    plan = core.plan("Qwen/Qwen2.5-0.5B-Instruct", "per_gpu", None, 4, "qwen")
    assert plan.ids == ["qwen-0", "qwen-1", "qwen-2", "qwen-3"] and plan.gpus == [[0], [1], [2], [3]]
    assert core.plan("m", 2, [2, 3, 4, 5], 8, "m").gpus == [[2, 3], [4, 5]]
    assert core.plan("m", 2, None, 0, "m").gpus == [None, None]  # no GPUs: CPU engines
    assert core.plan("org/My_Model", 1, None, 0).ids[0].startswith("my-model-")
    with pytest.raises(ValueError, match="split evenly"):
        core.plan("m", 2, [0, 1, 2], 3)
    with pytest.raises(ValueError, match="needs GPUs"):
        core.plan("m", "per_gpu", None, 0)
    with pytest.raises(ValueError, match="positive number"):
        core.plan("m", 0, None, 0)


def test_the_client_is_versioned_with_the_appliance():
    appliance_version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    client = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    assert client["version"] == appliance_version
    assert client["name"] == "vllm-appliance-client"
    assert sorted(d.split(">")[0] for d in client["dependencies"]) == ["httpx", "pydantic"]
