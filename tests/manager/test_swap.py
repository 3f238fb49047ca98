"""Swapping models through /api/instances on the real appliance (supervisord, Caddy, stand-in engine)."""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import time

import pytest

from tests.appliance import processes_with_env


@pytest.fixture
def api(fresh_appliance):
    with fresh_appliance.client(timeout=120) as client:
        yield fresh_appliance, client


def served(appliance, client, prefix="") -> list[str]:
    return [m["id"] for m in client.get(appliance.api_url(f"{prefix}/v1/models")).json()["data"]]


def put(appliance, client, instance, **body):
    return client.put(appliance.portal_url(f"/api/instances/{instance}"), json=body)


def fingerprint(appliance) -> dict[str, str]:
    files = [appliance.root / "workspace/.appliance/instances.json",
             *sorted((appliance.root / "etc/supervisor/conf.d").glob("*.conf"))]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_swap_serves_the_new_model_on_the_same_port(api):
    appliance, client = api
    port = client.get(appliance.portal_url("/api/instances/vllm")).json()["port"]
    response = put(appliance, client, "vllm", model="acme/second-model", wait=True)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "ready"
    assert served(appliance, client) == ["acme/second-model"]
    listed = client.get(appliance.portal_url("/api/instances")).json()
    assert [(i["id"], i["state"], i["port"]) for i in listed] == [("vllm", "ready", port)]
    assert port != appliance.api_internal  # the router listens there


def test_failed_swap_rolls_back_and_says_why(api):
    appliance, client = api
    before = served(appliance, client)
    response = put(appliance, client, "vllm", model="acme/fail-load", wait=True)
    body = response.json()
    assert body["result"] == "rolled back"
    assert "the engine exited" in body["error"]
    assert any("RuntimeError: failed to load acme/fail-load" in line for line in body["failed_log"])
    assert served(appliance, client) == before
    saved = client.get(appliance.portal_url("/api/instances/vllm")).json()
    assert saved["model"] == before[0]


def test_a_swap_that_times_out_rolls_back(api):
    appliance, client = api
    before = served(appliance, client)
    body = put(appliance, client, "vllm", model="acme/slow-start", wait=True, timeout=1).json()
    assert body["result"] == "rolled back" and body["error"] == "not ready after 1 s"
    assert served(appliance, client) == before


def test_without_rollback_a_failure_leaves_the_instance_failed(api):
    appliance, client = api
    body = put(appliance, client, "vllm", model="acme/fail-load", wait=True, rollback=False).json()
    assert body["result"] == "failed" and body["state"] == "failed"
    assert client.get(appliance.portal_url("/api/instances/vllm")).json()["state"] == "failed"
    assert put(appliance, client, "vllm", model="acme/tiny-chat", wait=True).json()["result"] == "ready"


@pytest.mark.parametrize("instance,body,message", [
    ("vllm", {"model": "acme/x\n[program:evil]"}, "newline or control character"),
    ("vllm", {"model": "acme/x", "args": ["--seed", "1\n2"]}, "newline or control character"),
    ("vllm", {"model": "acme/x", "env": {"BAD NAME": "1"}}, "environment variable name"),
    ("vllm", {"model": "acme/x", "env": {"X": "a'b\"c"}}, "single or double quotes"),
    ("vllm", {"model": "-x"}, "must not start with '-'"),
    ("vllm", {"model": "acme/x", "timeout": 0}, "greater than 0"),
    ("vllm", {"args": []}, "model"),
    ("Not_An_Id", {"model": "acme/x"}, "instance id"),
    ("vllm", {"model": "acme/x", "modle": "typo"}, "Extra inputs are not permitted"),
    ("vllm", {"model": "acme/x", "args": ["--port", "API"]}, "is the internal port of 'vLLM API'"),  # the router's
    ("other", {"model": "acme/x", "args": ["--port", "9"]}, "greater than or equal to 1024"),
    ("vllm", {"model": "org/m; touch x"}, "neither a Hugging Face id"),
    ("vllm", {"model": "acme/x", "args": ["--host=0.0.0.0"]}, "127.0.0.1 only"),
    ("vllm", {"model": "acme/x", "args": ["--model", "y"]}, "give the model as `model`"),
    ("vllm", {"model": "acme/x", "port": "API"}, "is the internal port of 'vLLM API'"),
    ("vllm", {"model": "acme/x", "gpus": [0]}, "no NVIDIA GPU here"),
    ("vllm", {"model": "acme/x", "gpus": [-1]}, "distinct GPU indices"),
    ("vllm", {"model": "acme/x", "env": {"X": "100%(here)s"}}, "'%('"),
    ("other", {"model": "acme/x", "port": 80}, "greater than or equal to 1024"),
])
def test_bad_input_gets_a_4xx_with_a_message_and_touches_nothing(api, instance, body, message):
    appliance, client = api
    before_files, before_served = fingerprint(appliance), served(appliance, client)
    api_port = str(appliance.api_internal)  # "API" stands for the API's internal port, where the router listens
    body = {k: ([api_port if a == "API" else a for a in v] if k == "args" else int(api_port) if v == "API" else v)
            for k, v in body.items()}
    response = put(appliance, client, instance, **body)
    assert 400 <= response.status_code < 500
    assert message in response.text
    assert fingerprint(appliance) == before_files
    assert served(appliance, client) == before_served


