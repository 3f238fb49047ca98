"""GET /metrics on the booted appliance: engines' own metrics with their instance, GPUs with their holder (fake
NVML), control-plane metrics; parsed with prometheus-client's own parser; behind auth."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.appliance import REPO
from tests.manager.test_swap import put, wait_for


def scrape(app, client) -> dict[str, list]:
    response = client.get(app.portal_url("/metrics"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def instances_of(samples) -> set[str]:
    return {s.labels["instance"] for s in samples}


def test_metrics_carry_engines_gpus_and_the_control_plane(boot):
    app = boot({"VLLM_MODEL": "acme/metric-chat", "FAKE_NVML_GPUS": "2",
                "PYTHONPATH": str(REPO / "tests/fakes/nvml_site")})
    with app.client(timeout=60) as client:
        assert put(app, client, "second", model="acme/metric-two", gpus=[], wait=True).json()["result"] == "ready"
        client.post(app.api_url("/v1/completions"), json={"model": "acme/metric-chat", "prompt": "a b c"})
        families = wait_for(lambda: (f := scrape(app, client))["appliance_gpu_memory_used_bytes"] and f)
        assert instances_of(families["vllm:num_requests_running"]) == {"vllm", "second"}
        prompt = {s.labels["instance"]: s.value for s in families["vllm:prompt_tokens"]}
        assert prompt["vllm"] > 0 and prompt["second"] == 0
        assert {(s.labels["gpu"], s.labels["instance"]) for s in families["appliance_gpu_memory_used_bytes"]} == {
            ("0", "vllm"), ("1", "vllm")}
        states = {(s.labels["instance"], s.labels["state"]) for s in families["appliance_instance_state"] if s.value}
        assert states == {("vllm", "ready"), ("second", "ready")}
        assert {s.labels["result"] for s in families["appliance_swaps"] if s.name.endswith("_total")} == {"ready"}

        assert client.post(app.portal_url("/api/instances/second/stop")).json()["state"] == "stopped"
        families = scrape(app, client)  # a stopped engine drops out; the scrape still works
        assert instances_of(families["vllm:num_requests_running"]) == {"vllm"}
        assert {s.labels["instance"]: s.value for s in families["appliance_engine_up"]} == {"vllm": 1, "second": 0}
    with app.client(auth=False) as anonymous:
        assert anonymous.get(app.portal_url("/metrics")).status_code == 401


def test_the_monitoring_docs_examples_name_metrics_the_appliance_exports(appliance):
    """docs/monitoring.md's Prometheus config parses, and every metric the Grafana dashboard queries is in a scrape
    (vLLM's own histograms only exist on the real engine: those are checked to be vLLM's names)."""
    import json
    import re

    import yaml

    docs = REPO / "docs"
    config = re.search(r"```yaml\n(.*?)```", (docs / "monitoring.md").read_text(), re.S).group(1)
    job = yaml.safe_load(config)["scrape_configs"][0]
    assert job["honor_labels"] is True and job["authorization"]["credentials_file"]
    with appliance.client() as client:
        exported = set(scrape(appliance, client))
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for name in re.findall(r"\b((?:vllm:|appliance_)[a-z_:]+)", panel["targets"][0]["expr"]):
            family = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert family in exported or family == "vllm:time_to_first_token_seconds", (panel["title"], name)
