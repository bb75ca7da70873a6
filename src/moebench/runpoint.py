"""One point, end to end: ``run_point``, and ``DeviceRunner``, a device set up to run points.

``run_point`` is the unit every front end shares (CLI, Ray workers, asv setup): build the
seeded inputs, prepare the implementation (allocations outside timing), pass the correctness gate,
time permute and unpermute in several independent rounds, check the outputs again after each
round's replays, and attach bytes, floor and GPU state. Anything that goes wrong becomes a failed
point with its reason; the sweep goes on and nothing already measured is lost.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .axes import ExpertParallel, TimerConfig, clock_name
from .check import check_permute, check_unpermute
from .errors import describe
from .gpustate import GpuState, Nvml
from .impls import Implementation
from .impls.base import Run
from .quant import act_dtype
from .results import FAILED, OK, OPS, SKIPPED, OpResult, Point, PointResult
from . import roofline
from .roofline import Ceiling, device_name, floor_us, permute_bytes, unpermute_bytes
from .routing import make_inputs
from .stats import STABLE_REL_IQR, steady, summarize
from .timing import HostStalls, NotCapturable, measure

OOM_PREFIX = "out of memory"
ATTEMPTS = 3  # measurements of one op before a disturbed point is given up as unsteady


def _is_oom(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU allocator a RuntimeError with one of these texts."""
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or any(
        s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))


@dataclass
class _OpRounds:
    """What the rounds of one op collect: samples per round, GPU state, measurements taken."""

    samples: list[list[float]] = field(default_factory=list)
    state: GpuState | None = None
    attempts: int = 0
    unsteady: str | None = None

    def result(self, op: str, nbytes: int, ceiling: Ceiling) -> OpResult:
        return OpResult.from_rounds(op, self.samples, nbytes, floor_us(nbytes, ceiling), self.state, self.attempts)


def _time_round(op: str, fn: Callable[[], None], device: torch.device, timer: TimerConfig, nvml: Nvml,
                into: _OpRounds) -> None:
    """One round of one op. On the GPU clock a measurement whose spread is not ``stats.steady``
    (a clock change or another tenant disturbed it), or after which NVML reports throttling, is
    taken again, up to ``ATTEMPTS`` times; an unthrottled one beats a throttled one, then the
    steadiest is kept. The host clock is not gated: CPU numbers are labelled ``cpu`` and exist
    for testing."""
    taken: list[tuple[bool, float, list[float], GpuState | None, bool]] = []  # (throttled, IQR / median, ..., steady)
    for _ in range(ATTEMPTS if device.type == "cuda" else 1):
        samples = measure(fn, device, timer)
        state = nvml.read(device)
        s = summarize(samples)
        throttled = state is not None and state.throttled
        is_steady = steady(s.iqr_us, s.median_us, timer.calls_per_graph)
        taken.append((throttled, s.rel_iqr, samples, state, is_steady))
        if not throttled and is_steady:
            break
    _, rel_iqr, best, state, is_steady = min(taken, key=lambda t: (t[0], t[1]))
    into.samples.append(best)
    into.attempts += len(taken)
    if into.state is None or not into.state.throttled:
        into.state = state
    if device.type == "cuda" and into.unsteady is None and not is_steady:
        into.unsteady = (f"{op} timing unsteady in round {len(into.samples)}: IQR {rel_iqr:.1%} of the median "
                         f"in the steadiest of {len(taken)} measurements (accepted: {STABLE_REL_IQR:.0%} + "
                         "2 clock ticks)")


def _gate(inputs, run: Run) -> str | None:
    if (why := check_permute(inputs, run.layout())) is not None:
        return f"permute mismatch: {why}"
    run.unpermute()
    if (why := check_unpermute(inputs, run.layout(), run.unpermute_input(), run.unpermute_output())) is not None:
        return f"unpermute mismatch: {why}"
    return None


