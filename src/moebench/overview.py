"""``moebench overview``: the dashboard's landing page, one table that answers "what got slower?".

asv's own site has no overview (its issue #118): a user with 9 models x 3 dtypes x 6
implementations x 2 ops clicks through graphs one by one. After ``asv publish``, this writes
``HTML_DIR/index.html``: one row per machine x benchmark (L2 class and op) x model x dtype x
implementation, with

- the newest value at a few batch sizes (default T = 1, 256, 4096), each a link to asv's graph of
  that series;
- % of the roofline floor (from the matching ``*_vs_floor`` benchmark) at the largest of them;
- the change against the previous commit and against the previous release tag (or ``--window``
  commits back when there are no tags): the largest of the shown batch sizes, sign kept;
- a sparkline of the last ``--window`` commits, one line per batch size (each on its own scale);
- rows with an open regression (asv's ``regressions.json``) highlighted and listed first.

The table sorts by any column (the vendored jQuery + stupidtable that ``publish-offline`` copies,
so it works offline). asv's own page moves to ``asv.html``; a link into ``index.html#...`` (the
alerts, asv's Atom feed, old bookmarks) is forwarded there, so nothing published before breaks.
Values come from the asv results (the median of each commit's stored rounds: asv's own number),
ordered by the published ``index.json``. Run after every ``asv publish``.
"""

from __future__ import annotations

import argparse
import html as h
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import BadInput

ASV_PAGE = "asv.html"
MARKER = '<meta name="generator" content="moebench overview">'
DEFAULT_TOKENS = (1, 256, 4096)
DEFAULT_WINDOW = 10
_TIME_TRACK = re.compile(r"^(?P<prefix>.*\.(?P<cls>[^.]+))\.track_(?P<op>\w+)$")


@dataclass
class Row:
    machine: str
    benchmark: str
    cls: str
    op: str
    params: tuple[tuple[str, str], ...]  # without tokens; asv's repr of each value
    values: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # T -> [(commit, value)]
    floor_pct: dict[int, float] = field(default_factory=dict)
    regressed: set[int] = field(default_factory=set)
    urls: dict[int, str] = field(default_factory=dict)


