"""What survives: the manager killed mid-swap, and the whole appliance restarted on the same root."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from app.manager import Manager
from app.settings import Settings
from tests.appliance import processes_with_env
from tests.manager.test_swap import put, served, wait_for


def engines(appliance) -> list[int]:
    return [p for p in processes_with_env(f"APPLIANCE_ROOT={appliance.root}".encode())
            if b"serve" in open(f"/proc/{p}/cmdline", "rb").read()]


def test_manager_killed_while_an_engine_starts_leaves_a_consistent_state(boot):
    app = boot({"VLLM_MODEL": "acme/first"})
    with app.client(timeout=30) as client:
        # restart saves the new config first (a blue/green swap saves it at its switch: cut before, it is dropped)
        assert put(app, client, "vllm", model="acme/slow-start-next", strategy="restart").status_code == 202
        time.sleep(0.5)
        os.kill(int(app.supervisorctl("pid", "manager").stdout), signal.SIGKILL)
        app.wait_portal()  # supervisor brings the manager back
        final = wait_for(lambda: (i := client.get(app.portal_url("/api/instances/vllm")).json())["state"] == "ready"
                         and i, 30)
        assert final["model"] == "acme/slow-start-next"
        assert served(app, client) == ["acme/slow-start-next"]
    assert len(engines(app)) == 1  # no orphan engine


def test_the_api_choice_survives_a_restart_until_the_environment_changes(boot):
    app = boot({"VLLM_MODEL": "acme/from-env"})
    with app.client(timeout=60) as client:
        answer = put(app, client, "vllm", model="acme/from-api", args=["--seed", "3"], wait=True)
        assert answer.json()["result"] == "ready"
        assert put(app, client, "extra", model="acme/extra", wait=True).json()["result"] == "ready"
    app.stop()
    app.start()
    with app.client() as client:
        assert served(app, client, "/instances/vllm") == ["acme/from-api"]  # /v1 (the router) lists `extra` too
        assert sorted(i["id"] for i in client.get(app.portal_url("/api/instances")).json()) == ["extra", "vllm"]
        wait_for(lambda: client.get(app.api_url("/instances/extra/v1/models")).status_code == 200)
    assert "serving the model chosen through the API for `vllm`: acme/from-api" in app.output()
    app.stop()
    app.env["VLLM_MODEL"] = "acme/new-env"  # the user changed the template: the environment wins for `vllm`
    app.start()
    with app.client() as client:
        assert served(app, client, "/instances/vllm") == ["acme/new-env"]
        assert sorted(i["id"] for i in client.get(app.portal_url("/api/instances")).json()) == ["extra", "vllm"]


def test_a_config_saved_but_not_applied_before_the_manager_died_is_applied_when_it_is_back(boot):
    app = boot({"VLLM_MODEL": "acme/first"})
    with app.client(timeout=30) as client:
        assert put(app, client, "extra", model="acme/extra", wait=True).json()["result"] == "ready"
        # As if the manager died right after saving a swap of `vllm` and a delete of `extra`, before telling supervisor.
        file = app.root / "workspace/.appliance/instances.json"
        saved = json.loads(file.read_text())
        saved["instances"]["vllm"]["model"] = "acme/saved-only"
        del saved["instances"]["extra"]
        (file.parent / "next.json").write_text(json.dumps(saved))
        (file.parent / "next.json").replace(file)
        os.kill(int(app.supervisorctl("pid", "manager").stdout), signal.SIGKILL)
        app.wait_portal()
        wait_for(lambda: client.get(app.api_url("/v1/models")).status_code == 200
                 and served(app, client) == ["acme/saved-only"], 30)
        assert [i["id"] for i in client.get(app.portal_url("/api/instances")).json()] == ["vllm"]
        assert not (app.root / "etc/supervisor/conf.d/extra.conf").exists()
        assert "extra" not in app.supervisorctl("status").stdout
        gone = client.get(app.api_url("/instances/extra/v1/models"))
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "instance_not_found"
    assert len(engines(app)) == 1


def test_supervisord_not_answering_is_logged_once_and_in_words(tmp_path, capsys):
    manager = Manager(Settings(APPLIANCE_ROOT=str(tmp_path)))  # no supervisord behind this root

    async def a_few_rounds():
        monitor = asyncio.create_task(manager.monitor(interval=0.01))
        await asyncio.sleep(0.3)
        monitor.cancel()

    asyncio.run(a_few_rounds())
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("manager: router:")] == [  # no router either: said once
        "manager: router: no status (ConnectError: [Errno 2] No such file or directory); counts unknown until it "
        "answers"]
    assert [line for line in lines if not line.startswith("manager: router:")] == [
        f"manager: monitor: cannot reach supervisord at {manager.fx.supervisor.socket}: No such file or directory"]
