"""``moebench bisect``: from a regression alert to the culprit commit, measured unattended.

The nightly measures only the branch tip, so an alert names a range — the last measured commit
before it (*good*) .. the commit that alerted (*bad*) — that can hold dozens of commits. For every
regression in ``moebench alerts --json`` whose range holds more than one commit, this bisects the
range for that one series:

- **Measure the middle commit, and only the regressed series**: ``asv run`` with ``--bench`` set to
  the series' exact entry (``name(param values)``) and, for moebench's own suite, the
  ``MOEBENCH_*`` variables set to its one model, dtype, implementation, batch size and L2 mode,
  so ``setup_cache`` measures one point. The run goes to a scratch results directory, never into
  the nightly's ``results/``; commits the nightly already measured are read from there instead.
- **Judge it with the alerts' own rule** (``alerts.compare``, the same threshold): the commit is on
  the slow side when it is a slowdown against the good end's baseline, on the fast side when it is
  an improvement against the bad end. Neither (or both) is *inconclusive*: the bisection stops and
  says so with the values it saw. It never guesses.
- **Bounded**: at most ``--max-commits`` measurements per invocation, over all bisections; an
  unfinished one stays in ``--state`` (a JSON file the nightly commits with the results) and
  resumes at the next invocation, before any new one starts.

Output: markdown and ``--json``; its ``issues`` use the titles of the alerts' issues, so the
workflow's issue step comments on the regression's own issue with the culprit: commit, link,
title, before/after values with intervals, and how many commits were measured. Exit 0 (also
while bisections are still running), 2 on bad input.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .argtypes import positive_int
from .errors import BadInput

RUNNING, FOUND, INCONCLUSIVE = "running", "found", "inconclusive"
DEFAULT_MAX_COMMITS = 8
STATE_VERSION = 1


@dataclass
class Bisection:
    """One range of one series, as kept in the state file between nights."""

    machine: str
    benchmark: str
    entry: str
    params: list[list[str]]  # [[name, asv repr of the value], ...]
    unit: str
    threshold: float
    alpha: float
    commits: list[str]  # good, every commit after it, ..., bad (first-parent order)
    baseline: list[str]  # the alert's baseline commits: the good side's values
    lo: int = 0  # newest index known good
    hi: int = -1  # oldest index known bad
    values: dict[str, list[float]] = field(default_factory=dict)  # commit -> round values
    measured: list[str] = field(default_factory=list)  # commits this bisection ran asv for
    steps: list[dict] = field(default_factory=list)
    status: str = RUNNING
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.machine}|{self.entry}|{self.commits[0][:12]}..{self.commits[-1][:12]}"

    @property
    def culprit(self) -> str | None:
        return self.commits[self.hi] if self.status == FOUND else None


# ---------------------------------------------------------------- measuring


class CommitRunner:
    """Runs asv for one series at one commit into a scratch results directory."""

    def __init__(self, conf_path: Path, machine: str, scratch: Path) -> None:
        from asv import util
        from asv.config import Config
        from asv.repo import get_repo

        self.machine, self.scratch = machine, scratch
        try:
            conf = util.load_json(str(conf_path), js_comments=True)
            self.config = Config.load(str(conf_path))
        except util.UserError as exc:
            raise BadInput(f"bad --config {conf_path}: {exc}") from None
        base = conf_path.resolve().parent
        conf.update({
            "results_dir": str((scratch / "results").resolve()), "html_dir": str((scratch / "html").resolve()),
            "benchmark_dir": str((base / conf.get("benchmark_dir", "benchmarks")).resolve()),
            "env_dir": str((base / conf.get("env_dir", "env")).resolve()),
        })
        if not re.match(r"^[a-z]+://|^git@", conf.get("repo", "")):
            conf["repo"] = str((base / conf.get("repo", ".")).resolve())
        scratch.mkdir(parents=True, exist_ok=True)
        self.conf_path = scratch / "asv.conf.json"
        self.conf_path.write_text(json.dumps(conf, indent=2))
        self.existing = conf.get("environment_type") == "existing"
        cwd = os.getcwd()
        try:  # asv resolves a remote repository's mirror relative to the config's folder
            os.chdir(base)
            self.repo = get_repo(self.config)
        finally:
            os.chdir(cwd)

    def commits_between(self, good: str, bad: str) -> list[str]:
        """good, then every first-parent commit after it up to bad, oldest first."""
        after = list(reversed(self.repo.get_hashes_from_range(f"{good}..{bad}")))
        if not after or after[-1] != bad:
            raise BadInput(f"{bad[:8]} is not a first-parent descendant of {good[:8]} in {self.config.repo}")
        return [good, *after]

    def subject(self, sha: str) -> str:
        # asv 0.6.6's Git keeps its repository (a local one or its mirror) in _path.
        out = subprocess.run(["git", "-C", self.repo._path, "log", "-1", "--format=%s", sha],
                             capture_output=True, text=True)
        return out.stdout.strip()

    def series_at(self, b: Bisection, sha: str) -> tuple[list[float], str]:
        """Round values of ``b``'s series at ``sha``, or ``([], why not)``."""
        from .asvlocal import asv, run_commit

        env = {**os.environ, **suite_env(b.benchmark, dict(b.params))}
        bench = "^" + re.escape(b.entry) + "$"
        if self.existing:  # this environment, filed under the commit: check the commit out first
            git = ["git", "-C", self.repo._path]
            # back to the branch afterwards, or to the very commit where HEAD was detached
            branch = (subprocess.run([*git, "symbolic-ref", "-q", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()
                      or subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip())
            subprocess.run([*git, "checkout", "-q", sha], check=True)
            try:
                proc = run_commit(self.conf_path, sha, machine=self.machine, env=env, bench=bench, capture=True)
            finally:
                subprocess.run([*git, "checkout", "-q", branch], check=True)
        else:  # asv installs the commit into its environment, as the nightly's own run does
            proc = asv(["run", f"{sha}^!", "--machine", self.machine, "--record-samples", "--show-stderr",
                        "--bench", bench], self.conf_path, env, capture=True)
        from .asvresults import load_series

        try:
            series = load_series(self.scratch / "results", [self.machine], b.benchmark)
        except BadInput as exc:
            return [], f"asv run gave no results (exit {proc.returncode}): {exc}"
        for s in series:
            if [list(p) for p in s.params] == b.params:
                hit = [m for m in s.measurements if m.commit == sha and m.samples]
                if hit:
                    return list(hit[-1].samples), ""
        tail = " ".join((proc.stdout + proc.stderr).split()[-40:])
        return [], f"no value for this series at {sha[:8]} (asv exit {proc.returncode}): {tail}"


def suite_env(benchmark: str, params: dict[str, str]) -> dict[str, str]:
    """The MOEBENCH_* variables that make moebench's suite measure just this one point; nothing
    for another suite (its ``--bench`` selection is all there is)."""
    from . import suite
    from .asvresults import param_value

    cls = benchmark.split(".")[-2] if benchmark.count(".") >= 2 else ""
    l2 = next((mode for mode, name in suite.L2_CLASSES.items() if name == cls), None)
    if l2 is None or set(params) != set(suite.PARAM_NAMES):
        return {}
    value = {k: str(param_value(v)) for k, v in params.items()}
    return {"MOEBENCH_MODELS": value["model"], "MOEBENCH_DTYPES": value["dtype"],
            "MOEBENCH_IMPLS": value["impl"], "MOEBENCH_BATCH_SIZES": value["tokens"], "MOEBENCH_L2": l2,
            "MOEBENCH_COLD_MODELS": "", "MOEBENCH_RAY": "off"}  # "": the nightly's cold-L2 list does not apply


# ---------------------------------------------------------------- deciding


def judge(b: Bisection, sha: str) -> tuple[str, dict]:
    """'bad' (slow side), 'good' (fast side) or INCONCLUSIVE, with the numbers behind it."""
    from .alerts import FASTER, SLOWER, Interval, compare
    from .asvresults import Measurement

    def m(c: str) -> Measurement:
        return Measurement(c, 0, tuple(b.values[c]))

    step = m(sha)
    slow = compare([m(c) for c in b.baseline], step, b.threshold, b.alpha)
    fast = compare([m(b.commits[-1])], step, b.threshold, b.alpha)
    is_slow = slow is not None and slow.direction == SLOWER
    is_fast = fast is not None and fast.direction == FASTER
    side = "bad" if is_slow and not is_fast else "good" if is_fast and not is_slow else INCONCLUSIVE
    iv = Interval.of(step.samples)
    return side, {"commit": sha, "side": side, "median": iv.median, "lo": iv.lo, "hi": iv.hi, "rounds": len(step.samples)}


def advance(b: Bisection, runner: CommitRunner, budget: int) -> int:
    """Bisect ``b`` until it ends or ``budget`` measurements are spent; returns the ones spent."""
    spent = 0
    if b.hi < 0:
        b.hi = len(b.commits) - 1
    while b.status == RUNNING:
        if b.hi - b.lo <= 1:
            b.status = FOUND
            break
        mid = (b.lo + b.hi) // 2
        sha = b.commits[mid]
        if sha not in b.values:
            if spent >= budget:
                break
            values, why = runner.series_at(b, sha)
            spent += 1
            b.measured.append(sha)
            if not values:
                b.status, b.reason = INCONCLUSIVE, why
                b.steps.append({"commit": sha, "side": INCONCLUSIVE, "reason": why})
                break
            b.values[sha] = values
        side, step = judge(b, sha)
        b.steps.append(step)
        if side == "bad":
            b.hi = mid
        elif side == "good":
            b.lo = mid
        else:
            b.status = INCONCLUSIVE
            b.reason = (f"{sha[:8]} is neither a slowdown against the good side nor an improvement "
                        "against the bad side: no single step to name")
    return spent


# ---------------------------------------------------------------- state, alerts, report


def load_state(path: Path) -> dict[str, Bisection]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
        return {k: Bisection(**v) for k, v in data["bisections"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"bisection state {path} is not readable: {exc}") from None


def save_state(path: Path, state: dict[str, Bisection]) -> None:
    from .files import atomic_write

    payload = {"version": STATE_VERSION, "bisections": {k: asdict(b) for k, b in state.items()}}
    atomic_write(path, lambda f: json.dump(payload, f, indent=1))


def from_alerts(report: dict, machine: str | None, results: Path,
                runner: CommitRunner) -> tuple[list[Bisection], dict[str, list[str]]]:
    """A bisection for every regression whose range holds more than one commit; and the others:
    culprit commit -> the entries whose alert already names it (good and bad are adjacent)."""
    from .asvresults import load_series

    try:
        regressions, alpha = report["regressions"], float(report["settings"]["alpha"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"--alerts is not a `moebench alerts --json` report: {exc!r}") from None
    values = {}
    for s in load_series(results, [machine] if machine else None):
        for m in s.measurements:
            values[(s.machine, s.entry, m.commit)] = list(m.samples)
    out, adjacent = [], {}
    for r in regressions:
        if machine and r["machine"] != machine:
            continue
        good, bad = r["before_commits"][-1], r["commit"]
        commits = runner.commits_between(good, bad)
        if len(commits) <= 2:  # adjacent: the alert already names the commit
            adjacent.setdefault(bad, []).append(r["entry"])
            continue
        b = Bisection(machine=r["machine"], benchmark=r["benchmark"], entry=r["entry"],
                      params=[[k, v] for k, v in r["params"].items()], unit=r["unit"],
                      threshold=float(r["threshold"]), alpha=alpha, commits=commits,
                      baseline=list(r["before_commits"]))
        # every commit of the range the nightly measured already counts, the ends included
        b.values = {c: values[(b.machine, b.entry, c)] for c in {*commits, *b.baseline}
                    if values.get((b.machine, b.entry, c))}
        if not all(c in b.values for c in {*b.baseline, bad}):
            raise BadInput(f"{b.entry} on {b.machine}: the alert's commits have no stored rounds in {results}")
        out.append(b)
    return out, adjacent


def _interval(values: Sequence[float], unit: str) -> str:
    from .alerts import Interval, interval_text

    return interval_text(Interval.of(values), unit)


def markdown(b: Bisection, runner_subject, commit_link) -> str:
    good, bad = b.commits[0], b.commits[-1]
    n_range = len(b.commits) - 1
    head = f"#### Bisection of `{b.entry}` on `{b.machine}`: "
    lines = []
    if b.status == FOUND:
        c = b.culprit
        parent = b.commits[b.hi - 1]
        lines += [head + f"culprit {commit_link(c)}", "",
                  f"- **{commit_link(c)} {runner_subject(c)}**",
                  f"- before ({commit_link(parent)}): {_interval(b.values[parent], b.unit)}; "
                  f"after ({commit_link(c)}): {_interval(b.values[c], b.unit)} (median [99 % interval])"]
    elif b.status == INCONCLUSIVE:
        lines += [head + "inconclusive", "", f"- {b.reason}"]
    else:
        lines += [head + "still running", "",
                  f"- narrowed to {commit_link(b.commits[b.lo])}..{commit_link(b.commits[b.hi])} "
                  f"({b.hi - b.lo} commit(s)); continues at the next run"]
    lines.append(f"- range {commit_link(good)}..{commit_link(bad)} ({n_range} commits); "
                 f"{len(b.measured)} commit(s) measured for this bisection")
    seen = [s for s in b.steps if "median" in s]
    if seen:
        lines.append("- values seen: " + "; ".join(
            f"{commit_link(s['commit'])} {_interval(b.values[s['commit']], b.unit)} → {s['side']}" for s in seen))
    return "\n".join(lines + [""])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moebench bisect", description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="asv results directory (the nightly's results/)")
    p.add_argument("--alerts", type=Path, help="`moebench alerts --json` report whose regressions to bisect")
    p.add_argument("--state", type=Path, required=True, help="bisections in progress (read, then rewritten)")
    p.add_argument("--config", type=Path, default=Path("asv.conf.json"), help="the project's asv.conf.json")
    p.add_argument("--machine", required=True, help="asv machine to measure on")
    p.add_argument("--max-commits", type=positive_int, default=DEFAULT_MAX_COMMITS,
                   help=f"measurements per run, all bisections together (default {DEFAULT_MAX_COMMITS})")
    p.add_argument("--scratch", type=Path, help="where asv writes the bisection's own results "
                                                "(default: a temporary folder)")
    p.add_argument("--markdown", type=Path, help="write the markdown report here (default: stdout)")
    p.add_argument("--json", type=Path, help="write the JSON report (with issues) here")
    p.add_argument("--commit-url", help="commit link prefix (default: show_commit_url of --config)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .alerts import ISSUE_LABEL, emit, read_config

    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.config.is_file():
        raise BadInput(f"--config {args.config}: no such file")
    commit_url, _ = read_config(args.config)
    commit_url = args.commit_url or commit_url
    state = load_state(args.state)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="moebench-bisect-"))
    runner = CommitRunner(args.config, args.machine, scratch)
    if args.alerts:
        try:
            report = json.loads(args.alerts.read_text())
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read --alerts {args.alerts}: {exc}") from None
        found, adjacent = from_alerts(report, args.machine, args.results, runner)
        for b in found:
            state.setdefault(b.key, b)
    else:
        adjacent = {}
    budget = args.max_commits
    touched = []
    for b in sorted(state.values(), key=lambda b: b.key):  # unfinished ones first, in a stable order
        if b.status != RUNNING or b.machine != args.machine:
            continue
        budget -= advance(b, runner, budget)
        touched.append(b)
        save_state(args.state, state)  # after every bisection: nothing measured is lost
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)

    def link(sha: str) -> str:
        return f"[`{sha[:8]}`]({commit_url}{sha})" if commit_url else f"`{sha[:8]}`"

    subject = functools.cache(runner.subject)  # one git call per culprit, for markdown and JSON
    blocks = {b.key: markdown(b, subject, link) for b in touched}
    text = "\n".join(["## Bisections", ""] + list(blocks.values())) if blocks else "## Bisections\n\nnone to run\n"
    if adjacent:
        text += "\n## Culprits the alerts name directly (no commit between good and bad)\n\n" + "".join(
            f"- **{link(c)} {subject(c)}**: {len(entries)} series, e.g. `{entries[0]}`\n"
            for c, entries in adjacent.items())
    issues = [{"key": f"{b.benchmark}@{b.machine}", "title": f"Performance regression: {b.benchmark} on {b.machine}",
               "labels": [ISSUE_LABEL], "body": blocks[b.key]} for b in touched if b.status != RUNNING]
    out = {"bisections": [{**asdict(b), "key": b.key, "culprit": b.culprit,
                           "culprit_subject": subject(b.culprit) if b.culprit else None}
                          for b in touched],
           "named_by_alerts": [{"culprit": c, "culprit_subject": subject(c), "entries": entries}
                               for c, entries in adjacent.items()],
           "issues": issues, "commits_measured": args.max_commits - budget}
    emit(text, args.markdown, out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
