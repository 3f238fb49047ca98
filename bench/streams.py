"""Log streams: /api/health and /api/instances while 200 SSE streams follow a log written at 1,000 lines/s.

The booted appliance (Caddy with TLS and the token, the manager, no engine); the log is written straight into
its log folder. Baseline, same run: the same requests with the same log being written and no stream open.
The 200 streams come from 10 client addresses (127.0.0.1-10, 20 each: the cap per client) in a separate
process, so their reading does not slow the process that times the requests.
"""
from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.report import table, write_section
from tests.appliance import Appliance

CLIENTS, PER_CLIENT = 10, 20   # 200 streams
RATE = 1000                    # log lines per second
PHASE = 20.0                   # seconds of requests per phase
LINE = "INFO 11-24 02:00:00 [loggers.py:123] Engine 000: Avg prompt throughput: 0.0 tokens/s, Running: 0 reqs"


def write_log(path: Path, stop: threading.Event) -> None:
    """RATE lines a second, 10 at a time."""
    started, written = time.monotonic(), 0
    with path.open("a") as handle:
        while not stop.is_set():
            due = int((time.monotonic() - started) * RATE)
            if due > written:
                handle.write("".join(f"{LINE} {n}\n" for n in range(written, due)))
                handle.flush()
                written = due
            time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe(app: Appliance, pids: dict[str, int]) -> dict:
    """p50/p95 ms of /api/health and /api/instances, one request at a time for PHASE s; CPU of each process."""
    times: dict[str, list[float]] = {"/api/health": [], "/api/instances": []}
    failed = 0
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    with app.client(timeout=10) as client:
        while time.monotonic() - started < PHASE:
            for path, samples in times.items():
                begun = time.perf_counter()
                try:
                    ok = client.get(app.portal_url(path)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    samples.append((time.perf_counter() - begun) * 1000)
                else:
                    failed += 1
            time.sleep(0.02)
    wall = time.monotonic() - started
    result = {path: (statistics.median(s), statistics.quantiles(s, n=20)[18], len(s)) for path, s in times.items()}
    result["failed"] = failed
    result["cpu"] = {name: (cpu_seconds(pid) - cpu[name]) / wall * 100 for name, pid in pids.items()}
    return result


# --- the stream readers (a separate process: `python -m bench.streams readers URL TOKEN CERT`) ----------------
async def read_streams(url: str, token: str, cert: str) -> dict:
    stats = {"opened": 0, "refused": 0, "ended": 0, "errors": 0, "bytes": 0}
    verify = ssl.create_default_context(cafile=cert)
    stop, opened = asyncio.Event(), []

    async def reader(client: httpx.AsyncClient) -> None:
        last, first = None, True
        while not stop.is_set():
            try:
                headers = {"Last-Event-ID": last} if last else {}
                async with client.stream("GET", url, headers=headers) as response:
                    if response.status_code != 200:
                        stats["refused"] += 1
                        await asyncio.sleep(1)
                        continue
                    stats["opened"] += first
                    if first and stats["opened"] == CLIENTS * PER_CLIENT:
                        print("open", flush=True)
                        opened.append(time.monotonic())
                    first, tail = False, b""
                    async for chunk in response.aiter_raw():
                        stats["bytes"] += len(chunk)
                        tail = (tail + chunk)[-4096:]
                    stats["ended"] += 1  # dropped as too slow: go on from the last id, as an EventSource does
                    at = tail.rfind(b"id: ")
                    last = tail[at + 4:tail.index(b"\n", at)].decode() if at >= 0 else last
            except httpx.HTTPError:
                stats["errors"] += 1
                await asyncio.sleep(1)

    clients = [httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(verify=verify, local_address=f"127.0.0.{n + 1}"),
                                 headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(30),
                                 limits=httpx.Limits(max_connections=PER_CLIENT * 2))
               for n in range(CLIENTS)]
    tasks = [asyncio.create_task(reader(client)) for client in clients for _ in range(PER_CLIENT)]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until the bench says stop
    stop.set()
    stats["seconds"] = time.monotonic() - opened[0] if opened else 0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.aclose()
    return stats


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = Appliance(Path(tmp) / "root", {"VLLM_MODEL": ""})
        app.start()
        stop = threading.Event()
        try:
            pid = {name: int(app.supervisorctl("pid", name).stdout.strip()) for name in ("manager", "caddy")}
            log = app.root / "var/log/portal" / "busy.log"
            writer = threading.Thread(target=write_log, args=(log, stop))
            writer.start()
            time.sleep(1)
            baseline = probe(app, pid)
            readers = subprocess.Popen([sys.executable, "-m", "bench.streams", "readers",
                                        app.portal_url("/api/logs/busy/stream"), app.token, str(app.cert)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert readers.stdout.readline().strip() == "open", "the 200 streams did not open"
            streams = probe(app, {**pid, "readers": readers.pid})
            out, _ = readers.communicate("stop\n", timeout=60)
            delivered = json.loads(out.strip().splitlines()[-1])
        finally:
            stop.set()
            app.stop()
    rows = []
    for path in ("/api/health", "/api/instances"):
        (b50, b95, bn), (s50, s95, sn) = baseline[path], streams[path]
        rows.append([f"`GET {path}`", f"{b50:.1f} / {b95:.1f}", f"{s50:.1f} / {s95:.1f}",
                     f"**{s95 / b95:.1f}**", f"{bn} / {sn}"])
    cpu = [["manager", f"{baseline['cpu']['manager']:.0f}", f"{streams['cpu']['manager']:.0f}"],
           ["caddy", f"{baseline['cpu']['caddy']:.0f}", f"{streams['cpu']['caddy']:.0f}"],
           ["the 200 readers (client side)", "–", f"{streams['cpu']['readers']:.0f}"]]
    body = (f"{CLIENTS * PER_CLIENT} SSE streams (`GET /api/logs/busy/stream`, {CLIENTS} client addresses × "
            f"{PER_CLIENT}) follow a log written at {RATE} lines/s, through Caddy (TLS, bearer token); meanwhile "
            f"`/api/health` and `/api/instances` are requested one at a time for {PHASE:.0f} s. Baseline: the same "
            "requests while the same log is written and no stream is open. Target (issue 12): p95 under 200 ms "
            "with the 200 streams. Before the shared tail (each stream read the file on its own, commit 720256f) this "
            "benchmark measured p95 2863 ms (health) and 3283 ms (instances), 14 requests each in the 20 s, the "
            "manager at 77 % of a core.\n\n"
            + table(["request", "baseline p50 / p95 ms", "200 streams p50 / p95 ms", "p95 × baseline",
                     "requests (baseline / streams)"], rows)
            + f"\n\nFailed requests: {baseline['failed']} baseline, {streams['failed']} with the streams. "
            "CPU, % of one core over each phase:\n\n"
            + table(["process", "baseline", "200 streams"], cpu)
            + f"\n\nThe streams received {delivered['bytes'] / 1e6 / max(delivered['seconds'], 1):.1f} MB/s of "
            f"events in all ({RATE} lines/s to each of them); {delivered['ended']} were dropped as too "
            f"slow and resumed with Last-Event-ID, {delivered['refused']} reconnects were refused by the cap "
            f"(429), {delivered['errors']} failed.")
    write_section("streams", "Log streams", body, "make bench  # or: python -m bench streams")


if __name__ == "__main__":
    if sys.argv[1:2] == ["readers"]:
        print(json.dumps(asyncio.run(read_streams(*sys.argv[2:5]))), flush=True)
    else:
        main()
