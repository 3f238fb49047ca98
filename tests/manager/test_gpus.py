"""GPUs on the real appliance, with a fake NVML in its processes (tests/fakes/nvml.py, EngineNVML): ownership
(making room: holders stopped, or put to sleep between sleep-mode engines; a pinned holder: 409 naming it),
sharing, CUDA_VISIBLE_DEVICES and the parallel size, and /api/stats naming each GPU's instance."""
from __future__ import annotations

import httpx
import pytest

from tests.appliance import REPO, Appliance
from tests.manager.test_swap import fingerprint, put, wait_for


@pytest.fixture(scope="module")
def gpu_api(tmp_path_factory):
    app = Appliance(tmp_path_factory.mktemp("gpus"), {
        "VLLM_MODEL": "acme/gpu-chat", "FAKE_NVML_GPUS": "2", "PYTHONPATH": str(REPO / "tests/fakes/nvml_site")})
    app.start()
    with app.client(timeout=60) as client:
        yield app, client
    app.stop()


def engine_process(app, instance: str) -> tuple[list[str], dict[str, str]]:
    pid = app.supervisorctl("pid", instance).stdout.strip()
    argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
    environ = dict(e.split("=", 1) for e in open(f"/proc/{pid}/environ", "rb").read().decode().split("\0") if "=" in e)
    return argv, environ


def owners(app, client) -> list[list[str]]:
    return [g["instances"] for g in client.get(app.portal_url("/api/stats")).json()["gpus"]]


def test_automatic_gpus_mean_all_of_them_and_a_parallel_size_to_match(gpu_api):
    app, client = gpu_api
    argv, environ = engine_process(app, "vllm")
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and "CUDA_VISIBLE_DEVICES" not in environ
    stats = wait_for(lambda: (s := client.get(app.portal_url("/api/stats")).json())["gpus"]
                     and all(g["instances"] == ["vllm"] for g in s["gpus"]) and s)
    assert [g["index"] for g in stats["gpus"]] == [0, 1] and stats["gpu_reason"] is None
    first = stats["gpus"][0]
    assert first["uuid"] == "GPU-fake-0000" and first["memory_total"] == 80 * 2**30 and first["power_limit"] == 700
    assert [p["instance"] for p in first["processes"]] == ["vllm"]


def test_a_gpu_owned_by_a_pinned_instance_is_refused_with_409_naming_it(gpu_api):
    app, client = gpu_api
    pid = app.supervisorctl("pid", "vllm").stdout.strip()
    pinned = put(app, client, "vllm", model="acme/gpu-chat", pinned=True, wait=True).json()
    assert pinned["pinned"] is True and pinned["engine"] == "kept"
    assert app.supervisorctl("pid", "vllm").stdout.strip() == pid  # a change of policy alone: no restart
    before = fingerprint(app)
    answer = put(app, client, "second", model="acme/other", gpus=[1])
    assert answer.status_code == 409 and "GPU 1 is owned by instance 'vllm', which is pinned" in answer.text
    missing = put(app, client, "second", model="acme/other", gpus=[5])
    assert missing.status_code == 422 and "GPU 5 does not exist: there are 2 GPUs" in missing.text
    assert put(app, client, "second", model="acme/other", gpus=[0, 0]).status_code == 422
    own = put(app, client, "caddy", model="acme/other")  # an engine program named caddy would replace Caddy's
    assert own.status_code == 422 and "one of the appliance's own programs" in own.text
    assert fingerprint(app) == before
    assert [i["id"] for i in client.get(app.portal_url("/api/instances")).json()] == ["vllm"]
    assert put(app, client, "vllm", model="acme/gpu-chat", pinned=False, wait=True).json()["pinned"] is False


