"""Swap overhead: PUT-to-ready through the manager minus the time the same engine needs when started directly.

Same run, same machine: the stand-in engine (5 swaps), and the real vLLM CPU build with two tiny models
(4 swaps) when $ENGINE_VENV holds it.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.report import table, write_section
from tests.appliance import FAKES, REPO, Appliance, free_port

ENGINE_VENV = Path(os.environ.get("ENGINE_VENV", REPO / ".venv-engine"))
ENGINE_ARGS = ["--max-model-len", "256", "--kv-cache-memory-bytes", "134217728", "--dtype", "float32",
               "--enforce-eager"]


def direct_start(vllm: Path, model: str, args: list[str], name: str, timeout: float,
                 hub: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Seconds from starting `vllm serve` by hand until /v1/models lists the model, then from SIGTERM until its
    last process is gone (a swap waits for that too)."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([str(vllm), "serve", model, "--host", "127.0.0.1", "--port", str(port),
                                "--served-model-name", name, *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "HF_ENDPOINT": hub, **(env or {})})
    try:
        while time.perf_counter() - started < timeout:
            try:
                if any(m["id"] == name for m in
                       httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).json()["data"]):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        else:
            raise TimeoutError(f"{model} not ready after {timeout}s")
        ready = time.perf_counter() - started
    finally:
        stopping = time.perf_counter()
        os.killpg(process.pid, 15)
        process.wait()
        while group_alive(process.pid):  # the engine core outlives the API server by a moment
            time.sleep(0.01)
    return ready, time.perf_counter() - stopping


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def swap(app: Appliance, client: httpx.Client, model: str, name: str, args: list[str], timeout: float) -> float:
    """Seconds from PUT to the answer that the new engine is ready."""
    started = time.perf_counter()
    answer = client.put(app.portal_url("/api/instances/vllm"), json={
        "model": model, "args": args, "served_model_name": name, "wait": True, "timeout": timeout})
    assert answer.json()["result"] == "ready", answer.text
    return time.perf_counter() - started


def spread(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} ({min(times):.2f}–{max(times):.2f})"


def measure(label: str, vllm_bin: Path, models: list[tuple[str, str]], args: list[str], timeout: float,
            tmp: Path) -> tuple[list, str]:
    """The table row, and a sentence on how much the engine's own start varies."""
    app = Appliance(tmp / label.replace(" ", "-"),
                    {"VLLM_MODEL": models[-1][0],
                     "VLLM_ARGS": " ".join(args + ["--served-model-name", models[-1][1]])},
                    path_prefix=[vllm_bin])
    app.start(timeout=timeout)
    direct, exits, through = [], [], []
    try:
        model, name = models[0]
        hub = app.env["HF_ENDPOINT"]  # the appliance's engine has the same (unreachable) hub: neither waits on it
        direct_start(vllm_bin / "vllm", model, args, name, timeout, hub)  # untimed: neither side pays for cold caches
        with app.client(timeout=timeout + 30) as client:
            for model, name in models:  # alternated, so a drift of the machine's speed hits both sides alike
                app.supervisorctl("stop", "vllm")  # both starts have the cores to themselves
                start, exit_ = direct_start(vllm_bin / "vllm", model, args, name, timeout, hub)
                direct.append(start)
                exits.append(exit_)
                through.append(swap(app, client, model, name, args, timeout))
    finally:
        app.stop()
    base, ours = statistics.median(direct), statistics.median(through)
    row = [label, len(models), spread(direct), spread(through), f"{ours - base:+.2f}", f"{ours / base:.2f}",
           spread(exits)]
    return row, f"{label[0].upper() + label[1:]}: its own start varies by {max(direct) - min(direct):.2f} s."


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local = []
        for n in range(5):
            (tmp / f"m{n}").mkdir()
            local.append((str(tmp / f"m{n}"), f"stand-in-{n}"))
        row, note = measure("stand-in engine", FAKES, local, [], 60, tmp)
        rows.append(row)
        notes = [note]
        if (ENGINE_VENV / "bin/vllm").exists():
            tiny = []
            for name, seed in (("tiny-a", 0), ("tiny-b", 1)):
                subprocess.run([str(ENGINE_VENV / "bin/python"), str(REPO / "tests/engine/tiny_model.py"),
                                str(tmp / name), "--name", name, "--seed", str(seed)], check=True, capture_output=True)
                tiny.append((str(tmp / name), name))
            row, note = measure("real vLLM (CPU), tiny model", ENGINE_VENV / "bin", tiny * 2, ENGINE_ARGS, 600, tmp)
            rows.append(row)
            notes.append(note)
    body = ("Median seconds (min–max), after one untimed start that warms the file caches. Direct: `vllm serve` "
            "started by hand until `/v1/models` lists the model. Swap: `PUT /api/instances/vllm` with `wait=true` "
            "until it answers ready (rewrite the program, start the engine, health checks). Direct starts and swaps "
            "alternate, and the appliance's engine is stopped before each pair, so both starts have the cores to "
            "themselves. Exit: from SIGTERM to the engine's last process gone, which a swap away from a running "
            "engine waits for as well.\n\n"
            + table(["engine", "swaps", "direct start s", "swap s", "overhead s", "ratio", "exit s"], rows)
            + "\n\nTarget: under 0.5 s of overhead. " + " ".join(notes))
    write_section("swap", "Swap overhead", body, "make bench  # or: python -m bench swap")


if __name__ == "__main__":
    main()
