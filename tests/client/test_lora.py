"""LoRA on the appliance with the stand-in engine: static adapters from the instance's `lora`, runtime load and unload
through /api/instances/{id}/lora, what the engine and the routing table then list, the checks, and the engine's own
load/unload endpoints out of reach on the public ports."""
from __future__ import annotations

import json
import time

import pytest
from vllm_appliance_client import BadRequestError, ConflictError, NotFoundError

from tests.client.conftest import connect, ids, needs_router


@pytest.fixture
def adapter(tmp_path):
    """A local adapter folder as vLLM looks for it (adapter_config.json)."""
    folder = tmp_path / "adapters" / "sql"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return str(folder)


def engine_models(app, instance: str) -> dict[str, str | None]:
    with app.client() as http:
        data = http.get(app.api_url(f"/instances/{instance}/v1/models")).json()["data"]
    return {m["id"]: m["parent"] for m in data}


def routed(app, instance: str) -> dict:
    table = json.loads((app.root / "run/appliance/routes.json").read_text())
    return next(r for r in table["routes"] if r["id"] == instance)


def routed_adapters(app, instance: str, expected: list[str], timeout: float = 10) -> list[str]:
    """The adapters the routing table lists for the instance, once they are `expected` (the manager publishes the
    table just after it answers), or as they are when the time is up."""
    deadline = time.monotonic() + timeout
    while (found := routed(app, instance)["adapters"]) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_static_adapters_are_served_and_listed(appliance, adapter):
    with connect(appliance, "static-0") as client:
        with client.serve("acme/lora-base", id="static", lora={"sql": adapter, "hub": "acme/hub-lora"},
                          progress=False) as served:
            assert "--enable-lora" in client.instance("static-0")["command"]
            assert served.chat(["select"], model="sql") == ["stand-in reply from sql: select"]
            assert engine_models(appliance, "static-0") == {"acme/lora-base": None, "sql": "acme/lora-base",
                                                            "hub": "acme/lora-base"}
            assert client.loras("static-0") == [
                {"name": "sql", "path": adapter, "static": True, "loaded": True},
                {"name": "hub", "path": "acme/hub-lora", "static": True, "loaded": True}]
            assert routed_adapters(appliance, "static-0", ["sql", "hub"]) == ["sql", "hub"]
            assert routed(appliance, "static-0")["names"] == ["acme/lora-base", "sql", "hub"]


def test_runtime_load_and_unload(appliance, adapter):
    with connect(appliance, "runtime-0") as client:
        with client.serve("acme/lora-base", id="runtime", lora={}, progress=False) as served:
            served.load_lora("live", adapter)
            assert served.generate(["hello"], model="live") == ["stand-in reply from live: hello"]
            assert client.loras("runtime-0") == [{"name": "live", "path": adapter, "static": False, "loaded": True}]
            assert routed_adapters(appliance, "runtime-0", ["live"]) == ["live"]
            with pytest.raises(ConflictError, match="has already been loaded"):
                served.load_lora("live", adapter)
            served.unload_lora("live")
            assert client.loras("runtime-0") == []
            assert routed_adapters(appliance, "runtime-0", []) == []
            with pytest.raises(NotFoundError, match="does not exist"):
                served.generate(["hello"], model="live")
            with pytest.raises(NotFoundError, match="cannot be found"):
                served.unload_lora("live")


def test_a_restarted_engine_forgets_runtime_adapters_but_keeps_static_ones(appliance, adapter):
    with connect(appliance, "restarts-0") as client:
        with client.serve("acme/lora-base", id="restarts", lora={"sql": adapter}, progress=False) as served:
            served.load_lora("live", "acme/live-lora")
            served.unload_lora("sql")
            assert routed_adapters(appliance, "restarts-0", ["live"]) == ["live"]
            client.http.post("/api/instances/restarts-0/restart")
            client._wait_ready(["restarts-0"], 60, False)
            assert routed_adapters(appliance, "restarts-0", ["sql"]) == ["sql"]
            assert sorted(engine_models(appliance, "restarts-0")) == ["acme/lora-base", "sql"]


