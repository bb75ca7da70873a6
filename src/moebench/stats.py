"""Statistics of timing samples: separate from the timer so both stay small and testable."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import quantiles
from typing import Sequence

# A steady GPU measurement's IQR is well under 1 % of its median (docs/measurements.md); one that a
# clock change or another tenant disturbed reads several percent. Accepted: this much, plus two
# ticks of the clock that took the samples (CUDA events resolve ~0.5 µs per replay).
STABLE_REL_IQR = 0.02
EVENT_TICK_S = 0.5e-6


@dataclass(frozen=True)
class Summary:
    """Order statistics of per-call times, in microseconds."""

    n: int
    median_us: float
    q1_us: float
    q3_us: float
    min_us: float
    max_us: float

    @property
    def iqr_us(self) -> float:
        return self.q3_us - self.q1_us

    @property
    def rel_iqr(self) -> float:
        """IQR over median: the noise figure compared against thresholds."""
        return self.iqr_us / self.median_us if self.median_us > 0 else float("nan")


def steady(iqr_us: float, median_us: float, calls_per_graph: int) -> bool:
    """Whether a spread (IQR) of per-call samples is what a steady device and the event clock's
    resolution explain (one tick per replay, spread over its calls)."""
    return iqr_us <= STABLE_REL_IQR * median_us + 2 * EVENT_TICK_S * 1e6 / calls_per_graph


def summarize(samples_s: Sequence[float]) -> Summary:
    """Median and quartiles (inclusive method, so n=1 and n=2 are defined)."""
    if not samples_s:
        raise ValueError("no samples")
    us = sorted(s * 1e6 for s in samples_s)
    if len(us) == 1:
        q1 = med = q3 = us[0]
    else:
        q1, med, q3 = quantiles(us, n=4, method="inclusive")
    return Summary(n=len(us), median_us=med, q1_us=q1, q3_us=q3, min_us=us[0], max_us=us[-1])
