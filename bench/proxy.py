"""Proxy overhead: requests/s and latency through Caddy (auth, with and without TLS) vs straight to the engine.

The upstream is the stand-in engine; the load generator is wrk (Debian's package).
Streaming: time to first byte and the gap between chunks of a streamed chat
completion, through Caddy vs direct.
"""
from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import table, write_section
from tests.appliance import Appliance

CONNECTIONS = [1, 16, 64]
DURATION = "5s"


def wrk(url: str, connections: int, token: str) -> tuple[float, float, float]:
    """requests/s, p50 ms, p99 ms."""
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", DURATION, "--latency",
                          "-H", f"Authorization: Bearer {token}", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return rps, percentile("50"), percentile("99")


def stream_timings(appliance: Appliance, url: str, runs: int = 30) -> tuple[float, float]:
    """p50 time to the first event and p50 time to the last event (ms) of a streamed chat completion."""
    body = {"model": "acme/bench", "stream": True, "max_tokens": 20,
            "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten " * 2}]}
    firsts, lasts = [], []
    with appliance.client() as client:
        for _ in range(runs):
            started = time.perf_counter()
            arrivals = []
            with client.stream("POST", url, json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        arrivals.append(time.perf_counter() - started)
            firsts.append(arrivals[0] * 1000)
            lasts.append(arrivals[-1] * 1000)
    return statistics.median(firsts), statistics.median(lasts)


def local_model(folder: Path) -> Path:
    """A local model folder, so no Hub is needed (the stand-in engine only checks that it exists)."""
    model = folder / "bench-model"
    model.mkdir(exist_ok=True)
    return model


def main() -> None:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    rows, stream_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, https in (("Caddy, TLS + auth", True), ("Caddy, plain HTTP + auth", False)):
            app = Appliance(Path(tmp) / ("https" if https else "http"),
                            {"VLLM_MODEL": str(local_model(Path(tmp))), "VLLM_ARGS": "--served-model-name acme/bench",
                             "ENABLE_HTTPS": str(https).lower(), "FAKE_VLLM_TOKEN_DELAY": "0.005"})
            app.start()
            try:
                direct = f"http://127.0.0.1:{app.api_internal}"
                for connections in CONNECTIONS:
                    base = wrk(f"{direct}/health", connections, app.token)
                    ours = wrk(app.api_url("/health"), connections, app.token)
                    rows.append([label, connections, f"{base[0]:.0f}", f"{ours[0]:.0f}", f"{ours[0] / base[0]:.2f}",
                                 f"{base[1]:.2f} / {base[2]:.2f}", f"{ours[1]:.2f} / {ours[2]:.2f}"])
                base_first, base_last = stream_timings(app, f"{direct}/v1/chat/completions")
                ours_first, ours_last = stream_timings(app, app.api_url("/v1/chat/completions"))
                stream_rows.append([label, f"{base_first:.2f}", f"{ours_first:.2f}", f"{ours_first - base_first:+.2f}",
                                    f"{base_last:.2f}", f"{ours_last:.2f}", f"{ours_last - base_last:+.2f}"])
            finally:
                app.stop()
    body = ("`GET /health` of the stand-in engine, wrk with 1 thread for "
            f"{DURATION} per cell, bearer token on every request.\n\n"
            + table(["path", "connections", "direct req/s", "through Caddy req/s", "ratio",
                     "direct p50 / p99 ms", "Caddy p50 / p99 ms"], rows)
            + "\n\nStreamed chat completion (20 events, 5 ms apart), 30 runs each, p50 of the time from "
              "sending the request to the first and to the last `data:` event.\n\n"
            + table(["path", "direct first ms", "Caddy first ms", "added", "direct last ms", "Caddy last ms", "added"],
                    stream_rows)
            + "\n\nTargets: through Caddy at least 0.90 of direct req/s at 64 connections; added TTFB at most 2 ms p50.")
    write_section("proxy", "Proxy overhead (Caddy vs direct)", body, "make bench  # or: python -m bench proxy")


if __name__ == "__main__":
    main()
