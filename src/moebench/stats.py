"""Statistics of timing samples: separate from the timer so both stay small and testable."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import quantiles
from typing import Sequence


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
