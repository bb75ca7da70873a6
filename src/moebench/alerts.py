"""``moebench alerts``: regression alerts over asv results that catch 5 % and never cry wolf.

What it compares. A *series* is one benchmark parameter combination on one machine and asv
environment, ordered by asv's branch order (``html/index.json`` from ``asv publish``) or, without
an html dir, by commit date. The suite stores one sample per independent *round* (its own
buffers and CUDA graph; ``moebench.stats``): the replays of one graph agree far more closely than
two rounds do, so only rounds are treated as replicates. Each commit's rounds are compared with
a *baseline*: the pooled rounds of up to ``window`` commits before it, but never from before the
last detected change, so after a step the new level is the baseline and the step is reported
once, at the commit where it happened.

When a slowdown counts. All of:
- significant: a one-sided t-test on the log round values (``t_test_greater``: why not a rank
  test) gives p < alpha / m, where m is the number of (series, commit) comparisons this run
  examines (Bonferroni: a long history of pure noise has family-wise false alarm probability
  below alpha);
- certain: the ratio of medians' interval (from asv's own 99 % median intervals,
  ``asv_runner.statistics.compute_stats``: after.lo / before.hi .. after.hi / before.lo) lies
  above 1;
- beyond the runs: the candidate's interval lies above every baseline commit's own value (the
  median of its rounds), so a level the runs have wandered through never alerts;
- as large as the threshold: that interval reaches 1 + threshold (default 5 %, overrides by
  regex over asv's entry name as in asv.conf.json's ``regressions_thresholds``, largest match
  wins), and the ratio of medians itself is at least 1 + threshold / 2. Judging the threshold
  with the measurement's own uncertainty is deliberate: a point-estimate rule would catch an
  exact 5 % step only half of the time; the floor keeps a slowdown estimated at a few percent
  from alerting on wide intervals.
Improvements are detected the same way (they reset the baseline) but never alert.

Which commits alert. Only examined commits: by default the newest commit of each series;
``--since REV`` every commit after REV; ``--commits FILE`` the listed ones (the nightly passes the
commits it just measured). Detection starts ``LOOKBACK`` baselines before the first examined
commit, so a step just before it is found there and has become the baseline (one nightly run or
one ``--since`` run over the same results give the same alerts), while the cost stays bounded as
the history grows.

asv's own step detection (``regressions.json`` from ``asv publish``, when ``--html-dir`` is given)
is read as a second opinion: each alert says whether asv saw a step there, and steps asv reports
at examined commits that the sample test did not confirm are listed, without alerting.

Output: markdown (stdout or ``--markdown``) and JSON (``--json``), including one issue title/body
per benchmark and machine for the workflow that files issues. Exit 1 when there are regressions,
0 when none, 2 on bad input (a missing or corrupt results file is named, never skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import numpy as np

from .argtypes import positive_int
from .asvresults import Measurement, Series, load_json, load_series, scaled
from .errors import BadInput, one_line

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


# ---------------------------------------------------------------- links and report


@dataclass(frozen=True)
class Links:
    commit_url: str | None
    dashboard_url: str | None

    def commit(self, sha: str) -> str:
        return f"[`{sha[:8]}`]({self.commit_url}{sha})" if self.commit_url else f"`{sha[:8]}`"

    def compare(self, a: str, b: str) -> str | None:
        match = re.fullmatch(r"(https://github\.com/[^/]+/[^/]+/)commit/", self.commit_url or "")
        return f"{match.group(1)}compare/{a}...{b}" if match else None

    def dashboard(self, s: Series, a: str, b: str) -> str | None:
        if not self.dashboard_url:
            return None
        base = self.dashboard_url if self.dashboard_url.endswith(("/", ".html")) else self.dashboard_url + "/"
        return graph_url(base, s, [("commits", f"{a}-{b}")])


def graph_url(base: str, s: Series, extra: Sequence[tuple[str, str]] = ()) -> str:
    """asv's address of one series' graph: ``base#benchmark?machine=..&p-<param>=<value>``."""
    query = [("machine", s.machine)] + [(f"p-{k}", v) for k, v in s.params] + list(extra)
    return base + "#" + s.benchmark + "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)


@dataclass(frozen=True)
class Finding:
    series: Series
    change: Change
    asv_step: dict | None = None

    @property
    def before_commit(self) -> str:
        return self.change.before_commits[-1]

    def asv_find(self) -> str:
        return (f"asv find --machine {self.series.machine} "
                f"{self.before_commit[:8]}..{self.change.commit[:8]} '{self.series.benchmark}'")

    def as_json(self, links: Links) -> dict:
        c, s = self.change, self.series
        return {
            "benchmark": s.benchmark, "entry": s.entry, "params": dict(s.params), "machine": s.machine,
            "env": s.env, "unit": s.unit, "commit": c.commit, "before_commits": list(c.before_commits),
            "before": asdict(c.before), "after": asdict(c.after), "ratio": c.ratio,
            "ratio_interval": [c.ratio_lo, c.ratio_hi], "p_value": c.p_value, "threshold": c.threshold,
            "commit_range": {"from": self.before_commit, "to": c.commit,
                             "compare_url": links.compare(self.before_commit, c.commit)},
            "dashboard_url": links.dashboard(s, self.before_commit, c.commit),
            "asv_find": self.asv_find(), "asv_step_detection": self.asv_step,
        }


