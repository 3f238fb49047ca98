"""One API port, many models: the router sends each request to the engine serving its `model`."""
from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time

import aiohttp
import openai
import pytest

from tests.router.conftest import control, put


def chat(client, app, model: str | None, text: str = "hello there", **extra):
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra}
    if model is not None:
        body["model"] = model
    return client.post(app.api_url("/v1/chat/completions"), json=body)


def test_requests_go_to_the_engine_serving_their_model_or_alias(routed):
    with routed.client() as client:
        replies = {m: chat(client, routed, m) for m in ("acme/tiny-chat", "acme/tiny-coder", "code")}
    assert {m: r.status_code for m, r in replies.items()} == dict.fromkeys(replies, 200)
    content = {m: r.json()["choices"][0]["message"]["content"] for m, r in replies.items()}
    assert content["acme/tiny-chat"].startswith("stand-in reply from acme/tiny-chat:")
    assert content["acme/tiny-coder"].startswith("stand-in reply from acme/tiny-coder:")
    # an alias reaches the engine as the name it serves (the engine knows nothing of aliases)
    assert content["code"].startswith("stand-in reply from acme/tiny-coder:")


def test_a_request_without_model_goes_to_the_default_instance(routed):
    with routed.client() as client:
        reply = chat(client, routed, None)
        version = client.get(routed.api_url("/version?q=a%2Fb%20c"))
    assert reply.status_code == 200 and "from acme/tiny-chat" in reply.json()["choices"][0]["message"]["content"]
    assert version.status_code == 200 and version.json()["version"]
    assert "GET /version?q=a%2Fb%20c HTTP/1.1" in routed.log("vllm")  # the path and query as sent
    assert "GET /version" not in routed.log("coder")


def test_an_unknown_model_is_404_with_an_openai_error_naming_the_models(routed):
    with routed.client() as client:
        answer = chat(client, routed, "gpt-4o")
    error = answer.json()["error"]
    assert answer.status_code == 404 and answer.headers["content-type"].startswith("application/json")
    assert error["code"] == "model_not_found" and error["type"] == "NotFoundError"
    assert "gpt-4o" in error["message"]
    assert all(name in error["message"] for name in ("acme/tiny-chat", "acme/tiny-coder", "code"))


def test_a_per_instance_route_reaches_that_instance_by_id_counted_by_the_router(routed):
    with routed.client() as client:
        base = routed.api_url("/instances/coder")
        plain = client.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        alias = client.post(f"{base}/v1/chat/completions", json={"model": "code", "messages": []})
        listed = client.get(f"{base}/v1/models?x=1")
        unknown = client.get(routed.api_url("/instances/nope/v1/models"))
    # no model: the instance's engine, not the default instance's; the body goes as sent (an alias is not rewritten)
    assert plain.status_code == 200 and plain.headers["x-stand-in-model"] == "acme/tiny-coder"
    assert alias.status_code == 404 and alias.headers["x-stand-in-model"] == "acme/tiny-coder"
    assert [m["id"] for m in listed.json()["data"]] == ["acme/tiny-coder"]  # the engine's own list
    assert "GET /v1/models?x=1 HTTP/1.1" in routed.log("coder")  # the prefix stripped, the query kept
    error = unknown.json()["error"]
    assert unknown.status_code == 404 and error["code"] == "instance_not_found" and error["type"] == "NotFoundError"
    assert "`nope`" in error["message"] and "coder, vllm" in error["message"]
    with control(routed) as router:
        recent = router.get("/activity", params={"limit": 4}).json()["requests"]
    assert [(r["instance"], r["path"]) for r in recent[1:]] == [
        ("coder", "/instances/coder/v1/models"), ("coder", "/instances/coder/v1/chat/completions"),
        ("coder", "/instances/coder/v1/chat/completions")]


def test_v1_models_lists_every_instance_with_its_state(routed):
    put(routed, "idle", model="acme/tiny-idle", on_demand=False)
    with routed.client(timeout=60) as client:
        client.post(routed.portal_url("/api/instances/idle/stop"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = {m["id"]: m for m in client.get(routed.api_url("/v1/models")).json()["data"]}
            if listed.get("acme/tiny-idle", {}).get("state") == "stopped":
                break
            time.sleep(0.2)
        refused = chat(client, routed, "acme/tiny-idle")
        client.delete(routed.portal_url("/api/instances/idle"))
    assert listed["acme/tiny-chat"]["state"] == "ready" and listed["acme/tiny-chat"]["instance"] == "vllm"
    assert listed["acme/tiny-chat"]["max_model_len"] == 4096  # what the engine itself says is kept
    assert listed["acme/tiny-coder"]["instance"] == "coder"
    assert listed["code"]["alias_of"] == "acme/tiny-coder" and listed["code"]["state"] == "ready"
    assert listed["acme/tiny-idle"]["state"] == "stopped"
    # stopped and not on demand: 503 saying how to start it
    error = refused.json()["error"]
    assert refused.status_code == 503 and error["code"] == "model_stopped"
    assert "/api/instances/idle/start" in error["message"] and refused.headers["retry-after"]


def test_the_openai_client_uses_two_models_on_one_base_url(routed):
    with routed.client(timeout=30) as http:
        ai = openai.OpenAI(base_url=routed.api_url("/v1"), api_key=routed.token, http_client=http)
        ids = {m.id for m in ai.models.list()}
        plain = {m: ai.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
                 for m in ("acme/tiny-chat", "acme/tiny-coder")}
        streamed = {}
        for model in ("acme/tiny-chat", "code"):
            pieces = [c.choices[0].delta.content or "" for c in ai.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "one two three"}], stream=True) if c.choices]
            streamed[model] = "".join(pieces)
        try:
            ai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        except openai.NotFoundError as exc:
            missing = exc
    assert {"acme/tiny-chat", "acme/tiny-coder", "code"} <= ids
    assert plain["acme/tiny-chat"].choices[0].message.content.startswith("stand-in reply from acme/tiny-chat")
    assert plain["acme/tiny-coder"].choices[0].message.content.startswith("stand-in reply from acme/tiny-coder")
    assert streamed == {"acme/tiny-chat": "stand-in reply from acme/tiny-chat: one two three",
                        "code": "stand-in reply from acme/tiny-coder: one two three"}
    assert missing.status_code == 404 and missing.body["code"] == "model_not_found"


