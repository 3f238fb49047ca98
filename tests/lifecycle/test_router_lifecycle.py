"""The lifecycle with the router in front (issue 14), on the real appliance with stand-in engines: a stream in
flight finishes across a swap, blue/green and restart swaps under a steady load fail no request, an idle instance
stops and a request starts it again, making room drains a busy holder first.

Every request goes through Caddy and the router on the API port, naming its model as an OpenAI client does.
"""
from __future__ import annotations

import json
import threading
import time

import pytest

from tests.appliance import REPO
from tests.manager.test_swap import put, wait_for


@pytest.fixture(scope="module")
def app(boot_session):
    return boot_session({"VLLM_MODEL": "acme/tiny-chat"})


def chat(client, app, model: str, stream: bool = False, path: str = "/v1/chat/completions", **extra):
    return client.post(app.api_url(path), json={
        "model": model, "stream": stream, "messages": [{"role": "user", "content": "one two three"}], **extra})


def state(app, client, instance: str) -> dict:
    return client.get(app.portal_url(f"/api/instances/{instance}")).json()


class Load:
    """`clients` threads sending small chat requests for `model` back to back until stopped; every other one on the
    per-instance route `/instances/<instance>/v1/...` (when `instance` is given)."""

    def __init__(self, app, model: str, clients: int = 8, instance: str | None = None):
        self.app, self.model, self.stop = app, model, threading.Event()
        self.done: list[tuple[float, float, int, str]] = []  # start, end, status, which engine answered
        self.lock = threading.Lock()
        per_instance = f"/instances/{instance}/v1/chat/completions"
        self.threads = [threading.Thread(target=self._run, daemon=True,
                                         args=(per_instance if instance and n % 2 else "/v1/chat/completions",))
                        for n in range(clients)]

    def _run(self, path: str) -> None:
        with self.app.client(timeout=120) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    answer = chat(client, self.app, self.model, path=path, max_tokens=4)
                    status, engine = answer.status_code, answer.headers.get("x-stand-in-model", "")
                except Exception as exc:  # noqa: BLE001 (a transport error is a failed request)
                    status, engine = 0, repr(exc)
                with self.lock:
                    self.done.append((started, time.monotonic(), status, engine))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        wait_for(lambda: len(self.done) >= 20)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=150)

    def failed(self) -> list:
        return [d for d in self.done if d[2] != 200]

    def longest_gap(self, since: float) -> float:
        ends = sorted(d[1] for d in self.done if d[2] == 200 and d[1] >= since)
        return max((b - a for a, b in zip(ends, ends[1:], strict=False)), default=0.0)


def test_a_stream_in_flight_finishes_across_a_restart_swap(app):
    with app.client(timeout=120) as client:
        created = put(app, client, "talk", model="acme/talk-1", served_model_name="talk", wait=True,
                      env={"FAKE_VLLM_TOKEN_DELAY": "0.15"})
        assert created.json()["result"] == "ready", created.text
        chunks: list[str] = []

        def stream() -> None:
            with app.client(timeout=120) as streaming, streaming.stream(
                    "POST", app.api_url("/v1/chat/completions"),
                    json={"model": "talk", "stream": True, "messages": [{"role": "user", "content": "a b c d e f"}]},
            ) as answer:
                chunks.extend(line for line in answer.iter_lines() if line.startswith("data: "))

        reader = threading.Thread(target=stream)
        reader.start()
        wait_for(lambda: len(chunks) >= 2, timeout=30)
        swapped = put(app, client, "talk", model="acme/talk-2", served_model_name="talk", strategy="restart",
                      wait=True)
        reader.join(timeout=60)
        assert swapped.json()["result"] == "ready", swapped.text
        assert chunks[-1] == "data: [DONE]"  # the stream was not cut: every token, then the end
        last = json.loads(chunks[-2].removeprefix("data: "))["choices"][0]
        assert last["finish_reason"] == "stop" and len(chunks) >= 12
        answer = chat(client, app, "talk")
        assert answer.status_code == 200 and answer.headers["x-stand-in-model"] == "acme/talk-2"
        assert client.delete(app.portal_url("/api/instances/talk")).status_code == 200