def _numbers(template: str, values: Sequence[float], unit: str) -> str:
    """``values`` with four significant digits on the first one's scale, filled into ``template``,
    then the unit: a 0.1 % interval stays visible (18.81 [18.79, 18.83] µs), which asv's
    three-digit ``human_value`` would print as 18.8 [18.8, 18.8]."""
    factor, name = scaled(values[0], unit)
    return f"{template.format(*(f'{v / factor:#.4g}' for v in values))} {name}".strip()


def _value(x: float, unit: str) -> str:
    return _numbers("{}", [x], unit)


def _interval(iv: Interval, unit: str) -> str:
    return _numbers("{} [{}, {}]", [iv.median, iv.lo, iv.hi], unit)


def finding_markdown(f: Finding, links: Links) -> str:
    c, s = f.change, f.series
    rng = f"{links.commit(f.before_commit)}..{links.commit(c.commit)}"
    compare_url = links.compare(f.before_commit, c.commit)
    lines = [
        f"#### `{s.benchmark}` ({s.label}) on `{s.machine}`",
        "",
        f"- **{_interval(c.before, s.unit)} → {_interval(c.after, s.unit)}** "
        f"(median [99 % interval]; before = {len(c.before_commits)} commit(s), {c.before.n} rounds; "
        f"after = {c.after.n} rounds)",
        f"- ratio **{c.ratio:.3f}** (interval {c.ratio_lo:.3f}–{c.ratio_hi:.3f}), "
        f"threshold {c.threshold:.0%}, t-test over rounds p = {c.p_value:.2g}",
        f"- commits: {rng}" + (f" ([diff]({compare_url}))" if compare_url else ""),
    ]
    dash = links.dashboard(s, f.before_commit, c.commit)
    if dash:
        lines.append(f"- dashboard: {dash}")
    if f.asv_step is not None:
        lines.append(f"- asv step detection: {f.asv_step['summary']}")
    lines += [f"- bisect: `{f.asv_find()}`", ""]
    return "\n".join(lines)


def _asv_steps(html: Html, s: Series) -> list[dict]:
    """asv's jumps for this series from regressions.json, as commit hashes."""
    steps = []
    for entry in html.regressions:
        try:
            _, graph_path, _, j, _, _, jumps = entry
        except (TypeError, ValueError):
            raise BadInput(f"corrupt regressions.json entry: {entry!r}") from None
        parts = graph_path.split("/")
        if (parts[-1] != s.benchmark + ".json" or f"machine-{s.machine}" not in parts
                or j != s.param_index):
            continue
        for rev_a, rev_b, v_before, v_after in jumps:
            if rev_b not in html.hash_of or (rev_a is not None and rev_a not in html.hash_of):
                raise BadInput(f"corrupt regressions.json: revision {rev_b} is not in index.json")
            steps.append({"from": html.hash_of[rev_a] if rev_a is not None else None,
                          "to": html.hash_of[rev_b], "before": v_before, "after": v_after})
    return steps


def _step_at(steps: list[dict], commit: str, unit: str) -> dict:
    for st in steps:
        if st["to"] == commit:
            span = f"{st['from'][:8]}..{st['to'][:8]}" if st["from"] else st["to"][:8]
            return {**st, "agrees": True,
                    "summary": f"agrees: step at {span}, {_value(st['before'], unit)} → {_value(st['after'], unit)}"}
    return {"agrees": False, "summary": "no step reported at this commit"}


# ---------------------------------------------------------------- the command


@dataclass(frozen=True)
class Report:
    regressions: list[Finding]
    improvements: list[Finding]
    asv_only: list[dict]
    unchecked: list[dict]
    comparisons: int
    settings: dict
    machines: list[str]
    examined: list[str]