def test_unknown_instances_are_404(api):
    appliance, client = api
    for method, path in [("GET", "/api/instances/nope"), ("DELETE", "/api/instances/nope"),
                         ("POST", "/api/instances/nope/start"), ("GET", "/api/instances/nope/logs")]:
        response = client.request(method, appliance.portal_url(path))
        assert response.status_code == 404 and "nope" in response.text


def test_a_second_instance_gets_its_own_port_and_route_and_goes_away_on_delete(api):
    appliance, client = api
    body = put(appliance, client, "second", model="acme/other", served_model_name="other", wait=True).json()
    assert body["result"] == "ready" and body["port"] != appliance.api_internal
    assert wait_for(lambda: client.get(appliance.api_url("/instances/second/v1/models")).status_code == 200)
    assert served(appliance, client, "/instances/second") == ["other"]
    assert served(appliance, client) != ["other"]  # /v1 still goes to `vllm`
    with appliance.client(auth=False) as anonymous:  # the per-instance route sits behind auth too
        assert anonymous.get(appliance.api_url("/instances/second/v1/models")).status_code == 401
    assert client.delete(appliance.portal_url("/api/instances/second")).status_code == 200
    assert [i["id"] for i in client.get(appliance.portal_url("/api/instances")).json()] == ["vllm"]
    assert not (appliance.root / "etc/supervisor/conf.d/second.conf").exists()
    assert client.get(appliance.api_url("/instances/second/v1/models")).status_code == 404


def test_a_port_of_the_appliance_is_refused_with_409(api):
    appliance, client = api
    before = fingerprint(appliance)
    for port in (appliance.portal_internal, appliance.api_port):
        response = put(appliance, client, "other", model="acme/x", port=port)
        assert response.status_code == 409 and f"port {port} is the" in response.text
    assert fingerprint(appliance) == before


def test_new_instances_created_at_once_get_distinct_ports(api):
    appliance, client = api
    names = [f"par-{n}" for n in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: put(appliance, client, n, model=f"acme/{n}").json(), names))
    assert len({a["port"] for a in answers}) == 4, answers
    for name in names:
        wait_for(lambda name=name: client.get(appliance.portal_url(f"/api/instances/{name}")).json()["state"]
                 == "ready")
        assert served(appliance, client, f"/instances/{name}") == [f"acme/{name}"]
    clash = put(appliance, client, "par-x", model="acme/x", port=answers[0]["port"])
    assert clash.status_code == 409 and "instance 'par-0'" in clash.text
    for name in names:
        assert client.delete(appliance.portal_url(f"/api/instances/{name}")).status_code == 200


def test_a_caddy_reload_keeps_a_stream_in_flight(api):
    appliance, client = api
    body = {"model": served(appliance, client)[0], "stream": True, "max_tokens": 40,
            "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten eleven"}]}
    # a slow stream (16 tokens, 0.4 s apart) to the default instance, while an instance is added (Caddy reloads)
    assert put(appliance, client, "vllm", model=body["model"], env={"FAKE_VLLM_TOKEN_DELAY": "0.4"},
               wait=True).json()["result"] == "ready"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        def stream():
            with client.stream("POST", appliance.api_url("/v1/chat/completions"), json=body) as response:
                return response.status_code, [line for line in response.iter_lines() if line.startswith("data:")]
        future = pool.submit(stream)
        time.sleep(0.5)
        assert put(appliance, client, "reloader", model="acme/reloader", wait=True).json()["result"] == "ready"
        assert not future.done()  # the reload happened while the stream was open
        status, events = future.result(timeout=60)
    assert status == 200 and events[-1] == "data: [DONE]" and len(events) >= 16
    assert client.delete(appliance.portal_url("/api/instances/reloader")).status_code == 200
    assert put(appliance, client, "vllm", model=body["model"], wait=True).json()["result"] == "ready"


