"""HAProxy's fast path on the API port: a request for a name with one ready engine goes straight to it, and the
router still counts it (activity, metrics, in flight, drains); everything else takes the router's path."""
from __future__ import annotations

import itertools
import socket
import threading
import time

import httpx
import pytest

from tests.appliance import Appliance
from tests.router.conftest import control, put
from tests.router.test_routing import chat

LONG = "one two three four five six seven eight nine ten eleven twelve"  # 16 streamed tokens, 0.1 s apart


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """`vllm` (acme/tiny-chat) and `coder` (acme/tiny-coder, alias `code`), HAProxy in front of the router."""
    app = Appliance(tmp_path_factory.mktemp("fast"), {"VLLM_MODEL": "acme/tiny-chat", "FAKE_VLLM_TOKEN_DELAY": "0.1"})
    app.start()
    try:
        put(app, "coder", model="acme/tiny-coder", aliases=["code"])
        yield app
    finally:
        app.stop()


def haproxy(app: Appliance, command: str) -> str:
    """HAProxy's runtime API, as the router uses it."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(app.root / "run/appliance/haproxy.sock"))
        sock.sendall(command.encode() + b"\n")
        return b"".join(iter(lambda: sock.recv(65536), b"")).decode()


def fast_map(app: Appliance) -> dict[str, int]:
    lines = haproxy(app, f"show map {app.root / 'run/appliance/fast.map'}").split("\n")
    return {parts[1]: int(parts[2]) for parts in (line.split() for line in lines) if len(parts) == 3}


def wait_for(condition, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def newest(app: Appliance, model: str) -> dict:
    with control(app) as router:
        return wait_for(lambda: next((r for r in router.get("/activity", params={"limit": 20}).json()["requests"]
                                      if r["model"] == model), None), what=f"activity of {model}")


def ask(app: Appliance, model: str) -> httpx.Response:
    with app.client(timeout=60) as client:
        return chat(client, app, model)


def test_a_served_name_takes_the_fast_path_an_alias_the_router(fast):
    ports = {"vllm": fast.engine_port(), "coder": fast.engine_port("coder")}
    assert wait_for(lambda: fast_map(fast) == {"acme/tiny-chat": ports["vllm"], "acme/tiny-coder": ports["coder"]},
                    what="the map")  # the alias `code` is not in it: the router rewrites it
    with fast.client() as client:
        direct = chat(client, fast, "acme/tiny-coder")
        aliased = chat(client, fast, "code")
        metrics = client.get(fast.portal_url("/metrics")).text
    assert direct.status_code == aliased.status_code == 200
    assert direct.json()["choices"][0]["message"]["content"].startswith("stand-in reply from acme/tiny-coder")
    assert aliased.json()["choices"][0]["message"]["content"].startswith("stand-in reply from acme/tiny-coder")
    fast_one, routed_one = newest(fast, "acme/tiny-coder"), newest(fast, "code")
    assert fast_one["fast"] is True and fast_one["instance"] == "coder" and fast_one["status"] == 200
    assert fast_one["prompt_tokens"] > 0 and fast_one["completion_tokens"] > 0  # from the JSON answer's usage
    assert routed_one["fast"] is False and routed_one["instance"] == "coder"
    assert 'appliance_router_fast_path_requests_total{instance="coder"}' in metrics


@pytest.mark.parametrize("model", ["acme/tiny-coder", "code"])  # the fast path; an alias: HAProxy, then the router
def test_a_streams_events_pass_at_once_through_haproxy(fast, model):
    arrivals = []
    with fast.client(timeout=60) as client:
        started = time.monotonic()
        with client.stream("POST", fast.api_url("/v1/chat/completions"), json={
                "model": model, "stream": True, "max_tokens": 16,
                "messages": [{"role": "user", "content": LONG}]}) as answer:
            for line in answer.iter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.monotonic() - started)
    # 16 tokens 0.1 s apart arrive one by one, not held back for full packets (in threes, 0.3 s apart, without
    # HAProxy's http-no-delay)
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert len(arrivals) > 10 and sum(gap > 0.05 for gap in gaps) > len(gaps) / 2, arrivals


def test_a_stream_on_the_fast_path_is_in_flight_and_holds_a_drain_until_it_ends(fast):
    port = fast.engine_port("coder")
    ended: list[float] = []

    def stream():
        with fast.client(timeout=60) as client:
            with client.stream("POST", fast.api_url("/v1/chat/completions"), json={
                    "model": "acme/tiny-coder", "stream": True, "max_tokens": 16,
                    "messages": [{"role": "user", "content": LONG}]}) as answer:
                assert answer.status_code == 200
                for _ in answer.iter_bytes():
                    pass
        ended.append(time.monotonic())

    streamer = threading.Thread(target=stream)
    streamer.start()
    with control(fast) as router:
        status = wait_for(lambda: (s := router.get("/status").json()["instances"]["coder"])["in_flight"] == 1 and s,
                          what="the stream in flight")
        assert status["ports"] == {str(port): 1}
        drained = router.post("/drain/coder", params={"timeout": 30}, timeout=40)
        drained_at = time.monotonic()
        try:
            held_map = fast_map(fast)
            waiting = threading.Thread(target=lambda: ended.append(ask(fast, "acme/tiny-coder")))
            waiting.start()  # held: it queues in the router
            wait_for(lambda: router.get("/status").json()["instances"]["coder"]["queued"] == 1,
                     what="the request queued")
        finally:
            router.post("/release/coder")
        waiting.join(30)
    streamer.join(30)
    assert drained.json() == {"in_flight": 0}
    assert ended[0] <= drained_at  # the drain answered only once the stream had ended
    assert "acme/tiny-coder" not in held_map and "acme/tiny-chat" in held_map
    assert ended[1].status_code == 200  # the queued request, served after the release
    assert wait_for(lambda: "acme/tiny-coder" in fast_map(fast), what="the name back in the map")


def test_an_instance_that_stops_leaves_the_map_and_its_requests_start_it_through_the_router(fast):
    put(fast, "lazy", model="acme/tiny-lazy")
    assert wait_for(lambda: "acme/tiny-lazy" in fast_map(fast), what="lazy in the map")
    with fast.client(timeout=60) as client:
        assert client.post(fast.portal_url("/api/instances/lazy/stop")).status_code == 200
        gone = fast_map(fast)
        reply = chat(client, fast, "acme/tiny-lazy")
        client.delete(fast.portal_url("/api/instances/lazy"))
    assert "acme/tiny-lazy" not in gone  # left the map before the stop answered
    assert reply.status_code == 200, reply.text  # waited for its on-demand start instead of failing
    assert newest(fast, "acme/tiny-lazy")["fast"] is False


def test_the_fast_path_off_leaves_the_router_on_the_api_port(boot):
    app = boot({"VLLM_MODEL": "acme/tiny-chat", "ROUTER_FAST_PATH": "false"})
    with app.client() as client:
        reply = chat(client, app, "acme/tiny-chat")
    programs = app.supervisorctl("status").stdout
    assert reply.status_code == 200 and "haproxy" not in programs
    assert newest(app, "acme/tiny-chat")["fast"] is False
    assert "fast path off (ROUTER_FAST_PATH=false)" in app.output()
    router = (app.root / "etc/supervisor/conf.d/router.conf").read_text()
    assert f"--port {app.api_internal}" in router and "--fast-path" not in router  # the API port is the router's
