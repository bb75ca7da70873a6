"""Timing and nothing else: per-call samples of a callable, by CUDA graph replay or host clock.

CUDA: ``fn`` is warmed up on a side stream, ``calls_per_graph`` calls are captured into one graph,
the graph is replayed ``warmup`` times, then ``replays`` times each bracketed by a pair of events:
each replay gives one sample of (elapsed / calls_per_graph). Launch overhead of the graph (~12 µs)
is amortised over the calls, which is why tiny kernels need several calls per graph. With
``l2="cold"`` a buffer twice the L2 size is overwritten before every replay, outside the events.

CPU (no CUDA device): the same loop with ``time.perf_counter`` around ``calls_per_graph`` direct
calls. Samples are labelled ``cpu`` by the caller and never mixed with GPU numbers. The CPU loop
also stops after ``max_seconds`` (at least ``min_replays`` samples), since a CPU reference call
can take milliseconds; the number of samples taken is part of the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import one_line

L2_MODES = ("warm", "cold")
CPU_FLUSH_BYTES = 64 << 20


@dataclass(frozen=True)
class TimerConfig:
    calls_per_graph: int = 10
    replays: int = 100
    warmup: int = 5
    l2: str = "warm"
    max_seconds: float = 0.5  # host timer only
    min_replays: int = 5  # host timer only

    def __post_init__(self) -> None:
        if self.calls_per_graph < 1 or self.replays < 1 or self.warmup < 0:
            raise ValueError("calls_per_graph and replays must be >= 1, warmup >= 0")
        if self.l2 not in L2_MODES:
            raise ValueError(f"l2 must be one of {L2_MODES}, got {self.l2!r}")


class NotCapturable(RuntimeError):
    """The callable cannot be captured in a CUDA graph (host sync, data-dependent allocation)."""


def _l2_flusher(device: torch.device, l2: str) -> Callable[[], None] | None:
    if l2 != "cold":
        return None
    if device.type == "cuda":
        size = 2 * torch.cuda.get_device_properties(device).L2_cache_size
    else:
        size = CPU_FLUSH_BYTES
    buf = torch.empty(max(size, 1 << 20), dtype=torch.uint8, device=device)
    return lambda: buf.bitwise_not_()


def time_cuda_graph(fn: Callable[[], None], device: torch.device, cfg: TimerConfig) -> list[float]:
    """Per-call seconds, one sample per timed graph replay."""
    if device.type != "cuda":
        raise ValueError(f"time_cuda_graph needs a CUDA device, got {device}")
    with torch.cuda.device(device):
        flush = _l2_flusher(device, cfg.l2)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # lazy init (library load, JIT, workspaces) stays out of the graph
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for _ in range(cfg.calls_per_graph):
                    fn()
        except RuntimeError as exc:
            torch.cuda.synchronize()
            raise NotCapturable(one_line(exc, 200)) from exc
        try:
            for _ in range(cfg.warmup):
                graph.replay()
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            samples = []
            for _ in range(cfg.replays):
                if flush is not None:
                    flush()
                torch.cuda.synchronize()
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) * 1e-3 / cfg.calls_per_graph)
        finally:
            graph.reset()
    return samples


def time_host(fn: Callable[[], None], device: torch.device, cfg: TimerConfig) -> list[float]:
    """Per-call seconds on the host clock; ``cfg.replays`` samples at most."""
    flush = _l2_flusher(device, cfg.l2)
    fn()  # one warm-up call: first-touch page faults and lazy init; CPU calls are long enough
    samples: list[float] = []
    budget_end = time.perf_counter() + cfg.max_seconds
    while len(samples) < cfg.replays:
        if flush is not None:
            flush()
        t0 = time.perf_counter()
        for _ in range(cfg.calls_per_graph):
            fn()
        samples.append((time.perf_counter() - t0) / cfg.calls_per_graph)
        if len(samples) >= cfg.min_replays and time.perf_counter() > budget_end:
            break
    return samples


def default_calls_per_graph(device: torch.device, l2: str) -> int:
    """10 calls per CUDA graph amortise the graph launch (warm L2, the seed's recipe). Cold L2
    flushes before each replay, so only a graph's first call would see a cold cache: one call.
    The host timer needs no amortising: one call."""
    return 10 if device.type == "cuda" and l2 == "warm" else 1


def clock_name(device: torch.device) -> str:
    """The label every result carries: how its samples were taken."""
    return "cuda-graph" if device.type == "cuda" else "cpu"


def measure(fn: Callable[[], None], device: torch.device, cfg: TimerConfig) -> list[float]:
    return (time_cuda_graph if device.type == "cuda" else time_host)(fn, device, cfg)
