"""The routes the portal reads, on the real appliance through Caddy: services, logs (Range, offsets, SSE), stats."""
from __future__ import annotations

import json

import pytest

from tests.manager.test_swap import wait_for


@pytest.fixture
def api(fresh_appliance):
    with fresh_appliance.client(timeout=60) as client:
        yield fresh_appliance, client


def services(appliance, client) -> dict[str, dict]:
    return {s["name"]: s for s in client.get(appliance.portal_url("/api/services")).json()}


def test_services_list_every_program_and_protect_the_portal(api):
    appliance, client = api
    # (supervisor says RUNNING once a program has lived startsecs)
    listed = wait_for(lambda: (s := services(appliance, client))["caddy"]["state"] == s["manager"]["state"]
                      == "RUNNING" and s)
    assert {"caddy", "manager", "vllm"} <= set(listed)
    for name in ("caddy", "manager"):
        assert listed[name]["pid"] and listed[name]["uptime"] >= 0
        assert listed[name]["stoppable"] is False
        for action in ("stop", "restart"):
            refused = client.post(appliance.portal_url(f"/api/services/{name}/{action}"))
            assert refused.status_code == 409 and "portal depends on it" in refused.text
    assert services(appliance, client)["caddy"]["pid"] == listed["caddy"]["pid"]  # untouched
    assert client.post(appliance.portal_url("/api/services/nope/stop")).status_code == 404
    assert client.post(appliance.portal_url("/api/services/vllm/explode")).status_code == 404


def test_an_engine_stopped_and_started_as_a_service_goes_through_the_manager(api):
    appliance, client = api
    stopped = client.post(appliance.portal_url("/api/services/vllm/stop"))
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert services(appliance, client)["vllm"]["state"] == "STOPPED"
    assert client.get(appliance.portal_url("/api/instances/vllm")).json()["state"] == "stopped"
    assert client.post(appliance.portal_url("/api/services/vllm/start")).json()["state"] == "starting"
    wait_for(lambda: client.get(appliance.portal_url("/api/instances/vllm")).json()["state"] == "ready")
    wait_for(lambda: services(appliance, client)["vllm"]["state"] == "RUNNING")  # after supervisor's startsecs


def test_logs_are_listed_and_read_by_range_or_offset(api):
    appliance, client = api
    listing = {entry["name"]: entry for entry in client.get(appliance.portal_url("/api/logs")).json()}
    assert "vllm" in listing and listing["vllm"]["file"] == "vllm.log" and listing["vllm"]["size"] > 0
    whole = client.get(appliance.portal_url("/api/logs/vllm"))
    assert whole.status_code == 200 and b"Starting vLLM API server" in whole.content
    part = client.get(appliance.portal_url("/api/logs/vllm"), headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole.content[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{part.headers['x-log-size']}"
    by_offset = client.get(appliance.portal_url("/api/instances/vllm/logs"), params={"offset": 5})
    assert by_offset.status_code == 206 and by_offset.content.startswith(whole.content[5:40])
    size = int(by_offset.headers["x-log-size"])
    past = client.get(appliance.portal_url("/api/logs/vllm"), params={"offset": size + 10**6})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert client.get(appliance.portal_url("/api/logs/vllm"), headers={"Range": "bytes=-5"}).status_code == 400
    for missing in ("/api/logs/nope", "/api/logs/..%2Fetc%2Fpasswd", "/api/logs/nope/stream"):
        assert client.get(appliance.portal_url(missing)).status_code == 404, missing


def events(client, url: str, count: int, **headers) -> list[tuple[int, str]]:
    """The first `count` SSE events (id, data) of a stream."""
    seen, event_id = [], None
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                seen.append((event_id, line[6:]))
                if len(seen) == count:
                    return seen
    return seen


def test_the_log_stream_is_live_and_resumable(api):
    appliance, client = api
    whole = client.get(appliance.portal_url("/api/logs/vllm")).content
    lines = whole.split(b"\n")
    first = events(client, appliance.portal_url("/api/logs/vllm/stream?offset=0"), 3)
    assert [data for _, data in first] == [line.decode() for line in lines[:3]]
    assert first[0][0] == len(lines[0]) + 1  # an event's id: the byte offset after its line
    # an EventSource reconnects to the URL it opened, ?offset= included, with the id of the last event it got
    resumed = events(client, appliance.portal_url("/api/logs/vllm/stream?offset=0"), 1,
                     **{"Last-Event-ID": str(first[1][0])})
    assert resumed == [first[2]]
    # live: a line the engine writes after the stream opened arrives (a request makes the stand-in log one)
    size = len(whole)
    with client.stream("GET", appliance.portal_url(f"/api/logs/vllm/stream?offset={size}")) as response:
        client.get(appliance.api_url("/v1/models"))
        for line in response.iter_lines():
            if line.startswith("id: "):
                assert int(line[4:]) > size
                break


def test_stats_without_nvidia_gpus(api):
    appliance, client = api
    stats = client.get(appliance.portal_url("/api/stats")).json()
    host = stats["host"]
    assert len(host["load"]) == 3 and host["cpu_count"] >= 1
    assert 0 < host["memory"]["available"] <= host["memory"]["total"]
    assert host["disk"]["path"].endswith("workspace") and host["disk"]["total"] > host["disk"]["free"] > 0
    assert stats["gpus"] == [] and stats["gpu_reason"]


def test_openapi_describes_the_routes(api):
    appliance, client = api
    spec = client.get(appliance.portal_url("/api/openapi.json")).json()
    for path in ("/api/instances", "/api/instances/{instance_id}", "/api/logs/{name}/stream", "/api/stats",
                 "/api/services", "/v2/vllm/instances", "/v2/vllm/instances/{instance_id}/log"):
        assert path in spec["paths"], path
    assert client.get(appliance.portal_url("/api/docs")).status_code == 200
    json.dumps(spec)
