"""What flows out of a sweep: points, per-op measurements, results; and their files.

Every op keeps each round's samples: in JSON as ``rounds_us`` (a list per round), in CSV as
``samples_us`` (rounds separated by ``;``, samples by spaces) next to ``round_values_us``.

A results file is rewritten atomically (temp file + rename) after every point, so a killed sweep
leaves a valid file holding everything finished so far, and ``--resume`` can skip those points.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Iterable, Sequence

from .axes import OPS
from .errors import BadInput
from .files import atomic_write
from .gpustate import GpuState
from .stats import Rounds, interquartile_mean, summarize

SCHEMA = 2  # 2: rounds (1: one measurement per op, still read)
READABLE_SCHEMAS = (1, 2)
OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass(frozen=True)
class Point:
    """One cell of the sweep grid: everything that defines what is measured."""

    model: str
    num_experts: int
    topk: int
    hidden_size: int
    act_dtype: str
    dtype_mode: str
    impl: str
    num_tokens: int
    routing: str = "uniform"
    l2: str = "warm"
    ep_size: int = 1
    ep_rank: int = 0
    seed: int = 0

    @property
    def inputs(self) -> tuple:
        """What its seeded inputs are drawn from (``routing.make_inputs`` draws them once per
        process for every point with the same): the points of every dtype, implementation and L2
        mode at one shape, T and seed share them."""
        return (self.seed, self.num_tokens, self.hidden_size, self.num_experts, self.topk, self.routing)

    @property
    def key(self) -> str:
        ep = f"/ep{self.ep_rank}of{self.ep_size}" if self.ep_size > 1 else ""
        return (f"{self.model}/{self.dtype_mode}/{self.impl}/T{self.num_tokens}/{self.routing}"
                f"/{self.l2}{ep}/s{self.seed}")


@dataclass(frozen=True)
class OpResult:
    """One op's timing at one point: ``rounds_us`` holds every round's per-call samples (a round
    is one independent measurement: fresh buffers, fresh graph). Times are per call."""

    op: str
    rounds_us: tuple[tuple[float, ...], ...]
    round_values_us: tuple[float, ...]  # each round's value (stats.interquartile_mean)
    median_us: float  # the point's value: the median of the round values
    q1_us: float  # quartiles of every sample of every round
    q3_us: float
    bytes_moved: int
    floor_us: float
    gbps: float
    pct_of_floor: float  # floor / median: 100 % means the op runs at the copy bandwidth
    gpu_state: GpuState | None = None  # after the last round, or after the first throttled one
    attempts: int = 1  # measurements taken: more than the rounds when a disturbed one was taken again

    @classmethod
    def from_rounds(cls, op: str, rounds_s: Sequence[Sequence[float]], bytes_moved: int, floor_us: float,
                    gpu_state: GpuState | None, attempts: int | None = None) -> "OpResult":
        rounds_us = tuple(tuple(round(x * 1e6, 4) for x in r) for r in rounds_s)
        values = Rounds(tuple(round(interquartile_mean([x * 1e6 for x in r]), 4) for r in rounds_s))
        pooled = summarize([x for r in rounds_s for x in r])
        value = values.value_us
        return cls(op=op, rounds_us=rounds_us, round_values_us=values.values_us, median_us=value,
                   q1_us=pooled.q1_us, q3_us=pooled.q3_us, bytes_moved=bytes_moved, floor_us=floor_us,
                   gbps=bytes_moved / value * 1e-3, pct_of_floor=100.0 * floor_us / value,
                   gpu_state=gpu_state, attempts=len(rounds_s) if attempts is None else attempts)

    @property
    def samples_us(self) -> tuple[float, ...]:
        """Every sample, round after round."""
        return tuple(x for r in self.rounds_us for x in r)

    @property
    def round_spread(self) -> float:
        """(max - min) / median of the round values: the noise between independent measurements."""
        return Rounds(self.round_values_us).spread

    @property
    def retaken(self) -> bool:
        return self.attempts > len(self.rounds_us)

    @property
    def iqr_us(self) -> float:
        return self.q3_us - self.q1_us

    @property
    def rel_iqr(self) -> float:
        """IQR over median (``from_rounds`` already divides by the median: it is never 0)."""
        return self.iqr_us / self.median_us

    @property
    def throttled(self) -> bool:
        return self.gpu_state is not None and self.gpu_state.throttled


@dataclass(frozen=True)
class PointResult:
    point: Point
    status: str  # ok | failed | skipped
    device: str  # the GPU's name from torch, or "cpu (...)"
    clock: str  # "cuda-graph" or "cpu": how the samples were taken
    reason: str | None = None
    calls_per_graph: int = 0
    node: str = ""
    ops: tuple[OpResult, ...] = field(default=())

    @classmethod
    def failure(cls, point: Point, reason: str, *, device: str, clock: str, calls_per_graph: int,
                node: str) -> "PointResult":
        """A point that gave no result of its own (its worker died, hung or raised), failed with why."""
        return cls(point=point, status=FAILED, device=device, clock=clock, reason=reason,
                   calls_per_graph=calls_per_graph, node=node)

    def op(self, name: str) -> OpResult | None:
        return next((o for o in self.ops if o.op == name), None)

    @property
    def throttled(self) -> bool:
        return any(o.throttled for o in self.ops)


def _op_from_dict(o: dict[str, Any]) -> OpResult:
    gs = o.get("gpu_state")
    if "samples_us" in o:  # schema 1: one measurement, its median the value
        o = {**{k: v for k, v in o.items() if k != "samples_us"}, "rounds_us": [o["samples_us"]],
             "round_values_us": [o["median_us"]]}
    return OpResult(**{**o, "rounds_us": tuple(tuple(r) for r in o["rounds_us"]),
                       "round_values_us": tuple(o["round_values_us"]),
                       "gpu_state": GpuState(**{**gs, "throttle_reasons": tuple(gs["throttle_reasons"])}) if gs else None})


def _from_dict(d: dict[str, Any]) -> PointResult:
    ops = [_op_from_dict(o) for o in d.get("ops", ())]
    return PointResult(**{**d, "point": Point(**d["point"]), "ops": tuple(ops)})


def gpu_state_errors(results: Iterable[PointResult]) -> list[str]:
    """Why NVML could not give the GPU state next to some numbers, each reason once: a run
    without clocks and throttle flags says so instead of looking unthrottled."""
    return sorted({o.gpu_state.error for r in results for o in r.ops if o.gpu_state and o.gpu_state.error})


def load(path: str | Path) -> tuple[dict[str, Any], list[PointResult]]:
    """Read a results file; a missing or corrupt file is named in a BadInput."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        if data.get("schema") not in READABLE_SCHEMAS:
            raise ValueError(f"schema {data.get('schema')!r}, expected one of {READABLE_SCHEMAS}")
        return data.get("meta", {}), [_from_dict(r) for r in data["results"]]
    except FileNotFoundError:
        raise BadInput(f"results file not found: {p}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"results file {p} is not a moebench results file: {exc}") from None


class ResultsFile:
    """Atomically rewritten after every point; the only writer of a sweep's JSON."""

    def __init__(self, path: str | Path, meta: dict[str, Any], results: Iterable[PointResult] = ()):
        self.path = Path(path)
        self.meta = meta
        self.results: list[PointResult] = list(results)

    def add(self, result: PointResult) -> None:
        self.results.append(result)
        self.write()

    def write(self) -> None:
        payload = {"schema": SCHEMA, "meta": self.meta, "results": [asdict(r) for r in self.results]}
        atomic_write(self.path, lambda f: json.dump(payload, f, indent=1))


CSV_COLUMNS = [f.name for f in fields(Point)] + [
    "status", "reason", "device", "clock", "node", "calls_per_graph", "op", "median_us", "rounds",
    "round_spread_pct", "round_values_us", "q1_us", "q3_us", "n_samples", "attempts", "bytes_moved",
    "floor_us", "gbps", "pct_of_floor", "sm_clock_mhz", "temperature_c", "throttle_reasons", "samples_us",
]


def csv_rows(results: Iterable[PointResult]) -> Iterable[dict[str, Any]]:
    """One row per (point, op); skipped and failed points get one row with their reason."""
    for r in results:
        base = {**asdict(r.point), "status": r.status, "reason": r.reason or "", "device": r.device,
                "clock": r.clock, "node": r.node, "calls_per_graph": r.calls_per_graph}
        if not r.ops:
            yield base
        for o in r.ops:
            gs = o.gpu_state
            yield {**base, "op": o.op, "median_us": round(o.median_us, 4), "rounds": len(o.rounds_us),
                   "round_spread_pct": round(100 * o.round_spread, 3),
                   "round_values_us": "|".join(f"{v:.4f}" for v in o.round_values_us),
                   "samples_us": ";".join(" ".join(map(str, r)) for r in o.rounds_us),
                   "q1_us": round(o.q1_us, 4),
                   "q3_us": round(o.q3_us, 4), "n_samples": len(o.samples_us),
                   "attempts": o.attempts,
                   "bytes_moved": o.bytes_moved, "floor_us": round(o.floor_us, 4),
                   "gbps": round(o.gbps, 2), "pct_of_floor": round(o.pct_of_floor, 2),
                   "sm_clock_mhz": gs.sm_clock_mhz if gs else "",
                   "temperature_c": gs.temperature_c if gs else "",
                   "throttle_reasons": "|".join(gs.throttle_reasons) if gs else ""}


def write_csv(path: str | Path, results: Iterable[PointResult]) -> None:
    def fill(f: IO[str]) -> None:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
        w.writeheader()
        w.writerows(csv_rows(results))
    atomic_write(Path(path), fill, newline="")
