"""Resident memory of the control plane (supervisord, logforward, Caddy, router, manager, gRPC bridge), idle and
under portal-like load with streamed completions through the router.

Baseline, same run: a bare Python interpreter (`python3 -c` sleeping), the floor
of any Python process; the control plane holds three of them plus Caddy.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.report import table, write_section
from tests.appliance import Appliance

CONTROL = ("supervisord", "logforward", "caddy", "router", "manager", "grpc-bridge")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def control_pids(app: Appliance) -> dict[str, int]:
    pids = {"supervisord": int((app.root / "run/appliance/supervisord.pid").read_text())}
    for name in CONTROL[1:]:
        pids[name] = int(app.supervisorctl("pid", name).stdout.strip())
    return pids


def portal_load(app: Appliance, stop: threading.Event) -> None:
    """What an open portal does: poll every 2 s-ish (here: as fast as it can) and tail a log."""
    paths = ["/api/health", "/api/stats", "/api/instances", "/api/logs/vllm/stream"]
    with app.client(timeout=5) as client:
        while not stop.is_set():
            for path in paths:
                try:
                    if path.endswith("/stream"):
                        with client.stream("GET", app.portal_url(path)) as response:
                            for _ in zip(range(3), response.iter_lines(), strict=False):
                                pass
                    else:
                        client.get(app.portal_url(path))
                except Exception:  # noqa: BLE001 (a route may not exist in this build; load is what matters)
                    pass


def inference_load(app: Appliance, stop: threading.Event) -> None:
    """Streamed chat completions through Caddy and the router, one after another."""
    body = {"stream": True, "max_tokens": 16, "messages": [{"role": "user", "content": "one two three " * 8}]}
    with app.client(timeout=30) as client:
        while not stop.is_set():
            with client.stream("POST", app.api_url("/v1/chat/completions"), json=body) as response:
                for _ in response.iter_lines():
                    pass


def main() -> None:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.5)
    baseline = rss_mib(bare.pid)
    bare.kill()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        model.mkdir()
        app = Appliance(Path(tmp) / "root", {"VLLM_MODEL": str(model), "FAKE_VLLM_LOG_EVERY": "0.05"})
        app.start()
        try:
            time.sleep(3)
            pids = control_pids(app)
            idle = {name: rss_mib(pid) for name, pid in pids.items()}
            stop = threading.Event()
            threads = [threading.Thread(target=portal_load, args=(app, stop)) for _ in range(4)]
            threads += [threading.Thread(target=inference_load, args=(app, stop)) for _ in range(8)]
            for thread in threads:
                thread.start()
            busy = dict.fromkeys(pids, 0.0)
            for _ in range(20):
                time.sleep(0.5)
                busy = {name: max(busy[name], rss_mib(pid)) for name, pid in pids.items()}
            stop.set()
            for thread in threads:
                thread.join()
        finally:
            app.stop()
    rows = [[name, f"{idle[name]:.1f}", f"{busy[name]:.1f}"] for name in CONTROL]
    total_idle, total_busy = sum(idle.values()), sum(busy.values())
    rows.append(["**total**", f"**{total_idle:.1f}**", f"**{total_busy:.1f}**"])
    rows.append(["bare Python interpreter (baseline)", f"{baseline:.1f}", ""])
    body = ("Resident memory (VmRSS, MiB). Busy: the peak over 10 s while four clients poll /api/health, "
            "/api/stats and /api/instances and tail a log over SSE that the engine writes 20 lines/s to, and eight "
            "clients stream chat completions through the router.\n\n"
            + table(["process", "idle MiB", "busy MiB"], rows)
            + f"\n\nThe control plane is {total_busy / baseline:.1f}× a bare interpreter when busy. "
            "Target: under 200 MiB.")
    write_section("memory", "Control-plane memory", body, "make bench  # or: python -m bench memory")


if __name__ == "__main__":
    main()
