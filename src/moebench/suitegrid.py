"""What the asv suite's combination processes see: the measured grid, packed, and one point's lookup.

asv runs ``setup_cache`` once (``suite.setup_grid`` measures the grid) and then a process per
parameter combination and track, each of which unpickles what ``setup_cache`` returned and looks
its point up. Those processes are forked from asv's fork server, which must never initialize CUDA:
this module is torch-free, and holds plain values only.
"""

from __future__ import annotations

import marshal
import pickle
from array import array
from dataclasses import dataclass

GridKey = tuple[str, str, str, str, int]  # (l2, model, dtype, impl, tokens): a class's combination


class PointFailed(RuntimeError):
    """A point that ran but produced no trustworthy number (correctness gate, OOM, capture).

    Raised in a benchmark's ``setup``: asv records the combination as failed and ``asv run``
    exits non-zero, so a wrong kernel can never turn into a data point.
    """


@dataclass(frozen=True)
class OpTiming:
    op: str
    # Per-call seconds, one value per round (``OpResult.round_values_us``): the independent
    # replicates, so asv's median is the point's value and its CI and tests see the noise between
    # rounds, not the far smaller noise between replays of one graph. An array, not a tuple of
    # floats: it pickles as one block of bytes.
    rounds_s: array
    floor_s: float  # bytes moved / measured copy bandwidth

    def timing(self) -> dict:
        """asv's timing result: median, CI, Mann-Whitney and step detection work on it."""
        return {"samples": list(self.rounds_s), "number": 1}

    def vs_floor(self) -> dict:
        """Time over the roofline floor, per round (1.0 = at the copy bandwidth)."""
        return {"samples": [s / self.floor_s for s in self.rounds_s], "number": 1}


@dataclass(frozen=True)
class SuitePoint:
    """One point of the grid as the benchmark processes see it: plain values only."""

    ops: tuple[OpTiming, ...] = ()
    skipped: str | None = None  # why the point cannot run here (NaN in asv)
    failed: str | None = None  # why it ran but gave no number (a failure in asv)
    device: str = ""

    def op(self, name: str) -> OpTiming:
        return next(o for o in self.ops if o.op == name)


Grid = dict[GridKey, SuitePoint]


def _key_text(key: GridKey) -> str:
    return "|".join(map(str, key))


class PackedGrid:
    """The grid as ``setup_cache`` hands it to asv, which unpickles it again in every combination's
    process (3168 of them for the nightly grid): its pickle is one ``marshal`` blob of key text ->
    that point's own pickle, and a lookup decodes only its point. (A 5184-point grid: unpickling
    and one lookup took 43 ms as a dict of ``SuitePoint``, 0.8 ms packed, on a 2-core CI machine.)
    Reads like a ``Grid``: ``grid[key]``, ``KeyError`` if absent."""

    def __init__(self, grid: Grid) -> None:
        self._blob = marshal.dumps({_key_text(k): pickle.dumps(m) for k, m in grid.items()})
        self._points: dict[str, bytes] | None = None

    def __reduce__(self):
        return _unpack, (self._blob,)

    def __getitem__(self, key: GridKey) -> SuitePoint:
        if self._points is None:
            self._points = marshal.loads(self._blob)
        return pickle.loads(self._points[_key_text(key)])


def _unpack(blob: bytes) -> PackedGrid:
    packed = PackedGrid.__new__(PackedGrid)
    packed._blob, packed._points = blob, None
    return packed


def lookup(grid: Grid | PackedGrid, l2: str, model: str, dtype: str, impl: str, tokens: int) -> SuitePoint:
    """The point of one asv combination; ``NotImplementedError`` (asv: skipped, NaN) where it
    cannot run here, ``PointFailed`` where it ran without a trustworthy number."""
    name = f"{model}/{dtype}/{impl}/T{tokens}/L2 {l2}"
    try:
        m = grid[(l2, model, dtype, impl, tokens)]
    except KeyError:
        raise PointFailed(f"{name} is not in the measured grid: the MOEBENCH_* variables changed "
                          "between discovery and setup_cache") from None
    if m.skipped is not None:
        raise NotImplementedError(m.skipped)
    if m.failed is not None:
        raise PointFailed(f"{name} on {m.device}: {m.failed}")
    return m
