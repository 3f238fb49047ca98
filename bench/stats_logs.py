"""Stats and logs: /api/stats with a fake NVML of 8 GPUs, and reading the last MiB of a 2 GB log.

Baselines, same run: /api/health (the cheapest route of the same app) for stats; the last MiB of a
1 MiB log for the log read, so the ratio shows whether the read grows with the file's size.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.report import table, write_section
from tests.fakes.nvml import FakeNVML

RUNS = 300


def timed(call, runs: int = RUNS) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def sparse_log(path: Path, size: int) -> None:
    with open(path, "wb") as handle:  # sparse: 2 GB on paper, no real disk used
        handle.truncate(size - 4096)
        handle.seek(size - 4096)
        handle.write(b"x" * 4095 + b"\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as monkeypatch:
        root = Path(tmp)
        monkeypatch.setenv("APPLIANCE_ROOT", str(root))
        FakeNVML(8).install(monkeypatch)
        from app import gpu
        from app.main import app
        from app.settings import get_settings
        get_settings.cache_clear()
        for folder in get_settings().folders():
            folder.mkdir(parents=True, exist_ok=True)
        sparse_log(get_settings().log_dir / "big.log", 2 * 1024**3)
        sparse_log(get_settings().log_dir / "small.log", 1024**2)
        with TestClient(app, base_url="http://127.0.0.1") as client:  # the manager answers a loopback Host only
            app.state.sampler.sample()
            assert len(client.get("/api/stats").json()["gpus"]) == 8
            health = timed(lambda: client.get("/api/health"))
            stats = timed(lambda: client.get("/api/stats"))
            sample = timed(app.state.sampler.sample, 100)
            small = timed(lambda: client.get("/api/logs/small", headers={"Range": f"bytes={1024**2 - 1048576}-"}), 100)
            big = timed(lambda: client.get("/api/logs/big", headers={"Range": f"bytes={2 * 1024**3 - 1048576}-"}), 100)
        gpu._state.update(ready=None, handles=[])
    rows = [
        ["GET /api/health (baseline)", f"{health[0]:.2f}", f"{health[1]:.2f}", "1.0"],
        ["GET /api/stats, 8 GPUs", f"{stats[0]:.2f}", f"{stats[1]:.2f}", f"{stats[0] / health[0]:.1f}"],
        ["one NVML sample of 8 GPUs (background thread)", f"{sample[0]:.2f}", f"{sample[1]:.2f}", "–"],
        ["last MiB of a 1 MiB log (baseline)", f"{small[0]:.2f}", f"{small[1]:.2f}", "1.0"],
        ["last MiB of a 2 GiB log", f"{big[0]:.2f}", f"{big[1]:.2f}", f"{big[0] / small[0]:.2f}"],
    ]
    body = ("Milliseconds, in-process (FastAPI's test client, no Caddy), a fake NVML with 8 GPUs. "
            "A request reads the sampler's last reading and never waits on NVML.\n\n"
            + table(["what", "p50 ms", "p99 ms", "× baseline"], rows)
            + "\n\nThe log read costs the same for 1 MiB and 2 GiB: it seeks, it does not scan.")
    write_section("stats_logs", "Stats and log reads", body, "make bench  # or: python -m bench stats_logs")


if __name__ == "__main__":
    main()
