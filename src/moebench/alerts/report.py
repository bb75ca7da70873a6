"""Findings as people and the nightly read them: links into the dashboard, markdown, one issue
per benchmark and machine, JSON.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Sequence
from urllib.parse import quote


from ..asvresults import Measurement, Series, param_value, scaled
from ..axes import CONTROL_IMPLS
from ..errors import BadInput

from .detect import ISSUE_LABEL, LOOKBACK, SLOWER, Change, Html, Interval, detect, ordered, threshold_for

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
    # what the control series (``axes.CONTROL_IMPLS``: same benchmark, shape, dtype, T, L2 and
    # machine) did at the same commit: {"impl", "ratio", "slower"}; None where none was measured
    control: dict | None = None

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
            "asv_find": self.asv_find(), "asv_step_detection": self.asv_step, "control": self.control,
        }


def _numbers(template: str, values: Sequence[float], unit: str) -> str:
    """``values`` with four significant digits on the first one's scale, filled into ``template``,
    then the unit: a 0.1 % interval stays visible (18.81 [18.79, 18.83] µs), which asv's
    three-digit ``human_value`` would print as 18.8 [18.8, 18.8]."""
    factor, name = scaled(values[0], unit)
    return f"{template.format(*(f'{v / factor:#.4g}' for v in values))} {name}".strip()


def _value(x: float, unit: str) -> str:
    return _numbers("{}", [x], unit)


def interval_text(iv: Interval, unit: str) -> str:
    return _numbers("{} [{}, {}]", [iv.median, iv.lo, iv.hi], unit)


def finding_markdown(f: Finding, links: Links) -> str:
    c, s = f.change, f.series
    rng = f"{links.commit(f.before_commit)}..{links.commit(c.commit)}"
    compare_url = links.compare(f.before_commit, c.commit)
    lines = [
        f"#### `{s.benchmark}` ({s.label}) on `{s.machine}`",
        "",
        f"- **{interval_text(c.before, s.unit)} → {interval_text(c.after, s.unit)}** "
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
    if f.control is not None:
        ctl = f.control
        verdict = ("slower too: **likely the machine, not this commit**" if ctl["slower"]
                   else "no step: the change is this commit's")
        lines.append(f"- control `{ctl['impl']}` (same shape, moebench's own code) at this commit: "
                     f"×{ctl['ratio']:.3f}, {verdict}")
    lines += [f"- bisect: `{f.asv_find()}`", ""]
    return "\n".join(lines)


def asv_steps(html: Html, s: Series) -> list[dict]:
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


# ---------------------------------------------------------------- controls


def _impl(s: Series) -> str | None:
    value = dict(s.params).get("impl")
    return None if value is None else param_value(value)


def _shape_key(s: Series) -> tuple:
    """What a series and its controls share: everything but the implementation."""
    return (s.benchmark, s.machine, s.env, tuple(p for p in s.params if p[0] != "impl"))


def _control(commit: str, controls: list[tuple[Series, tuple[Measurement, ...], set[str]]],
             window: int) -> dict | None:
    """The first control series measured at ``commit``: its median there over the median of up to
    ``window`` commits before, and whether detection found it slower there."""
    for s, history, slower_at in controls:
        at = next((i for i, m in enumerate(history) if m.commit == commit), None)
        if not at:  # not measured at this commit, or nothing before it
            continue
        before = [x for m in history[max(0, at - window):at] for x in m.samples]
        return {"impl": _impl(s), "ratio": statistics.median(history[at].samples) / statistics.median(before),
                "slower": commit in slower_at}
    return None


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
    controls: dict[tuple, list] = {}  # shape key -> [(control series, its history, commits it slowed at)]
    examined = sorted({c for _, _, t in plans for c in t})
    for s, history, targets in plans:
        first = next((i for i, m in enumerate(history) if m.commit in targets), len(history))
        history = history[max(0, first - LOOKBACK * window):]
        changes = detect(history, threshold_for(s.entry, threshold, overrides), per_test, window)
        if _impl(s) in CONTROL_IMPLS:
            controls.setdefault(_shape_key(s), []).append(
                (s, history, {c.commit for c in changes if c.direction == SLOWER}))
        steps = asv_steps(html, s) if html else []
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
    controls = {k: sorted(v, key=lambda c: CONTROL_IMPLS.index(_impl(c[0]))) for k, v in controls.items()}
    regressions = [replace(f, control=_control(f.change.commit, controls.get(_shape_key(f.series), []), window))
                   if _impl(f.series) not in CONTROL_IMPLS else f for f in regressions]
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
