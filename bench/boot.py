"""Boot time: entrypoint start to the portal answering 200 through Caddy with auth, without an engine.

Baseline, same run: the manager alone (uvicorn, no supervisor, no Caddy, no
rendering) started by hand until it answers /api/health; the ratio says what
the whole boot costs on top of the one process it must start anyway.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.report import table, write_section
from tests.appliance import REPO, Appliance, free_port

RUNS = 5


def bare_manager() -> float:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "APPLIANCE_ROOT": tempfile.mkdtemp()})
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                time.sleep(0.02)
    finally:
        process.terminate()
        process.wait()


def appliance_boot(app: Appliance) -> float:
    started = time.perf_counter()
    app.start(wait_engine=False)
    elapsed = time.perf_counter() - started
    app.stop()
    return elapsed


def main() -> None:
    baseline = [bare_manager() for _ in range(RUNS)]
    first, restart = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(RUNS):
            app = Appliance(Path(tmp) / f"root{run}", {"VLLM_MODEL": ""})
            first.append(appliance_boot(app))     # new root: token, certificate, every folder
            restart.append(appliance_boot(app))   # same root again
    base = statistics.median(baseline)
    rows = [[name, f"{statistics.median(v):.2f}", f"{min(v):.2f}", f"{max(v):.2f}",
             f"{statistics.median(v) / base:.1f}"]
            for name, v in (("manager alone (baseline)", baseline), ("first boot", first), ("restart", restart))]
    body = (f"Seconds from starting `entrypoint.sh` until `GET /api/health` through Caddy (TLS, bearer token) "
            f"answers 200, with no engine; {RUNS} runs each.\n\n"
            + table(["boot", "median s", "min s", "max s", "× baseline"], rows)
            + "\n\nTarget: under 5 s.")
    write_section("boot", "Boot time", body, "make bench  # or: python -m bench boot")


if __name__ == "__main__":
    main()