def analyse(series: Sequence[Series], *, html: Html | None, examine, threshold: float,
            overrides: dict[str, float], alpha: float, window: int) -> Report:
    """``examine(history) -> set of commits`` picks the commits whose changes are reported."""
    plans = []
    unchecked = []
    for s in series:
        history = ordered(s, html)
        targets = examine(history)
        # Only commits with stored samples can be tested; an examined one without is named.
        unchecked += [{"entry": s.entry, "machine": s.machine, "commit": m.commit,
                       "reason": "no stored samples (asv run without --record-samples?)"}
                      for m in history if m.commit in targets and not m.samples]
        plans.append((s, tuple(m for m in history if m.samples), targets))
    comparisons = sum(len([m for m in h[1:] if m.commit in t]) for _, h, t in plans)
    if comparisons == 0 and unchecked:
        raise BadInput(f"nothing to check: {unchecked[0]['entry']} at {unchecked[0]['commit'][:8]} "
                       f"has {unchecked[0]['reason']}")
    per_test = alpha / max(comparisons, 1)
    regressions, improvements, asv_only = [], [], []
    examined = sorted({c for _, _, t in plans for c in t})
    for s, history, targets in plans:
        first = next((i for i, m in enumerate(history) if m.commit in targets), len(history))
        history = history[max(0, first - LOOKBACK * window):]
        changes = detect(history, threshold_for(s.entry, threshold, overrides), per_test, window)
        steps = _asv_steps(html, s) if html else []
        found = set()
        for ch in changes:
            if ch.commit not in targets:
                continue
            found.add(ch.commit)
            if ch.direction == SLOWER:
                regressions.append(Finding(s, ch, _step_at(steps, ch.commit, s.unit) if html else None))
            else:
                improvements.append(Finding(s, ch))
        asv_only += [{"entry": s.entry, "machine": s.machine, **st} for st in steps
                     if st["to"] in targets and st["to"] not in found]
    settings = {"threshold": threshold, "threshold_overrides": overrides, "alpha": alpha,
                "alpha_per_test": per_test, "window": window,
                "order": "asv branch order (index.json)" if html else "commit date"}
    return Report(regressions, improvements, asv_only, unchecked, comparisons, settings,
                  sorted({s.machine for s in series}), examined)


