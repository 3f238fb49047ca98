"""On-demand starts, the bounded queue, and replicas (several instances serving one name)."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.appliance import free_port
from tests.router.conftest import control, put
from tests.router.test_routing import chat


def wait_state(app, instance_id: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with app.client() as client:
        while time.monotonic() < deadline:
            if client.get(app.portal_url(f"/api/instances/{instance_id}")).json()["state"] == state:
                return
            time.sleep(0.1)
    raise TimeoutError(f"{instance_id} not {state}")


def test_a_request_for_a_stopped_model_starts_it_and_is_answered(routed):
    put(routed, "lazy", model="acme/tiny-lazy")
    with routed.client(timeout=60) as client:
        client.post(routed.portal_url("/api/instances/lazy/stop"))
        wait_state(routed, "lazy", "stopped")
        reply = chat(client, routed, "acme/tiny-lazy")
        # answered as soon as the engine answered (the router probes what it started); the manager follows
        wait_state(routed, "lazy", "ready")
        metrics = client.get(routed.portal_url("/metrics")).text
        client.delete(routed.portal_url("/api/instances/lazy"))
    assert reply.status_code == 200, reply.text
    assert 'appliance_router_on_demand_starts_total{instance="lazy"} 1.0' in metrics
    assert reply.json()["choices"][0]["message"]["content"].startswith("stand-in reply from acme/tiny-lazy")


def test_a_full_queue_is_503_with_retry_after_and_the_queued_request_is_served(routed):
    # slow-start: the stand-in takes 3 s to be ready; one request may wait, the others are refused at once
    put(routed, "tight", model="acme/slow-start-tight", max_queue=1)
    with routed.client(timeout=60) as client:
        client.post(routed.portal_url("/api/instances/tight/stop"))
        wait_state(routed, "tight", "stopped")

    def ask(_):
        with routed.client(timeout=60) as client:
            return chat(client, routed, "acme/slow-start-tight")
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(ask, 0)
        with control(routed) as router:  # the first request waits in the queue before the others are sent
            deadline = time.monotonic() + 10
            while router.get("/status").json()["instances"].get("tight", {}).get("queued") != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        others = list(pool.map(ask, range(3)))
        served = first.result()
    assert served.status_code == 200
    assert [r.status_code for r in others] == [503, 503, 503]
    for refused in others:
        assert refused.json()["error"]["code"] == "queue_full" and int(refused.headers["retry-after"]) >= 1
        assert "tight" in refused.json()["error"]["message"]
    with routed.client() as client:
        client.delete(routed.portal_url("/api/instances/tight"))


def test_replicas_share_the_load_and_a_dead_replica_is_skipped(routed):
    put(routed, "rep-a", model="acme/tiny-rep", served_model_name="acme/replica")
    put(routed, "rep-b", model="acme/tiny-rep", served_model_name="acme/replica")
    with ThreadPoolExecutor(8) as pool:
        def ask(_):
            with routed.client(timeout=60) as client:
                return chat(client, routed, "acme/replica", stream=True, max_tokens=16)
        replies = list(pool.map(ask, range(16)))
    assert {r.status_code for r in replies} == {200}
    with control(routed) as router:
        recent = [a for a in router.get("/activity", params={"limit": 16}).json()["requests"]
                  if a["model"] == "acme/replica"]
        counts = {i: sum(1 for a in recent if a["instance"] == i) for i in ("rep-a", "rep-b")}
        assert sum(counts.values()) == 16 and min(counts.values()) >= 4, counts

        # a third replica, ready in the table, whose port refuses connections: skipped, nothing fails
        table = json.loads((routed.root / "run/appliance/routes.json").read_text())
        ghost = {**next(r for r in table["routes"] if r["id"] == "rep-a"), "id": "ghost", "port": free_port()}
        assert router.put("/table", json={**table, "routes": [*table["routes"], ghost]}).status_code == 200
        try:
            with routed.client() as client:
                codes = [chat(client, routed, "acme/replica").status_code for _ in range(6)]
            status = router.get("/status").json()["instances"]
        finally:
            router.put("/table", content=(routed.root / "run/appliance/routes.json").read_bytes())
    assert codes == [200] * 6
    assert status["ghost"]["last_active"] > 0 and status["ghost"]["in_flight"] == 0  # tried, and given up on
    with routed.client() as client:
        for instance_id in ("rep-a", "rep-b"):
            client.delete(routed.portal_url(f"/api/instances/{instance_id}"))


def test_a_client_that_goes_away_ends_the_engines_request(routed):
    with routed.client(timeout=30) as client:
        body = {"model": "acme/tiny-chat", "stream": True, "max_tokens": 16,
                "messages": [{"role": "user", "content": "a b c d e f g h i j k l m n o p"}]}
        with client.stream("POST", routed.api_url("/v1/chat/completions"), json=body) as stream:
            lines = stream.iter_lines()  # kept: a dropped generator closes the response
            first = next(lines)
            assert first.startswith("data:"), (stream.status_code, first)
            with control(routed) as router:
                seen = router.get("/status").json()["instances"]
                assert seen["vllm"]["in_flight"] == 1, seen
        # closed after the first event
    with control(routed) as router:
        deadline = time.monotonic() + 5
        while router.get("/status").json()["instances"]["vllm"]["in_flight"]:
            assert time.monotonic() < deadline, "the router still has the request in flight"
            time.sleep(0.05)
        assert router.get("/activity", params={"limit": 1}).json()["requests"][0]["status"] == 499
    # the engine saw the disconnect and stopped generating (long before its 16 tokens, 0.05 s apart, were done)
    routes = json.loads((routed.root / "run/appliance/routes.json").read_text())["routes"]
    port = next(r["port"] for r in routes if r["id"] == "vllm")
    deadline = time.monotonic() + 0.5
    while 'num_requests_running{engine="0",model_name="acme/tiny-chat"} 0.0' not in \
            httpx.get(f"http://127.0.0.1:{port}/metrics").text:
        assert time.monotonic() < deadline, "the engine still generates for a client that left"
        time.sleep(0.02)


def test_a_drain_lets_the_stream_in_flight_finish_and_queues_new_requests_until_released(routed):
    body = {"model": "acme/tiny-chat", "stream": True, "max_tokens": 16,
            "messages": [{"role": "user", "content": "a b c d e f g h i j k l m n o p"}]}

    def stream():
        with routed.client(timeout=30) as client, \
                client.stream("POST", routed.api_url("/v1/chat/completions"), json=body) as answer:
            return answer.status_code, [line for line in answer.iter_lines() if line.startswith("data:")]

    def ask():
        with routed.client(timeout=30) as client:
            return chat(client, routed, "acme/tiny-chat")

    def drain():
        with control(routed) as other:
            return other.post("/drain/vllm", params={"timeout": 20}).json()

    def until(condition):
        deadline = time.monotonic() + 5
        while not condition(router.get("/status").json()["instances"]["vllm"]):
            assert time.monotonic() < deadline
            time.sleep(0.02)

    with ThreadPoolExecutor(3) as pool, control(routed) as router:
        streaming = pool.submit(stream)
        until(lambda s: s["in_flight"] == 1)
        drained = pool.submit(drain)
        until(lambda s: s["held"])
        later = pool.submit(ask)
        until(lambda s: s["queued"] == 1)
        assert drained.result(timeout=20) == {"in_flight": 0}  # answered once the stream had ended
        status, events = streaming.result()
        assert status == 200 and events[-1] == "data: [DONE]"  # nothing cut mid-stream
        assert not later.done()  # still held
        router.post("/release/vllm")
        assert later.result(timeout=10).status_code == 200