def test_stop_and_start(api):
    appliance, client = api
    restarts = client.get(appliance.portal_url("/api/instances/vllm")).json()["restarts"]
    assert client.post(appliance.portal_url("/api/instances/vllm/stop")).json()["state"] == "stopped"
    assert wait_for(lambda: [m["state"] for m in client.get(appliance.api_url("/v1/models")).json()["data"]
                             if m.get("instance") == "vllm"] == ["stopped"])  # the router lists it, stopped
    client.post(appliance.portal_url("/api/instances/vllm/start"))
    wait_for(lambda: client.get(appliance.portal_url("/api/instances/vllm")).json()["state"] == "ready")
    assert client.get(appliance.api_url("/v1/models")).status_code == 200
    assert client.post(appliance.portal_url("/api/instances/vllm/restart")).status_code == 200
    wait_for(lambda: client.get(appliance.portal_url("/api/instances/vllm")).json()["state"] == "ready")
    time.sleep(1.5)  # a monitor round
    assert client.get(appliance.portal_url("/api/instances/vllm")).json()["restarts"] == restarts  # asked for: no crash


def test_concurrent_swaps_are_serialised_and_the_last_accepted_wins(api):
    appliance, client = api
    models = [f"acme/concurrent-{n}" for n in range(10)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda m: put(appliance, client, "vllm", model=m).json(), models))
    last = max(answers, key=lambda a: a["accepted"])["model"]
    wait_for(lambda: client.get(appliance.portal_url("/api/instances/vllm")).json()["state"] == "ready", 60)
    assert client.get(appliance.portal_url("/api/instances/vllm")).json()["model"] == last
    assert served(appliance, client) == [last]
    engines = [p for p in processes_with_env(f"APPLIANCE_ROOT={appliance.root}".encode())
               if b"serve" in open(f"/proc/{p}/cmdline", "rb").read()]
    assert len(engines) == 1, engines


def test_an_engine_killed_with_sigkill_is_restarted_and_counted(api):
    appliance, client = api
    before = client.get(appliance.portal_url("/api/instances/vllm")).json()
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(lambda: (i := client.get(appliance.portal_url("/api/instances/vllm")).json())["restarts"]
                     > before["restarts"] and i["state"] == "ready" and i, 30)
    assert after["pid"] != before["pid"]


def test_a_ready_engine_is_not_polled_into_a_noisy_log(api):
    appliance, client = api
    wait_for(lambda: client.get(appliance.portal_url("/api/instances/vllm")).json()["state"] == "ready")
    time.sleep(1.5)
    size = len(appliance.log("vllm"))
    time.sleep(3)
    assert appliance.log("vllm")[size:].count("GET /health") == 0


def test_a_deleted_instance_takes_its_log_along(api):
    appliance, client = api
    assert put(appliance, client, "logged", model="acme/logged-one", wait=True).json()["result"] == "ready"
    assert "acme/logged-one" in appliance.log("logged")
    assert client.delete(appliance.portal_url("/api/instances/logged")).status_code == 200
    assert not (appliance.root / "var/log/portal/logged.log").exists()
    assert put(appliance, client, "logged", model="acme/logged-two", wait=True).json()["result"] == "ready"
    log = client.get(appliance.portal_url("/api/instances/logged/logs")).text
    assert "acme/logged-two" in log and "acme/logged-one" not in log
    assert client.delete(appliance.portal_url("/api/instances/logged")).status_code == 200


def test_args_sent_as_one_string_are_split_like_a_shell_would(api):
    appliance, client = api
    answer = put(appliance, client, "quoted", model="acme/quoted", wait=True,
                 args="--override-generation-config='{\"temperature\": 0.5}' --seed 3").json()
    assert answer["result"] == "ready"
    assert answer["args"] == ['--override-generation-config={"temperature": 0.5}', "--seed", "3"]
    assert client.delete(appliance.portal_url("/api/instances/quoted")).status_code == 200


def test_an_engine_supervisor_cannot_spawn_fails_the_swap_with_its_reason_not_a_500(api):
    appliance, client = api
    before = served(appliance, client)
    response = put(appliance, client, "vllm", model="acme/no-path", env={"PATH": "/nonexistent"}, wait=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == "rolled back" and "can't find command" in body["error"], body
    assert served(appliance, client) == before
