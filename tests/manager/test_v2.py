"""The llm-d launcher contract under /v2/vllm/instances on the booted appliance: upstream's TestAPIEndpoints,
TestVllmMultiProcessManager, TestVllmInstance and TestVllmConfig (inference_server/launcher/tests/test_launcher.py
in llm-d-incubation/llm-d-fast-model-actuation, the commit docs/api.md names), translated to HTTP."""
from __future__ import annotations

import pytest

from tests.manager.test_gpus import engine_process
from tests.manager.test_swap import fingerprint, wait_for
from tests.manager.test_v2_watch import watching

CONFIG = {"options": "--model acme/v2-test --seed 1", "env_vars": {"TEST_VAR": "test_value"},
          "annotations": {"Foo": "bar"}}


@pytest.fixture
def v2(fresh_appliance):
    with fresh_appliance.client(timeout=60) as client:
        yield lambda path="": fresh_appliance.portal_url(f"/v2/vllm/instances{path}"), client


def echoes(answer: dict, given: dict) -> bool:
    """Every field of the request comes back exactly as given (upstream: `result[key] == val` for each key)."""
    return all(answer.get(key) == value for key, value in given.items())


def test_health(appliance):
    """TestAPIEndpoints.test_health_endpoint"""
    with appliance.client() as client:
        assert client.get(appliance.portal_url("/health")).json() == {"status": "OK"}


def test_create_answers_the_running_state_and_echoes_what_was_given(v2):
    """TestAPIEndpoints.test_create_vllm_instance, test_create_id_vllm_instance;
    TestVllmMultiProcessManager.test_create_instance_auto_id, test_create_instance_custom_id;
    TestVllmInstance.test_instance_start (the log exists at once)"""
    url, client = v2
    created = client.post(url(), json=CONFIG)
    assert created.status_code == 201, created.text
    answer = created.json()
    auto = answer["instance_id"]
    assert answer["status"] == "running" and echoes(answer, CONFIG) and isinstance(answer["revision"], int)
    named = client.put(url("/custom-id"), json=CONFIG)
    assert named.status_code == 201 and named.json()["instance_id"] == "custom-id"
    assert named.json()["status"] == "running" and echoes(named.json(), CONFIG)
    assert named.json()["revision"] > answer["revision"]
    assert {auto, "custom-id"} <= set(client.get(url(), params={"detail": "false"}).json()["instance_ids"])
    assert client.get(url(f"/{auto}/log")).status_code in (200, 416)  # there, maybe still empty


def test_a_duplicate_id_is_409_and_changes_nothing(v2, appliance):
    """TestAPIEndpoints.test_create_duplicate_instance; TestVllmMultiProcessManager.test_create_instance_duplicate_id;
    TestVllmInstance.test_instance_start_already_running (a second start of the same id is refused)"""
    url, client = v2
    assert client.put(url("/duplicate-id"), json=CONFIG).status_code == 201
    wait_for(lambda: client.get(url("/duplicate-id")).json()["ready"])  # its program file is written
    before = fingerprint(appliance)
    again = client.put(url("/duplicate-id"), json={"options": "--model acme/other"})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    assert fingerprint(appliance) == before
    assert client.get(url("/duplicate-id")).json()["options"] == CONFIG["options"]


def test_get_one_echoes_the_config_and_follows_the_engine(v2, appliance):
    """TestAPIEndpoints.test_get_instance_status; TestVllmMultiProcessManager.test_get_instance_status;
    TestVllmInstance.test_instance_get_status (running, then stopped, the config echoed both times);
    TestHelperFunctions.test_set_env_vars (the engine runs with env_vars)"""
    url, client = v2
    assert client.put(url("/test-id"), json=CONFIG).status_code == 201
    one = wait_for(lambda: (d := client.get(url("/test-id")).json())["ready"] and d)
    assert one["status"] == "running" and one["instance_id"] == "test-id" and echoes(one, CONFIG)
    assert engine_process(appliance, "test-id")[1]["TEST_VAR"] == "test_value"
    client.post(appliance.portal_url("/api/instances/test-id/stop"))
    stopped = client.get(url("/test-id")).json()
    assert stopped["status"] == "stopped" and echoes(stopped, CONFIG)