@pytest.mark.parametrize("strategy", ["blue_green", "restart"])
def test_a_swap_under_steady_load_fails_no_request(app, strategy):
    name = f"load-{strategy.replace('_', '-')}"
    with app.client(timeout=120) as client:
        assert put(app, client, name, model="acme/load-1", served_model_name=name, wait=True).json()["result"] \
            == "ready"
        before = state(app, client, name)["port"]
        with Load(app, name, instance=name) as load:
            swapped_at = time.monotonic()
            swapped = put(app, client, name, model="acme/load-2", served_model_name=name, strategy=strategy,
                          wait=True)
            assert swapped.json()["result"] == "ready", swapped.text
            count = len(load.done)
            wait_for(lambda: len(load.done) >= count + 20)
        assert load.failed() == []
        assert load.done[-1][3] == "acme/load-2"  # the new engine answers now
        after = state(app, client, name)["port"]
        assert (after != before) == (strategy == "blue_green")
        print(f"{strategy}: {len(load.done)} requests, longest gap {load.longest_gap(swapped_at):.3f} s")
        assert client.delete(app.portal_url(f"/api/instances/{name}")).status_code == 200


def test_requests_for_the_new_model_sent_during_a_swap_are_answered_by_it(app):
    with app.client(timeout=120) as client:
        assert put(app, client, "fifty", model="acme/fifty-1", served_model_name="fifty-1", wait=True).status_code \
            == 200
        accepted = put(app, client, "fifty", model="acme/fifty-2", served_model_name="fifty-2")
        assert accepted.status_code == 202
        answers: list = []

        def one() -> None:
            with app.client(timeout=120) as own:
                answer = chat(own, app, "fifty-2", max_tokens=2)
                answers.append((answer.status_code, answer.headers.get("x-stand-in-model")))

        threads = [threading.Thread(target=one) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert answers == [(200, "acme/fifty-2")] * 50
        assert client.delete(app.portal_url("/api/instances/fifty")).status_code == 200


def test_an_idle_instance_stops_and_a_request_starts_it_again(app):
    with app.client(timeout=120) as client:
        assert put(app, client, "nap", model="acme/nap", idle_timeout=2, wait=True).json()["result"] == "ready"
        assert chat(client, app, "acme/nap").status_code == 200
        stopped = wait_for(lambda: (s := state(app, client, "nap"))["state"] == "stopped" and s, timeout=30)
        assert "without requests (idle_timeout 2 s)" in stopped["reason"]
        again = chat(client, app, "acme/nap")  # on demand: started, then answered
        assert again.status_code == 200 and again.headers["x-stand-in-model"] == "acme/nap"
        assert client.delete(app.portal_url("/api/instances/nap")).status_code == 200


def test_making_room_drains_a_busy_holder_before_stopping_it(boot):
    gpus = boot({"VLLM_MODEL": "", "FAKE_NVML_GPUS": "1", "PYTHONPATH": str(REPO / "tests/fakes/nvml_site")})
    with gpus.client(timeout=120) as client:
        assert put(gpus, client, "holder", model="acme/holder", gpus=[0], wait=True,
                   env={"FAKE_VLLM_TOKEN_DELAY": "0.15"}).json()["result"] == "ready"
        chunks: list[str] = []

        def stream() -> None:
            with gpus.client(timeout=120) as streaming, streaming.stream(
                    "POST", gpus.api_url("/v1/chat/completions"),
                    json={"model": "acme/holder", "stream": True,
                          "messages": [{"role": "user", "content": "a b c d e f"}]}) as answer:
                chunks.extend(line for line in answer.iter_lines() if line.startswith("data: "))

        reader = threading.Thread(target=stream)
        reader.start()
        wait_for(lambda: len(chunks) >= 2, timeout=30)
        newcomer = put(gpus, client, "newcomer", model="acme/newcomer", gpus=[0], wait=True)
        reader.join(timeout=60)
        assert newcomer.json()["result"] == "ready", newcomer.text
        assert chunks[-1] == "data: [DONE]"
        assert json.loads(chunks[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "stop"
        held = state(gpus, client, "holder")
        assert held["state"] == "stopped" and held["reason"] == "stopped to make room for 'newcomer'"