@pytest.mark.parametrize(("name", "path", "error", "message"), [
    ("my adapter", "acme/a", BadRequestError, "must match"),
    ("acme/lora-base", "acme/a", BadRequestError, "must match"),
    ("ok", "acme/a; touch /tmp/x", BadRequestError, "neither a Hugging Face id"),
    ("ok", "/no/such/adapter", BadRequestError, "not an existing local folder"),
    ("ok", "acme/missing-lora", BadRequestError, "No adapter found for acme/missing-lora"),
])
def test_bad_loads_are_refused_with_a_message(appliance, name, path, error, message):
    with connect(appliance) as client:
        with client.serve("acme/lora-base", id="checks", lora={}, progress=False):
            with pytest.raises(error, match=message):
                client.load_lora("checks-0", name, path)
            assert client.loras("checks-0") == []


def test_loading_needs_lora_on_and_a_ready_instance(appliance, adapter):
    with connect(appliance) as client:
        with pytest.raises(ConflictError, match="LoRA is off on instance 'vllm'"):
            client.load_lora("vllm", "sql", adapter)
        with pytest.raises(NotFoundError, match="no instance 'nope'"):
            client.load_lora("nope", "sql", adapter)
        with client.serve("acme/lora-base", id="stopped", lora={}, progress=False):
            client.http.post("/api/instances/stopped-0/stop")
            with pytest.raises(ConflictError, match="is stopped"):
                client.load_lora("stopped-0", "sql", adapter)
    assert "stopped-0" not in ids(appliance)


def test_a_static_adapter_that_cannot_be_found_is_refused_or_fails_the_start(appliance):
    with connect(appliance) as client:
        with pytest.raises(BadRequestError, match="lora: LoRA adapter 'x': path '/no/such' is not an existing"):
            client.put_instance("bad-lora", {"model": "acme/lora-base", "lora": {"x": "/no/such"}})
        assert "bad-lora" not in ids(appliance)


@pytest.mark.parametrize("path", [
    "/v1/load_lora_adapter", "/instances/{id}/v1/load_lora_adapter", "/V1/Load_Lora_Adapter",
    "//v1/load_lora_adapter", "/v1/./load_lora_adapter", "/v1/load%5Flora_adapter",
    "/instances/{id}/v1//load_lora_adapter", "/instances/{id}/./v1/load_lora_adapter",
])
def test_the_engines_load_endpoint_is_not_reachable_through_caddy_even_with_the_admin_token(appliance, adapter, path):
    with connect(appliance) as client:
        with client.serve("acme/lora-base", id="sealed", lora={}, progress=False):
            with appliance.client() as http:
                answer = http.post(appliance.api_url(path.format(id="sealed-0")),
                                   json={"lora_name": "sneaky", "lora_path": adapter})
                unload = http.post(appliance.api_url("/instances/sealed-0/v1/unload_lora_adapter"),
                                   json={"lora_name": "sneaky"})
            assert answer.status_code == 403 and "manager's API only" in answer.text, answer.text
            assert unload.status_code == 403
            assert "sneaky" not in engine_models(appliance, "sealed-0")


@needs_router
def test_the_router_sends_a_request_naming_an_adapter_to_the_instance_that_serves_it(appliance, adapter):
    with connect(appliance) as client:
        with client.serve("acme/lora-base", id="routed", lora={"sql": adapter}, progress=False) as served:
            served.load_lora("live", "acme/live-lora")
            routed_adapters(appliance, "routed-0", ["sql", "live"])
            assert served.chat(["hi"], model="sql") == ["stand-in reply from sql: hi"]
            assert served.generate(["hi"], model="live") == ["stand-in reply from live: hi"]
            with appliance.client() as http:
                listed = {m["id"]: m for m in http.get(appliance.api_url("/v1/models")).json()["data"]}
            assert listed["sql"]["parent"] == "acme/lora-base" and listed["live"]["parent"] == "acme/lora-base"
            assert "alias_of" not in listed["sql"] and listed["sql"]["instance"] == "routed-0"