def test_without_env_vars_none_are_echoed(v2):
    """TestVllmConfig.test_vllm_config_without_env_vars, test_vllm_config_with_env_vars"""
    url, client = v2
    bare = client.put(url("/bare"), json={"options": "--model acme/bare"}).json()
    assert bare["options"] == "--model acme/bare"
    assert "env_vars" not in bare and "gpu_uuids" not in bare and "annotations" not in bare
    given = {"options": "--model   acme/spaced  --seed 2", "env_vars": {"KEY1": "value1", "KEY2": "value2"}}
    assert echoes(client.put(url("/spaced"), json=given).json(), given)  # options exactly, spaces and all
    assert echoes(client.get(url("/spaced")).json(), given)


def test_unknown_ids_are_404_not_found(v2):
    """TestAPIEndpoints.test_get_nonexistent_instance_status, test_delete_nonexistent_instance;
    TestVllmMultiProcessManager.test_get_instance_status_nonexistent, test_stop_nonexistent_instance"""
    url, client = v2
    for method in ("GET", "DELETE"):
        answer = client.request(method, url("/nonexistent-id"))
        assert answer.status_code == 404 and "not found" in answer.json()["detail"], (method, answer.text)


def test_delete_answers_the_last_state_and_the_instance_is_gone(v2):
    """TestAPIEndpoints.test_delete_vllm_instance; TestVllmMultiProcessManager.test_stop_instance;
    TestVllmInstance.test_instance_stop (the config echoed)"""
    url, client = v2
    created = client.put(url("/test-id"), json=CONFIG).json()
    deleted = client.delete(url("/test-id"))
    assert deleted.status_code == 200
    answer = deleted.json()
    assert answer["status"] == "stopped" and answer["instance_id"] == "test-id" and echoes(answer, CONFIG)
    assert answer["revision"] > created["revision"]
    assert "test-id" not in client.get(url(), params={"detail": "false"}).json()["instance_ids"]
    assert client.get(url("/test-id")).status_code == 404


def test_delete_of_an_engine_that_already_exited_is_200_stopped(v2):
    """The seed-era difference: the launcher now answers an exited engine's DELETE like any other (200, its last
    state), where it used to say `not_running`."""
    url, client = v2
    assert client.put(url("/exited"), json={"options": "--model acme/fail-load-v2"}).status_code == 201
    wait_for(lambda: client.get(url("/exited")).json()["state"] == "failed")
    deleted = client.delete(url("/exited"))
    assert deleted.status_code == 200 and deleted.json()["status"] == "stopped", deleted.text
    assert client.get(url("/exited")).status_code == 404


def test_lists_count_running_instances_and_carry_the_revision(v2, appliance):
    """TestAPIEndpoints.test_list_instances; TestVllmMultiProcessManager.test_get_all_instances_status,
    test_list_instances, test_stop_all_instances, TestAPIEndpoints.test_delete_all_instances"""
    url, client = v2
    assert client.delete(url()).json()["status"] == "all_stopped"  # start from none (`vllm` comes back at reset)
    for name in ("id-1", "id-2", "id-3"):
        assert client.put(url(f"/{name}"), json=CONFIG).status_code == 201
    brief = client.get(url(), params={"detail": "False"}).json()
    assert brief["count"] == 3 and set(brief["instance_ids"]) == {"id-1", "id-2", "id-3"}
    detail = client.get(url(), params={"detail": "True"}).json()
    assert detail["total_instances"] == 3 and detail["running_instances"] == 3 and len(detail["instances"]) == 3
    assert all(echoes(i, CONFIG) for i in detail["instances"])
    assert detail["revision"] == brief["revision"] >= max(i["revision"] for i in detail["instances"])
    client.post(appliance.portal_url("/api/instances/id-3/stop"))
    assert client.get(url()).json()["running_instances"] == 2
    everything = client.delete(url()).json()
    assert everything["status"] == "all_stopped" and everything["total_stopped"] == 3
    assert {i["instance_id"] for i in everything["stopped_instances"]} == {"id-1", "id-2", "id-3"}
    assert all(i["status"] == "stopped" and echoes(i, CONFIG) for i in everything["stopped_instances"])
    after = client.get(url(), params={"detail": "false"}).json()
    assert after["instance_ids"] == [] and after["count"] == 0 and after["revision"] > brief["revision"]


