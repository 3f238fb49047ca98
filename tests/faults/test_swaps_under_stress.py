"""Swaps under stress: the workspace full during a swap, and 20 concurrent swap requests on one instance."""
from __future__ import annotations

import concurrent.futures
import subprocess

import pytest

from tests.manager.test_swap import put, served, wait_for


@pytest.fixture
def small_workspace(tmp_path):
    """A 2 MiB tmpfs as the workspace, so it can really run out of space."""
    mount = tmp_path / "workspace"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_a_full_workspace_during_a_swap_gives_a_clear_error_and_keeps_the_model(boot, small_workspace):
    app = boot({"VLLM_MODEL": "acme/kept", "WORKSPACE": str(small_workspace)})
    state_file = small_workspace / ".appliance/instances.json"
    before = state_file.read_bytes()
    filler = small_workspace / "filler"
    with open(filler, "wb") as handle:  # fill every free byte
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with app.client(timeout=60) as client:
        answer = put(app, client, "vllm", model="acme/new-one-with-a-rather-long-name", args=["--seed", "1"] * 100,
                     wait=True)
        assert answer.status_code == 507, answer.text
        assert "cannot save the new configuration" in answer.text and "untouched" in answer.text
        assert served(app, client) == ["acme/kept"]
        assert state_file.read_bytes() == before
        assert "acme/kept" in (app.root / "etc/supervisor/conf.d/vllm.conf").read_text()
        filler.unlink()  # space again: the next swap works
        assert put(app, client, "vllm", model="acme/after", wait=True).json()["result"] == "ready"


def test_twenty_concurrent_swaps_end_in_the_last_accepted_one(boot):
    app = boot({"VLLM_MODEL": "acme/start"})
    models = [f"acme/m{n}" for n in range(20)]
    with app.client(timeout=60) as client:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda m: put(app, client, "vllm", model=m), models))
        assert all(a.status_code == 202 for a in answers)
        accepted = sorted(a.json()["accepted"] for a in answers)
        assert accepted == list(range(accepted[0], accepted[0] + 20))  # each accepted once, none lost
        last = max((a.json() for a in answers), key=lambda a: a["accepted"])["model"]
        final = wait_for(lambda: (i := client.get(app.portal_url("/api/instances/vllm")).json())["state"] == "ready"
                         and i["model"] == last and i, 60)
        assert final["model"] == last and served(app, client) == [last]
        assert last in (app.root / "workspace/.appliance/instances.json").read_text()
