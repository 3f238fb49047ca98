"""Memory of the control plane (supervisord, logforward, Caddy, HAProxy, router, manager with the gRPC bridge), idle and
under portal-like load with streamed completions through the router.

Two measures per process: RSS (resident, counting the pages it shares with others in full) and PSS (each shared page
divided among the processes that map it). The control plane's total is the sum of PSS: a sum of RSS counts the
Python interpreter's and libraries' shared pages once per process. Baseline, same run: a bare Python interpreter
(`python3 -c` sleeping), the floor of any Python process; the control plane holds four of them plus Caddy.
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

CONTROL = ("supervisord", "logforward", "caddy", "haproxy", "router", "manager")


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB, from the kernel's summary of the process's mappings."""
    kib = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(kib["Rss"].split()[0]) / 1024, int(kib["Pss"].split()[0]) / 1024


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
    baseline = memory_mib(bare.pid)[0]
    bare.kill()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        model.mkdir()
        app = Appliance(Path(tmp) / "root", {"VLLM_MODEL": str(model), "FAKE_VLLM_LOG_EVERY": "0.05"})
        app.start()
        try:
            time.sleep(3)
            pids = control_pids(app)
            idle = {name: memory_mib(pid) for name, pid in pids.items()}
            stop = threading.Event()
            threads = [threading.Thread(target=portal_load, args=(app, stop)) for _ in range(4)]
            threads += [threading.Thread(target=inference_load, args=(app, stop)) for _ in range(8)]
            for thread in threads:
                thread.start()
            busy = dict.fromkeys(pids, (0.0, 0.0))
            for _ in range(20):
                time.sleep(0.5)
                now = {name: memory_mib(pid) for name, pid in pids.items()}
                busy = {name: (max(busy[name][0], now[name][0]), max(busy[name][1], now[name][1])) for name in pids}
            stop.set()
            for thread in threads:
                thread.join()
        finally:
            app.stop()
    rows = [[name, *(f"{v:.1f}" for v in (*idle[name], *busy[name]))] for name in CONTROL]
    totals = [sum(m[i] for m in idle.values()) for i in (0, 1)] + [sum(m[i] for m in busy.values()) for i in (0, 1)]
    rows.append(["**total**", *(f"**{v:.1f}**" for v in totals)])
    rows.append(["bare Python interpreter (baseline)", f"{baseline:.1f}", "", "", ""])
    body = ("Memory in MiB: RSS (resident, shared pages counted in full in each process) and PSS (shared pages divided "
            "among the processes that map them; their sum is what the control plane takes from the box). Busy: the "
            "peak over 10 s while four clients poll /api/health, /api/stats and /api/instances and tail a log over "
            "SSE that the engine writes 20 lines/s to, and eight clients stream chat completions through the router."
            "\n\n" + table(["process", "idle RSS", "idle PSS", "busy RSS", "busy PSS"], rows)
            + f"\n\nBusy, the control plane takes {totals[3]:.0f} MiB (PSS). Its sum of RSS, {totals[2]:.0f} MiB, is "
            f"{totals[2] / baseline:.1f}× a bare interpreter's RSS. Target: under 200 MiB.")
    write_section("memory", "Control-plane memory", body, "make bench  # or: python -m bench memory")


if __name__ == "__main__":
    main()
