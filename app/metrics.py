"""GET /metrics in the Prometheus text format: every engine's own metrics with an `instance` label, the GPUs (with
the instance that holds each), the host, and the control plane (phases, restarts, swaps).

The engines are scraped concurrently on the event loop (2 s each at most; one that does not answer is left out and
shows as `appliance_engine_up 0`); parsing and rendering run in a thread, so a scrape never blocks the manager.
"""
from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.instance import Phase

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT = 2.0

# Live control-plane metrics, updated by the actors as things happen.
REGISTRY = CollectorRegistry()
SWAPS = Counter("appliance_swaps", "Swaps carried out, by instance and result (ready, rolled back, failed).",
                ["instance", "result"], registry=REGISTRY)
SWAP_SECONDS = Histogram("appliance_swap_duration_seconds", "Seconds from a swap's start to its result.",
                         ["instance"], registry=REGISTRY,
                         buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf")))


def swap_done(instance: str, result: str, seconds: float) -> None:
    SWAPS.labels(instance, result).inc()
    SWAP_SECONDS.labels(instance).observe(seconds)


async def scrape(http: httpx.AsyncClient, ports: dict[str, int]) -> dict[str, str | None]:
    """Each engine's /metrics text (None: it did not answer), concurrently."""
    async def one(port: int) -> str | None:
        try:
            response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT)
            return response.text if response.status_code == 200 else None
        except httpx.HTTPError:
            return None
    texts = await asyncio.gather(*(one(port) for port in ports.values()))
    return dict(zip(ports, texts, strict=True))


def engine_families(texts: dict[str, str | None]) -> list[Metric]:
    """The engines' metrics as one set of families, each sample labelled with its instance. A family whose type
    differs between engines keeps the first engine's type; a text that does not parse is left out."""
    merged: dict[str, Metric] = {}
    for instance, text in texts.items():
        if not text:
            continue
        try:
            families = list(text_string_to_metric_families(text))
        except (ValueError, TypeError):
            continue
        for family in families:
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            if into.type != family.type:
                continue
            into.samples += [Sample(s.name, {**s.labels, "instance": instance}, s.value, s.timestamp, s.exemplar)
                             for s in family.samples]
    return list(merged.values())


def appliance_families(views: list[dict], up: dict[str, bool], snapshot: dict) -> list[Metric]:
    """The control plane (`views`: the API's instance views), engines answering, GPUs and host (`snapshot`: what
    /api/stats answers)."""
    state = GaugeMetricFamily("appliance_instance_state", "1 for the instance's current state, 0 for the others.",
                              labels=["instance", "state"])
    restarts = GaugeMetricFamily("appliance_instance_restarts",
                                 "Restarts the manager did not ask for, since the manager started.",
                                 labels=["instance"])
    engine_up = GaugeMetricFamily("appliance_engine_up", "1 if the instance's engine answered this scrape.",
                                  labels=["instance"])
    for view in views:
        for phase in Phase:
            state.add_metric([view["id"], phase.value], 1.0 if view["state"] == phase.value else 0.0)
        restarts.add_metric([view["id"]], view["restarts"])
        engine_up.add_metric([view["id"]], 1.0 if up.get(view["id"]) else 0.0)
    labels = ["gpu", "uuid", "name", "instance"]
    gpu = [(GaugeMetricFamily(f"appliance_gpu_{name}", text, labels=labels), field) for name, field, text in (
        ("utilization_percent", "utilization", "GPU utilisation, percent."),
        ("memory_used_bytes", "memory_used", "GPU memory in use."),
        ("memory_total_bytes", "memory_total", "GPU memory in all."),
        ("power_watts", "power_draw", "Power draw."),
        ("temperature_celsius", "temperature", "GPU temperature."))]
    for reading in snapshot["gpus"]:
        values = [str(reading["index"]), reading["uuid"], reading["name"], ",".join(reading["instances"])]
        for family, field in gpu:
            if reading.get(field) is not None:
                family.add_metric(values, reading[field])
    host = snapshot["host"]
    load = GaugeMetricFamily("appliance_host_load", "Load average.", labels=["period"])
    for period, value in zip(("1m", "5m", "15m"), host["load"], strict=True):
        load.add_metric([period], value)
    disk = host["disk"]
    return [state, restarts, engine_up, *(family for family, _ in gpu), load,
            GaugeMetricFamily("appliance_host_cpus", "CPU cores.", value=host["cpu_count"]),
            GaugeMetricFamily("appliance_host_memory_total_bytes", "Host memory.", value=host["memory"]["total"]),
            GaugeMetricFamily("appliance_host_memory_available_bytes", "Host memory available.",
                              value=host["memory"]["available"]),
            GaugeMetricFamily("appliance_workspace_disk_total_bytes", "Size of the workspace's disk.",
                              value=disk["total"]),
            GaugeMetricFamily("appliance_workspace_disk_free_bytes", "Free space on the workspace's disk.",
                              value=disk["free"])]


class _Once:
    """A collector that yields families computed beforehand."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return self.families


def exposition(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once(families))  # type: ignore[arg-type]
    return generate_latest(REGISTRY) + generate_latest(registry)


async def router_metrics(router) -> bytes:
    """The router's own metrics (app/router/stats.py: requests, latency, time to first token, queue depth, in
    flight, 503s per model), from its control socket; nothing when the router does not answer."""
    try:
        return (await asyncio.wait_for(router.metrics(), SCRAPE_TIMEOUT)).encode()
    except Exception:  # noqa: BLE001 (router down or restarting: its metrics are simply absent)
        return b""


def render(texts: dict[str, str | None], views: list[dict], snapshot: dict) -> bytes:
    """Everything /metrics answers (CPU work: run it in a thread)."""
    up = {instance: text is not None for instance, text in texts.items()}
    started = time.perf_counter()
    families = engine_families(texts) + appliance_families(views, up, snapshot)
    families.append(GaugeMetricFamily("appliance_metrics_render_seconds",
                                      "Seconds this answer took to parse and render.",
                                      value=time.perf_counter() - started))
    return exposition(families)