def test_the_router_counts_requests_per_model_and_keeps_the_recent_ones(routed):
    with routed.client() as client:
        assert chat(client, routed, "code", stream=True, stream_options={"include_usage": True}).status_code == 200
        metrics = client.get(routed.portal_url("/metrics")).text
    with control(routed) as router:
        recent = router.get("/activity", params={"limit": 5}).json()["requests"]
        status = router.get("/status").json()["instances"]
    newest = recent[0]
    assert newest["model"] == "code" and newest["instance"] == "coder" and newest["status"] == 200
    assert newest["prompt_tokens"] > 0 and newest["completion_tokens"] > 0 and 0 < newest["ttft"] <= newest["duration"]
    assert status["coder"]["in_flight"] == 0 and status["coder"]["last_active"] > time.time() - 60
    assert 'appliance_router_requests_total{instance="coder",model="code",status="200"}' in metrics
    assert "appliance_router_time_to_first_token_seconds_bucket" in metrics
    assert 'appliance_router_in_flight{instance="vllm"}' in metrics


def test_a_body_over_the_limit_is_413(routed):
    with routed.client(timeout=60) as client:
        answer = client.post(routed.api_url("/v1/completions"), content=b"x" * (101 * 1024 * 1024),
                             headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"


def test_the_router_keeps_serving_while_the_manager_is_down(routed):
    assert "stopped" in routed.supervisorctl("stop", "manager").stdout
    try:
        with routed.client() as client:
            replies = [chat(client, routed, m) for m in ("acme/tiny-chat", "code", None)]
            listed = client.get(routed.api_url("/v1/models"))
    finally:
        routed.supervisorctl("start", "manager")
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert {"acme/tiny-chat", "acme/tiny-coder"} <= {m["id"] for m in listed.json()["data"]}


def test_the_control_socket_is_the_owners_only(routed):
    socket = routed.root / "run/appliance/router.sock"
    assert socket.stat().st_mode & 0o777 == 0o600
    assert json.loads(socket.with_name("routes.json").read_text())["default"] == "vllm"


async def realtime(app, path: str, events: list[dict], auth: bool = True) -> list[dict]:
    """vLLM's /v1/realtime through Caddy and the router: the server's events until `transcription.done` or an
    error, after sending `events` (the first after `session.created`)."""
    headers = {"Authorization": f"Bearer {app.token}"} if auth else {}
    tls = ssl.create_default_context(cafile=str(app.cert))
    heard = []
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(app.api_url(path).replace("https://", "wss://"), headers=headers, ssl=tls) as ws:
        heard.append(await ws.receive_json(timeout=10))
        for event in events:
            await ws.send_json(event)
        while heard[-1]["type"] not in ("transcription.done", "error"):
            heard.append(await ws.receive_json(timeout=10))
    return heard


def test_a_realtime_websocket_goes_to_the_engine_its_model_query_names(routed):
    audio = {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 640).decode()}
    talk = [{"type": "session.update", "model": "code"}, audio, {"type": "input_audio_buffer.commit"}]
    heard = asyncio.run(realtime(routed, "/v1/realtime?model=code", talk))
    assert heard[0]["type"] == "session.created"  # the engine's own first event, relayed
    # by alias: the router renamed the model in session.update to the name the engine serves
    assert heard[-1] == {"type": "transcription.done", "text": "640 bytes heard by acme/tiny-coder",
                         "usage": {"prompt_tokens": 2, "completion_tokens": 4}}
    by_id = asyncio.run(realtime(routed, "/instances/vllm/v1/realtime", [
        {"type": "session.update", "model": "acme/tiny-chat"}, audio, {"type": "input_audio_buffer.commit"}]))
    assert by_id[-1]["text"] == "640 bytes heard by acme/tiny-chat"
    with pytest.raises(aiohttp.WSServerHandshakeError) as unknown:
        asyncio.run(realtime(routed, "/v1/realtime?model=gpt-4o-realtime", []))
    assert unknown.value.status == 404  # before the upgrade, like any request for a model that is not here
    with pytest.raises(aiohttp.WSServerHandshakeError) as anonymous:
        asyncio.run(realtime(routed, "/v1/realtime?model=code", [], auth=False))
    assert anonymous.value.status == 401


def test_an_open_realtime_session_counts_as_a_request_in_flight(routed):
    async def scenario():
        tls = ssl.create_default_context(cafile=str(routed.cert))
        url = routed.api_url("/v1/realtime?model=acme/tiny-coder").replace("https://", "wss://")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url, headers={"Authorization": f"Bearer {routed.token}"}, ssl=tls) as ws:
                assert (await ws.receive_json(timeout=10))["type"] == "session.created"
                with control(routed) as router:
                    during = router.get("/status").json()["instances"]["coder"]["in_flight"]
            deadline = time.monotonic() + 10
            with control(routed) as router:
                in_flight = lambda: router.get("/status").json()["instances"]["coder"]["in_flight"]  # noqa: E731
                while (after := in_flight()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
        return during, after
    assert asyncio.run(scenario()) == (1, 0)  # not idle while a session is open; released when it closes
