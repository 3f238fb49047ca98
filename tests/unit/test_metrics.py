"""The /metrics answer's parts: engines' metrics relabelled and merged, the control plane, GPUs, host."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from app import metrics

ENGINE = '''# HELP vllm:num_requests_running Running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{name}"}} {running}
# HELP vllm:prompt_tokens_total Prompt tokens.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="{name}"}} 12.0
# HELP vllm:e2e_request_latency_seconds Latency.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{le="1.0",model_name="{name}"}} 1.0
vllm:e2e_request_latency_seconds_bucket{{le="+Inf",model_name="{name}"}} 2.0
vllm:e2e_request_latency_seconds_count{{model_name="{name}"}} 2.0
vllm:e2e_request_latency_seconds_sum{{model_name="{name}"}} 3.5
'''
SNAPSHOT = {"gpus": [{"index": 0, "uuid": "GPU-0", "name": "NVIDIA H100", "utilization": 40, "memory_used": 5,
                      "memory_total": 80, "power_draw": 300.5, "temperature": 60, "instances": ["vllm"]}],
            "host": {"load": (1.0, 0.5, 0.25), "cpu_count": 2, "memory": {"total": 8, "available": 4},
                     "disk": {"total": 100, "free": 40}}}


def parsed(body: bytes) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def test_engine_metrics_are_merged_with_an_instance_label_and_parse_back():
    texts = {"vllm": ENGINE.format(name="a", running=2), "second": ENGINE.format(name="b", running=5),
             "dead": None, "garbled": "vllm:x{ 1 2 3"}
    views = [{"id": i, "state": "ready", "restarts": 0} for i in texts]
    families = parsed(metrics.render(texts, views, SNAPSHOT))
    running = {s.labels["instance"]: s.value for s in families["vllm:num_requests_running"]}
    assert running == {"vllm": 2.0, "second": 5.0}
    assert {s.labels["instance"] for s in families["vllm:prompt_tokens"]} == {"vllm", "second"}
    assert len(families["vllm:e2e_request_latency_seconds"]) == 8  # 2 buckets, count, sum per engine
    up = {s.labels["instance"]: s.value for s in families["appliance_engine_up"]}
    assert up == {"vllm": 1.0, "second": 1.0, "dead": 0.0, "garbled": 1.0}


def test_control_plane_gpus_and_host():
    views = [{"id": "vllm", "state": "ready", "restarts": 3}, {"id": "b", "state": "failed", "restarts": 0}]
    families = parsed(metrics.render({}, views, SNAPSHOT))
    states = {(s.labels["instance"], s.labels["state"]): s.value for s in families["appliance_instance_state"]}
    assert states[("vllm", "ready")] == 1.0 and states[("vllm", "stopped")] == 0.0 and states[("b", "failed")] == 1.0
    assert [s.value for s in families["appliance_instance_restarts"] if s.labels["instance"] == "vllm"] == [3.0]
    [power] = families["appliance_gpu_power_watts"]
    assert power.value == 300.5 and power.labels == {"gpu": "0", "uuid": "GPU-0", "name": "NVIDIA H100",
                                                     "instance": "vllm"}
    assert [s.value for s in families["appliance_host_load"]] == [1.0, 0.5, 0.25]
    assert families["appliance_workspace_disk_free_bytes"][0].value == 40


def test_swaps_are_counted_by_result():
    metrics.swap_done("unit-x", "rolled back", 12.0)
    families = parsed(metrics.render({}, [], SNAPSHOT))
    counted = [s for s in families["appliance_swaps"] if s.labels == {"instance": "unit-x", "result": "rolled back"}
               and s.name == "appliance_swaps_total"]
    assert counted[0].value == 1.0
