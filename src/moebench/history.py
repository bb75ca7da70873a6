"""One benchmark's history across commits as a PNG: ``moebench plot-history``.

The dashboard answers "how did this move?" in a browser; a pull-request comment or an issue
needs a picture. This reads an asv results directory with asv's own loader (so it sees exactly
what ``asv publish`` sees: same results, same benchmark-version filter) and plots, per commit in
commit-date order, the median with the interquartile band (the 99% confidence interval where asv
kept no quartiles), one line per parameter combination that ``--param`` leaves open.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .asvresults import param_value
from .errors import BadInput

MAX_LINES = 8  # more lines than this are unreadable in one panel; --param narrows the choice


@dataclass(frozen=True)
class Line:
    """One parameter combination over the commits that measured it (values in the benchmark's unit)."""

    label: str
    commits: tuple[str, ...]
    x: tuple[int, ...]  # index into History.commits
    median: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


@dataclass(frozen=True)
class History:
    benchmark: str
    title: str  # the benchmark's pretty name where the suite gives one
    machine: str
    unit: str
    band: str  # what low/high are: "IQR", "99% CI" (asv kept no quartiles) or "none"
    commits: tuple[str, ...]  # full hashes, oldest commit date first
    dates_ms: tuple[int, ...]
    fixed: tuple[str, ...]  # "name=value" of the parameters every line shares
    lines: tuple[Line, ...]
    omitted: int  # combinations with data beyond MAX_LINES, not drawn


def _value(text: str) -> str:
    """asv stores parameter values as repr() strings: show 'fp8' as fp8."""
    return str(param_value(text))


def _close(name: str, choices: Sequence[str]) -> str:
    """Close matches to name, for an error message: spelling neighbours and substring hits."""
    hits = [c for c in choices if name.lower() in c.lower()]
    hits += [c for c in difflib.get_close_matches(name, choices, n=5, cutoff=0.5) if c not in hits]
    return f"; close matches: {', '.join(hits[:5])}" if hits else ""


def _benchmark(results: Path, name: str) -> dict:
    path = results / "benchmarks.json"
    try:
        benchmarks = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path} not found: --results must be asv's results_dir after `asv run`") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    benchmarks.pop("version", None)
    if name in benchmarks:
        return benchmarks[name]
    # The dashboard shows pretty names: accept one that names exactly one benchmark.
    pretty = [b for b in benchmarks.values() if b.get("pretty_name") == name]
    if len(pretty) == 1:
        return pretty[0]
    names = sorted(set(benchmarks) | {b["pretty_name"] for b in benchmarks.values() if b.get("pretty_name")})
    raise BadInput(f"no benchmark {name!r} in {path} ({len(benchmarks)} benchmarks){_close(name, names)}")


def _machine(results: Path, machine: str | None) -> str:
    machines = sorted(p.parent.name for p in results.glob("*/machine.json"))
    if machine is None:
        if len(machines) == 1:
            return machines[0]
        raise BadInput(f"{results} holds {'no machine' if not machines else 'several machines'}"
                       f"{': ' + ', '.join(machines) if machines else ''}; pick one with --machine")
    if machine not in machines:
        raise BadInput(f"no results for machine {machine!r} in {results} "
                       f"(machines: {', '.join(machines) or 'none'}){_close(machine, machines)}")
    return machine


def _selection(bench: dict, given: Sequence[str]) -> list[tuple[str, ...]]:
    """The parameter tuples (asv repr strings) that --param k=v leaves, in asv's order."""
    names, values = bench.get("param_names", []), bench.get("params", [])
    chosen: dict[str, str] = {}
    for item in given:
        key, sep, want = item.partition("=")
        if not sep:
            raise BadInput(f"--param {item!r}: expected NAME=VALUE")
        if key not in names:
            raise BadInput(f"--param {key}: {bench['name']} has parameters {', '.join(names) or '(none)'}")
        options = values[names.index(key)]
        match = [v for v in options if want in (v, _value(v))]
        if not match:
            raise BadInput(f"--param {key}={want}: values are {', '.join(_value(v) for v in options)}")
        chosen[key] = match[0]
    return [combo for combo in itertools.product(*values)
            if all(combo[names.index(k)] == v for k, v in chosen.items())]


