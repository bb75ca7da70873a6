"""The timers and the statistics, on the CPU path that CI runs for real."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import gpu
from moebench import grid, runpoint
from moebench.axes import clock_name
from moebench.gpustate import GpuState, Nvml
from moebench.roofline import Ceiling
from moebench.stats import interquartile_mean, steady, summarize
from moebench.timing import HOLD_S, MAX_HOLD_S, HostStalls, NotCapturable, TimerConfig, time_cuda_graph, time_host

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
        TimerConfig(hold_s=-1e-6)
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
    # The process is still usable: the next point of a sweep is timed as usual.
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert len(time_cuda_graph(lambda: x.mul_(1), dev, TimerConfig(replays=3))) == 3


def test_steady_accepts_clock_resolution_and_two_percent():
    # 19 µs median, 10 calls per graph: 2 % + 2 ticks of 0.05 µs = 0.48 µs of IQR accepted.
    assert steady(0.48, 19.0, 10)
    assert not steady(0.50, 19.0, 10)
    # A 3 µs cold-L2 point (1 call per graph) lives with the event clock's 0.5 µs ticks.
    assert steady(1.0, 3.0, 1) and not steady(1.1, 3.0, 1)


def _scripted_measure(monkeypatch, batches):
    """Replace the timer by one that returns the given sample batches in turn."""
    calls = iter(batches)
    monkeypatch.setattr(runpoint, "measure", lambda fn, device, timer: next(calls))


STEADY = [19e-6 + i * 1e-9 for i in range(40)]  # IQR 0.02 µs
DISTURBED = [19e-6 * (1 + (i % 4) * 0.1) for i in range(40)]  # IQR ~20 % of the median


def _op(device, nvml=None, rounds=1):
    """One op measured in ``rounds`` rounds as run_point does it: the result and why unsteady."""
    ceil = Ceiling(device="x", bytes_per_s=1e12, method="torch-copy")
    into = runpoint._OpRounds()
    for _ in range(rounds):
        runpoint._time_round("unpermute", lambda: None, device, TimerConfig(calls_per_graph=10), nvml or Nvml(), into)
    return into.result("unpermute", 1_000_000, ceil), into.unsteady


class _ScriptedNvml:
    """NVML as a card would answer after each measurement (fake: CI has no GPU)."""

    def __init__(self, throttled: list[bool]) -> None:
        self._states = iter(GpuState(1980 if not t else 1500, 1980, 60, 300.0, ("sw_power_cap",) if t else ())
                            for t in throttled)

    def read(self, device):
        return next(self._states)


def test_disturbed_gpu_measurement_is_taken_again_and_the_steady_one_kept(monkeypatch):
    _scripted_measure(monkeypatch, [DISTURBED, STEADY, DISTURBED])
    op, unsteady = _op(torch.device("cuda"))
    assert op.attempts == 2 and op.retaken
    assert op.median_us == pytest.approx(interquartile_mean(STEADY) * 1e6, rel=1e-4)
    assert unsteady is None


def test_gpu_point_unsteady_after_every_attempt_has_no_number(monkeypatch):
    worse = [x * 1.5 if i % 2 else x for i, x in enumerate(DISTURBED)]
    _scripted_measure(monkeypatch, [worse, DISTURBED, worse])
    op, why = _op(torch.device("cuda"))
    assert op.attempts == runpoint.ATTEMPTS
    assert op.median_us == pytest.approx(interquartile_mean(DISTURBED) * 1e6, rel=1e-4)  # the steadiest
    assert why.startswith("unpermute timing unsteady in round 1: IQR ") and "of 3 measurements" in why


def test_each_round_is_gated_on_its_own(monkeypatch):
    _scripted_measure(monkeypatch, [STEADY, STEADY, DISTURBED, DISTURBED, DISTURBED])
    op, why = _op(torch.device("cuda"), rounds=3)
    assert len(op.rounds_us) == 3 and op.attempts == 5
    assert why.startswith("unpermute timing unsteady in round 3: ")


def test_throttled_gpu_measurement_is_taken_again(monkeypatch):
    _scripted_measure(monkeypatch, [STEADY, STEADY])
    op, _ = _op(torch.device("cuda"), _ScriptedNvml([True, False]))
    assert op.attempts == 2 and not op.throttled


def test_throttled_every_time_keeps_the_steadiest_and_flags_it(monkeypatch):
    _scripted_measure(monkeypatch, [DISTURBED, STEADY, DISTURBED])
    op, _ = _op(torch.device("cuda"), _ScriptedNvml([True, True, True]))
    assert op.attempts == 3 and op.throttled
    assert op.median_us == pytest.approx(interquartile_mean(STEADY) * 1e6, rel=1e-4)


def test_host_clock_is_measured_once(monkeypatch):
    _scripted_measure(monkeypatch, [DISTURBED])
    assert _op(CPU)[0].attempts == 1


@gpu
def test_host_launch_delay_is_not_in_the_samples(monkeypatch):
    """A replay launched 50 µs late (a host stall) leaves the samples as they were: the GPU hold
    covers it. vLLM's recipe (hold_s=0) adds the stall, 5 µs per call here."""
    dev = torch.device("cuda")
    src = torch.randn(1 << 20, device=dev)
    dst = torch.empty_like(src)
    cfg = TimerConfig(calls_per_graph=10, replays=50)
    vllm_recipe = TimerConfig(calls_per_graph=10, replays=50, hold_s=0)

    def median(c: TimerConfig) -> float:
        return summarize(time_cuda_graph(lambda: dst.copy_(src), dev, c)).median_us
    quiet, quiet_vllm = median(cfg), median(vllm_recipe)
    replay = torch.cuda.CUDAGraph.replay

    def late(self):
        time.sleep(50e-6)
        replay(self)
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", late)
    assert median(cfg) < quiet + 0.5  # µs per call
    assert median(vllm_recipe) > quiet_vllm + 4.0


