"""Human output of a sweep: the table per batch size and the latency/roofline plot."""

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
    flag = " !" if o.throttled else ""
    return [f"{o.median_us:.2f}{flag}", f"{o.iqr_us:.2f}", f"{o.gbps:.0f}", f"{o.pct_of_floor:.0f}%"]


def table(results: list[PointResult], title: str) -> Table:
    """One row per measured point, sections per batch size; failed points show their reason."""
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in ("T", "impl", "dtype"):
        t.add_column(col, justify="right" if col == "T" else "left")
    for op in OPS:
        for col in ("µs", "IQR", "GB/s", "%floor"):
            t.add_column(f"{op[:5]} {col}", justify="right")
    devices = {(r.device, r.clock) for r in results if r.status != SKIPPED}
    per_row_device = len(devices) > 1  # a mixed cluster: never let two cards blur together
    if per_row_device:
        t.add_column("device / clock")
    elif devices:
        (device, clock), = devices
        t.caption = f"{device} · {'CUDA-graph timer' if clock == 'cuda-graph' else 'CPU host timer, not GPU data'} · median and IQR per call"
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
    for line in skipped_lines(results):
        console.print(f"[dim]{line}[/dim]")


def plot(results: list[PointResult], path: str | Path, title: str) -> None:
    """Latency vs batch size (log-log) per implementation and op with the floor, and % of floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.status == OK]
    modes = list(dict.fromkeys(r.point.dtype_mode for r in ok)) or ["auto"]
    fig, axes = plt.subplots(len(modes), 2, figsize=(13, 4.6 * len(modes)), squeeze=False)
    impls = list(dict.fromkeys(r.point.impl for r in ok))
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    styles = {"permute": "-", "unpermute": "--"}
    markers = {"permute": "o", "unpermute": "s"}
    for row, mode in zip(axes, modes):
        lat, pct = row
        rs = [r for r in ok if r.point.dtype_mode == mode]
        for op in OPS:
            floor = sorted({(r.point.num_tokens, r.op(op).floor_us) for r in rs if r.op(op)})
            if floor:
                lat.plot(*zip(*floor), color="0.55", ls=styles[op], lw=1.2)
                lat.annotate(f"{op} floor", floor[-1], color="0.4", fontsize=8, ha="right",
                             textcoords="offset points", xytext=(-4, 6 if op == "permute" else -12))
            for impl in impls:
                pts = sorted((r.point.num_tokens, r.op(op)) for r in rs if r.point.impl == impl and r.op(op))
                if not pts:
                    continue
                x = [p[0] for p in pts]
                label = f"{impl} {op}"
                lat.plot(x, [o.median_us for _, o in pts], color=colors[impl], ls=styles[op],
                         marker=markers[op], ms=4, label=label)
                lat.fill_between(x, [o.q1_us for _, o in pts], [o.q3_us for _, o in pts],
                                 color=colors[impl], alpha=0.15)
                pct.plot(x, [o.pct_of_floor for _, o in pts], color=colors[impl], ls=styles[op],
                         marker=markers[op], ms=4, label=label)
                # Direct labels at the line ends: no legend hunt.
                lat.annotate(label, (x[-1], pts[-1][1].median_us), color=colors[impl], fontsize=8,
                             textcoords="offset points", xytext=(4, 0), va="center")
        lat.set(xscale="log", yscale="log", xlabel="batch size (tokens)",
                ylabel="median µs per call (band: IQR)", title=f"latency — dtype {mode}")
        pct.set(xscale="log", xlabel="batch size (tokens)", ylabel="% of bandwidth floor",
                title=f"floor / latency — dtype {mode} (100% = copy bandwidth)")
        pct.axhline(100, color="0.55", lw=1)
        for ax in row:
            ax.grid(True, which="both", alpha=0.3)
        pct.legend(fontsize=8, loc="best")
    device = ok[0].device if ok else "?"
    clock = ok[0].clock if ok else "?"
    note = "  [CPU host timer — not GPU data]" if clock == "cpu" else "  [CUDA-graph timer]"
    fig.suptitle(f"{title}\n{device}{note}", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
