"""A full log disk: supervisord says so once a minute per log file instead of a traceback per lost line
(issue 12, item 11), and everything keeps running."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.appliance import Appliance
from tests.manager.test_swap import wait_for


@pytest.fixture
def small_logs(tmp_path):
    root = tmp_path / "root"
    logs = root / "var/log/portal"
    logs.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(logs)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield root
    subprocess.run(["umount", "-l", str(logs)])


def test_a_full_log_disk_is_said_once_not_in_a_traceback_per_line(small_logs):
    app = Appliance(small_logs, {"VLLM_MODEL": "acme/chatty", "FAKE_VLLM_LOG_EVERY": "0.005"})  # 200 lines/s
    app.start()
    try:
        with open(small_logs / "var/log/portal/filler", "wb", buffering=0) as handle:  # fill every free byte
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        wait_for(lambda: "supervisord: cannot write" in app.output(), 30)
        time.sleep(2)  # an observation window: about 400 more lines the engine could not log
        output = app.output()
        assert "Traceback" not in output and "No space left on device" in output
        said = [line for line in output.splitlines() if line.startswith("supervisord: cannot write")]
        assert len({line.split(":")[1] for line in said}) == len(said)  # once per file, not once per line
        with app.client() as client:
            assert client.get(app.portal_url("/api/instances/vllm")).json()["state"] == "ready"
    finally:
        (small_logs / "var/log/portal/filler").unlink(missing_ok=True)
        app.stop()
