"""Provisioning with the real appliance (supervisord, Caddy, manager): scripts, manifests, ordering, the API."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tests.appliance import REPO

EXAMPLES = REPO / "provisioning" / "examples"


def states(app) -> dict[str, str]:
    lines = app.supervisorctl("status").stdout.splitlines()
    return {line.split()[0]: line.split()[1] for line in lines if line.strip()}


def provisioning(app) -> dict:
    with app.client() as client:
        response = client.get(app.portal_url("/api/provisioning"))
        assert response.status_code == 200, response.text
        return response.json()


def wait_done(app, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = provisioning(app)
        if doc["status"] in ("succeeded", "failed", "skipped"):
            return doc
        time.sleep(0.3)
    raise TimeoutError(f"provisioning not done: {doc}\n{app.log('provisioning')}")


def started_ticks(stat: str) -> int:
    """A process's start time in clock ticks since the machine booted (/proc/PID/stat field 22)."""
    return int(stat.rsplit(")", 1)[1].split()[19])


def wait_instance(app, ready, name: str = "vllm", timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with app.client() as client:
            view = next((i for i in client.get(app.portal_url("/api/instances")).json() if i["id"] == name), None)
        if view and ready(view):
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"instance {name}: {view}")
        time.sleep(0.3)


def _eventually(read, texts, timeout: float) -> str:
    """supervisord copies a program's output to its log asynchronously: the record may be saved first."""
    deadline = time.monotonic() + timeout
    while True:
        text = read()
        if all(t in text for t in texts) or time.monotonic() > deadline:
            assert all(t in text for t in texts), (texts, text[-3000:])
            return text
        time.sleep(0.2)


def in_log(app, *texts: str, timeout: float = 10) -> str:
    return _eventually(lambda: app.log("provisioning"), texts, timeout)


def in_output(app, *texts: str, timeout: float = 10) -> str:
    return _eventually(app.output, texts, timeout)


def restart(app) -> None:
    app.stop()
    app.start()


