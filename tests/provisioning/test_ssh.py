"""PUBLIC_KEY: the appliance's own sshd, live (a real sshd under supervisord, a real ssh client)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import httpx
import pytest

from app.provisioning.sshd import sshd_binary
from tests.appliance import free_port


def ssh_argv(tmp_path, port: int, *extra: str, identity: str = "id") -> list[str]:
    return ["ssh", "-p", str(port), "-i", str(tmp_path / identity), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "-o", "ConnectTimeout=5", *extra, "root@127.0.0.1"]


def wait_ssh(tmp_path, port: int, timeout: float = 20) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run([*ssh_argv(tmp_path, port), "echo", "hello from $(hostname)"],
                                capture_output=True, text=True, timeout=15)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_sshd_accepts_only_public_key_forwards_internal_ports_and_keeps_its_host_key(boot, tmp_path):
    if not (sshd_binary() and shutil.which("ssh") and shutil.which("ssh-keygen")):
        pytest.skip("openssh-server / openssh-client not installed (`make test` installs them)")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root (privilege separation), as in the image")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    port = free_port()
    app = boot({"PUBLIC_KEY": (tmp_path / "id.pub").read_text().strip(), "SSH_PORT": str(port)})

    result = wait_ssh(tmp_path, port)
    assert result.returncode == 0, (result.stderr, app.log("sshd"))
    assert result.stdout.startswith("hello from ")
    host_key = (app.root / "workspace/.appliance/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]
    assert host_key in (tmp_path / "known_hosts").read_text()

    other = subprocess.run(ssh_argv(tmp_path, port, identity="other") + ["true"], capture_output=True, text=True,
                           timeout=15)
    assert other.returncode == 255 and "Permission denied" in other.stderr  # a key not in PUBLIC_KEY
    password = subprocess.run(ssh_argv(tmp_path, port, "-o", "PreferredAuthentications=password,keyboard-interactive",
                                       "-o", "PubkeyAuthentication=no") + ["true"],
                              capture_output=True, text=True, timeout=15)
    assert password.returncode == 255 and "Permission denied" in password.stderr

    local = free_port()  # forward the manager's internal port: no Caddy, no auth, by design
    tunnel = subprocess.Popen(ssh_argv(tmp_path, port, "-N", "-o", "ExitOnForwardFailure=yes",
                                       "-L", f"{local}:127.0.0.1:{app.portal_internal}"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, answer = time.monotonic() + 15, None
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{local}/api/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert answer is not None and answer.json() == {"status": "ok"}
    finally:
        tunnel.terminate()
        tunnel.wait(10)

    taken = boot({"PUBLIC_KEY": (tmp_path / "id.pub").read_text().strip(), "SSH_PORT": str(port)})
    assert f"port {port} is already served" in taken.output() and "sshd" not in taken.supervisorctl("status").stdout
    taken.stop()

    app.stop()  # the host key is generated once and kept: the client sees the same one after a restart
    app.start()
    result = wait_ssh(tmp_path, port)
    assert result.returncode == 0, (result.stderr, app.log("sshd"))
    assert (app.root / "workspace/.appliance/ssh/ssh_host_ed25519_key.pub").read_text().split()[1] == host_key
