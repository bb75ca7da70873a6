"""Timing and nothing else: per-call samples of a callable, by CUDA graph replay or host clock.

CUDA: ``fn`` is warmed up on a side stream, ``calls_per_graph`` calls are captured into one graph,
the graph is replayed ``warmup`` times, then ``replays`` times each bracketed by a pair of events:
each replay gives one sample of (elapsed / calls_per_graph). Several calls per graph amortise the
GPU-side cost of starting a graph, which is why tiny kernels need them. With ``l2="cold"`` a
buffer twice the L2 size is overwritten before every replay, outside the events.

The host never appears in a sample. Recording the start event on an idle stream and then launching
the graph (vLLM's recipe) times the host's launch latency too, and every host stall between the two
calls (the GIL, the scheduler, another process): on an H100 that made one run of a 19 µs kernel
read 23 µs. So each replay is queued behind a GPU *hold* (``torch.cuda._sleep`` of at least
``HOLD_S``; nvbench's blocking kernel does the same): the start event fires when the hold ends,
with the graph already queued behind it. A replay whose launch took the host longer than the hold
could contain idle time: it is discarded and taken again behind a hold twice as long (up to
``MAX_HOLD_S``; launching a graph of a few hundred nodes takes the host ~150-250 µs), and a timer
that cannot get ``replays`` clean samples within as many retakes raises ``HostStalls``.

Python's garbage collector is off while a graph is captured and timed. Its pauses come every so
many allocations, so they fall on the same measurements run after run; such a measurement reads
another level (a DeepSeek-V3 permute read 100.4 or 105.5 µs in a repeating pattern, one level
with the collector off: docs/measurements.md, "Timing states").

A measurement is one sample of its *state*: the replays of one captured graph agree to ~0.05 %,
but two captures of the same point can differ by several percent. ``TimerConfig.rounds`` is how
many independent measurements (fresh buffers, fresh graph) ``runpoint.run_point`` takes of a point.

CPU (no CUDA device): the same loop with ``time.perf_counter`` around ``calls_per_graph`` direct
calls. Samples are labelled ``cpu`` by the caller and never mixed with GPU numbers. The CPU loop
also stops after ``max_seconds`` (at least ``min_replays`` samples), since a CPU reference call
can take milliseconds; the number of samples taken is part of the result.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from typing import Callable, Iterator

import torch

from .axes import HOLD_S, L2_MODES, MAX_HOLD_S, TimerConfig  # noqa: F401  (their home: axes)
from .errors import one_line

CPU_FLUSH_BYTES = 64 << 20


class NotCapturable(RuntimeError):
    """The callable cannot be captured in a CUDA graph (host sync, data-dependent allocation)."""


class HostStalls(RuntimeError):
    """The host launched too many replays later than their GPU hold: samples would include it."""


@functools.cache
def _sleep_cycles_per_s(index: int) -> float:
    """How many cycles of ``torch.cuda._sleep`` make a second at the card's highest clock: the
    fastest of a few timed sleeps (a cold card starts slow), so a hold is never shorter than asked."""
    n = 1 << 20
    fastest = float("inf")
    with torch.cuda.device(index):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(4):
            start.record()
            torch.cuda._sleep(n)
            end.record()
            end.synchronize()
            fastest = min(fastest, start.elapsed_time(end) * 1e-3)
    return n / fastest


def _l2_flusher(device: torch.device, l2: str) -> Callable[[], None] | None:
    if l2 != "cold":
        return None
    if device.type == "cuda":
        size = 2 * torch.cuda.get_device_properties(device).L2_cache_size
    else:
        size = CPU_FLUSH_BYTES
    buf = torch.empty(max(size, 1 << 20), dtype=torch.uint8, device=device)
    return lambda: buf.bitwise_not_()


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """No garbage-collector pause inside a capture or between timed replays."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def time_cuda_graph(fn: Callable[[], None], device: torch.device, cfg: TimerConfig) -> list[float]:
    """Per-call seconds, one sample per timed graph replay."""
    if device.type != "cuda":
        raise ValueError(f"time_cuda_graph needs a CUDA device, got {device}")
    with torch.cuda.device(device), _collector_off():
        flush = _l2_flusher(device, cfg.l2)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # lazy init (library load, JIT, workspaces) stays out of the graph
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                for _ in range(cfg.calls_per_graph):
                    fn()
        except RuntimeError as exc:
            # torch.cuda.graph's exit raises before it restores the current stream: without this,
            # every later CUDA call of the process would go to the dead capture stream.
            torch.cuda.set_stream(stream)
            torch.cuda.synchronize()
            raise NotCapturable(one_line(exc, 200)) from exc
        try:
            for _ in range(cfg.warmup):
                graph.replay()
            torch.cuda.synchronize()
            hold_s = cfg.hold_s
            cycles_per_s = _sleep_cycles_per_s(torch.cuda.current_device()) if hold_s else 0.0
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            samples: list[float] = []
            late = 0
            while len(samples) < cfg.replays:
                if flush is not None:
                    flush()
                t0 = time.perf_counter()  # the hold cannot start on the GPU before this
                if hold_s:
                    torch.cuda._sleep(int(hold_s * cycles_per_s))
                else:
                    torch.cuda.synchronize()  # vLLM's recipe: the start event on an idle stream
                start.record()
                graph.replay()
                queued = time.perf_counter() - t0
                end.record()
                end.synchronize()
                if not hold_s or queued < hold_s:
                    samples.append(start.elapsed_time(end) * 1e-3 / cfg.calls_per_graph)
                    continue
                # Late: a big graph's launch (hundreds of µs) or a stall. Retake behind a longer hold.
                late += 1
                if late > cfg.replays:
                    raise HostStalls(f"{late} replays were launched later than their GPU hold (up to "
                                     f"{hold_s * 1e3:.1f} ms; {len(samples)} clean): the host is too busy to time on")
                hold_s = min(2 * hold_s, MAX_HOLD_S)
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


def measure(fn: Callable[[], None], device: torch.device, cfg: TimerConfig) -> list[float]:
    return (time_cuda_graph if device.type == "cuda" else time_host)(fn, device, cfg)