def run_point(point: Point, impl: Implementation, device: torch.device, timer: TimerConfig,
              ceiling: Ceiling, nvml: Nvml) -> PointResult:
    """Measure one point in ``timer.rounds`` rounds; never raises for a problem of the point itself.

    A round is an independent measurement: the seeded inputs copied into new buffers, the
    implementation prepared anew (made while the previous round's buffers still exist, so none
    is reused), a new graph per op, and the correctness gate after its replays."""
    base = PointResult(point=point, status=OK, device=device_name(device), clock=clock_name(device),
                       calls_per_graph=timer.calls_per_graph, node=socket.gethostname())
    if (why := impl.unavailable(point.dtype_mode, device)) is not None:
        return replace(base, status=SKIPPED, reason=why)
    runs: list[Run] = []
    # The host timer's time budget is the point's, shared by its rounds.
    round_timer = replace(timer, max_seconds=timer.max_seconds / timer.rounds)
    try:
        inputs = make_inputs(num_experts=point.num_experts, topk=point.topk,
                             hidden_size=point.hidden_size, num_tokens=point.num_tokens,
                             dtype=act_dtype(point.act_dtype), dtype_mode=point.dtype_mode,
                             device=device, seed=point.seed, routing=point.routing,
                             ep=ExpertParallel(point.ep_size, point.ep_rank))
        rounds = {"permute": _OpRounds(), "unpermute": _OpRounds()}
        for r in range(timer.rounds):
            round_inputs = inputs if r == 0 else inputs.copy()
            runs.append(impl.prepare(round_inputs))
            if len(runs) > 1:
                runs.pop(0).close()
            run = runs[0]
            if r == 0:
                if (why := _gate(round_inputs, run)) is not None:
                    return replace(base, status=FAILED, reason=why)
                nbytes = _bytes(point, inputs, run)
            _time_round("permute", run.permute, device, round_timer, nvml, rounds["permute"])
            _time_round("unpermute", run.unpermute, device, round_timer, nvml, rounds["unpermute"])
            # Replays must leave the same, correct outputs as the eager calls did.
            if (why := _gate(round_inputs, run)) is not None:
                return replace(base, status=FAILED, reason=f"after timing (round {r + 1}): {why}")
        ops = tuple(rounds[op].result(op, nbytes[op], ceiling) for op in OPS)
        unsteady = next((o.unsteady for o in rounds.values() if o.unsteady), None)
        if unsteady is not None:
            return replace(base, status=FAILED, reason=unsteady, ops=ops)  # samples kept, no number
        return replace(base, ops=ops)
    except NotCapturable as exc:
        return replace(base, status=FAILED, reason=f"not capturable in a CUDA graph: {exc}")
    except HostStalls as exc:
        return replace(base, status=FAILED, reason=str(exc))
    except Exception as exc:  # one point's failure must not lose the sweep
        if _is_oom(exc):
            return replace(base, status=FAILED, reason=f"{OOM_PREFIX} at {point.num_tokens} tokens")
        return replace(base, status=FAILED, reason=describe(exc))
    finally:
        for run in runs:
            run.close()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _bytes(point: Point, inputs, run: Run) -> dict[str, int]:
    """Bytes each op moves at this point (roofline model), from the first round's layout."""
    t, k, h = point.num_tokens, point.topk, point.hidden_size
    n_local_slots = int((inputs.local_ids() >= 0).sum())
    in_elt = inputs.hidden.element_size()
    return {"permute": permute_bytes(t, k, h, n_local_slots, inputs.n_local_experts, in_elt,
                                     run.layout().permuted.element_size()),
            "unpermute": unpermute_bytes(t, k, h, n_local_slots, in_elt)}


class DeviceRunner:
    """One device set up to run points: its implementations, its bandwidth ceiling and NVML, made
    once and used for every point (``executors.LocalExecutor`` in this process, an isolated worker
    process, each Ray worker).

    On a GPU, the first measurement of an implementation's kernels in a process lands in a state
    of its own (vLLM 0.22.1's Mixtral permute at T=1 read 5.51 µs first, 6.06 µs ever after, in
    every fresh process: docs/measurements.md, "Timing states"). So the first point of each
    implementation and dtype in a process is preceded by one round that is thrown away."""

    def __init__(self, device: torch.device, registry: dict[str, Implementation],
                 ceiling: Ceiling | None = None) -> None:
        self.device, self.registry = device, registry
        self.ceiling = ceiling or roofline.ceiling(device)  # cached per device and driver
        self.nvml = Nvml()
        self._primed: set[tuple[str, str]] = set()

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def device_spec(self) -> str:
        return str(self.device)

    def run(self, point: Point, timer: TimerConfig) -> PointResult:
        impl = self.registry[point.impl]
        if self.device.type == "cuda" and (point.impl, point.dtype_mode) not in self._primed:
            self._primed.add((point.impl, point.dtype_mode))
            run_point(point, impl, self.device, replace(timer, rounds=1), self.ceiling, self.nvml)
        return run_point(point, impl, self.device, timer, self.ceiling, self.nvml)
