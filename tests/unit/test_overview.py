"""The overview's figures from successive engine scrapes: rates, resets, gauges, TTFT p50, the bounded history."""
from __future__ import annotations

import pytest

from app import overview

BOUNDS = ("0.01", "0.05", "0.1", "0.5", "+Inf")


def engine(prompt: float, generation: float, running: float = 0, waiting: float = 0, kv: float = 0.25,
           ttft: tuple[float, ...] = (0, 0, 0, 0, 0), engines: int = 1) -> str:
    """An engine's /metrics text as vLLM writes it; `engines` data-parallel label sets of the same values."""
    lines = ["# TYPE vllm:prompt_tokens_total counter", "# TYPE vllm:generation_tokens_total counter",
             "# TYPE vllm:num_requests_running gauge", "# TYPE vllm:num_requests_waiting gauge",
             "# TYPE vllm:kv_cache_usage_perc gauge", "# TYPE vllm:time_to_first_token_seconds histogram"]
    for e in range(engines):
        labels = f'engine="{e}",model_name="m"'
        lines += [f"vllm:prompt_tokens_total{{{labels}}} {prompt}",
                  f"vllm:generation_tokens_total{{{labels}}} {generation}",
                  f"vllm:num_requests_running{{{labels}}} {running}",
                  f"vllm:num_requests_waiting{{{labels}}} {waiting}",
                  f"vllm:kv_cache_usage_perc{{{labels}}} {kv}"]
        lines += [f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{b}"}} {c}'
                  for b, c in zip(BOUNDS, ttft, strict=True)]
        lines += [f"vllm:time_to_first_token_seconds_count{{{labels}}} {ttft[-1]}",
                  f"vllm:time_to_first_token_seconds_sum{{{labels}}} 0"]
    return "\n".join(lines) + "\n"


def test_token_rates_come_from_two_successive_scrapes():
    tracker = overview.Tracker()
    tracker.add(100.0, {"a": engine(prompt=1000, generation=500, running=3, waiting=1, kv=0.4)})
    assert tracker.figures("a", 100.0)["generation_tps"] is None  # one scrape: no rate yet
    tracker.add(102.0, {"a": engine(prompt=1100, generation=700, running=2, waiting=0, kv=0.5)})
    figures = tracker.figures("a", 102.0)
    assert figures["prompt_tps"] == pytest.approx(50.0)
    assert figures["generation_tps"] == pytest.approx(100.0)
    assert (figures["running"], figures["waiting"], figures["kv_cache"]) == (2.0, 0.0, 0.5)
    assert tracker.history("a") == {"t": [102.0], "prompt_tps": [50.0], "generation_tps": [100.0],
                                    "running": [2.0], "waiting": [0.0], "kv_cache": [0.5]}


def test_a_restarted_engine_counts_its_new_total_as_the_increase():
    tracker = overview.Tracker()
    tracker.add(0.0, {"a": engine(prompt=5000, generation=9000)})
    tracker.add(2.0, {"a": engine(prompt=40, generation=20)})
    assert tracker.figures("a", 2.0)["generation_tps"] == pytest.approx(10.0)
    assert tracker.figures("a", 2.0)["prompt_tps"] == pytest.approx(20.0)


def test_data_parallel_engines_are_summed_and_kv_cache_averaged():
    tracker = overview.Tracker()
    tracker.add(0.0, {"a": engine(prompt=0, generation=0, engines=2)})
    tracker.add(1.0, {"a": engine(prompt=10, generation=30, running=1, kv=0.3, engines=2)})
    figures = tracker.figures("a", 1.0)
    assert (figures["prompt_tps"], figures["generation_tps"], figures["running"]) == (20.0, 60.0, 2.0)
    assert figures["kv_cache"] == pytest.approx(0.3)


def test_ttft_p50_is_over_the_last_minute_interpolated_in_its_bucket():
    tracker = overview.Tracker(ttft_window=60)
    # Before the window: 100 slow requests (all in 0.1..0.5 s); they must not count.
    tracker.add(0.0, {"a": engine(0, 0, ttft=(0, 0, 0, 100, 100))})
    tracker.add(30.0, {"a": engine(0, 0, ttft=(0, 0, 0, 100, 100))})
    assert tracker.figures("a", 30.0)["ttft_p50"] is None  # no request in the window
    # Then 10 requests: 4 under 10 ms, 6 between 10 and 50 ms: the median is the 5th, in 0.01..0.05.
    tracker.add(80.0, {"a": engine(0, 0, ttft=(4, 10, 10, 110, 110))})
    assert tracker.figures("a", 80.0)["ttft_p50"] == pytest.approx(0.01 + 0.04 * (1 / 6))


def test_quantile_edges():
    assert overview.quantile(0.5, {}) is None
    assert overview.quantile(0.5, {0.1: 0, float("inf"): 0}) is None
    assert overview.quantile(0.5, {0.1: 0, 1.0: 0, float("inf"): 4}) == 1.0  # all above the last bound
    assert overview.quantile(0.5, {0.1: 2, float("inf"): 2}) == pytest.approx(0.05)


def test_history_is_bounded_to_the_window_and_a_silent_engine_leaves_a_gap():
    tracker = overview.Tracker(window=600)
    for i in range(400):  # 2 s apart: 800 s
        tracker.add(i * 2.0, {"a": engine(prompt=i * 10, generation=i * 20)})
    history = tracker.history("a")
    assert history["t"][0] >= 798 - 600 and len(history["t"]) <= 301
    assert set(history["generation_tps"]) == {10.0}
    tracker.add(800.0, {"a": None})  # did not answer: no point, the last figures are older than this scrape
    assert tracker.figures("a", 800.0) is None
    assert tracker.history("a")["t"][-1] == 798.0


def test_an_instance_gone_longer_than_the_window_is_forgotten_and_garbage_is_ignored():
    tracker = overview.Tracker(window=10)
    tracker.add(0.0, {"a": engine(1, 1), "b": "vllm:x{ 1 2 3"})
    tracker.add(1.0, {"a": engine(2, 2)})
    tracker.add(20.0, {})
    assert tracker.history("a") == {"t": [], **{name: [] for name in overview.SERIES}}
    assert tracker.figures("a", 0.0) is None and tracker.figures("b", 0.0) is None


def test_older_vllm_cache_metric_name_is_read():
    text = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.75\n"
    assert overview.reading(text, 0.0).kv_cache == 0.75


def test_history_since_gives_only_the_newer_points():
    tracker = overview.Tracker()
    for i in range(4):
        tracker.add(float(i), {"a": engine(prompt=i, generation=i)})
    assert tracker.history("a", since=1.0)["t"] == [2.0, 3.0]
    assert tracker.history("a", since=3.0)["t"] == []
