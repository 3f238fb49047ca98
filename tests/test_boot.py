"""Booting the whole appliance from a checkout: programs, logs, token, certificate, side by side."""
from __future__ import annotations

import json
import re
import shlex
import stat
import time

import pytest

from app.settings import Settings
from app.tls import ensure_certificate
from tests.appliance import free_port, processes_with_env
from tests.conftest import hub_server
from tests.manager.test_swap import wait_for


def running(appliance) -> dict[str, str]:
    lines = appliance.supervisorctl("status").stdout.splitlines()
    return {line.split()[0]: line.split()[1] for line in lines if line.strip()}


def wait_states(appliance, wanted: dict[str, str], timeout: float = 15) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = running(appliance)
        if all(states.get(k) == v for k, v in wanted.items()) or time.monotonic() > deadline:
            return states


def test_every_program_runs_and_logs_to_its_file_and_to_stdout(appliance):
    states = wait_states(appliance, {"caddy": "RUNNING", "manager": "RUNNING", "vllm": "RUNNING"})
    assert {name: states.get(name) for name in ("caddy", "manager", "vllm")} == \
        {"caddy": "RUNNING", "manager": "RUNNING", "vllm": "RUNNING"}
    with appliance.client() as client:
        client.get(appliance.api_url("/v1/models"))
    time.sleep(0.5)
    assert "Starting vLLM API server" in appliance.log("vllm")
    assert "GET /v1/models" in appliance.log("vllm")
    output = appliance.output()
    assert "vllm | " in output and "GET /v1/models" in output  # docker logs see it too
    assert "manager | " in output


def test_the_engine_gets_an_engine_port_the_router_the_api_port_and_the_model_cache_the_workspace(appliance):
    conf = (appliance.root / "etc/supervisor/conf.d/vllm.conf").read_text()
    first, last = map(int, appliance.env["ENGINE_PORTS"].split("-"))
    port = int(re.search(r"--host 127.0.0.1 --port (\d+)", conf).group(1))
    assert first <= port <= last and port != appliance.api_internal
    assert "-m app.router" in (appliance.root / "etc/supervisor/conf.d/router.conf").read_text()
    assert f'HF_HOME="{appliance.root}/workspace/huggingface"' in conf
    assert "stopasgroup=true" in conf and "killasgroup=true" in conf


def test_generated_token_is_printed_once_kept_private_and_reused(boot):
    app = boot()
    token = app.token
    assert f"token: {token}" in app.output()
    assert f"?token={token}" in app.output()
    assert stat.S_IMODE((app.root / "workspace/.appliance/token").stat().st_mode) == 0o600
    assert stat.S_IMODE((app.root / "etc/caddy/Caddyfile").stat().st_mode) == 0o600
    cert = app.cert.read_bytes()
    app.stop()
    app.boot_log.write_text("")
    app.start()
    assert app.token == token
    assert token not in app.output()  # printed once, on the first boot only
    assert app.cert.read_bytes() == cert  # the certificate is kept too
    with app.client() as client:
        assert client.get(app.portal_url("/api/health")).status_code == 200


def test_two_appliances_run_side_by_side(boot):
    first, second = boot(), boot()
    for app in (first, second):
        with app.client() as client:
            assert client.get(app.portal_url("/api/health")).status_code == 200
    assert first.token != second.token
    with first.client(auth=False) as client:
        response = client.get(first.portal_url("/api/health"), headers={"Authorization": f"Bearer {second.token}"})
        assert response.status_code == 401


def test_sigterm_stops_every_program_engines_included(boot):
    app = boot({"VLLM_MODEL": "acme/tiny-chat"})
    marker = f"APPLIANCE_ROOT={app.root}".encode()
    assert len(processes_with_env(marker)) >= 5  # supervisord, logforward, caddy, manager, engine
    app.stop()
    assert processes_with_env(marker) == []


@pytest.mark.parametrize("env,message", [
    ({"OPEN_BUTTON_TOKEN": "short"}, "OPEN_BUTTON_TOKEN must be 16-256 characters"),
    ({"OPEN_BUTTON_TOKEN": "has spaces and ; semicolons"}, "OPEN_BUTTON_TOKEN must be"),
    ({"PORTAL_CONFIG": "localhost:1111:11111"}, "must be host:external:internal:path:Name"),
    ({"AUTH_EXCLUDE": "8000,abc"}, "AUTH_EXCLUDE: 'abc' is not a port number"),
    ({"ENABLE_HTTPS": "perhaps"}, "ENABLE_HTTPS"),
    ({"TLS_CERT": "/nonexistent/cert.pem", "TLS_KEY": "/nonexistent/key.pem"}, "TLS_CERT /nonexistent/cert.pem"),
])
def test_settings_that_would_weaken_access_stop_the_boot_with_a_clear_message(boot, env, message):
    app = boot(env, start=False)
    with pytest.raises(RuntimeError, match="appliance exited with 1"):
        app.start(timeout=20)
    assert message in app.output()
    assert "the appliance did not start" in app.output()


