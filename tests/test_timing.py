"""The timers and the statistics, on the CPU path that CI runs for real."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import gpu
from moebench.stats import summarize
from moebench.timing import NotCapturable, TimerConfig, clock_name, time_cuda_graph, time_host

CPU = torch.device("cpu")


def test_host_timer_measures_per_call_time():
    cfg = TimerConfig(calls_per_graph=4, replays=6, max_seconds=10)
    samples = time_host(lambda: time.sleep(0.002), CPU, cfg)
    assert len(samples) == 6
    med = summarize(samples).median_us
    assert 2000 <= med < 4000  # sleep(2 ms) per call, not per group of 4


def test_host_timer_stops_at_its_budget_but_keeps_min_samples():
    cfg = TimerConfig(calls_per_graph=1, replays=1000, max_seconds=0.05, min_replays=5)
    samples = time_host(lambda: time.sleep(0.02), CPU, cfg)
    assert len(samples) == 5


def test_cold_l2_flushes_between_samples_on_cpu():
    calls = []
    cfg = TimerConfig(calls_per_graph=1, replays=3, l2="cold", max_seconds=10)
    time_host(lambda: calls.append(1), CPU, cfg)
    assert len(calls) == 1 + 3


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        TimerConfig(l2="lukewarm")
    with pytest.raises(ValueError):
        TimerConfig(calls_per_graph=0)


def test_clock_labels():
    assert clock_name(CPU) == "cpu"
    assert clock_name(torch.device("cuda", 0)) == "cuda-graph"


def test_graph_timer_refuses_cpu():
    with pytest.raises(ValueError):
        time_cuda_graph(lambda: None, CPU, TimerConfig())


def test_summary_quartiles():
    s = summarize([i * 1e-6 for i in range(1, 102)])  # 1..101 µs
    assert s.n == 101 and s.median_us == pytest.approx(51)
    assert s.q1_us == pytest.approx(26) and s.q3_us == pytest.approx(76)
    assert s.iqr_us == pytest.approx(50) and s.rel_iqr == pytest.approx(50 / 51)
    assert summarize([3e-6]).median_us == pytest.approx(3)
    with pytest.raises(ValueError):
        summarize([])


@gpu
def test_graph_timer_times_a_known_copy():
    dev = torch.device("cuda")
    src = torch.randn(64 << 20, device=dev)
    dst = torch.empty_like(src)
    samples = time_cuda_graph(lambda: dst.copy_(src), dev, TimerConfig(replays=20))
    assert len(samples) == 20
    gbps = 2 * src.numel() * 4 / summarize(samples).median_us * 1e-3
    assert 200 < gbps < 10000


@gpu
def test_graph_timer_reports_uncapturable_calls():
    dev = torch.device("cuda")
    x = torch.ones(4, device=dev)
    with pytest.raises(NotCapturable):
        time_cuda_graph(lambda: x.sum().item(), dev, TimerConfig(replays=2))