def _plain(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value


def collect(results: Path, html_dir: Path, machines: Sequence[str] | None, tokens: Sequence[int]) -> list[Row]:
    from .alerts import Html, asv_steps, graph_url, ordered
    from .asvresults import load_series

    site = Html.load(html_dir)
    rows: dict[tuple, Row] = {}
    floors: dict[tuple, float] = {}
    for s in load_series(results, machines):
        m = _TIME_TRACK.match(s.benchmark)
        params = dict(s.params)
        if m is None or "tokens" not in params or int(params["tokens"]) not in tokens:
            continue
        t = int(params["tokens"])
        rest = tuple((k, v) for k, v in s.params if k != "tokens")
        history = [(x.commit, statistics.median(x.samples)) for x in ordered(s, site) if x.samples]
        if not history:
            continue
        if m["op"].endswith("_vs_floor"):
            floors[(s.machine, f"{m['prefix']}.track_{m['op'][:-len('_vs_floor')]}", rest, t)] = history[-1][1]
            continue
        row = rows.setdefault((s.machine, s.benchmark, rest),
                              Row(s.machine, s.benchmark, m["cls"], m["op"], rest))
        row.values[t] = history
        row.urls[t] = graph_url(ASV_PAGE, s)
        if asv_steps(site, s):
            row.regressed.add(t)
    for row in rows.values():
        for t in row.values:
            ratio = floors.get((row.machine, row.benchmark, row.params, t))
            if ratio:
                row.floor_pct[t] = 100.0 / ratio
    return sorted(rows.values(), key=lambda r: (r.machine, r.cls, r.params, r.op))


def _change(history: list[tuple[str, float]], ref: str | None, back: int) -> float | None:
    """Newest value over the value at commit ``ref`` (else ``back`` commits earlier), minus 1."""
    if len(history) < 2:
        return None
    values = dict(history)
    base = values.get(ref) if ref else None
    if base is None:
        base = history[max(0, len(history) - 1 - back)][1]
    return history[-1][1] / base - 1


def _worst(changes: list[float | None]) -> float | None:
    known = [c for c in changes if c is not None]
    return max(known, key=abs) if known else None


def _sparkline(row: Row, window: int, width: int = 120, height: int = 28) -> str:
    lines = []
    for i, t in enumerate(sorted(row.values)):
        vs = [v for _, v in row.values[t][-window:]]
        if len(vs) < 2:
            continue
        mid = statistics.median(vs)
        rel = [v / mid - 1 for v in vs]
        span = max(0.05, max(abs(r) for r in rel))  # +-5 % fills the box at least
        pts = " ".join(f"{width * k / (len(rel) - 1):.1f},{height / 2 - r / span * (height / 2 - 2):.1f}"
                       for k, r in enumerate(rel))
        lines.append(f'<polyline class="t{i}" points="{pts}"><title>T={t}</title></polyline>')
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<line x1="0" y1="{height / 2}" x2="{width}" y2="{height / 2}" class="mid"/>{"".join(lines)}</svg>')


def _us(seconds: float, unit: str = "seconds") -> str:
    return f"{seconds * 1e6:.2f}" if unit == "seconds" else f"{seconds:.4g}"


def _pct(change: float | None) -> tuple[str, str]:
    if change is None:
        return "–", "0"
    cls = "worse" if change > 0.02 else "better" if change < -0.02 else ""
    return f'<span class="{cls}">{change:+.1%}</span>', f"{change:.6f}"


def render(rows: list[Row], tokens: Sequence[int], window: int, ref_tag: str | None, ref_commit: str | None,
           title: str) -> str:
    machines = sorted({r.machine for r in rows})
    param_names = [k for k, _ in rows[0].params] if rows else []
    ref_label = f"vs {ref_tag}" if ref_tag else f"vs {window} commits back"
    head = ["machine"] * (len(machines) > 1) + ["class", "op"] + param_names
    ths = [f'<th data-sort="string">{h.escape(c)}</th>' for c in head]
    ths += [f'<th data-sort="float">T={t} µs</th>' for t in tokens]
    ths += [f'<th data-sort="float">% floor (T={max(tokens)})</th>', '<th data-sort="float">vs previous</th>',
            f'<th data-sort="float">{h.escape(ref_label)}</th>',
            f"<th>last {window} commits: " + " ".join(f'<span class="t{i}-text">T={t}</span>' for i, t in enumerate(tokens))
            + "</th>"]
    body = []
    changes = {id(r): (_worst([_change(r.values[t], None, 1) for t in r.values]),
                       _worst([_change(r.values[t], ref_commit, window) for t in r.values])) for r in rows}
    ordered_rows = sorted(rows, key=lambda r: (not r.regressed, -abs(changes[id(r)][0] or 0)))
    for r in ordered_rows:
        cells = [r.machine] * (len(machines) > 1) + [r.cls, r.op] + [_plain(v) for _, v in r.params]
        tds = [f"<td>{h.escape(c)}</td>" for c in cells]
        for t in tokens:
            if t in r.values:
                flag = ' class="regressed-cell"' if t in r.regressed else ""
                v = r.values[t][-1][1]
                tds.append(f'<td data-sort-value="{v:.9g}"{flag}><a href="{h.escape(r.urls[t])}">{_us(v)}</a></td>')
            else:
                tds.append('<td data-sort-value="0">–</td>')
        big = max((t for t in tokens if t in r.floor_pct), default=None)
        tds.append(f'<td data-sort-value="{r.floor_pct[big]:.3f}">{r.floor_pct[big]:.0f}%</td>' if big
                   else '<td data-sort-value="0">–</td>')
        for change in changes[id(r)]:
            text, key = _pct(change)
            tds.append(f'<td data-sort-value="{key}">{text}</td>')
        tds.append(f"<td>{_sparkline(r, window)}</td>")
        cls = ' class="regressed"' if r.regressed else ""
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    n_reg = sum(1 for r in rows if r.regressed)
    summary = (f"{len(rows)} series groups · {n_reg} with an open regression (highlighted) · "
               f"changes: the largest over T={', '.join(map(str, tokens))}, sign kept")
    return _PAGE.format(marker=MARKER, title=h.escape(title), summary=h.escape(summary), asv=ASV_PAGE,
                        head="".join(ths), body="\n".join(body))


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8">{marker}
<script>if (location.hash.length > 1) location.replace("{asv}" + location.hash);</script>
<title>{title}</title>
<link rel="icon" href="swallow.ico">
<link rel="stylesheet" href="vendor/bootstrap-3.1.1/css/bootstrap.min.css">
<style>
 body {{ padding: 16px; }} td, th {{ white-space: nowrap; font-size: 13px; }}
 tr.regressed td {{ background: #fde2e1; }} td.regressed-cell {{ font-weight: bold; }}
 .worse {{ color: #b60205; font-weight: bold; }} .better {{ color: #1a7f37; }}
 th[data-sort] {{ cursor: pointer; }} svg.spark polyline {{ fill: none; stroke-width: 1.4; }}
 svg.spark line.mid {{ stroke: #ccc; }} .t0 {{ stroke: #1f77b4; }} .t1 {{ stroke: #ff7f0e; }} .t2 {{ stroke: #2ca02c; }}
 .t0-text {{ color: #1f77b4; }} .t1-text {{ color: #ff7f0e; }} .t2-text {{ color: #2ca02c; }}
</style></head>
<body>
<h3>{title} <small><a href="{asv}">all benchmarks and graphs (asv)</a> ·
<a href="{asv}#/regressions">regressions</a></small></h3>
<p id="summary">{summary}. Click a header to sort; a value opens its graph.</p>
<table id="overview" class="table table-condensed table-hover">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
<script src="vendor/jquery-3.3.1/jquery.min.js"></script>
<script src="vendor/stupid-table-plugin-1.1.3/stupidtable.min.js"></script>
<script>$(function () {{ $("#overview").stupidtable(); }});</script>
</body></html>
"""


def build(results: Path, html_dir: Path, *, machines: Sequence[str] | None = None,
          tokens: Sequence[int] = DEFAULT_TOKENS, window: int = DEFAULT_WINDOW) -> Path:
    """Write the overview as ``html_dir/index.html`` (asv's page moved to ``asv.html``)."""
    from .dashboard import make_offline

    index = html_dir / "index.html"
    make_offline(html_dir)  # the vendored libraries the page loads; asv's pages rewritten
    text = index.read_text(encoding="utf-8", errors="replace")
    if MARKER not in text:  # asv's page, freshly published: it moves
        (html_dir / ASV_PAGE).write_text(text, encoding="utf-8")
    if not (html_dir / ASV_PAGE).is_file():
        raise BadInput(f"{html_dir / ASV_PAGE} is missing: run `asv publish` again, then this")
    meta = json.loads((html_dir / "index.json").read_text())
    rows = collect(results, html_dir, machines, tokens)
    ref_tag, ref_commit = _previous_tag(meta)
    title = f"{meta.get('project', 'moebench')}: what changed"
    index.write_text(render(rows, tokens, window, ref_tag, ref_commit, title), encoding="utf-8")
    return index


def _previous_tag(meta: dict) -> tuple[str | None, str | None]:
    """The newest release tag before the newest commit with results (asv's index.json)."""
    tags = meta.get("tags") or {}
    revisions = {int(r): c for r, c in (meta.get("revision_to_hash") or {}).items()}
    if not tags or not revisions:
        return None, None
    newest = max(revisions)
    before = [(rev, tag) for tag, rev in tags.items() if int(rev) < newest and int(rev) in revisions]
    if not before:
        return None, None
    rev, tag = max(before)
    return tag, revisions[rev]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moebench overview", description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="asv results directory")
    p.add_argument("--html-dir", type=Path, default=Path("html"), help="`asv publish` output (default: html)")
    p.add_argument("--machine", action="append", help="machine name (repeatable; default: all)")
    p.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS), help="batch sizes shown")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="commits in the sparkline")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.window < 2 or any(t < 1 for t in args.tokens):
        raise BadInput("--window must be >= 2 and --tokens positive")
    out = build(args.results, args.html_dir, machines=args.machine, tokens=args.tokens, window=args.window)
    print(f"wrote {out} (asv's page: {out.with_name(ASV_PAGE)})")
    return 0
