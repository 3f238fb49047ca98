"""The llm-d launcher contract under /v2/vllm/instances, every status code."""
from __future__ import annotations

import pytest

from tests.manager.test_swap import wait_for


@pytest.fixture(scope="module")
def v2(appliance):
    with appliance.client(timeout=60) as client:
        yield lambda path="": appliance.portal_url(f"/v2/vllm/instances{path}"), client


def test_health(appliance):
    with appliance.client() as client:
        assert client.get(appliance.portal_url("/health")).json() == {"status": "OK"}


def test_create_list_get_log_delete(v2, appliance):
    url, client = v2
    created = client.post(url(), json={"options": "--model acme/v2-auto --seed 1", "env_vars": {"FOO": "bar"}})
    assert created.status_code == 201, created.text
    auto = created.json()["instance_id"]
    assert created.json()["status"] == "started"
    named = client.put(url("/named-one"), json={"options": "--model acme/v2-named"})
    assert named.status_code == 201
    assert client.put(url("/named-one"), json={"options": "--model acme/other"}).status_code == 409

    brief = client.get(url(), params={"detail": "false"}).json()
    assert set(brief) == {"instance_ids", "count"} and {auto, "named-one"} <= set(brief["instance_ids"])
    detail = client.get(url()).json()
    assert detail["total_instances"] == brief["count"]
    assert {"total_instances", "running_instances", "instances"} == set(detail)

    one = wait_for(lambda: (d := client.get(url(f"/{auto}")).json())["status"] == "ready" and d)
    assert one["env_vars"] == {"FOO": "bar"} and "--model acme/v2-auto" in one["options"] and "--seed 1" in one["options"]
    assert client.get(url("/unknown")).status_code == 404

    log = client.get(url(f"/{auto}/log"))
    assert log.status_code == 200 and b"Starting vLLM API server" in log.content
    total = len(log.content)
    part = client.get(url(f"/{auto}/log"), headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == log.content[:10]
    assert part.headers["content-range"].startswith("bytes 0-9/")
    tail = client.get(url(f"/{auto}/log"), headers={"Range": "bytes=10-"})
    assert tail.status_code == 206 and tail.content.startswith(log.content[10:total])
    for bad in ("bytes=-5", "lines=0-5", "garbage", "bytes=9-3"):
        assert client.get(url(f"/{auto}/log"), headers={"Range": bad}).status_code == 400, bad
    past = client.get(url(f"/{auto}/log"), headers={"Range": "bytes=999999999-"})
    assert past.status_code == 416 and past.headers["content-range"].startswith("bytes */")
    assert client.get(url("/unknown/log")).status_code == 404

    assert client.delete(url(f"/{auto}")).json() == {"status": "terminated", "instance_id": auto}
    assert client.delete(url(f"/{auto}")).status_code == 404
    everything = client.delete(url()).json()
    assert everything["status"] == "all_stopped" and "named-one" in everything["stopped_instances"]
    assert everything["total_stopped"] == len(everything["stopped_instances"])
    assert client.get(url(), params={"detail": "false"}).json() == {"instance_ids": [], "count": 0}


def test_options_without_model_are_refused(v2):
    url, client = v2
    response = client.post(url(), json={"options": "--seed 1"})
    assert response.status_code == 422 and "--model" in response.text
