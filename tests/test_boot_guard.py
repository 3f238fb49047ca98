"""What a boot guards against: a dead boot's orphans, a second boot on a live root, careless settings, secrets
in the wrong processes and files, and a `vllm` of the user's shadowed by `make run`'s."""
from __future__ import annotations

import os
import signal
import ssl
import stat
import subprocess
import time
from pathlib import Path

import httpx

from tests.appliance import FAKES, REPO, Appliance, processes_with_env


def states(app) -> dict[str, str]:
    lines = app.supervisorctl("status").stdout.splitlines()
    return {line.split()[0]: line.split()[1] for line in lines if line.strip()}


def wait_for(condition, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} not met after {timeout}s")


def pid_of(app, program: str) -> int:
    return int(app.supervisorctl("pid", program).stdout.strip())


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdlines(app) -> list[str]:
    out = []
    for pid in processes_with_env(f"APPLIANCE_ROOT={app.root}".encode()):
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return out


def environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


# --- 12.7: orphans ----------------------------------------------------------------------------------------------
def test_a_boot_after_kill_9_of_supervisord_stops_what_it_left_and_comes_up_clean(boot):
    app = boot({"VLLM_MODEL": "acme/tiny-chat"})
    old = {name: pid_of(app, name) for name in ("caddy", "manager", "vllm")}
    app.process.send_signal(signal.SIGKILL)  # supervisord itself (the entrypoint execs it)
    app.process.wait(10)
    assert all(alive(pid) for pid in old.values())  # what a dead supervisord leaves: its programs, still running

    app.start(wait_engine=False)  # the same root and ports (the orphans may answer the first health check)
    wait_for(lambda: "stopping what it left" in app.output(), 30, "the boot's note on the leftovers")
    wait_for(lambda: not any(alive(pid) for pid in old.values()), 20, "the leftovers gone")
    app.wait_portal()
    app.wait_engine()
    running = wait_for(lambda: (s := states(app)) and all(s.get(p) == "RUNNING" for p in old) and s, 20, "RUNNING")
    manager = pid_of(app, "manager")
    time.sleep(3)  # a crash-loop ("address already in use") would show as a new pid or BACKOFF by now
    assert states(app)["manager"] == "RUNNING" and pid_of(app, "manager") == manager, running
    assert sum(" run --config " in line and "caddy" in line for line in cmdlines(app)) == 1  # one Caddy
    with app.client() as client:
        assert client.get(app.api_url("/v1/models")).status_code == 200


def test_a_second_boot_on_a_live_root_is_refused_and_the_first_keeps_running(boot):
    app = boot()
    before = {name: pid_of(app, name) for name in ("caddy", "manager")}
    second = subprocess.run([str(REPO / "entrypoint.sh")], env=app.env, capture_output=True, text=True, timeout=60,
                            start_new_session=True, check=False)
    assert second.returncode == 1
    assert f"an appliance is already running on {app.root}" in second.stderr
    assert {name: pid_of(app, name) for name in before} == before
    with app.client() as client:
        assert client.get(app.portal_url("/api/health")).status_code == 200


# --- 12.8: careless settings --------------------------------------------------------------------------------------
def test_auth_exclude_naming_the_portal_keeps_its_auth_unless_allowed(boot):
    app = boot(start=False)
    app.env["AUTH_EXCLUDE"] = str(app.portal_port)
    app.start()
    assert f"ERROR: AUTH_EXCLUDE names the portal's port {app.portal_port}" in app.output()
    with app.client(auth=False) as client:
        assert client.get(app.portal_url("/api/instances")).status_code == 401
    app.stop()
    app.env["ALLOW_OPEN_PORTAL"] = "true"
    app.start()
    assert "WARNING: AUTH_EXCLUDE opens the portal's port" in app.output()
    with app.client(auth=False) as client:
        assert client.get(app.portal_url("/api/instances")).status_code == 200


def test_a_portal_config_entry_on_the_managers_port_is_left_out_and_the_portal_comes_up(boot):
    app = boot(start=False)
    clash = f"localhost:{app.portal_internal}:{app.api_internal + 1}:/:Clash"  # Caddy would take the manager's port
    app.env["PORTAL_CONFIG"] += f"|{clash}"
    app.start()
    assert "ERROR: PORTAL_CONFIG entry 'Clash'" in app.output()
    manager = pid_of(app, "manager")
    time.sleep(3)
    assert states(app)["manager"] == "RUNNING" and pid_of(app, "manager") == manager
    with app.client() as client:
        assert client.get(app.portal_url("/api/health")).status_code == 200


