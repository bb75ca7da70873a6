"""``moebench alerts``: arguments, the project's asv config, and the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence


from ..argtypes import positive_int
from ..asvresults import Measurement, Series, load_series
from ..errors import BadInput, one_line

from .detect import DASHBOARD_ENV, DEFAULT_ALPHA, DEFAULT_THRESHOLD, DEFAULT_WINDOW, Html, order_key
from .report import Links, analyse, as_json, markdown

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


def read_config(path: Path | None) -> tuple[str | None, dict[str, float]]:
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
    commit_url, thresholds = read_config(args.config)
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
    emit(text, args.markdown, as_json(report, links) if args.json else None, args.json)
    return 1 if report.regressions else 0


def emit(text: str, markdown_path: Path | None, payload: dict | None, json_path: Path | None) -> None:
    """A report as the nightly's steps read it: markdown to ``markdown_path`` (else stdout), and
    ``payload`` as JSON to ``json_path`` where given."""
    if markdown_path:
        write_text(markdown_path, text)
    else:
        print(text)
    if json_path and payload is not None:
        write_text(json_path, json.dumps(payload, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}") from None
