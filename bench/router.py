"""Router overhead: through Caddy and HAProxy's fast path, through Caddy and the router alone, and through Caddy
straight to the engine, in the same run.

All three paths go through Caddy with auth: `/v1/...` is the appliance's own path (HAProxy on the API's port, which
sends a request for a model with one ready engine straight to it: the fast path), `/router/v1/...` a Caddy route to
the router's own port (what every request took before the fast path: the router reads `model` and streams), and
`/direct/v1/...` a Caddy route straight to the same engine; the bench adds the last two (in the API site's imported
rules, after auth). Load generator: wrk
(Debian's package), plain HTTP so that TLS (the same on both paths) does not take the CPU the comparison needs.
Workloads: a streamed chat completion (16 tokens, 10 ms apart, as an engine answers) and a small non-streamed
completion (the stand-in answers at once, so the whole of the router's cost shows). Also: the on-demand start
overhead (time to the first token of a request for a stopped model, minus the time the same engine takes to start
and answer by itself).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.proxy import (
    DIRECT,
    REPEATS,
    STREAM_BODY,
    STREAM_TOKENS,
    TOKEN_DELAY,
    add_direct_route,
    cpu_seconds,
    local_model,
    median_run,
    wrk,
)
from bench.report import table, write_section
from tests.appliance import FAKES, Appliance, free_port

ROUTER = "/router"  # the bench's Caddy route to the router's own port (ROUTER_PORT)

CONNECTIONS = [1, 16, 64]
SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""
SMALL_BODY = {"model": "acme/bench", "prompt": "hello there", "max_tokens": 4}
STARTS = 7
TTFT_RUNS = 100


def first_event_ms(client: httpx.Client, url: str, body: dict) -> float:
    started = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                return (time.perf_counter() - started) * 1000
    raise RuntimeError(f"no event from {url}")


def ttfts(app: Appliance, urls: list[str], runs: int = TTFT_RUNS) -> list[float]:
    """p50 time to the first event for each URL, the URLs taking turns (so both see the same moments of the box)."""
    times: list[list[float]] = [[] for _ in urls]
    with app.client() as client:
        for _ in range(runs):
            for i, url in enumerate(urls):
                times[i].append(first_event_ms(client, url, STREAM_BODY))
    return [statistics.median(t) for t in times]


def engine_alone_ms(model: Path, env: dict[str, str]) -> float:
    """The stand-in started by hand: from its start to the first event of a streamed completion."""
    port = free_port()
    started = time.perf_counter()
    engine = subprocess.Popen([str(FAKES / "vllm"), "serve", str(model), "--served-model-name", "acme/lazy",
                               "--host", "127.0.0.1", "--port", str(port)], env={**os.environ, **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=30) as client:
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.005)
            body = {**STREAM_BODY, "model": "acme/lazy"}
            first_event_ms(client, f"http://127.0.0.1:{port}/v1/chat/completions", body)
            return (time.perf_counter() - started) * 1000
    finally:
        engine.terminate()
        engine.wait()


def on_demand_ms(app: Appliance) -> float:
    """A stopped instance: from the request to its first event, through Caddy and the router."""
    with app.client(timeout=60) as client:
        client.post(app.portal_url("/api/instances/lazy/stop")).raise_for_status()
        while client.get(app.portal_url("/api/instances/lazy")).json()["state"] != "stopped":
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while next(r for r in json.loads((app.root / "run/appliance/routes.json").read_text())["routes"]
                   if r["id"] == "lazy")["phase"] != "stopped":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return first_event_ms(client, app.api_url("/v1/chat/completions"), {**STREAM_BODY, "model": "acme/lazy"})


def main() -> None:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    rows: list[list] = []
    results: dict[tuple, tuple[float, float]] = {}  # (workload, connections) -> (router / direct, fast / direct)
    cpu: dict[tuple, tuple[float, float]] = {}  # ... -> (router µs/req alone, HAProxy + router µs/req on the fast path)
    with tempfile.TemporaryDirectory() as tmp:
        scripts = {}
        for name, body in (("stream", STREAM_BODY), ("small", SMALL_BODY)):
            scripts[name] = Path(tmp) / f"{name}.lua"
            scripts[name].write_text(SCRIPT.format(body=json.dumps(json.dumps(body))))
        model = local_model(Path(tmp))
        router_port = free_port()
        env = {"VLLM_MODEL": str(model), "VLLM_ARGS": "--served-model-name acme/bench", "ENABLE_HTTPS": "false",
               "FAKE_VLLM_TOKEN_DELAY": str(TOKEN_DELAY), "ROUTER_PORT": str(router_port)}
        app = Appliance(Path(tmp) / "root", env)
        app.start()
        try:
            add_direct_route(app, {ROUTER: router_port})
            router = int(app.supervisorctl("pid", "router").stdout.strip())
            haproxy = int(app.supervisorctl("pid", "haproxy").stdout.strip())
            streamed = f"streamed chat, {STREAM_TOKENS} tokens"
            for label, path, lua in ((streamed, "/v1/chat/completions", scripts["stream"]),
                                     ("small completion, not streamed", "/v1/completions", scripts["small"])):
                for connections in CONNECTIONS:
                    bases, alones, fasts, spent_alone, spent_fast = [], [], [], 0.0, 0.0
                    for _ in range(REPEATS):  # interleaved, so the three paths see the same machine
                        bases.append(wrk(app.api_url(DIRECT + path), connections, app.token, lua))
                        before = cpu_seconds(router)
                        alones.append(wrk(app.api_url(ROUTER + path), connections, app.token, lua))
                        spent_alone += cpu_seconds(router) - before
                        before = cpu_seconds(router) + cpu_seconds(haproxy)
                        fasts.append(wrk(app.api_url(path), connections, app.token, lua))
                        spent_fast += cpu_seconds(router) + cpu_seconds(haproxy) - before
                    base, alone, fast = median_run(bases), median_run(alones), median_run(fasts)
                    per_alone = spent_alone / sum(run[3] for run in alones) * 1e6
                    per_fast = spent_fast / sum(run[3] for run in fasts) * 1e6
                    results[label, connections] = (alone[0] / base[0], fast[0] / base[0])
                    cpu[label, connections] = (per_alone, per_fast)
                    rows.append([label, connections, f"{base[0]:.0f}", f"{alone[0]:.0f}", f"{fast[0]:.0f}",
                                 f"{alone[0] / base[0]:.2f}", f"**{fast[0] / base[0]:.2f}**",
                                 f"{base[1]:.2f} / {base[2]:.2f}", f"{alone[1]:.2f} / {alone[2]:.2f}",
                                 f"{fast[1]:.2f} / {fast[2]:.2f}", f"{per_alone:.0f}", f"{per_fast:.0f}"])
            direct_first, alone_first, fast_first = ttfts(app, [app.api_url(DIRECT + "/v1/chat/completions"),
                                                                app.api_url(ROUTER + "/v1/chat/completions"),
                                                                app.api_url("/v1/chat/completions")])
            with app.client(timeout=60) as client:
                client.put(app.portal_url("/api/instances/lazy"), json={
                    "model": str(model), "served_model_name": "acme/lazy", "wait": True}).raise_for_status()
            alones_ms, demands = [], []
            for _ in range(STARTS):  # taking turns
                alones_ms.append(engine_alone_ms(model, {"FAKE_VLLM_TOKEN_DELAY": str(TOKEN_DELAY)}))
                demands.append(on_demand_ms(app))
            alone_ms, demand = statistics.median(alones_ms), statistics.median(demands)
        finally:
            app.stop()
    small = "small completion, not streamed"
    small64, stream64 = results[small, 64][1], results[streamed, 64][1]
    small_cpu = statistics.median(cpu[label, c][0] for label, c in cpu if label == small)
    fast_cpu = statistics.median(cpu[label, c][1] for label, c in cpu if label == small)
    meets = (stream64 >= 0.95 and fast_first - direct_first <= 1.0 and small64 >= 0.85 and (demand - alone_ms) < 300)
    below = [f"{results[small, c][1]:.2f} at {c}" for c in CONNECTIONS if c != 64 and results[small, c][1] < 0.85]
    smalls = " / ".join(f"{results[small, c][1]:.2f}" for c in CONNECTIONS)
    smalls_alone = " / ".join(f"{results[small, c][0]:.2f}" for c in CONNECTIONS)
    body = (f"wrk with 1 thread, {REPEATS} runs of 5 s per cell and path (the median run is shown), plain HTTP with "
            "the bearer token, on one appliance, the three paths taking turns: *direct* is a Caddy route straight "
            f"to the engine (`{DIRECT}/v1/...`), *router* a Caddy route to the router's own port "
            f"(`{ROUTER}/v1/...`: the router alone, as every request went before the fast path), *fast* the "
            "appliance's `/v1/...` (Caddy, then HAProxy, which sends `acme/bench`, a name with one ready engine, "
            "straight to it); the bench adds the first two routes. The streamed chat completion sends "
            f"{STREAM_TOKENS} tokens {TOKEN_DELAY * 1000:.0f} ms apart; the small completion is answered at once by "
            "the stand-in engine, so the whole cost of what sits in between shows. CPU: user + system time over the "
            "runs, per request (10 ms clock ticks: coarse), of the router alone, and of HAProxy and the router "
            "together on the fast path (the router reads HAProxy's log line per request).\n\n"
            + table(["request", "connections", "direct req/s", "router req/s", "fast req/s", "router ratio",
                     "fast ratio", "direct p50 / p99 ms", "router p50 / p99 ms", "fast p50 / p99 ms",
                     "router CPU µs/req", "HAProxy + router CPU µs/req"], rows)
            + f"\n\nTime to the first event of a streamed chat completion, p50 of {TTFT_RUNS} sequential runs "
              f"(the paths taking turns): direct {direct_first:.2f} ms, router alone {alone_first:.2f} ms "
              f"({alone_first - direct_first:+.2f} ms), fast path {fast_first:.2f} ms "
              f"(**{fast_first - direct_first:+.2f} ms**).\n\n"
              f"On-demand start, median of {STARTS}: a request for a stopped instance gets its first event after "
              f"{demand:.0f} ms; the same stand-in engine started by hand answers its first event {alone_ms:.0f} ms "
              f"after its start; the router and manager add **{demand - alone_ms:.0f} ms** (the manager's start "
              "through supervisor, and the router's own 50 ms readiness probe of the engine it started)"
              + (": below zero, the baseline (a process started from the bench and polled over fresh connections) "
                 "is the slower of the two, so read it as no overhead this bench can measure" if demand < alone_ms
                 else "") + ".\n\n"
              "Targets (issue 14), on the appliance's own path (the fast path): at least 0.95 of direct req/s for "
              "the stream at 64 connections, at most +1 ms time to first token p50, at least 0.85 for small "
              "requests (at 64 connections), on-demand overhead under 300 ms. "
            + ("All met on this run." if meets else
               f"Not all met on this run: stream at 64 {stream64:.2f}, small at 64 {small64:.2f}, "
               f"TTFT {fast_first - direct_first:+.2f} ms, on-demand {demand - alone_ms:.0f} ms.")
            + (f" Small requests at fewer connections: {', '.join(below)}, below 0.85 (one more hop's latency, "
               "which fewer connections hide less)." if below else "")
            + f" On {os.cpu_count()} cores wrk, Caddy, HAProxy, the router and the stand-in engine (itself Python) "
              "share the CPU, and other work on the machine takes its share too: read the figures as noisy.\n\n"
              f"Reading it: the router alone costs about {small_cpu:.0f} µs of CPU per small request (aiohttp server "
              "and client, reading `model`, metrics and the activity log), and reaches "
              f"{smalls_alone} of direct at {' / '.join(map(str, CONNECTIONS))} connections; the fast path costs "
              f"HAProxy and the router together about {fast_cpu:.0f} µs per request and reaches {smalls}. Where an "
              "engine works for each request, as with the streamed completion, neither shows much. A real engine "
              "spends milliseconds on even a small request, which the stand-in does not.")
    write_section("router", "Router overhead (Caddy + HAProxy's fast path, Caddy + router, Caddy to the engine)", body,
                  "python -m bench router")


if __name__ == "__main__":
    main()
