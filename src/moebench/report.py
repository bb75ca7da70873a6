"""Human output of a sweep: the table per batch size and the latency/roofline plot.

Every number is a point's value (the median of its rounds); next to it the table shows how far
its independent rounds were apart, and the plot's band spans the lowest to the highest round.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

from rich.console import Console
from rich.table import Table

from .results import OK, OPS, SKIPPED, PointResult


def _cell(r: PointResult, op: str) -> list[str]:
    o = r.op(op)
    if o is None:
        return ["-", "-", "-", "-"]
    flag = (" !" if o.throttled else "") + (" ↻" if o.retaken else "")
    return [f"{o.median_us:.2f}{flag}", f"{100 * o.round_spread:.1f}%", f"{o.gbps:.0f}", f"{o.pct_of_floor:.0f}%"]


def table(results: list[PointResult], title: str) -> Table:
    """One row per measured point, sections per batch size; failed points show their reason."""
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in ("T", "impl", "dtype"):
        t.add_column(col, justify="right" if col == "T" else "left")
    for op in OPS:
        for col in ("µs", "Δrounds", "GB/s", "%floor"):
            t.add_column(f"{op[:5]} {col}", justify="right")
    devices = {(r.device, r.clock) for r in results if r.status != SKIPPED}
    per_row_device = len(devices) > 1  # a mixed cluster: never let two cards blur together
    if per_row_device:
        t.add_column("device / clock")
    elif devices:
        (device, clock), = devices
        rounds = max((len(o.rounds_us) for r in results for o in r.ops), default=0)
        t.caption = (f"{device} · {'CUDA-graph timer' if clock == 'cuda-graph' else 'CPU host timer, not GPU data'}"
                     f" · µs per call: median of {rounds} independent rounds; Δrounds = (max - min) / median "
                     "of the round values")
    last_t = None
    for r in results:
        if r.status == SKIPPED:
            continue
        p = r.point
        if last_t is not None and p.num_tokens != last_t:
            t.add_section()
        last_t = p.num_tokens
        if r.status == OK:
            cells = _cell(r, "permute") + _cell(r, "unpermute")
        else:
            cells = [f"[red]FAILED: {r.reason}[/red]"] + [""] * 7
        extra = [f"{r.device} / {r.clock}"] if per_row_device else []
        t.add_row(str(p.num_tokens), p.impl, p.dtype_mode, *cells, *extra)
    return t


def skipped_lines(results: Iterable[PointResult]) -> list[str]:
    """Each (implementation, reason) of skipped points once, with how many points it hid."""
    c = Counter((r.point.impl, r.point.dtype_mode, r.reason) for r in results if r.status == SKIPPED)
    return [f"skipped {impl} ({mode}) at {n} point(s): {why}" for (impl, mode, why), n in c.items()]


def print_report(results: list[PointResult], title: str, console: Console) -> None:
    console.print(table(results, title))
    if any(o.throttled for r in results for o in r.ops):
        console.print("[yellow]! = the GPU reported throttling (power/thermal) during this op[/yellow]")
    if any(o.retaken for r in results for o in r.ops):
        console.print("[yellow]↻ = measured again: an earlier measurement of this op was unsteady "
                      "or throttled[/yellow]")
    for line in skipped_lines(results):
        console.print(f"[dim]{line}[/dim]")


def figure_format(path: Path, fig) -> str:
    """The image format a path's suffix names (``.png``, ``.svg``, ``.pdf`` ...; none = PNG), so a
    file never holds another format than its name says."""
    from .errors import BadInput

    fmt = path.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise BadInput(f"{path}: cannot write a .{fmt} image (formats: {', '.join(sorted(supported))})")
    return fmt


def plot(results: list[PointResult], path: str | Path, title: str) -> None:
    """Per op, latency vs batch size (log-log) per implementation with the bandwidth floor, and
    below it the % of floor; every line is named at its right end, so no legend is needed."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def name_line_ends(ax, ends: list[tuple[float, float, str, str]], log: bool) -> None:
        # In the right margin at the height of each line's last point, nudged apart so no two
        # names overlap; a thin leader goes back to the point when a name had to move.
        if not ends:
            return
        lo, hi = ax.get_ylim()
        f = math.log10 if log else float
        frac = sorted(((f(y) - f(lo)) / (f(hi) - f(lo)), x, y, text, color) for x, y, text, color in ends)
        pos: list[float] = []
        for fr, *_ in frac:
            pos.append(max(fr, pos[-1] + 0.075) if pos else fr)
        shift = max(0.0, pos[-1] - 1.0)
        for (fr, x, y, text, color), p in zip(frac, pos):
            ax.annotate(text, xy=(x, y), xycoords="data", xytext=(1.02, p - shift), textcoords="axes fraction",
                        color=color, fontsize=8.5, va="center",
                        arrowprops=dict(arrowstyle="-", color=color, lw=0.6, alpha=0.5, shrinkA=0, shrinkB=3))

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ok = [r for r in results if r.status == OK]
    modes = list(dict.fromkeys(r.point.dtype_mode for r in ok)) or ["auto"]
    impls = list(dict.fromkeys(r.point.impl for r in ok))
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    fig, axes = plt.subplots(2 * len(modes), len(OPS), figsize=(14, 7.6 * len(modes)), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [3, 2] * len(modes)})
    throttled_any = False
    for m, mode in enumerate(modes):
        rs = [r for r in ok if r.point.dtype_mode == mode]
        for c, op in enumerate(OPS):
            lat, pct = axes[2 * m, c], axes[2 * m + 1, c]
            lat_ends: list[tuple[float, float, str, str]] = []
            pct_ends: list[tuple[float, float, str, str]] = []
            floor: dict[int, float] = {}
            for r in rs:
                if r.op(op):
                    floor[r.point.num_tokens] = min(floor.get(r.point.num_tokens, math.inf), r.op(op).floor_us)
            if floor:
                xs = sorted(floor)
                lat.plot(xs, [floor[x] for x in xs], color="0.4", ls="--", lw=1.3)
                lat_ends.append((xs[-1], floor[xs[-1]], "bandwidth floor", "0.3"))
            for impl in impls:
                pts = sorted((r.point.num_tokens, r.op(op)) for r in rs if r.point.impl == impl and r.op(op))
                if not pts:
                    continue
                x = [t for t, _ in pts]
                med = [o.median_us for _, o in pts]
                lat.plot(x, med, color=colors[impl], marker="o", ms=3.5, lw=1.6)
                lat.fill_between(x, [min(o.round_values_us) for _, o in pts], [max(o.round_values_us) for _, o in pts],
                                 color=colors[impl], alpha=0.18, lw=0)
                pct.plot(x, [o.pct_of_floor for _, o in pts], color=colors[impl], marker="o", ms=3.5, lw=1.6)
                hot = [(t, o.median_us) for t, o in pts if o.throttled]
                if hot:
                    throttled_any = True
                    lat.scatter(*zip(*hot), s=80, facecolors="none", edgecolors="black", lw=1.2, zorder=5)
                lat_ends.append((x[-1], med[-1], impl, colors[impl]))
                pct_ends.append((x[-1], pts[-1][1].pct_of_floor, impl, colors[impl]))
            top = max([105.0] + [y * 1.08 for _, y, _, _ in pct_ends])
            pct.set_ylim(0, top)
            pct.axhline(100, color="0.4", ls="--", lw=1.0)
            lat.set(xscale="log", yscale="log", ylabel="µs per call, lower is better\n(band: lowest to highest round)",
                    title=f"{op} — dtype {mode}")
            pct.set(xscale="log", xlabel="batch size (tokens)",
                    ylabel="% of floor, higher is better\n(100% = copy bandwidth)")
            for ax in (lat, pct):
                ax.grid(True, which="major", alpha=0.35)
                ax.grid(True, which="minor", alpha=0.12)
                ax.xaxis.set_major_locator(LogLocator(base=10))
                ax.xaxis.set_major_formatter(plain)
                ax.xaxis.set_minor_formatter(NullFormatter())
            lat.yaxis.set_major_formatter(plain)
            lat.yaxis.set_minor_formatter(NullFormatter())
            lat.autoscale_view()
            name_line_ends(lat, lat_ends, log=True)
            name_line_ends(pct, pct_ends, log=False)
    device = ok[0].device if ok else "?"
    clock = ok[0].clock if ok else "?"
    note = "  [CPU host timer — not GPU data]" if clock == "cpu" else "  [CUDA-graph timer]"
    if throttled_any:
        note += "  · black ring: the GPU reported throttling"
    fig.suptitle(f"{title}\n{device}{note}", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format=figure_format(Path(path), fig))  # exactly this path, no suffix added
    plt.close(fig)
