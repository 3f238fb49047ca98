"""The llm-d launcher contract under /v2/vllm/instances, every status code."""
from __future__ import annotations

import pytest

from tests.manager.test_swap import fingerprint, wait_for


@pytest.fixture
def v2(fresh_appliance):
    with fresh_appliance.client(timeout=60) as client:
        yield lambda path="": fresh_appliance.portal_url(f"/v2/vllm/instances{path}"), client


def test_health(appliance):
    with appliance.client() as client:
        assert client.get(appliance.portal_url("/health")).json() == {"status": "OK"}


def test_create_list_get_log_delete(v2, appliance):
    url, client = v2
    created = client.post(url(), json={"options": "--model acme/v2-auto --seed 1", "env_vars": {"FOO": "bar"}})
    assert created.status_code == 201, created.text
    auto = created.json()["instance_id"]
    assert created.json() == {"status": "started", "instance_id": auto}
    named = client.put(url("/named-one"), json={"options": "--model acme/v2-named --port 18555"})
    assert named.status_code == 201 and named.json() == {"status": "started", "instance_id": "named-one"}
    assert client.put(url("/named-one"), json={"options": "--model acme/other"}).status_code == 409

    brief = client.get(url(), params={"detail": "false"}).json()
    assert set(brief) == {"instance_ids", "count"} and {auto, "named-one"} <= set(brief["instance_ids"])
    assert brief["count"] == len(brief["instance_ids"])
    one = wait_for(lambda: (d := client.get(url(f"/{auto}")).json())["ready"] and d)
    assert one["status"] == "running" and one["instance_id"] == auto and one["env_vars"] == {"FOO": "bar"}
    assert "--model acme/v2-auto" in one["options"] and "--seed 1" in one["options"]
    wait_for(lambda: client.get(url("/named-one")).json()["ready"])
    assert client.get(url("/named-one")).json()["port"] == 18555
    detail = client.get(url()).json()
    assert set(detail) == {"total_instances", "running_instances", "instances"}
    assert detail["total_instances"] == brief["count"] == len(detail["instances"])
    assert detail["running_instances"] == sum(i["status"] == "running" for i in detail["instances"]) >= 2
    assert client.get(url("/unknown")).status_code == 404
    # the new instance answers through Caddy at /instances/<id>/v1
    models = client.get(appliance.api_url(f"/instances/{auto}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["acme/v2-auto"]

    client.post(appliance.portal_url("/api/instances/named-one/stop"))
    assert client.get(url("/named-one")).json()["status"] == "stopped"

    log = client.get(url(f"/{auto}/log"))
    assert log.status_code == 200 and b"Starting vLLM API server" in log.content
    assert log.headers["content-type"] == "application/octet-stream"
    total = len(log.content)
    part = client.get(url(f"/{auto}/log"), headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == log.content[:10]
    assert part.headers["content-range"].startswith("bytes 0-9/")
    tail = client.get(url(f"/{auto}/log"), headers={"Range": "bytes=10-"})
    assert tail.status_code == 206 and tail.content.startswith(log.content[10:total])
    size = int(tail.headers["content-range"].rsplit("/", 1)[1])
    assert tail.headers["content-range"] == f"bytes 10-{size - 1}/{size}"
    for bad in ("bytes=-5", "lines=0-5", "garbage", "bytes=9-3", "bytes=0-1,4-5"):
        assert client.get(url(f"/{auto}/log"), headers={"Range": bad}).status_code == 400, bad
    past = client.get(url(f"/{auto}/log"), headers={"Range": "bytes=999999999-"})
    assert past.status_code == 416 and past.headers["content-range"].startswith("bytes */") and not past.content
    assert client.get(url("/unknown/log")).status_code == 404

    assert client.delete(url(f"/{auto}")).json() == {"status": "terminated", "instance_id": auto}
    assert client.delete(url(f"/{auto}")).status_code == 404
    everything = client.delete(url()).json()
    assert everything["status"] == "all_stopped"
    assert {"status": "terminated", "instance_id": "named-one"} in everything["stopped_instances"]
    assert everything["total_stopped"] == len(everything["stopped_instances"])
    assert client.get(url(), params={"detail": "false"}).json() == {"instance_ids": [], "count": 0}
    assert client.get(appliance.api_url("/v1/models")).status_code == 502  # `vllm` went too


@pytest.mark.parametrize("method,path,body,status,message", [
    ("POST", "", {"options": "--seed 1"}, 422, "--model"),
    ("POST", "", {"options": "--model 'unbalanced"}, 422, "shell-quoted"),
    ("POST", "", {"options": "--model m --host 0.0.0.0"}, 422, "127.0.0.1 only"),
    ("POST", "", {"options": "--model m --port nope"}, 422, "not a port number"),
    ("POST", "", {"options": "--model m", "env_vars": {"A B": "1"}}, 422, "environment variable name"),
    ("POST", "", {"env_vars": {}}, 422, "options"),
    ("PUT", "/Bad_Id", {"options": "--model m"}, 422, "instance id"),
    ("PUT", "/port-clash", {"options": "--model m --port 11111"}, 409, "port 11111"),
])
def test_bad_requests_get_4xx_and_touch_nothing(v2, appliance, method, path, body, status, message):
    url, client = v2
    if method == "PUT" and "11111" in str(body):  # the portal's internal port in this appliance
        body = {"options": f"--model m --port {appliance.portal_internal}"}
        message = f"port {appliance.portal_internal}"
    before = fingerprint(appliance)
    response = client.request(method, url(path), json=body)
    assert response.status_code == status, response.text
    assert message in response.text
    assert fingerprint(appliance) == before