def load_history(results: str | Path, benchmark: str, params: Sequence[str] = (),
                 machine: str | None = None, max_lines: int = MAX_LINES) -> History:
    """One benchmark's lines from asv's results (``asvresults``: the same series the alerts see);
    BadInput names what is missing."""
    from .asvresults import load_series

    results = Path(results)
    if not results.is_dir():
        raise BadInput(f"--results {results}: no such directory")
    bench = _benchmark(results, benchmark)
    benchmark = bench["name"]
    machine = _machine(results, machine)
    combos = _selection(bench, params)
    names = bench.get("param_names", [])
    # Parameters with one value left are the same for every line: said once, in the title.
    varying = [i for i in range(len(names)) if len({c[i] for c in combos}) > 1]
    fixed = tuple(f"{names[i]}={_value(combos[0][i])}" for i in range(len(names)) if i not in varying)

    wanted = set(combos)
    series = [s for s in load_series(results, [machine], benchmark) if tuple(v for _, v in s.params) in wanted]
    runs = sorted({(m.date_ms, m.commit) for s in series for m in s.measurements})
    commits = tuple(dict.fromkeys(c for _, c in runs))
    dates = {c: d for d, c in runs}
    commit_index = {c: i for i, c in enumerate(commits)}
    envs = sorted({s.env for s in series})
    order = {c: i for i, c in enumerate(combos)}

    bands: set[str] = set()
    lines: list[Line] = []
    for s in sorted(series, key=lambda s: (envs.index(s.env), order[tuple(v for _, v in s.params)])):
        pts = []
        for m in sorted(s.measurements, key=lambda m: commit_index[m.commit]):
            st = m.stats or {}
            if "q_25" in st and "q_75" in st:
                lo, hi = st["q_25"], st["q_75"]
                bands.add("IQR")
            elif "ci_99_a" in st and "ci_99_b" in st:
                lo, hi = st["ci_99_a"], st["ci_99_b"]
                bands.add("99% CI")
            else:
                lo = hi = m.value
            pts.append((commit_index[m.commit], m.commit, m.value, lo, hi))
        combo = tuple(v for _, v in s.params)
        label = ", ".join(f"{names[i]}={_value(combo[i])}" for i in varying) or benchmark
        if len(envs) > 1:
            label += f" [{s.env}]"
        x, c, med, lo, hi = zip(*pts)
        lines.append(Line(label, c, x, med, lo, hi))
    if not lines:
        raise BadInput(f"no measured results of {benchmark}"
                       f"{' with ' + ' '.join(params) if params else ''} for machine {machine} in {results}")
    return History(benchmark=benchmark, title=bench.get("pretty_name") or benchmark, machine=machine,
                   unit=bench.get("unit", ""), band=" / ".join(sorted(bands)) or "none", commits=commits,
                   dates_ms=tuple(dates[c] for c in commits), fixed=fixed, lines=tuple(lines[:max_lines]),
                   omitted=max(0, len(lines) - max_lines))


def _scale(history: History) -> tuple[float, str]:
    """Factor and unit to draw in: the alerts' own scaling of the largest median."""
    from .asvresults import scaled

    divisor, name = scaled(max(max(line.median) for line in history.lines), history.unit)
    return 1.0 / divisor, name


def plot_history(history: History, path: str | Path) -> None:
    """Median per commit with its band, one line per combination; x ticks are short hashes + dates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import figure_format

    factor, unit = _scale(history)
    n = len(history.commits)
    fig, ax = plt.subplots(figsize=(max(7.5, min(16.0, 0.45 * n + 4)), 5.2))
    for i, line in enumerate(history.lines):
        color = f"C{i % 10}"
        ax.fill_between(line.x, [v * factor for v in line.low], [v * factor for v in line.high],
                        color=color, alpha=0.18, lw=0)
        ax.plot(line.x, [v * factor for v in line.median], color=color, marker="o", ms=4, lw=1.4,
                label=line.label)
    step = max(1, math.ceil(n / 24))  # at most ~24 tick labels, the newest always labelled
    ticks = sorted(set(range(n - 1, -1, -step)))
    day = [time.strftime("%Y-%m-%d", time.gmtime(ms / 1000)) for ms in history.dates_ms]
    ax.set_xticks(ticks, [f"{history.commits[i][:8]}\n{day[i]}" for i in ticks], fontsize=8,
                  rotation=0 if len(ticks) <= 12 else 90)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set(xlabel="commit (oldest → newest, by commit date)",
           ylabel=f"median {unit} (band: {history.band})" if unit else f"median (band: {history.band})")
    ax.grid(True, alpha=0.3)
    subtitle = " · ".join((f"machine {history.machine}",) + history.fixed)
    if history.omitted:
        subtitle += (f"\n{len(history.lines)} of {len(history.lines) + history.omitted} parameter "
                     "combinations shown: fix more with --param NAME=VALUE")
    ax.set_title(f"{history.title}\n{subtitle}", fontsize=10)
    if len(history.lines) > 1:
        # Listed top to bottom in the order the lines end, so the legend reads like the plot.
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: -history.lines[i].median[-1])
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110, format=figure_format(out, fig))  # exactly this path, no suffix added
    except OSError as exc:
        raise BadInput(f"cannot write --out {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moebench plot-history",
        description="Plot one benchmark's median (with IQR band) per commit from asv results, as a PNG.")
    p.add_argument("--results", default="results", help="asv results_dir (default: results)")
    p.add_argument("--benchmark", required=True, help="full asv name, as in results/benchmarks.json")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a parameter (repeatable); open ones give one line per value")
    p.add_argument("--machine", help="asv machine name (default: the only one in --results)")
    p.add_argument("--max-lines", type=int, default=MAX_LINES, help=f"lines drawn at most (default {MAX_LINES})")
    p.add_argument("--out", required=True, metavar="PNG")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.max_lines < 1:
        raise BadInput(f"--max-lines must be >= 1, got {args.max_lines}")
    history = load_history(args.results, args.benchmark, args.param, args.machine, args.max_lines)
    plot_history(history, args.out)
    points = sum(len(line.x) for line in history.lines)
    print(f"wrote {args.out}: {len(history.lines)} line(s), {points} point(s) over {len(history.commits)} commit(s)")
    if history.omitted:
        print(f"note: {history.omitted} more parameter combination(s) not drawn; narrow with --param NAME=VALUE")
    return 0