def test_instances_on_their_own_gpus_run_side_by_side_and_sharing_needs_both(gpu_api):
    app, client = gpu_api
    assert put(app, client, "vllm", model="acme/gpu-chat", gpus=[0], wait=True).json()["result"] == "ready"
    argv, environ = engine_process(app, "vllm")
    assert environ["CUDA_VISIBLE_DEVICES"] == "0" and "--tensor-parallel-size" not in argv  # one GPU given
    assert put(app, client, "second", model="acme/other", gpus=[1], pinned=True, wait=True).json()["result"] == "ready"
    assert engine_process(app, "second")[1]["CUDA_VISIBLE_DEVICES"] == "1"
    wait_for(lambda: owners(app, client) == [["vllm"], ["second"]])

    refused = put(app, client, "third", model="acme/third", gpus=[1], share_gpus=True)
    assert refused.status_code == 409 and "instance 'second'" in refused.text  # `second` does not share

    assert client.post(app.portal_url("/api/instances/second/stop")).json()["state"] == "stopped"
    wait_for(lambda: owners(app, client) == [["vllm"], []])  # a stopped instance owns no GPU
    assert put(app, client, "third", model="acme/third", gpus=[1], pinned=True, wait=True).json()["result"] == "ready"
    blocked = client.post(app.portal_url("/api/instances/second/start"))
    assert blocked.status_code == 409 and "GPU 1 is owned by instance 'third'" in blocked.text
    for name in ("third", "second"):
        assert client.delete(app.portal_url(f"/api/instances/{name}")).status_code == 200
    wait_for(lambda: owners(app, client) == [["vllm"], []])


def state(app, client, instance: str) -> dict:
    return client.get(app.portal_url(f"/api/instances/{instance}")).json()


def test_making_room_stops_the_holder_and_an_on_demand_start_takes_the_gpu_back(gpu_api):
    app, client = gpu_api
    assert put(app, client, "vllm", model="acme/gpu-chat", gpus=[0], wait=True).json()["result"] == "ready"
    room = put(app, client, "room", model="acme/room", gpus=[0], wait=True).json()
    assert room["result"] == "ready" and engine_process(app, "room")[1]["CUDA_VISIBLE_DEVICES"] == "0"
    held = state(app, client, "vllm")
    assert held["state"] == "stopped" and held["reason"] == "stopped to make room for 'room'"
    wait_for(lambda: owners(app, client)[0] == ["room"])
    back = client.post(app.portal_url("/api/instances/vllm/start"))  # what the router asks for on demand
    assert back.status_code == 200, back.text
    wait_for(lambda: state(app, client, "vllm")["state"] == "ready")
    assert state(app, client, "room")["state"] == "stopped"
    wait_for(lambda: owners(app, client)[0] == ["vllm"])
    assert client.delete(app.portal_url("/api/instances/room")).status_code == 200


def test_between_sleep_mode_engines_the_holder_sleeps_and_a_start_wakes_it(gpu_api):
    app, client = gpu_api
    first = put(app, client, "s1", model="acme/s1", gpus=[1], strategy="sleep", wait=True).json()
    assert first["result"] == "ready" and "--enable-sleep-mode" in first["args"]
    assert engine_process(app, "s1")[1]["VLLM_SERVER_DEV_MODE"] == "1"
    engine = httpx.Client(base_url=f"http://127.0.0.1:{first['port']}", timeout=10)
    assert engine.get("/is_sleeping").json() == {"is_sleeping": False}
    second = put(app, client, "s2", model="acme/s2", gpus=[1], strategy="sleep", wait=True).json()
    assert second["result"] == "ready"
    asleep = state(app, client, "s1")
    assert asleep["state"] == "sleeping" and asleep["reason"] == "asleep to make room for 's2'"
    assert engine.get("/is_sleeping").json() == {"is_sleeping": True}  # the engine process runs on, asleep
    with app.client() as outside:  # vLLM's dev routes are loopback only: Caddy answers 404 for them
        for path in ("/instances/s1/is_sleeping", "/instances/s1/wake_up", "/sleep", "/instances/s2/sleep"):
            assert outside.request("POST" if "is_" not in path else "GET", app.api_url(path)).status_code == 404
        assert outside.get(app.api_url("/instances/s2/v1/models")).status_code == 200
    assert client.post(app.portal_url("/api/instances/s1/start")).json()["state"] == "ready"
    assert engine.get("/is_sleeping").json() == {"is_sleeping": False}
    assert state(app, client, "s2")["state"] == "sleeping"
    reply = engine.post("/v1/completions", json={"model": "acme/s1", "prompt": "hello", "max_tokens": 4})
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"]
    metrics = client.get(app.portal_url("/metrics")).text
    assert 'appliance_instance_state{instance="s2",state="sleeping"} 1.0' in metrics
    for name in ("s1", "s2"):
        assert client.delete(app.portal_url(f"/api/instances/{name}")).status_code == 200
