"""What the router counts: Prometheus metrics in its own registry (served on the control socket, merged by the
manager into its /metrics) and the activity log, the last requests through the router.

The hot path only bumps counters and observes two histograms per request; in-flight and queue depth are read from
the router's state when /metrics is scraped. Token counts come from the response's `usage`, found in its last
bytes only (the end of a JSON answer, the last events of a stream), never by parsing the whole response.
"""
from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily

from .state import State

ACTIVITY = 500  # requests kept in the activity log
TAIL = 8192  # bytes of a response's end kept to find its `usage`
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))
_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')


@dataclass
class Activity:
    time: float  # epoch seconds when the request came in
    model: str | None  # the name asked for (None: the default instance)
    instance: str | None  # the instance that answered (None: the router answered itself)
    path: str
    status: int
    duration: float
    ttft: float | None  # seconds to the first byte of the response body (for a stream: its first event)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    fast: bool = False  # HAProxy sent it straight to the engine (the fast path), not the router


def usage(tail: bytes) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of the last `usage` object in a response's end, if any."""
    at = tail.rfind(b'"usage"')
    found = _USAGE.match(tail, at) if at >= 0 else None
    if found is None:
        return None, None
    try:
        data = json.loads(found.group(1))
    except ValueError:
        return None, None
    take = lambda key: data.get(key) if isinstance(data.get(key), int) else None
    return take("prompt_tokens"), take("completion_tokens")


class _Loads:
    """In flight and queued per instance, read from the state when scraped."""

    def __init__(self, state: State):
        self.state = state
        self.outside: Callable[[], dict[str, int]] | None = None  # HAProxy's in flight by instance, and the peers'

    def collect(self):
        in_flight = GaugeMetricFamily("appliance_router_in_flight", "Requests the router (and HAProxy's fast path) "
                                      "has in flight to the instance's engine, or to a peer (`peer:HOST:PORT`).",
                                      labels=["instance"])
        queued = GaugeMetricFamily("appliance_router_queue_depth", "Requests waiting for the instance to be ready.",
                                   labels=["instance"])
        outside = self.outside() if self.outside else {}
        for instance_id in sorted(set(self.state.loads) | set(outside)):
            load = self.state.loads.get(instance_id)  # none for a peer, nor for an instance only HAProxy served
            in_flight.add_metric([instance_id], (load.in_flight if load else 0) + outside.get(instance_id, 0))
            queued.add_metric([instance_id], load.queued if load else 0)
        return [in_flight, queued]


class Stats:
    def __init__(self, state: State):
        self.registry = CollectorRegistry()
        self.requests = Counter("appliance_router_requests", "Requests through the router, by model asked for, "
                                "instance and status.", ["model", "instance", "status"], registry=self.registry)
        self.latency = Histogram("appliance_router_request_duration_seconds", "Seconds from a request's arrival to "
                                 "the end of its response.", ["model"], registry=self.registry,
                                 buckets=LATENCY_BUCKETS)
        self.ttft = Histogram("appliance_router_time_to_first_token_seconds", "Seconds from a request's arrival to "
                              "the first byte of its response body (a stream's first event).", ["model"],
                              registry=self.registry, buckets=LATENCY_BUCKETS)
        self.unavailable = Counter("appliance_router_unavailable", "503 answers of the router itself, by model "
                                   "and reason (queue_full, queue_timeout, model_stopped, start_failed, ...).",
                                   ["model", "reason"], registry=self.registry)
        self.on_demand = Counter("appliance_router_on_demand_starts", "Starts of a stopped instance the router asked "
                                 "the manager for, because a request named it.", ["instance"], registry=self.registry)
        self.fast = Counter("appliance_router_fast_path_requests", "Requests HAProxy sent straight to the "
                            "instance's engine (the fast path; also counted in appliance_router_requests).",
                            ["instance"], registry=self.registry)
        self.loads = _Loads(state)
        self.registry.register(self.loads)  # type: ignore[arg-type]
        self.activity: deque[Activity] = deque(maxlen=ACTIVITY)
        self._children: dict[tuple, tuple] = {}  # label values -> metric children (labels() costs a lock each)

    def _of(self, model: str, instance: str, status: int) -> tuple:
        key = (model, instance, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(model, instance, str(status)),
                                              self.latency.labels(model), self.ttft.labels(model))
        return children

    def record(self, model: str | None, instance: str | None, path: str, status: int, started: float,
               started_wall: float, ttft: float | None, tail: bytes = b"", reason: str | None = None) -> None:
        prompt_tokens, completion_tokens = usage(tail[-TAIL:]) if tail and status == 200 else (None, None)
        self.record_done(model, instance, path, status, time.perf_counter() - started, started_wall, ttft,
                         prompt_tokens, completion_tokens, reason=reason)

    def record_done(self, model: str | None, instance: str | None, path: str, status: int, duration: float,
                    started_wall: float, ttft: float | None, prompt_tokens: int | None = None,
                    completion_tokens: int | None = None, *, reason: str | None = None, fast: bool = False) -> None:
        """One request that ended: `fast` when HAProxy sent it straight to the engine (app/router/fastlog.py)."""
        label = "(unknown)" if reason == "model_not_found" else model or ""  # a client's typo is no label value
        requests, latency, first = self._of(label, instance or "", status)
        requests.inc()
        latency.observe(duration)
        if ttft is not None:
            first.observe(ttft)
        if status == 503 and reason:
            self.unavailable.labels(label, reason).inc()
        if fast:
            self.fast.labels(instance or "").inc()
        self.activity.append(Activity(started_wall, model, instance, path, status, round(duration, 6),
                                      None if ttft is None else round(ttft, 6), prompt_tokens, completion_tokens,
                                      fast))

    def started_on_demand(self, instance_id: str) -> None:
        self.on_demand.labels(instance_id).inc()

    def recent(self, limit: int) -> list[dict]:
        items = list(self.activity)[-limit:] if limit > 0 else []
        return [asdict(a) for a in reversed(items)]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
