"""The default instance's engine port at boot: the router has the API's internal port now."""
from __future__ import annotations

import json

from app import boot, portal_config
from app.instance import InstanceConfig
from app.settings import Settings
from app.state import SavedState, Store
from tests.appliance import free_port

API = free_port()
PORTS = portal_config.Ports(portal_config.parse(f"localhost:1111:{free_port()}:/:Instance Portal|"
                                                f"localhost:8000:{API}:/docs:vLLM API"))


def settings(tmp_path, **env) -> Settings:
    first = free_port()
    return Settings(APPLIANCE_ROOT=str(tmp_path), ENGINE_PORTS=f"{first}-{first + 20}", VLLM_MODEL="acme/m", **env)


def test_vllm_gets_an_engine_port_and_keeps_it(tmp_path):
    s = settings(tmp_path)
    config = boot.env_instance(s, PORTS, SavedState())
    assert config is not None and config.port in s.engine_port_range
    kept = boot.env_instance(s, PORTS, SavedState(instances={"vllm": config}))
    assert kept is not None and kept.port == config.port


def test_vllm_args_naming_the_api_port_is_refused_with_a_message(tmp_path, capsys):
    assert boot.env_instance(settings(tmp_path, VLLM_ARGS=f"--port {API}"), PORTS, SavedState()) is None
    assert "is the internal port of 'vLLM API'" in capsys.readouterr().err


def test_a_saved_vllm_on_the_api_port_is_moved_once(tmp_path, capsys):
    s = settings(tmp_path)
    s.state_dir.mkdir(parents=True)
    store = Store(s)
    store.put(InstanceConfig(id="vllm", model="acme/m", port=API))
    boot.migrate_default_port(s, PORTS, store)
    moved = json.loads((s.state_dir / "instances.json").read_text())["instances"]["vllm"]["port"]
    assert moved in s.engine_port_range and Store(s).instances["vllm"].port == moved
    assert f"moves from the API's internal port {API} to engine port {moved}" in capsys.readouterr().err
