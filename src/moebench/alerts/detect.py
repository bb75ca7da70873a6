"""What counts as a slowdown: the statistics over rounds, the commit order and the detection of
steps (see the package docstring for the rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..asvresults import Measurement, Series, load_json
from ..errors import BadInput


DEFAULT_THRESHOLD = 0.05
DEFAULT_ALPHA = 0.01
DEFAULT_WINDOW = 5
LOOKBACK = 4  # detection starts LOOKBACK * window measured commits before the first examined one
DASHBOARD_ENV = "MOEBENCH_DASHBOARD_URL"
ISSUE_LABEL = "perf-regression"
SLOWER, FASTER = "regression", "improvement"


# ---------------------------------------------------------------- statistics


def t_test_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value that the values ``x`` tend to be larger than ``y``: Student's t-test
    on log values with a pooled variance (scipy.stats.ttest_ind).

    The values are round values, a handful per commit. A rank test cannot say much about so few:
    Mann-Whitney's smallest p-value for 5 rounds against 25 is 1 / C(30, 5) = 7e-6, which no
    correction for thousands of comparisons lets through. The t-test weighs the size of the
    shift against the spread between rounds instead; logs make it a test of ratios, and pooling
    the variance gives it the baseline's degrees of freedom. Identical values on both sides give
    1; two different constant sides give 0.
    """
    from scipy.stats import ttest_ind

    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    if len(lx) == 0 or len(ly) == 0 or len(lx) + len(ly) < 3:
        return 1.0
    if np.ptp(lx) == 0 and np.ptp(ly) == 0:
        return 0.0 if lx[0] > ly[0] else 1.0
    return float(ttest_ind(lx, ly, equal_var=True, alternative="greater").pvalue)


@dataclass(frozen=True)
class Interval:
    """Median of samples with asv's 99 % confidence interval of the median."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> "Interval":
        from asv_runner.statistics import compute_stats

        median, stats = compute_stats(list(samples), 1)
        return cls(median=median, lo=stats["ci_99_a"], hi=stats["ci_99_b"], n=len(samples))


# ---------------------------------------------------------------- commit order


@dataclass(frozen=True)
class Html:
    """What ``asv publish`` wrote that alerts use: branch order, links, asv's step detection."""

    revision_of: dict[str, int]
    hash_of: dict[int, str]
    show_commit_url: str | None
    regressions: list

    @classmethod
    def load(cls, html_dir: Path) -> "Html":
        index = load_json(html_dir / "index.json", api_version=None)
        regressions = load_json(html_dir / "regressions.json", api_version=None)
        try:
            hash_of = {int(rev): h for rev, h in index["revision_to_hash"].items()}
            entries = list(regressions["regressions"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInput(f"corrupt asv publish output in {html_dir}: {exc!r}") from None
        return cls(revision_of={h: r for r, h in hash_of.items()}, hash_of=hash_of,
                   show_commit_url=index.get("show_commit_url"), regressions=entries)


def order_key(html: Html | None):
    """Sort key of a measurement: asv's branch order when published, else commit date."""
    if html is None:
        return lambda m: (m.date_ms, m.commit)

    def revision(m: Measurement) -> int:
        if m.commit not in html.revision_of:
            raise BadInput(f"commit {m.commit[:8]} has results but is not in the published "
                           "index.json: run `asv publish` first, or leave out --html-dir")
        return html.revision_of[m.commit]
    return revision


def ordered(series: Series, html: Html | None) -> tuple[Measurement, ...]:
    return tuple(sorted(series.measurements, key=order_key(html)))


# ---------------------------------------------------------------- detection


@dataclass(frozen=True)
class Change:
    """A significant step of at least the threshold at ``commit`` (direction SLOWER or FASTER)."""

    direction: str
    commit: str
    before_commits: tuple[str, ...]
    before: Interval
    after: Interval
    ratio: float
    ratio_lo: float
    ratio_hi: float
    p_value: float
    threshold: float


def compare(base: Sequence[Measurement], cand: Measurement, threshold: float,
            alpha: float) -> Change | None:
    before_samples = [x for m in base for x in m.samples]
    before, after = Interval.of(before_samples), Interval.of(cand.samples)
    if before.median <= 0 or before.lo <= 0 or min(cand.samples) <= 0:
        return None  # ratios of non-positive times mean nothing
    runs = [float(np.median(m.samples)) for m in base]  # each baseline commit's own value
    ratio = after.median / before.median
    ratio_lo, ratio_hi = after.lo / before.hi, after.hi / before.lo
    common = dict(commit=cand.commit, before_commits=tuple(m.commit for m in base), before=before,
                  after=after, ratio=ratio, ratio_lo=ratio_lo, ratio_hi=ratio_hi, threshold=threshold)
    # Improvements mirror the rule (ratios inverted): they only move the baseline.
    p_slower = t_test_greater(cand.samples, before_samples)
    if (p_slower < alpha and ratio_lo > 1 and ratio_hi >= 1 + threshold
            and ratio >= 1 + threshold / 2 and after.lo > max(runs)):
        return Change(direction=SLOWER, p_value=p_slower, **common)
    p_faster = t_test_greater(before_samples, cand.samples)
    if (p_faster < alpha and ratio_hi < 1 and 1 / ratio_lo >= 1 + threshold
            and 1 / ratio >= 1 + threshold / 2 and after.hi < min(runs)):
        return Change(direction=FASTER, p_value=p_faster, **common)
    return None


def detect(history: Sequence[Measurement], threshold: float, alpha: float, window: int) -> list[Change]:
    """Changes along one series, oldest first; each resets the baseline to the new level."""
    changes: list[Change] = []
    start = 0
    for i in range(1, len(history)):
        change = compare(history[max(start, i - window):i], history[i], threshold, alpha)
        if change is not None:
            changes.append(change)
            start = i
    return changes


def threshold_for(entry: str, default: float, overrides: dict[str, float]) -> float:
    """asv's ``regressions_thresholds`` rule: the largest of the regexes that match the entry."""
    matches = [t for regex, t in overrides.items() if re.match(regex, entry)]
    return max(matches) if matches else default