def test_script_from_url_runs_once_then_only_when_changed(boot, loopback):
    loopback.files["hello.sh"] = (EXAMPLES / "hello.sh").read_bytes()
    app = boot({"PROVISIONING_SCRIPT": f"{loopback.url}/files/hello.sh"})
    doc = wait_done(app)
    assert doc["status"] == "succeeded" and doc["exit_code"] == 0, doc
    assert [s["name"] for s in doc["steps"]] == ["script"] and doc["steps"][0]["status"] == "succeeded"
    assert len(doc["script_sha256"]) == 64 and doc["started_at"] and doc["ended_at"]
    assert doc["log"].endswith("provisioning.log")
    runs = app.root / "workspace/provisioned/hello.runs"
    assert len(runs.read_text().splitlines()) == 1
    in_log(app, "hello from the provisioning script")
    in_output(app, "provisioning | ")  # live in docker logs / the portal's log stream too
    with app.client(auth=False) as client:  # behind auth like every route
        assert client.get(app.portal_url("/api/provisioning")).status_code == 401

    restart(app)  # unchanged: not run again
    doc = wait_done(app)
    assert doc["status"] == "skipped", doc
    assert len(runs.read_text().splitlines()) == 1
    in_log(app, "not run again")

    loopback.files["hello.sh"] += b"echo changed\n"  # changed: runs
    restart(app)
    doc = wait_done(app)
    assert doc["status"] == "succeeded" and len(runs.read_text().splitlines()) == 2, doc

    with app.client() as client:  # a forced re-run
        assert client.post(app.portal_url("/api/provisioning/rerun")).status_code == 202
    deadline = time.monotonic() + 30
    while len(runs.read_text().splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert wait_done(app)["status"] == "succeeded" and len(runs.read_text().splitlines()) == 3


def test_a_flaky_download_is_retried(boot, loopback):
    loopback.files["hello.sh"] = (EXAMPLES / "hello.sh").read_bytes()
    loopback.fail_first["/files/hello.sh"] = 2
    app = boot({"PROVISIONING_SCRIPT": f"{loopback.url}/files/hello.sh"})
    assert wait_done(app)["status"] == "succeeded"
    in_log(app, "retrying in")
    assert loopback.hits[("GET", "/files/hello.sh")] == 3


def test_failing_script_from_a_path_keeps_the_portal_and_engine_and_is_retried(boot, tmp_path):
    script = tmp_path / "setup.sh"
    script.write_text("echo about to fail\nexit 3\n")
    app = boot({"PROVISIONING_SCRIPT": str(script), "VLLM_MODEL": "acme/tiny-chat"}, wait_engine=False)
    doc = wait_done(app)
    assert doc["status"] == "failed" and doc["exit_code"] == 3, doc
    assert doc["steps"][0]["status"] == "failed" and "exited with 3" in doc["error"]
    in_log(app, "about to fail", "FAILED (exit code 3)")
    app.wait_engine()  # the engine still starts after a failure
    assert states(app)["provisioning"] == "EXITED"

    script.write_text("echo fixed\n")  # retried at the next boot, since it failed
    restart(app)
    doc = wait_done(app)
    assert doc["status"] == "succeeded", doc
    in_log(app, "fixed")


def test_engine_waits_for_provisioning_which_downloads_its_model_once(boot, loopback, tmp_path):
    loopback.models["acme/tiny-chat"] = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"w" * 4096}
    loopback.files["notes.txt"] = b"some notes\n"
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(f"""
models: [acme/tiny-chat]
files:
  - url: {loopback.url}/files/notes.txt
    dest: data/notes.txt
env:
  FROM_MANIFEST: hello
programs:
  - name: extra
    command: python3 -m http.server {{port}} --bind 127.0.0.1
apps:
  - "localhost:{{ext}}:{{port}}:/:Extra"
""")
    from tests.appliance import free_port
    port, ext = free_port(), free_port()
    manifest.write_text(manifest.read_text().replace("{port}", str(port)).replace("{ext}", str(ext)))
    script = tmp_path / "gated.sh"  # ends when the test creates $WORKSPACE/go
    script.write_text('test -d "$HF_HOME/hub/models--acme--tiny-chat"\n'
                      'for i in $(seq 300); do [ -e "$WORKSPACE/go" ] && break; sleep 0.1; done\n'
                      'cat /proc/self/stat > "$WORKSPACE/prov-end"\n')  # its last process: its start time
    app = boot({"PROVISIONING_MANIFEST": str(manifest), "PROVISIONING_SCRIPT": str(script),
                "VLLM_MODEL": "acme/tiny-chat", "HF_ENDPOINT": loopback.url}, wait_engine=False)
    conf = (app.root / "etc/supervisor/conf.d/vllm.conf").read_text()
    assert "autostart=false" in conf
    assert f"directory={app.root / 'workspace'}" in (app.root / "etc/supervisor/conf.d/extra.conf").read_text()
    record = json.loads((app.root / "workspace/.appliance/provisioning.json").read_text())
    assert record["engine_env"] == {"FROM_MANIFEST": "hello"}  # for engine.environment (the manager's renders)
    doc = provisioning(app)
    assert doc["pending"] and set(doc["waiting"]) == {"vllm", "extra"}, doc
    assert states(app)["vllm"] == "STOPPED" and states(app)["extra"] == "STOPPED"
    vllm = wait_instance(app, lambda i: i["state"] == "waiting")  # the manager's instance state says so
    assert "waiting for provisioning" in vllm["reason"]
    deadline = time.monotonic() + 30
    while provisioning(app)["steps"][-1]["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    doc = provisioning(app)
    assert [(s["name"], s["status"]) for s in doc["steps"]] == [
        ("files", "succeeded"), ("models", "succeeded"), ("script", "running")], doc
    assert states(app)["vllm"] == "STOPPED"  # still waiting, with the model already in the cache
    (app.root / "workspace/go").touch()
    doc = wait_done(app)
    assert doc["status"] == "succeeded", (doc, app.log("provisioning"))
    app.wait_engine()
    assert wait_instance(app, lambda i: i["state"] == "ready")
    provisioning_ended = started_ticks((app.root / "workspace/prov-end").read_text())
    engine_pid = int(app.supervisorctl("pid", "vllm").stdout)
    assert started_ticks(open(f"/proc/{engine_pid}/stat").read()) >= provisioning_ended
    log = in_log(app, "starting vllm, which waited for provisioning")
    assert "Fetching 2 files" in log  # huggingface_hub's progress, in the log the portal shows
    snapshot = app.root / "workspace/huggingface/hub/models--acme--tiny-chat/snapshots"
    assert any(snapshot.glob("*/model.safetensors"))
    assert (app.root / "workspace/data/notes.txt").read_text() == "some notes\n"
    assert sum(n for (m, p), n in loopback.hits.items() if m == "GET" and p.endswith("model.safetensors")) == 1
    assert "Extra" in (app.root / "etc/portal.yaml").read_text()
    deadline = time.monotonic() + 15
    while states(app).get("extra") != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert states(app)["extra"] == "RUNNING"
    with app.client() as client:  # the manifest's app, behind Caddy with TLS + auth
        assert client.get(app.url(ext, "/")).status_code == 200
    with app.client(auth=False) as client:
        assert client.get(app.url(ext, "/")).status_code == 401


def test_a_bad_manifest_runs_nothing_and_says_which_keys(boot, tmp_path):
    marker = tmp_path / "ran"
    script = tmp_path / "s.sh"
    script.write_text(f"touch {marker}\n")
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("pip:\n  - ok-package\n  - '--index-url=http://evil'\nmodel:\n  - x/y\n")
    app = boot({"PROVISIONING_MANIFEST": str(manifest), "PROVISIONING_SCRIPT": str(script)})
    doc = wait_done(app)
    assert doc["status"] == "failed" and doc["exit_code"] == 2, doc
    assert not marker.exists()
    assert "line 3: pip.1:" in doc["error"] and "line 4: model: unknown key" in doc["error"]
    in_log(app, "line 3: pip.1")
    in_output(app, "line 4: model")


def test_an_unreachable_url_after_a_success_keeps_the_success(boot, loopback):
    loopback.files["hello.sh"] = (EXAMPLES / "hello.sh").read_bytes()
    app = boot({"PROVISIONING_SCRIPT": f"{loopback.url}/files/hello.sh"})
    assert wait_done(app)["status"] == "succeeded"
    del loopback.files["hello.sh"]  # gone (404) at the next boot: the earlier success stands, nothing runs
    restart(app)
    doc = wait_done(app)
    assert doc["status"] == "skipped" and doc["exit_code"] == 0, doc
    in_log(app, "cannot be checked for changes")
    with app.client() as client:  # but a forced re-run needs the script, and says why it failed
        assert client.post(app.portal_url("/api/provisioning/rerun")).status_code == 202
    deadline = time.monotonic() + 30
    while provisioning(app)["status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.3)
    doc = provisioning(app)
    assert doc["status"] == "failed" and "HTTP 404" in doc["error"], doc


def test_provisioning_stopped_midway_is_recorded_and_runs_again_next_boot(boot, tmp_path):
    script = tmp_path / "long.sh"
    script.write_text('echo started >> "$WORKSPACE/long.runs"; sleep 60\n')
    app = boot({"PROVISIONING_SCRIPT": str(script), "VLLM_MODEL": "acme/tiny-chat"}, wait_engine=False)
    deadline = time.monotonic() + 30
    while not (app.root / "workspace/long.runs").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    with app.client() as client:  # the rerun refuses while it runs
        answer = client.post(app.portal_url("/api/provisioning/rerun"))
        assert answer.status_code == 409 and "running" in answer.json()["detail"]
    app.supervisorctl("stop", "provisioning")
    doc = provisioning(app)
    assert doc["status"] == "failed" and doc["exit_code"] == 143 and "stopped by signal 15" in doc["error"], doc
    assert doc["steps"][0]["status"] == "failed" and not doc["pending"]
    app.wait_engine()  # provisioning ended: the engine that waited starts
    app.stop()
    app.start(wait_engine=False)  # the engine waits again, for this run
    deadline = time.monotonic() + 30
    while len((app.root / "workspace/long.runs").read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (app.root / "workspace/long.runs").read_text().split() == ["started", "started"]


def test_env_from_a_boot_hook_reaches_the_engine_without_a_restart_when_the_manager_starts(boot):
    """The engine's env is rendered in one place: the manager's first reconcile finds nothing to replace."""
    app = boot({"VLLM_MODEL": "acme/tiny-chat"}, start=False)
    hooks = app.root / "workspace/boot.d"
    hooks.mkdir(parents=True)
    (hooks / "10-cache.env").write_text('HF_HOME="$WORKSPACE/other-cache"\nFROM_HOOK=yes\n')
    app.start()
    pid = app.supervisorctl("pid", "vllm").stdout.strip()
    environ = dict(item.split("=", 1) for item in
                   (Path("/proc") / pid / "environ").read_text().split("\0") if "=" in item)
    assert environ["HF_HOME"] == str(app.root / "workspace/other-cache") and environ["FROM_HOOK"] == "yes"
    wait_instance(app, lambda i: i["state"] == "ready")  # the manager is up and has reconciled
    assert "reconciled programs" not in app.log("manager") + app.output()
    assert app.supervisorctl("pid", "vllm").stdout.strip() == pid