def issues(report: Report, links: Links) -> list[dict]:
    """One issue per benchmark and machine; the title is the key the workflow deduplicates on."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in report.regressions:
        groups.setdefault((f.series.benchmark, f.series.machine), []).append(f)
    out = []
    for (bench, machine), findings in groups.items():
        body = "\n".join([f"`moebench alerts` found {len(findings)} regression(s) of `{bench}` "
                          f"on `{machine}`:", ""] + [finding_markdown(f, links) for f in findings])
        out.append({"key": f"{bench}@{machine}", "title": f"Performance regression: {bench} on {machine}",
                    "labels": [ISSUE_LABEL], "body": body})
    return out


def markdown(report: Report, links: Links) -> str:
    n = len(report.regressions)
    head = (f"## {n} performance regression{'s' if n != 1 else ''}" if n else "## No performance regressions")
    lines = [head, "",
             f"{report.comparisons} comparison(s) of {len(report.examined)} examined commit(s) on "
             f"{', '.join(report.machines)}; threshold {report.settings['threshold']:.0%} "
             f"(+ overrides), family-wise alpha {report.settings['alpha']}, baseline up to "
             f"{report.settings['window']} commits, order by {report.settings['order']}.", ""]
    lines += [finding_markdown(f, links) for f in report.regressions]
    if report.improvements:
        lines += ["### Improvements (no alert)", ""]
        lines += [f"- `{f.series.entry}` on `{f.series.machine}` at {links.commit(f.change.commit)}: "
                  f"ratio {f.change.ratio:.3f}" for f in report.improvements] + [""]
    if report.asv_only:
        lines += ["### asv step detection only (not confirmed by the samples, no alert)", ""]
        lines += [f"- `{a['entry']}` on `{a['machine']}` at {links.commit(a['to'])}" for a in report.asv_only]
        lines.append("")
    if report.unchecked:
        lines += ["### Not checked", ""]
        lines += [f"- `{u['entry']}` on `{u['machine']}` at {links.commit(u['commit'])}: {u['reason']}"
                  for u in report.unchecked] + [""]
    return "\n".join(lines)


def as_json(report: Report, links: Links) -> dict:
    return {
        "settings": report.settings,
        "checked": {"machines": report.machines, "commits": report.examined,
                    "comparisons": report.comparisons},
        "regressions": [f.as_json(links) for f in report.regressions],
        "improvements": [f.as_json(links) for f in report.improvements],
        "asv_step_detection_only": report.asv_only,
        "unchecked": report.unchecked,
        "issues": issues(report, links),
    }


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (a fraction), got {value}")
    return value


def _override(text: str) -> tuple[str, float]:
    regex, sep, value = text.rpartition("=")
    if not sep or not regex:
        raise argparse.ArgumentTypeError(f"expected REGEX=FRACTION, got {text!r}")
    try:
        re.compile(regex)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regex {regex!r}: {exc}") from None
    return regex, _fraction(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moebench alerts",
        description="Report benchmarks whose newest (or given) commits are significantly slower "
                    "than their recent history on the same machine. Exit 1 on regressions, "
                    "0 on none, 2 on bad input.")
    p.add_argument("results", type=Path, help="asv results directory (results/)")
    p.add_argument("--machine", action="append", help="machine name (repeatable; default: all)")
    p.add_argument("--html-dir", type=Path,
                   help="`asv publish` output: branch order and asv's step detection (regressions.json)")
    p.add_argument("--config", type=Path,
                   help="asv.conf.json for show_commit_url and regressions_thresholds "
                        "(default: ./asv.conf.json when it exists)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--since", metavar="REV", help="examine every commit after REV (hash prefix)")
    which.add_argument("--commits", metavar="FILE",
                       help="examine the commits listed in FILE (hash prefixes, one a line; - = stdin)")
    p.add_argument("--threshold", type=_fraction, default=DEFAULT_THRESHOLD,
                   help=f"smallest slowdown to report, as a fraction (default {DEFAULT_THRESHOLD})")
    p.add_argument("--threshold-for", type=_override, action="append", default=[], metavar="REGEX=FRACTION",
                   help="per-benchmark threshold: REGEX matched (re.match) against asv's entry name "
                        "`name(param values)`; the largest matching one wins")
    p.add_argument("--alpha", type=_fraction, default=DEFAULT_ALPHA,
                   help=f"family-wise false-alarm probability of one run (default {DEFAULT_ALPHA})")
    p.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW,
                   help=f"baseline commits (default {DEFAULT_WINDOW})")
    p.add_argument("--markdown", type=Path, help="write the markdown report here (default: stdout)")
    p.add_argument("--json", type=Path, help="write the JSON report here")
    p.add_argument("--dashboard-url", default=os.environ.get(DASHBOARD_ENV),
                   help=f"published asv dashboard (default: ${DASHBOARD_ENV})")
    p.add_argument("--commit-url", help="commit link prefix (default: show_commit_url of the config "
                                        "or of the published index.json)")
    return p


def _config(path: Path | None) -> tuple[str | None, dict[str, float]]:
    if path is None:
        if not Path("asv.conf.json").is_file():
            return None, {}
        path = Path("asv.conf.json")
    from asv import util
    from asv.config import Config

    try:
        conf = Config.load(str(path))
    except util.UserError as exc:
        raise BadInput(f"bad --config {path}: {exc}") from None
    except OSError as exc:
        raise BadInput(f"cannot read --config {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # json5's decode error: not a JSON file at all
        raise BadInput(f"bad --config {path}: not asv's JSON ({one_line(exc, 160)})") from None
    try:
        thresholds = {str(k): float(v) for k, v in (conf.regressions_thresholds or {}).items()}
        for regex in thresholds:
            re.compile(regex)
    except (TypeError, ValueError, AttributeError, re.error) as exc:
        raise BadInput(f"bad regressions_thresholds in {path}: {exc}") from None
    url = conf.show_commit_url if conf.show_commit_url not in (None, "", "#") else None
    return url, thresholds


def _read_commits(spec: str) -> list[str]:
    try:
        text = sys.stdin.read() if spec == "-" else Path(spec).read_text()
    except OSError as exc:
        raise BadInput(f"cannot read --commits {spec}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _examiner(args, series: Sequence[Series], html: Html | None):
    known = {m.commit: m for s in series for m in s.measurements}

    def resolve(prefix: str, flag: str) -> Measurement:
        hits = [c for c in known if c.startswith(prefix.lower())]
        if len(hits) != 1:
            raise BadInput(f"{flag} {prefix}: {'no' if not hits else 'more than one'} commit with "
                           "results matches")
        return known[hits[0]]

    if args.commits:
        chosen = {resolve(c, "--commits").commit for c in _read_commits(args.commits)}
        return lambda history: chosen
    if args.since:
        # By position, not membership: a series that lacks REV itself still has commits after it.
        key = order_key(html)
        since = key(resolve(args.since, "--since"))
        return lambda history: {m.commit for m in history if key(m) > since}
    return lambda history: {history[-1].commit} if history else set()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    commit_url, thresholds = _config(args.config)
    html = Html.load(args.html_dir) if args.html_dir else None
    if args.commit_url:
        commit_url = args.commit_url
    elif commit_url is None and html is not None and html.show_commit_url not in (None, "", "#"):
        commit_url = html.show_commit_url
    overrides = {**thresholds, **dict(args.threshold_for)}
    series = load_series(args.results, args.machine)
    report = analyse(series, html=html, examine=_examiner(args, series, html), threshold=args.threshold,
                     overrides=overrides, alpha=args.alpha, window=args.window)
    links = Links(commit_url, args.dashboard_url)
    text = markdown(report, links)
    if args.markdown:
        _write(args.markdown, text)
    else:
        print(text)
    if args.json:
        _write(args.json, json.dumps(as_json(report, links), indent=2) + "\n")
    return 1 if report.regressions else 0


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}") from None
