"""Proxy overhead: requests/s and latency through Caddy (auth, with and without TLS) vs straight to the engine.

The upstream is the stand-in engine; the load generator is wrk (Debian's package).
Two workloads: `GET /health`, which costs the upstream nothing (so every cycle
Caddy spends shows), and a streamed chat completion whose tokens arrive at an
engine's pace. Caddy's CPU time per request is read from /proc.
Streaming: time to first byte and the gap between chunks of a streamed chat
completion, through Caddy vs direct.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app import caddy_config
from app.settings import Settings
from bench.report import table, write_section
from tests.appliance import Appliance

CONNECTIONS = [1, 16, 64]
# Caddy's own route to the engine, added by add_direct_route: the appliance has none (its /instances/<id>/ go through
# the router, whose overhead is bench/router.py's).
DIRECT = VIA_CADDY = "/direct"
DURATION = "5s"
REPEATS = 3  # wrk runs per cell and path; the table shows the median run
TOKEN_DELAY = 0.01  # the stand-in's gap between streamed tokens, s
STREAM_TOKENS = 16  # the stand-in replies with at most 16 words
# wrk posts this streamed chat completion: STREAM_TOKENS tokens, TOKEN_DELAY apart.
STREAM_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""
STREAM_BODY = {"model": "acme/bench", "stream": True, "max_tokens": STREAM_TOKENS,
               "messages": [{"role": "user", "content": "one two three four five six seven eight " * 8}]}


def add_direct_route(app: Appliance, extra: dict[str, int] | None = None) -> None:
    """A Caddy route straight to the engine of `vllm` at DIRECT (and one per `extra` prefix to that loopback port),
    for the comparisons: appended to the API site's imported rules (after auth, before the router), then Caddy
    reloaded."""
    settings = Settings(APPLIANCE_ROOT=str(app.root))
    with settings.caddy_routes_file.open("a") as rules:
        for prefix, port in {DIRECT: app.engine_port(), **(extra or {})}.items():
            rules.write(f"handle_path {prefix}/* {{\n\treverse_proxy 127.0.0.1:{port} {{\n"
                        "\t\timport proxy_options\n\t}\n}\n")
    caddy = shutil.which("caddy") or str(Path(sys.executable).parent / "caddy")  # the venv's, as entrypoint.sh
    subprocess.run([caddy, "reload", "--config", str(settings.caddyfile), "--adapter", "caddyfile", "--address",
                    f"unix/{settings.caddy_admin_socket}"], check=True, capture_output=True, timeout=30,
                   env=caddy_config.caddy_environment(settings))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, token: str, script: Path | None = None) -> tuple[float, float, float, int]:
    """requests/s, p50 ms, p99 ms, requests completed."""
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", DURATION, "--latency",
                          "-H", f"Authorization: Bearer {token}", *(["-s", str(script)] if script else []), url],
                         capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses", out):
        raise SystemExit(f"wrk got error responses from {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    count = int(re.search(r"(\d+) requests in", out).group(1))

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return rps, percentile("50"), percentile("99"), count


def median_run(runs: list[tuple]) -> tuple:
    """The run with the median requests/s (its latencies with it)."""
    return sorted(runs)[len(runs) // 2]


def stream_timings(appliance: Appliance, url: str, runs: int = 30) -> tuple[float, float]:
    """p50 time to the first event and p50 time to the last event (ms) of a streamed chat completion."""
    firsts, lasts = [], []
    with appliance.client() as client:
        for _ in range(runs):
            started = time.perf_counter()
            arrivals = []
            with client.stream("POST", url, json=STREAM_BODY) as response:
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
    rows, stream_rows, results = [], [], {}
    streamed = f"streamed chat, {STREAM_TOKENS} tokens"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "stream.lua"
        script.write_text(STREAM_SCRIPT.format(body=json.dumps(json.dumps(STREAM_BODY))))
        workloads = [("`GET /health`", "/health", None),
                     (streamed, "/v1/chat/completions", script)]
        for label, https in (("TLS + auth", True), ("plain HTTP + auth", False)):
            app = Appliance(Path(tmp) / ("https" if https else "http"),
                            {"VLLM_MODEL": str(local_model(Path(tmp))), "VLLM_ARGS": "--served-model-name acme/bench",
                             "ENABLE_HTTPS": str(https).lower(), "FAKE_VLLM_TOKEN_DELAY": str(TOKEN_DELAY)})
            app.start()
            try:
                add_direct_route(app)
                direct = f"http://127.0.0.1:{app.engine_port()}"
                caddy = int(app.supervisorctl("pid", "caddy").stdout.strip())
                for workload, path, lua in workloads:
                    for connections in CONNECTIONS:
                        bases, ours, spent = [], [], 0.0
                        for _ in range(REPEATS):  # interleaved, so both paths see the same machine
                            bases.append(wrk(direct + path, connections, app.token, lua))
                            before = cpu_seconds(caddy)
                            ours.append(wrk(app.api_url(VIA_CADDY + path), connections, app.token, lua))
                            spent += cpu_seconds(caddy) - before
                        base, our = median_run(bases), median_run(ours)
                        per_request = spent / sum(run[3] for run in ours) * 1e6
                        results[label, workload, connections] = (our[0] / base[0], per_request)
                        rows.append([label, workload, connections, f"{base[0]:.0f}", f"{our[0]:.0f}",
                                     f"**{our[0] / base[0]:.2f}**", f"{base[1]:.2f} / {base[2]:.2f}",
                                     f"{our[1]:.2f} / {our[2]:.2f}", f"{per_request:.0f}"])
                base_first, base_last = stream_timings(app, f"{direct}/v1/chat/completions")
                ours_first, ours_last = stream_timings(app, app.api_url(VIA_CADDY + "/v1/chat/completions"))
                stream_rows.append([f"Caddy, {label}", f"{base_first:.2f}", f"{ours_first:.2f}",
                                    f"{ours_first - base_first:+.2f}", f"{base_last:.2f}", f"{ours_last:.2f}",
                                    f"{ours_last - base_last:+.2f}"])
            finally:
                app.stop()
    health_ratio, health_cpu = results["TLS + auth", "`GET /health`", 64]
    body = (f"wrk with 1 thread, {REPEATS} runs of {DURATION} per cell and path (the median run is shown), "
            "bearer token on every request, against the stand-in engine directly and "
            "through Caddy. `GET /health` costs the upstream nothing, so the whole of Caddy's cost shows; "
            f"the streamed chat completion sends {STREAM_TOKENS} tokens {TOKEN_DELAY * 1000:.0f} ms apart, "
            "the way an engine answers. Caddy CPU: Caddy's user + system time over the runs, per request "
            "(counted in 10 ms clock ticks, so coarse where few requests were made).\n\n"
            + table(["Caddy", "request", "connections", "direct req/s", "through Caddy req/s", "ratio",
                     "direct p50 / p99 ms", "Caddy p50 / p99 ms", "Caddy CPU µs/req"], rows)
            + f"\n\nStreamed chat completion ({STREAM_TOKENS} tokens, {TOKEN_DELAY * 1000:.0f} ms apart), "
              "30 runs each, p50 of the time from "
              "sending the request to the first and to the last `data:` event.\n\n"
            + table(["path", "direct first ms", "Caddy first ms", "added", "direct last ms", "Caddy last ms", "added"],
                    stream_rows)
            + "\n\nTargets: through Caddy at least 0.90 of direct req/s at 64 connections; added TTFB at most 2 ms p50."
            + f"\n\nReading it: with `GET /health` at 64 connections Caddy keeps {health_ratio:.2f} of direct. "
              f"There wrk, Caddy and the upstream share {os.cpu_count()} cores, and Caddy spends "
              f"{health_cpu:.0f} µs of CPU per request with TLS: one core of Caddy forwards about "
              f"{1e6 / health_cpu:,.0f} requests/s, and each of those cycles is taken from the upstream here. "
              f"An engine spends milliseconds or more on each request, so Caddy's share shrinks: with the streamed "
              f"completion at 64 connections Caddy keeps {results['TLS + auth', streamed, 64][0]:.2f} of direct "
              f"with TLS and {results['plain HTTP + auth', streamed, 64][0]:.2f} without.")
    write_section("proxy", "Proxy overhead (Caddy vs direct)", body, "make bench  # or: python -m bench proxy")


if __name__ == "__main__":
    main()
