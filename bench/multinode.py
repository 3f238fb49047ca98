"""Two-node engine against one node: time to first token and tokens/s of the same tiny model, same run.

One node: one appliance serving the model (the real vLLM CPU build). Two nodes: a head and a worker appliance in
two network namespaces (tests/netns.py) serving it with pipeline parallel 2 in vLLM's multiprocessing multi-node
mode, each stage on its own core. Both are measured through Caddy with the token, with sequential
completions of a fixed length. On a CPU this shows what the network hop between the stages costs, not a speed-up.
Needs root (namespaces), Ray (RAY_BIN or .venv-ray) and the engine (ENGINE_VENV or .venv-engine).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import table, write_section
from tests.appliance import REPO, Appliance
from tests.netns import HEAD_ADDR, HEAD_FRONT, WORKER_ADDR, NsAppliance, two_boxes, unavailable

ENGINE_VENV = Path(os.environ.get("ENGINE_VENV", REPO / ".venv-engine"))
RAY_BIN = Path(os.environ.get("RAY_BIN", REPO / ".venv-ray" / "bin" / "ray"))
TOKEN = "multinode-bench-token-0123456789"
ARGS = "--max-model-len 512 --kv-cache-memory-bytes 134217728 --dtype float32 --served-model-name tiny"
REQUESTS, TOKENS = 12, 64
READY = 600


def build_model(folder: Path) -> Path:
    model = folder / "tiny"
    subprocess.run([str(ENGINE_VENV / "bin/python"), str(REPO / "tests/engine/tiny_model.py"), str(model),
                    "--name", "tiny"], check=True, capture_output=True, timeout=600)
    return model


def wait_ready(app: Appliance) -> None:
    deadline = time.monotonic() + READY
    with app.client() as client:
        while time.monotonic() < deadline:
            try:
                if client.get(app.portal_url("/api/instances/vllm")).json().get("state") == "ready":
                    return
            except Exception:  # noqa: BLE001 (keep waiting)
                pass
            time.sleep(2)
    raise TimeoutError(f"engine not ready after {READY} s:\n{app.log('vllm')[-3000:]}")


def measure(app: Appliance) -> dict:
    """Sequential completions, each with its own prompt (no prefix-cache hits): time to first token is the latency of
    a one-token completion; tokens/s is TOKENS over the latency of a TOKENS-token one (ignore_eos). Streamed chunks
    are not timed: a fast engine coalesces tokens into few chunks."""
    def latency(i: int, tokens: int) -> float:
        body = {"model": "tiny", "prompt": f"request {i} of the bench: one two three", "max_tokens": tokens,
                "ignore_eos": True, "temperature": 0}
        started = time.perf_counter()
        answer = client.post(app.api_url("/v1/completions"), json=body)
        answer.raise_for_status()
        assert answer.json()["usage"]["completion_tokens"] == tokens
        return time.perf_counter() - started

    with app.client(timeout=300) as client:
        latency(-1, TOKENS)  # warm
        first = [latency(i, 1) for i in range(REQUESTS)]
        whole = [latency(REQUESTS + i, TOKENS) for i in range(REQUESTS)]
    return {"ttft": statistics.median(first), "rate": TOKENS / statistics.median(whole),
            "whole": statistics.median(whole)}


def one_node(model: Path, root: Path) -> dict:
    app = Appliance(root / "single", {"OPEN_BUTTON_TOKEN": TOKEN, "VLLM_MODEL": str(model), "VLLM_ARGS": ARGS,
                                      "HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"},
                    path_prefix=[ENGINE_VENV / "bin"])
    app.start(timeout=120)
    try:
        wait_ready(app)
        return measure(app)
    finally:
        app.stop(check=False)


def two_nodes(model: Path, root: Path) -> dict:
    common = {"OPEN_BUTTON_TOKEN": TOKEN, "MULTINODE_MODE": "mp", "RAY_BIN": str(RAY_BIN), "HF_HUB_OFFLINE": "1",
              "VLLM_MODEL": str(model), "VLLM_ARGS": f"{ARGS} -pp 2"}
    resources = "--num-cpus 1 --object-store-memory 80000000"
    with two_boxes() as (head_ns, worker_ns):
        head = NsAppliance(root / "head", {
            **common, "APPLIANCE_ROLE": "head", "RAY_NODE_IP": HEAD_ADDR, "PUBLIC_IPADDR": HEAD_FRONT,
            "VLLM_CPU_OMP_THREADS_BIND": "0",
            "RAY_ARGS": f"--head --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 28265 {resources}"},
            ns=head_ns, address=HEAD_FRONT, path_prefix=[ENGINE_VENV / "bin"])
        worker = NsAppliance(root / "worker", {
            **common, "APPLIANCE_ROLE": "worker", "RAY_NODE_IP": WORKER_ADDR, "RAY_ADDRESS": f"{HEAD_ADDR}:6379",
            "VLLM_CPU_OMP_THREADS_BIND": "1", "RAY_ARGS": resources},
            ns=worker_ns, address=None, path_prefix=[ENGINE_VENV / "bin"])
        try:
            head.start(timeout=120)
            worker.start(timeout=120)
            wait_ready(head)
            return measure(head)
        finally:
            worker.stop(check=False)
            head.stop(check=False)


def main() -> None:
    reason = unavailable() or (None if RAY_BIN.exists() else f"Ray is not installed ({RAY_BIN})")
    if reason:
        print(f"multinode: skipped: {reason}")
        return
    with tempfile.TemporaryDirectory(prefix="bench-mn-") as folder:
        root = Path(folder)
        model = build_model(root)
        single = one_node(model, root)
        double = two_nodes(model, root)
    rows = [["one node (1 core)", f"{single['ttft'] * 1000:.0f}", f"{single['whole'] * 1000:.0f}",
             f"{single['rate']:.0f}", "1.00"],
            ["two nodes, `-pp 2` over a veth pair (1 core each)", f"{double['ttft'] * 1000:.0f}",
             f"{double['whole'] * 1000:.0f}", f"{double['rate']:.0f}", f"{double['rate'] / single['rate']:.2f}"]]
    body = (f"The same tiny Llama (tests/engine/tiny_model.py, 2 layers) on the real vLLM CPU build, through Caddy "
            f"with the token, sequential completions with distinct prompts (medians of {REQUESTS}): time to first "
            f"token = the latency of a 1-token completion; tokens/s = {TOKENS} / the latency of a {TOKENS}-token one "
            "(`ignore_eos`). Two "
            "nodes are a head and a worker appliance in two network namespaces joined by a veth pair, in vLLM's "
            "multiprocessing multi-node mode (`MULTINODE_MODE=mp`), one pipeline stage each. On a CPU this is the "
            "cost of the hop between the stages (every token crosses it), not a speed-up: multi-node serving is for "
            "a model that does not fit one box.\n\n"
            + f"Per token: {single['whole'] / TOKENS * 1000:.1f} ms on one node, {double['whole'] / TOKENS * 1000:.1f} "
            f"ms on two: the hop adds about {(double['whole'] - single['whole']) / TOKENS * 1000:.1f} ms to every "
            "decode step (with one request in flight the two stages take turns).\n\n"
            + table(["engine", "time to first token (ms)", f"{TOKENS} tokens (ms)", "tokens/s", "tokens/s vs one node"],
                    rows))
    write_section("multinode", "Multi-node", body, "python -m bench multinode  # root; RAY_BIN, ENGINE_VENV")


if __name__ == "__main__":
    main()
