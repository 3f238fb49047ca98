"""Roles (APPLIANCE_ROLE) on booted appliances with the stand-in engine: a head and a worker in two network
namespaces forming a real Ray cluster with token auth, the 409 for an engine larger than the cluster, the worker's
own page, and the refusal of a cluster on a public address."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.appliance import REPO
from tests.netns import HEAD_ADDR, HEAD_FRONT, WORKER_ADDR, NsAppliance, two_boxes, unavailable

RAY_BIN = Path(os.environ.get("RAY_BIN", REPO / ".venv-ray" / "bin" / "ray"))
TOKEN = "cluster-test-token-0123456789"
RESOURCES = "--num-cpus 1 --num-gpus 2 --object-store-memory 80000000"


def wait_for(condition, timeout: float, what: str):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 (shown if it never comes)
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{what} not after {timeout:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable() or (None if RAY_BIN.exists() else f"Ray is not installed ({RAY_BIN}; set RAY_BIN)")
    if reason:
        pytest.skip(reason)
    common = {"OPEN_BUTTON_TOKEN": TOKEN, "RAY_BIN": str(RAY_BIN)}
    with two_boxes() as (head_ns, worker_ns):
        head = NsAppliance(tmp_path_factory.mktemp("head"), {
            **common, "APPLIANCE_ROLE": "head", "RAY_NODE_IP": HEAD_ADDR, "PUBLIC_IPADDR": HEAD_FRONT,
            "RAY_ARGS": f"--head --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 28265 {RESOURCES}"},
            ns=head_ns, address=HEAD_FRONT)
        worker = NsAppliance(tmp_path_factory.mktemp("worker"), {
            **common, "APPLIANCE_ROLE": "worker", "RAY_NODE_IP": WORKER_ADDR, "RAY_ADDRESS": f"{HEAD_ADDR}:6379",
            "RAY_ARGS": RESOURCES}, ns=worker_ns, address=None)
        try:
            head.start(timeout=90)
            worker.start(timeout=90)
            with head.client() as client:
                wait_for(lambda: len([n for n in client.get(head.portal_url("/api/cluster")).json()["nodes"]
                                      if n["alive"]]) == 2, 120, "two alive nodes")
            yield head, worker
        finally:
            errors = []
            for box in (worker, head):
                try:
                    box.stop()
                except AssertionError as exc:
                    errors.append(str(exc))
            assert not errors, errors


def test_head_and_worker_form_a_ray_cluster_shown_by_the_api_and_the_portal(cluster):
    head, worker = cluster
    with head.client() as client:
        view = client.get(head.portal_url("/api/cluster")).json()
        page = client.get(head.portal_url("/cluster"))
    assert view["role"] == "head" and view["error"] is None and view["gpus"] == 4
    assert {(n["ip"], n["head"], n["gpus"]) for n in view["nodes"]} == {(HEAD_ADDR, True, 2), (WORKER_ADDR, False, 2)}
    assert page.status_code == 200 and 'id="cluster-nodes"' in page.text and "/static/cluster.js" in page.text
    assert "APPLIANCE_ROLE=worker" in worker.output() and f"joining the Ray head at {HEAD_ADDR}:6379" in worker.output()


def test_ray_refuses_a_node_without_the_clusters_token(cluster):
    head, _ = cluster
    probe = subprocess.run(
        ["ip", "netns", "exec", head.ns, str(RAY_BIN.parent / "python"), "-c",
         f"import ray; ray.init(address='{HEAD_ADDR}:6379'); print(len(ray.nodes()))"],
        env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-cluster-token-000000"},
        capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0, probe.stdout
    assert "token" in (probe.stdout + probe.stderr).lower()


def test_the_ray_dashboard_is_behind_caddy_with_auth(cluster):
    head, _ = cluster
    assert "Ray Dashboard" in (head.root / "etc/portal.yaml").read_text()
    with head.client(auth=False) as anonymous:
        assert anonymous.get(head.url(8265, "/api/v0/nodes")).status_code == 401


def test_an_engine_larger_than_the_cluster_is_refused_before_anything_starts(cluster):
    head, _ = cluster
    with head.client(timeout=60) as client:
        too_big = client.put(head.portal_url("/api/instances/big"), json={"model": "acme/tiny-chat", "args": "-tp 8"})
        assert too_big.status_code == 409, too_big.text
        assert "needs 8 GPUs" in too_big.json()["detail"] and "the cluster has 4" in too_big.json()["detail"]
        assert client.get(head.portal_url("/api/instances/big")).status_code == 404
        fits = client.put(head.portal_url("/api/instances/fits"),
                          json={"model": "acme/tiny-chat", "args": "-tp 2 -pp 2", "wait": True})
        assert fits.status_code == 200 and fits.json()["result"] == "ready", fits.text
        command = fits.json()["command"]
        assert command[1:3] == ["-m", "app.cluster_guard"] and "--distributed-executor-backend" in command
        assert client.delete(head.portal_url("/api/instances/fits")).status_code == 200


def test_a_worker_shows_whose_worker_it_is_and_runs_no_engine(boot):
    worker = boot({"APPLIANCE_ROLE": "worker", "RAY_NODE_IP": "127.0.0.1", "RAY_ADDRESS": "10.9.9.9:6379",
                   "RAY_BIN": str(RAY_BIN) if RAY_BIN.exists() else "/bin/true", "VLLM_MODEL": "acme/tiny-chat"},
                  wait_engine=False)
    with worker.client() as client:
        page = client.get(worker.portal_url("/"), headers={"Accept": "text/html"})
        refused = client.put(worker.portal_url("/api/instances/x"), json={"model": "acme/tiny-chat"})
        instances = client.get(worker.portal_url("/api/instances")).json()
    assert page.status_code == 200 and "worker of the Ray head at" in page.text and "10.9.9.9:6379" in page.text
    assert 'id="worker-gpus"' in page.text
    assert refused.status_code == 409 and "worker of the Ray head at 10.9.9.9:6379" in refused.json()["detail"]
    assert instances == []
    assert "VLLM_MODEL is ignored on a worker" in worker.output()


@pytest.mark.parametrize("env,message", [
    ({"APPLIANCE_ROLE": "head", "RAY_NODE_IP": "8.8.8.8"}, "RAY_NODE_IP 8.8.8.8, a public address"),
    ({"APPLIANCE_ROLE": "head"}, "APPLIANCE_ROLE=head needs RAY_NODE_IP"),
    ({"APPLIANCE_ROLE": "worker", "RAY_NODE_IP": "10.0.0.2"}, "RAY_ADDRESS '' must be HOST:PORT"),
])
def test_a_cluster_open_to_the_internet_or_unformed_stops_the_boot(boot, env, message):
    app = boot({**env, "RAY_BIN": "/bin/true"}, start=False)
    with pytest.raises(RuntimeError, match="appliance exited with 1"):
        app.start(timeout=20)
    assert message in app.output()


def test_a_public_cluster_address_boots_with_the_explicit_opt_in_and_a_warning(boot):
    app = boot({"APPLIANCE_ROLE": "head", "RAY_NODE_IP": "8.8.8.8", "ALLOW_PUBLIC_CLUSTER": "true",
                "RAY_BIN": "/bin/true"})
    assert "WARNING: ALLOW_PUBLIC_CLUSTER=true" in app.output()


def test_the_cluster_page_lists_the_nodes_in_a_browser(cluster):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium is not installed")
    head, _ = cluster
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context(ignore_https_errors=True).new_page()
        page.set_default_timeout(15_000)
        page.goto(head.portal_url(f"/cluster?token={head.token}"))
        page.wait_for_function("document.querySelectorAll('#cluster-nodes tbody tr').length === 2")
        rows = page.locator("#cluster-nodes tbody tr").all_inner_texts()
        summary = page.locator("#cluster-summary").inner_text()
        assert page.locator("nav a:has-text('Cluster')").is_visible()
        browser.close()
    assert any(HEAD_ADDR in r and "head" in r and "alive" in r for r in rows), rows
    assert any(WORKER_ADDR in r and "worker" in r and "alive" in r for r in rows), rows
    assert "2 of 2 nodes alive, 4 GPUs in the cluster" in summary
