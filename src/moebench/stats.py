"""Statistics of timing samples: separate from the timer so both stay small and testable.

Two levels. A *round* is one measurement (one captured graph, its replays): its value is the
interquartile mean of its samples. A *point* is several rounds: its value is the median of the
round values. Why these two:
- inside a round, CUDA events tick every ~0.5 µs, a tenth of a small kernel's time per replay;
  the median of such samples snaps to a tick, the mean of their middle half resolves below it
  and still ignores the odd stalled replay;
- between rounds the value moves between discrete states (docs/measurements.md, "Timing
  states"): one round in an odd state must not move the point, which the median of the rounds
  guarantees while most rounds agree, where a mean would carry 1/R of the odd round's offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median, quantiles
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


def interquartile_mean(samples: Sequence[float]) -> float:
    """Mean of the middle half of ``samples`` (all of them when there are fewer than four)."""
    if not samples:
        raise ValueError("no samples")
    xs = sorted(samples)
    cut = len(xs) // 4
    middle = xs[cut:len(xs) - cut]
    return sum(middle) / len(middle)


@dataclass(frozen=True)
class Rounds:
    """Round values of one op at one point, in microseconds."""

    values_us: tuple[float, ...]

    @property
    def value_us(self) -> float:
        """The point's value: the median of its round values."""
        return median(self.values_us)

    @property
    def spread(self) -> float:
        """(max - min) / value over the rounds: the between-round noise shown next to a number."""
        return (max(self.values_us) - min(self.values_us)) / self.value_us if self.value_us > 0 else float("nan")


def summarize(samples_s: Sequence[float]) -> Summary:
    """Median and quartiles (inclusive method, so n=1 and n=2 are defined)."""
    if not samples_s:
        raise ValueError("no samples")
    us = sorted(s * 1e6 for s in samples_s)
    if len(us) == 1:
        q1 = med = q3 = us[0]
    else:
        q1, med, q3 = quantiles(us, n=4, method="inclusive")
    return Summary(n=len(us), median_us=med, q1_us=q1, q3_us=q3)