@pytest.mark.parametrize("model,args", [
    ("acme/m\n[program:evil]\ncommand=/bin/touch {pwned}", ""),
    ("acme/tiny-chat", "--seed 1\n[program:evil]\ncommand=/bin/touch {pwned}"),
    ("acme/tiny-chat", "--served-model-name 'unclosed"),
])
def test_hostile_engine_settings_are_refused_and_the_portal_still_comes_up(boot, tmp_path, model, args):
    pwned = tmp_path / "pwned"
    app = boot({"VLLM_MODEL": model.format(pwned=pwned), "VLLM_ARGS": args.format(pwned=pwned)}, wait_engine=False)
    assert "ERROR: the engine is not started" in app.output()
    with app.client() as client:
        assert client.get(app.portal_url("/api/health")).status_code == 200
    assert set(running(app)) == {"caddy", "haproxy", "logforward", "manager", "router"}
    assert not pwned.exists()


def test_quotes_percent_and_command_substitution_reach_the_engine_as_plain_text(boot, tmp_path):
    pwned = tmp_path / "pwned"
    name = f"x%(here)s'\"$(touch {pwned}) ;#[program:y]"
    app = boot({"VLLM_MODEL": "acme/tiny-chat", "VLLM_ARGS": f"--served-model-name {_shell_quote(name)} --seed 7"})
    with app.client() as client:
        served = client.get(app.api_url("/v1/models")).json()["data"]
    assert [m["id"] for m in served] == [name]
    assert set(running(app)) == {"caddy", "haproxy", "logforward", "manager", "router", "vllm"}
    assert not pwned.exists()


def _shell_quote(text: str) -> str:
    return shlex.quote(text)


def test_an_engine_waits_for_an_unreachable_hub_and_starts_by_itself_once_it_answers(boot):
    port = free_port()
    app = boot({"VLLM_MODEL": "acme/not-cached", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}, wait_engine=False)
    assert f"the Hugging Face Hub (http://127.0.0.1:{port}) cannot be reached" in app.output()
    assert "the engine `vllm` waits and starts by itself as soon as the Hub answers" in app.output()
    with app.client() as client:
        shown = wait_for(lambda: (i := client.get(app.portal_url("/api/instances/vllm")).json())["state"] == "waiting"
                         and i)
        assert "waiting for the Hugging Face Hub" in shown["reason"]
        assert running(app)["vllm"] == "STOPPED"
        with hub_server(port):
            app.wait_engine(60)
            wait_for(lambda: client.get(app.portal_url("/api/instances/vllm")).json()["state"] == "ready")


def test_a_model_the_hub_does_not_have_fails_with_the_hubs_own_message(boot):
    port = free_port()
    app = boot({"VLLM_MODEL": "acme/missing-model", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}, wait_engine=False)
    with app.client() as client, hub_server(port):
        shown = wait_for(lambda: (i := client.get(app.portal_url("/api/instances/vllm")).json())["state"] == "failed"
                         and i, 60)
    assert shown["reason"].startswith("the Hugging Face Hub says: 404") and "acme/missing-model" in shown["reason"]


def test_a_local_model_folder_needs_no_hub(boot, tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    app = boot({"VLLM_MODEL": str(model), "HF_ENDPOINT": "http://127.0.0.1:9"})
    with app.client() as client:
        assert client.get(app.api_url("/v1/models")).json()["data"][0]["id"] == str(model)


def test_supplied_certificate_is_used_instead_of_a_generated_one(boot, tmp_path):
    own = Settings(WORKSPACE=str(tmp_path / "own"))
    own.tls_dir.mkdir(parents=True)
    ensure_certificate(own)
    app = boot({"TLS_CERT": str(own.cert_file), "TLS_KEY": str(own.key_file)})
    with app.client() as client:  # trusts only the supplied certificate
        assert client.get(app.portal_url("/api/health")).status_code == 200
    assert not (app.root / "workspace/.appliance/tls/cert.pem").exists()


def test_a_saved_vllm_on_the_api_port_moves_to_an_engine_port_at_boot(boot):
    """State saved before the router: `vllm` listened on the API's internal port, where the router listens now."""
    app = boot({"VLLM_MODEL": "acme/tiny-chat"}, start=False)
    saved = app.workspace / ".appliance/instances.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps({"boot_env": {"VLLM_MODEL": "acme/tiny-chat", "VLLM_ARGS": ""}, "instances": {
        "vllm": {"id": "vllm", "model": "acme/tiny-chat", "port": app.api_internal}}}))
    app.start()
    port = json.loads(saved.read_text())["instances"]["vllm"]["port"]
    assert port != app.api_internal
    assert f"the instance `vllm` moves from the API's internal port {app.api_internal} to engine port {port}" \
        in app.output()
    with app.client() as client:
        reply = client.post(app.api_url("/v1/completions"), json={"model": "acme/tiny-chat", "prompt": "hi"})
    assert reply.status_code == 200 and "from acme/tiny-chat" in reply.json()["choices"][0]["text"]