@gpu
def test_slow_launches_lengthen_the_hold_and_endless_stalls_are_refused(monkeypatch):
    dev = torch.device("cuda")
    src = torch.randn(1 << 20, device=dev)
    dst = torch.empty_like(src)
    cfg = TimerConfig(calls_per_graph=10, replays=20)
    quiet = summarize(time_cuda_graph(lambda: dst.copy_(src), dev, cfg)).median_us
    replay = torch.cuda.CUDAGraph.replay
    delay = [0.0]

    def slow(self):
        time.sleep(delay[0])
        replay(self)
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", slow)
    delay[0] = 2 * HOLD_S  # a launch slower than the first hold: retaken behind longer ones
    assert summarize(time_cuda_graph(lambda: dst.copy_(src), dev, cfg)).median_us < quiet + 0.5
    delay[0] = 2 * MAX_HOLD_S  # slower than any hold
    with pytest.raises(HostStalls, match=r"21 replays were launched later than their GPU hold \(up to 10.0 ms; 0 clean\)"):
        time_cuda_graph(lambda: dst.copy_(src), dev, cfg)


def test_measurer_throws_away_one_round_before_an_implementations_first_gpu_point(monkeypatch):
    """The first measurement of an implementation's kernels in a process lands in a state of its
    own (docs/measurements.md): on a GPU it is taken once more, as a discarded one-round point."""
    calls = []
    monkeypatch.setattr(runpoint, "run_point", lambda point, impl, device, timer, *rest: calls.append(
        (point.impl, point.dtype_mode, point.num_tokens, timer.rounds)) or point.num_tokens)
    ceil = Ceiling(device="x", bytes_per_s=1e12, method="torch-copy")
    from moebench.models import resolve

    spec = grid.SweepSpec(shape=resolve("mistralai/Mixtral-8x7B-Instruct-v0.1"), dtype_modes=("auto", "fp8_w8a8"),
                           impls=("reference-custom", "vllm-ops"), batch_sizes=(1, 16))
    m = runpoint.DeviceRunner(torch.device("cuda"), {"reference-custom": None, "vllm-ops": None}, ceil)
    assert [m.run(p, TimerConfig()) for p in spec.points()] == [1, 1, 16, 16, 1, 1, 16, 16]
    thrown = [c for c in calls if c[3] == 1]
    assert thrown == [(impl, mode, 1, 1) for mode in ("auto", "fp8_w8a8") for impl in ("reference-custom", "vllm-ops")]
    assert len(calls) == 8 + 4
    calls.clear()
    runpoint.DeviceRunner(CPU, {"reference-custom": None, "vllm-ops": None}, ceil).run(spec.points()[0], TimerConfig())
    assert calls == [("reference-custom", "auto", 1, 5)]  # the host clock has no such state


def test_garbage_collector_is_off_while_timing_and_restored_after():
    import gc

    from moebench.timing import _collector_off

    assert gc.isenabled()
    with _collector_off():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with _collector_off():
            pass
        assert not gc.isenabled()  # a caller's own choice is left as it was
    finally:
        gc.enable()


def test_the_ceiling_is_cached_per_device_and_driver(tmp_path, monkeypatch):
    """Workers, replaced workers and every commit's setup_cache reuse one measurement of the copy
    bandwidth; a new driver (or another card) measures again."""
    import json

    from moebench import roofline

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = []
    monkeypatch.setattr(roofline, "device_name", lambda d: "NVIDIA H200")
    monkeypatch.setattr(roofline, "measure_ceiling",
                        lambda d: measured.append(d) or Ceiling("NVIDIA H200", 4.0e12 + len(measured), "triton-copy"))
    drivers = iter(["580.159.04", "580.159.04", "590.10"])
    monkeypatch.setattr(roofline, "_driver", lambda: next(drivers))
    cuda = torch.device("cuda")
    first, again, new_driver = (roofline.ceiling(cuda) for _ in range(3))
    assert first == again != new_driver and len(measured) == 2
    cache = json.loads((tmp_path / "moebench" / "ceilings.json").read_text())
    assert set(cache) == {"NVIDIA H200 | driver 580.159.04", "NVIDIA H200 | driver 590.10"}
    assert not list((tmp_path / "moebench").glob(".ceilings.*"))  # no temporary file left
