"""gpu_uuids on the booted appliance with a fake NVML of 4 GPUs (tests/fakes/nvml.py): upstream's
TestVllmInstance uuid tests translated to HTTP, the engine's real environment checked."""
from __future__ import annotations

import pytest

from tests.appliance import REPO, Appliance
from tests.manager.test_gpus import engine_process
from tests.manager.test_swap import fingerprint, wait_for

UUIDS = ["GPU-fake-0000", "GPU-fake-0001", "GPU-fake-0002", "GPU-fake-0003"]


@pytest.fixture(scope="module")
def gpus(tmp_path_factory):
    """No `vllm` here: it would own every GPU."""
    app = Appliance(tmp_path_factory.mktemp("v2gpus"), {
        "FAKE_NVML_GPUS": "4", "PYTHONPATH": str(REPO / "tests/fakes/nvml_site")})
    app.start()
    with app.client(timeout=60) as client:
        yield app, client, lambda path="": app.portal_url(f"/v2/vllm/instances{path}")
    app.stop()


@pytest.fixture
def clean(gpus):
    app, client, url = gpus
    yield gpus
    client.delete(url())


def test_uuids_become_the_engines_gpu_indices(clean):
    """TestVllmInstance.test_instance_uuid_to_index_translation"""
    app, client, url = clean
    given = {"options": "--model acme/gpu-model", "gpu_uuids": [UUIDS[0], UUIDS[2], UUIDS[3]]}
    created = client.put(url("/test-id"), json=given)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "running" and created.json()["gpu_uuids"] == given["gpu_uuids"]
    assert created.json()["env_vars"] == {"CUDA_VISIBLE_DEVICES": "0,2,3"}
    wait_for(lambda: client.get(url("/test-id")).json()["ready"])
    assert engine_process(app, "test-id")[1]["CUDA_VISIBLE_DEVICES"] == "0,2,3"


def test_uuids_add_to_the_env_vars_given(clean):
    """TestVllmInstance.test_instance_uuid_translation_creates_env_vars_if_none,
    test_instance_uuid_translation_preserves_existing_env_vars"""
    app, client, url = clean
    none_given = client.put(url("/bare"), json={"options": "--model acme/a", "gpu_uuids": [UUIDS[1], UUIDS[3]]})
    assert none_given.json()["env_vars"] == {"CUDA_VISIBLE_DEVICES": "1,3"}
    existing = {"CUSTOM_VAR": "custom_value", "ANOTHER_VAR": "123"}
    kept = client.put(url("/kept"), json={"options": "--model acme/b", "gpu_uuids": [UUIDS[0]], "env_vars": existing})
    assert kept.json()["env_vars"] == {**existing, "CUDA_VISIBLE_DEVICES": "0"}
    wait_for(lambda: client.get(url("/kept")).json()["ready"])
    environ = engine_process(app, "kept")[1]
    assert environ["CUSTOM_VAR"] == "custom_value" and environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_without_uuids_no_gpu_selection(clean):
    """TestVllmInstance.test_instance_no_uuid_translation_when_gpu_uuids_none"""
    app, client, url = clean
    created = client.put(url("/plain"), json={"options": "--model acme/c", "env_vars": {"SOME_VAR": "value"}}).json()
    assert created["env_vars"] == {"SOME_VAR": "value"} and "gpu_uuids" not in created
    wait_for(lambda: client.get(url("/plain")).json()["ready"])
    assert "CUDA_VISIBLE_DEVICES" not in engine_process(app, "plain")[1]


def test_an_unknown_uuid_is_400_naming_it(clean):
    """Ours (upstream: 409 on PUT, 500 on POST, from the translator's ValueError): 400 naming the UUID and the
    machine's GPUs; nothing changes."""
    app, client, url = clean
    before = fingerprint(app)
    for method, path in (("PUT", "/test-id"), ("POST", "")):
        answer = client.request(method, url(path), json={"options": "--model m", "gpu_uuids": [UUIDS[1], "GPU-gone"]})
        assert answer.status_code == 400 and "'GPU-gone' not found" in answer.json()["detail"]
        assert UUIDS[3] in answer.json()["detail"]
    assert fingerprint(app) == before


def test_a_gpu_another_instance_owns_is_409(clean):
    """Ours: GPUs are claimed like ports (docs/api.md); upstream would start both engines on the same GPU."""
    app, client, url = clean
    assert client.put(url("/owner"), json={"options": "--model acme/o", "gpu_uuids": [UUIDS[2]]}).status_code == 201
    clash = client.put(url("/second"), json={"options": "--model acme/s", "gpu_uuids": [UUIDS[2]]})
    assert clash.status_code == 409 and "GPU 2 is owned by instance 'owner'" in clash.json()["detail"]
