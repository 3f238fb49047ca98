"""GET /metrics with 8 fake GPUs and 4 stand-in engines: its latency, and what it does to the manager's other
requests. Baseline, same run: GET /api/health, idle and while /metrics is scraped in a loop.

Straight to the manager's loopback port (no Caddy), so the figures are the manager's own.
"""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import httpx

from bench.report import table, write_section
from bench.stats_logs import timed
from tests.appliance import REPO, Appliance

RUNS = 200


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        models = []
        for n in range(4):  # local folders: the stand-in serves them, and no Hub is asked
            models.append(Path(tmp) / f"metrics-{n}")
            models[-1].mkdir()
        app = Appliance(Path(tmp) / "app", {"VLLM_MODEL": str(models[0]), "FAKE_NVML_GPUS": "8",
                                            "PYTHONPATH": str(REPO / "tests/fakes/nvml_site")})
        app.start()
        try:
            with app.client(timeout=60) as api:
                for n in (1, 2, 3):
                    answer = api.put(app.portal_url(f"/api/instances/metrics-{n}"),
                                     json={"model": str(models[n]), "gpus": [], "wait": True})
                    assert answer.json()["result"] == "ready", answer.text
            base = f"http://127.0.0.1:{app.portal_internal}"
            with httpx.Client(timeout=30) as client:
                body = client.get(f"{base}/metrics").text
                engines = len({line.split('instance="')[1].split('"')[0] for line in body.splitlines()
                               if line.startswith("vllm:num_requests_running")})
                gpus = sum(line.startswith("appliance_gpu_memory_total_bytes") for line in body.splitlines())
                health = timed(lambda: client.get(f"{base}/api/health"), RUNS)
                scrape = timed(lambda: client.get(f"{base}/metrics"), RUNS)
                stop = threading.Event()

                def scrape_loop():
                    with httpx.Client(timeout=30) as other:
                        while not stop.is_set():
                            other.get(f"{base}/metrics")
                loop = threading.Thread(target=scrape_loop)
                loop.start()
                try:
                    busy = timed(lambda: client.get(f"{base}/api/health"), RUNS)
                finally:
                    stop.set()
                    loop.join()
        finally:
            app.stop()
    (h50, h99), (s50, s99), (b50, b99) = health, scrape, busy
    rows = [["GET /api/health, idle (baseline)", f"{h50:.2f}", f"{h99:.2f}", "1.0"],
            [f"GET /metrics ({engines} engines, {gpus} GPUs, {len(body) // 1024} KiB)", f"{s50:.2f}", f"{s99:.2f}",
             f"{s50 / h50:.1f}"],
            ["GET /api/health while /metrics is scraped in a loop", f"{b50:.2f}", f"{b99:.2f}", f"{b50 / h50:.1f}"]]
    body_text = (f"Milliseconds, {RUNS} requests each, straight to the manager on loopback (no Caddy), 4 stand-in "
                 "engines and a fake NVML with 8 GPUs. The engines are scraped concurrently; parsing and rendering "
                 "run in a thread, so the manager's other requests wait only for their turn on the loop.\n\n"
                 + table(["request", "p50 ms", "p99 ms", "× baseline p50"], rows)
                 + "\n\nTarget: a scrape under 50 ms, and the manager's loop not blocked by it.")
    write_section("metrics", "Metrics scrape", body_text, "python -m bench metrics")


if __name__ == "__main__":
    main()
