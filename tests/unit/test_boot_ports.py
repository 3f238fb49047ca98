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


def test_haproxy_takes_the_api_port_and_the_router_its_own_unless_the_fast_path_is_off(tmp_path, capsys, monkeypatch):
    s = settings(tmp_path, ROUTER_PORT=str(API))  # a port an app uses: another one is taken, with a message
    s.run_dir.mkdir(parents=True)
    monkeypatch.setattr(boot.haproxy, "unusable", lambda settings: None)
    monkeypatch.setattr(boot.haproxy, "binary", lambda: "/usr/sbin/haproxy")
    monkeypatch.setattr(boot.haproxy, "refused", lambda settings: None)  # `haproxy -c` passes
    front, router = boot.router_programs(s, PORTS)
    port = int(router.argv[router.argv.index("--port") + 1])
    config = s.haproxy_config.read_text()
    assert front.name == "haproxy" and "--fast-path" in router.argv and port not in PORTS.taken()
    assert f"bind 127.0.0.1:{API}\n" in config and f"server router 127.0.0.1:{port}\n" in config
    assert "nbthread 1" in config and s.haproxy_map.read_text() == ""
    assert "ERROR: ROUTER_PORT" in capsys.readouterr().err
    monkeypatch.setattr(boot.haproxy, "unusable", lambda settings: "ROUTER_FAST_PATH=false")
    (alone,) = boot.router_programs(s, PORTS)
    assert alone.argv[-2:] == ["--port", str(API)]
    assert "fast path off (ROUTER_FAST_PATH=false)" in capsys.readouterr().err
    # a configuration HAProxy refuses would leave the API port shut: the router takes it, and the boot says why
    monkeypatch.setattr(boot.haproxy, "unusable", lambda settings: None)
    monkeypatch.setattr(boot.haproxy, "refused", lambda settings: "HAProxy refuses its configuration: [ALERT] x")
    (alone,) = boot.router_programs(s, PORTS)
    assert alone.argv[-2:] == ["--port", str(API)]
    assert "fast path off (HAProxy refuses its configuration: [ALERT] x)" in capsys.readouterr().err


def test_an_haproxy_without_json_query_turns_the_fast_path_off(tmp_path, monkeypatch):
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\necho 'HAProxy version 2.4.24-0ubuntu0.22.04.1 2023/10/31'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(boot.haproxy, "binary", lambda: str(fake))
    assert "older than HAProxy 2.5" in boot.haproxy.unusable(settings(tmp_path))
    assert boot.haproxy.unusable(settings(tmp_path, ROUTER_FAST_PATH="false")) == "ROUTER_FAST_PATH=false"


def test_a_run_folder_too_deep_for_haproxys_sockets_turns_the_fast_path_off(tmp_path):
    deep = tmp_path / ("d" * 100)
    why = boot.haproxy.unusable(settings(deep))
    assert why is not None and "longer path than HAProxy takes (97 characters)" in why
