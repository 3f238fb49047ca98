"""The install step the Dockerfile runs, into a temporary root, then the appliance booted from there."""
from __future__ import annotations

import os
import subprocess

from tests.appliance import REPO, Appliance


def test_install_into_a_root_then_boot_from_it(tmp_path):
    root = tmp_path / "image"
    done = subprocess.run([str(REPO / "scripts/install.sh"), "--root", str(root)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    home = root / "opt/appliance"
    assert os.access(home / "entrypoint.sh", os.X_OK)
    for tool in ("python", "supervisord", "supervisorctl", "caddy"):
        assert (home / ".venv/bin" / tool).exists(), tool

    app = Appliance(root, {"VLLM_MODEL": "acme/tiny-chat"}, entrypoint=home / "entrypoint.sh")
    try:
        app.start()
        with app.client() as client:
            assert client.get(app.portal_url("/api/health")).status_code == 200
            assert client.get(app.api_url("/v1/models")).json()["data"][0]["id"] == "acme/tiny-chat"
        with app.client(auth=False) as client:
            assert client.get(app.portal_url("/api/health")).status_code == 401
        # The programs run the installed copy, not the checkout.
        manager_conf = (root / "etc/supervisor/conf.d/manager.conf").read_text()
        assert f"command={home}/.venv/bin/python -m uvicorn" in manager_conf
        assert f"directory={home}" in manager_conf
    finally:
        app.stop()


def test_dockerfile_passes_hadolint():
    done = subprocess.run([str(REPO / ".venv/bin/hadolint"), "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