# --- 12.9: secrets ------------------------------------------------------------------------------------------------
def test_admin_secrets_are_in_no_process_and_hf_token_only_where_needed(boot, tmp_path):
    token, password, hf = "admin-" + "t" * 30, "Pw-" + "q7Zx" * 6, "hf_" + "s" * 30
    script = tmp_path / "print-env.sh"
    script.write_text("env\necho END-OF-ENV\n")
    app = boot({"VLLM_MODEL": "acme/tiny-chat", "OPEN_BUTTON_TOKEN": token, "WEB_PASSWORD": password,
                "HF_TOKEN": hf, "API_KEYS": "inference-" + "k" * 30, "PROVISIONING_SCRIPT": str(script)},
               wait_engine=False)
    wait_for(lambda: "END-OF-ENV" in app.log("provisioning"), 60, "the script's env")
    app.wait_engine()
    log = app.log("provisioning")
    assert token not in log and password not in log and "inference-" not in log
    assert f"HF_TOKEN={hf}" in log  # the script counts as a download step (docs/security.md)

    holders = {}
    for pid in processes_with_env(f"APPLIANCE_ROOT={app.root}".encode()):
        env = environ(pid)
        text = "\0".join(f"{k}={v}" for k, v in env.items())
        assert token not in text and password not in text and "inference-" not in text, env
        if hf in text:
            holders[pid] = env.get("SUPERVISOR_PROCESS_NAME")
    # Not supervisord, Caddy or logforward (provisioning may still be exiting).
    assert set(holders.values()) - {"provisioning"} == {"manager", "vllm"}, holders

    assert (app.workspace / ".appliance/token").read_text().strip() == token  # the manager reads it there
    for path in [*(app.root / "etc").rglob("*"), *(app.root / "workspace").rglob("*"), *(app.root / "run").rglob("*")]:
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            if any(s.encode() in data for s in (token, password, hf)):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for conf in (app.root / "etc/supervisor/conf.d").glob("*.conf"):
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600, conf
    with app.client() as client:
        assert client.get(app.portal_url("/apps")).status_code == 200


# --- 12.11: the certificate names the public address ---------------------------------------------------------------
def test_the_certificate_names_the_public_address_and_verifies_there(boot):
    app = boot({"PUBLIC_IPADDR": "127.0.0.2"})  # any 127/8 address reaches this box
    context = ssl.create_default_context(cafile=str(app.cert))
    with httpx.Client(verify=context, headers={"Authorization": f"Bearer {app.token}"}) as client:
        assert client.get(f"https://127.0.0.2:{app.portal_port}/api/health").status_code == 200


# --- 12.12: make run leaves the user's vllm first ------------------------------------------------------------------
def test_make_run_keeps_the_users_vllm_before_its_engine_venv(tmp_path):
    engine_venv = tmp_path / "engine-venv"
    (engine_venv / "bin").mkdir(parents=True)
    decoy = engine_venv / "bin/vllm"
    decoy.write_text("#!/bin/sh\necho 'the engine venv vllm ran' >&2\nexit 3\n")
    decoy.chmod(0o755)
    wrapper = tmp_path / "make-run.sh"
    wrapper.write_text(f'#!/bin/sh\nexec make -s -C {REPO} run ENGINE_VENV={engine_venv} '
                       'APPLIANCE_ROOT="$APPLIANCE_ROOT"\n')
    wrapper.chmod(0o755)
    app = Appliance(tmp_path / "root", {"VLLM_MODEL": "acme/tiny-chat"}, entrypoint=wrapper)
    try:
        app.start(timeout=90)
        engine = environ(pid_of(app, "vllm"))["PATH"].split(os.pathsep)
        assert engine.index(str(FAKES)) < engine.index(str(engine_venv / "bin"))
        assert "the engine venv vllm ran" not in app.log("vllm")
    finally:
        if app.process and app.process.poll() is None:
            os.killpg(app.process.pid, signal.SIGTERM)  # make, its shell and supervisord
            app.process.wait(60)
        app.stop()
