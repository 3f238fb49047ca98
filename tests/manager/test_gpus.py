"""GPUs on the real appliance, with a fake NVML in its processes (tests/fakes/nvml.py, EngineNVML): ownership
(409 naming the owner), sharing, CUDA_VISIBLE_DEVICES and the parallel size, and /api/stats naming each GPU's
instance."""
from __future__ import annotations

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


def test_a_gpu_owned_by_a_running_instance_is_refused_with_409_naming_it(gpu_api):
    app, client = gpu_api
    before = fingerprint(app)
    answer = put(app, client, "second", model="acme/other", gpus=[1])
    assert answer.status_code == 409 and "GPU 1 is owned by instance 'vllm'" in answer.text
    missing = put(app, client, "second", model="acme/other", gpus=[5])
    assert missing.status_code == 422 and "GPU 5 does not exist: there are 2 GPUs" in missing.text
    assert put(app, client, "second", model="acme/other", gpus=[0, 0]).status_code == 422
    assert fingerprint(app) == before
    assert [i["id"] for i in client.get(app.portal_url("/api/instances")).json()] == ["vllm"]


def test_instances_on_their_own_gpus_run_side_by_side_and_sharing_needs_both(gpu_api):
    app, client = gpu_api
    assert put(app, client, "vllm", model="acme/gpu-chat", gpus=[0], wait=True).json()["result"] == "ready"
    argv, environ = engine_process(app, "vllm")
    assert environ["CUDA_VISIBLE_DEVICES"] == "0" and "--tensor-parallel-size" not in argv  # one GPU given
    assert put(app, client, "second", model="acme/other", gpus=[1], wait=True).json()["result"] == "ready"
    assert engine_process(app, "second")[1]["CUDA_VISIBLE_DEVICES"] == "1"
    wait_for(lambda: owners(app, client) == [["vllm"], ["second"]])

    refused = put(app, client, "third", model="acme/third", gpus=[1], share_gpus=True)
    assert refused.status_code == 409 and "instance 'second'" in refused.text  # `second` does not share

    assert client.post(app.portal_url("/api/instances/second/stop")).json()["state"] == "stopped"
    wait_for(lambda: owners(app, client) == [["vllm"], []])  # a stopped instance owns no GPU
    assert put(app, client, "third", model="acme/third", gpus=[1], wait=True).json()["result"] == "ready"
    blocked = client.post(app.portal_url("/api/instances/second/start"))
    assert blocked.status_code == 409 and "GPU 1 is owned by instance 'third'" in blocked.text
    for name in ("third", "second"):
        assert client.delete(app.portal_url(f"/api/instances/{name}")).status_code == 200
    wait_for(lambda: owners(app, client) == [["vllm"], []])
