"""The overview's figures per model: tokens/s (prompt and generation), requests running and waiting, KV-cache use
and time to first token p50, from successive scrapes of each engine's own vLLM metrics, with a bounded history
(the last WINDOW seconds) for the portal's charts.

Counters become rates between two scrapes of the same engine (a counter that went down means the engine restarted:
its new value is the increase, as Prometheus' rate() counts it). The time to first token p50 is taken from the
increase of vLLM's histogram over the last TTFT_WINDOW seconds, interpolated within its bucket as Prometheus'
histogram_quantile() does. Pure logic: the scraping is the caller's (app/api/overview.py).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

WINDOW = 600.0      # seconds of history kept per instance
MIN_INTERVAL = 1.5  # a request sooner than this after the last scrape reuses it (several open pages)
TTFT_WINDOW = 60.0  # the time to first token p50 is over the requests of the last minute
MAX_POINTS = 1000   # a bound on each history whatever the callers do (WINDOW / MIN_INTERVAL is 400)

PROMPT = "vllm:prompt_tokens_total"
GENERATION = "vllm:generation_tokens_total"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # the name now, and its older one
TTFT_BUCKET = "vllm:time_to_first_token_seconds_bucket"
SERIES = ("prompt_tps", "generation_tps", "running", "waiting", "kv_cache")


@dataclass
class Reading:
    """One engine's metrics at one time, summed over its label sets (model names, data-parallel engines)."""
    t: float
    prompt: float | None = None
    generation: float | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None  # fraction in use, 0..1 (the mean over the engine's label sets)
    ttft: dict[float, float] = field(default_factory=dict)  # bucket upper bound -> cumulative count


def reading(text: str, t: float) -> Reading | None:
    """The figures in one engine's /metrics text; None when it does not parse."""
    sums: dict[str, float] = {}
    kv: list[float] = []
    ttft: dict[float, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == TTFT_BUCKET:
                    le = float(sample.labels.get("le", "nan"))
                    if not math.isnan(le):
                        ttft[le] = ttft.get(le, 0.0) + sample.value
                elif sample.name in KV_CACHE:
                    kv.append(sample.value)
                elif sample.name in (PROMPT, GENERATION, RUNNING, WAITING):
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    except (ValueError, TypeError, IndexError):
        return None
    return Reading(t, prompt=sums.get(PROMPT), generation=sums.get(GENERATION), running=sums.get(RUNNING),
                   waiting=sums.get(WAITING), kv_cache=sum(kv) / len(kv) if kv else None, ttft=ttft)


def increase(before: float | None, after: float | None) -> float | None:
    """How much a counter grew; after a reset (the engine restarted) all of its new value."""
    if before is None or after is None:
        return None
    return after - before if after >= before else after


def rate(before: float | None, after: float | None, seconds: float) -> float | None:
    grown = increase(before, after)
    return None if grown is None or seconds <= 0 else grown / seconds


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram (upper bound -> count), None without observations. Linear within
    the bucket it falls in; in the +Inf bucket, the highest finite bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank, lower, below = q * buckets[bounds[-1]], 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def ttft_increase(before: Reading, after: Reading) -> dict[float, float]:
    """The histogram of the requests between two readings (all of `after` when a bucket went down: a restart)."""
    if any(after.ttft.get(b, 0.0) < c for b, c in before.ttft.items()):
        return dict(after.ttft)
    return {b: c - before.ttft.get(b, 0.0) for b, c in after.ttft.items()}


@dataclass
class Point:
    t: float
    prompt_tps: float | None
    generation_tps: float | None
    running: float | None
    waiting: float | None
    kv_cache: float | None


def point(before: Reading, after: Reading) -> Point:
    seconds = after.t - before.t
    return Point(after.t, rate(before.prompt, after.prompt, seconds), rate(before.generation, after.generation,
                 seconds), after.running, after.waiting, after.kv_cache)


class Tracker:
    """Readings and chart points per instance, the last `window` seconds of each."""

    def __init__(self, window: float = WINDOW, ttft_window: float = TTFT_WINDOW):
        self.window, self.ttft_window = window, ttft_window
        self.readings: dict[str, deque[Reading]] = {}
        self.points: dict[str, deque[Point]] = {}
        self.last = -math.inf  # when add() last ran

    def add(self, t: float, texts: dict[str, str | None]) -> None:
        """One scrape at time `t`: instance -> its /metrics text (None: it did not answer; no point, a gap)."""
        self.last = t
        for instance, text in texts.items():
            now = reading(text, t) if text else None
            if now is None:
                continue
            readings = self.readings.setdefault(instance, deque())
            if readings and t > readings[-1].t:
                self.points.setdefault(instance, deque(maxlen=MAX_POINTS)).append(point(readings[-1], now))
            readings.append(now)
        self.trim(t)

    def trim(self, t: float) -> None:
        """Forget what is older than the window; keep one reading older than the TTFT window as its base."""
        for instance in list(self.readings):
            readings = self.readings[instance]
            while len(readings) > 1 and readings[1].t <= t - self.ttft_window:
                readings.popleft()
            if readings[-1].t < t - self.window:
                del self.readings[instance]
        for instance in list(self.points):
            points = self.points[instance]
            while points and points[0].t < t - self.window:
                points.popleft()
            if not points:
                del self.points[instance]

    def ttft_p50(self, instance: str) -> float | None:
        readings = self.readings.get(instance)
        if not readings or len(readings) < 2:
            return None
        return quantile(0.5, ttft_increase(readings[0], readings[-1]))

    def figures(self, instance: str, since: float) -> dict | None:
        """The latest figures of an instance scraped at or after `since`; None when it has none that recent."""
        readings = self.readings.get(instance)
        if not readings or readings[-1].t < since:
            return None
        latest, points = readings[-1], self.points.get(instance)
        last = points[-1] if points and points[-1].t == latest.t else None
        return {"prompt_tps": last.prompt_tps if last else None,
                "generation_tps": last.generation_tps if last else None,
                "running": latest.running, "waiting": latest.waiting, "kv_cache": latest.kv_cache,
                "ttft_p50": self.ttft_p50(instance)}

    def history(self, instance: str, since: float | None = None) -> dict[str, list]:
        """Columns for a chart: `t` (epoch seconds) and one list per series, None where unknown; only the points
        after `since` when given (a page that has the rest)."""
        points = [p for p in self.points.get(instance, ()) if since is None or p.t > since]
        return {"t": [p.t for p in points], **{name: [getattr(p, name) for p in points] for name in SERIES}}