def test_an_instance_is_served_through_caddy(v2, appliance):
    """Ours: the instance answers at /instances/<id>/v1 on the API port, with the options' arguments."""
    url, client = v2
    auto = client.post(url(), json={"options": "--model acme/v2-auto --seed 1"}).json()["instance_id"]
    wait_for(lambda: client.get(url(f"/{auto}")).json()["ready"])
    models = client.get(appliance.api_url(f"/instances/{auto}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["acme/v2-auto"]
    assert "--seed" in engine_process(appliance, auto)[0]


@pytest.mark.parametrize("name", ["0b5e1a8e-7c2d-4f5a-9e3b-2d6f8a1c4e7b",
                                  "IqL3_x-Zk9W2m7VnR4tY8uP1sD6fG0hJ5aB3cE9oKdMi"])
def test_ids_of_upstreams_clients_work_end_to_end(v2, appliance, name):
    """Ours: a dashed UUID (upstream's POST ids) and the dual-pods controller's `I<base64url>i` ids are not valid
    instance ids here; they name an instance `l<hash>`, and every llm-d route answers with the id given."""
    url, client = v2
    created = client.put(url(f"/{name}"), json=CONFIG)
    assert created.status_code == 201 and created.json()["instance_id"] == name, created.text
    assert client.put(url(f"/{name}"), json=CONFIG).status_code == 409
    one = wait_for(lambda: (d := client.get(url(f"/{name}")).json())["ready"] and d)
    assert one["instance_id"] == name and echoes(one, CONFIG)
    assert name in client.get(url(), params={"detail": "false"}).json()["instance_ids"]
    assert name in [i["instance_id"] for i in client.get(url()).json()["instances"]]
    assert b"Starting vLLM API server" in client.get(url(f"/{name}/log")).content
    internal = [i["id"] for i in client.get(appliance.portal_url("/api/instances")).json() if i["id"] != "vllm"]
    assert len(internal) == 1 and internal[0].startswith("l") and len(internal[0]) == 32
    with watching(appliance, client, client.get(url()).json()["revision"]) as next_event:
        deleted = client.delete(url(f"/{name}"))
        event = next_event()
    assert deleted.status_code == 200 and deleted.json()["instance_id"] == name
    assert event["type"] == "DELETED" and event["object"]["instance_id"] == name
    assert client.get(url(f"/{name}")).status_code == 404


@pytest.mark.parametrize("method,path,body,status,message", [
    ("POST", "", {"options": "--seed 1"}, 422, "--model"),
    ("POST", "", {"options": "--model 'unbalanced"}, 422, "shell-quoted"),
    ("POST", "", {"options": "--model m --host 0.0.0.0"}, 422, "127.0.0.1 only"),
    ("POST", "", {"options": "--model m --port nope"}, 422, "not a port number"),
    ("POST", "", {"options": "--model m", "env_vars": {"A B": "1"}}, 422, "environment variable name"),
    ("POST", "", {"env_vars": {}}, 422, "options"),
    ("POST", "", {"options": "--model m", "gpu_uuids": ["GPU-nowhere"]}, 400, "GPU-nowhere"),
    ("POST", "", {"options": "--model m", "annotations": {"a": 1}}, 422, "annotations"),
    ("PUT", "/bad!id", {"options": "--model m"}, 422, "instance id"),
    ("PUT", "/watch", {"options": "--model m"}, 422, "reserved"),
    ("PUT", "/port-clash", {"options": "--model m --port 11111"}, 409, "port 11111"),
])
def test_bad_requests_get_4xx_and_touch_nothing(v2, appliance, method, path, body, status, message):
    """Ours (upstream answers most of these 500 or starts an engine that fails)."""
    url, client = v2
    if method == "PUT" and "11111" in str(body):  # the portal's internal port in this appliance
        body = {"options": f"--model m --port {appliance.portal_internal}"}
        message = f"port {appliance.portal_internal}"
    before = fingerprint(appliance)
    response = client.request(method, url(path), json=body)
    assert response.status_code == status, response.text
    assert message in response.text
    assert fingerprint(appliance) == before
