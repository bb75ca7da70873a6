#!/usr/bin/env python3
"""triton-sol beside vllm-ops: one table and one picture from the CLI's results files.

    moebench --model M --dtype D --impl triton-sol,vllm-ops --vllm-ops-library LIB --json M-D.json
    python evidence/speed_of_light.py docs/data/triton-sol/*.json --md table.md --png docs/speed-of-light.png

Per (model, dtype, T): each op's median µs and % of the roofline floor for both implementations,
the ratio triton-sol / vllm-ops, and which of the page's goals the point meets (permute ≥ 80 % of
the floor and unpermute ≥ 90 % at T ≥ 1024; within 1.2x of vllm-ops at T ≤ 16). The picture: % of
floor against T, one panel per model and op.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench.results import OK, load  # noqa: E402

SOL, OPS_IMPL = "triton-sol", "vllm-ops"
GOAL_FLOOR = {"permute": 80.0, "unpermute": 90.0}  # % of floor at T >= 1024
GOAL_SMALL_T = 1.2  # triton-sol / vllm-ops at T <= 16


def collect(paths: list[Path]) -> tuple[dict, set[str]]:
    """(model, dtype, T, impl, op) -> (median µs, % of floor); and the devices that measured them."""
    out, devices = {}, set()
    for path in paths:
        for r in load(path)[1]:
            if r.status != OK:
                continue
            devices.add(r.device)
            for o in r.ops:
                out[(r.point.model, r.point.dtype_mode, r.point.num_tokens, r.point.impl, o.op)] = (o.median_us, o.pct_of_floor)
    return out, devices


def verdict(t: int, op: str, sol: tuple[float, float], ops: tuple[float, float]) -> str:
    if t >= 1024:
        return "" if sol[1] >= GOAL_FLOOR[op] else f"< {GOAL_FLOOR[op]:.0f} %"
    if t <= 16:
        return "" if sol[0] <= GOAL_SMALL_T * ops[0] else f"> {GOAL_SMALL_T}x"
    return ""


def table(data: dict) -> str:
    lines = ["| model | dtype | T | permute µs: sol / vllm-ops | % floor: sol / ops | unpermute µs: sol / vllm-ops "
             "| % floor: sol / ops | goals missed |", "|---|---|---:|---:|---:|---:|---:|---|"]
    keys = sorted({k[:3] for k in data}, key=lambda k: (k[0], k[1], k[2]))
    for model, dtype, t in keys:
        cells, missed = [], []
        for op in ("permute", "unpermute"):
            sol, ops = data.get((model, dtype, t, SOL, op)), data.get((model, dtype, t, OPS_IMPL, op))
            if sol is None or ops is None:
                cells += ["n/a", "n/a"]
                continue
            cells += [f"{sol[0]:.2f} / {ops[0]:.2f}", f"{sol[1]:.0f} / {ops[1]:.0f}"]
            if why := verdict(t, op, sol, ops):
                missed.append(f"{op} {why}")
        lines.append(f"| {model.split('/')[-1]} | {dtype} | {t} | {' | '.join(cells)} | {', '.join(missed)} |")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({k[0] for k in data})
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), sharex=True, squeeze=False)
    for col, model in enumerate(models):
        for row, op in enumerate(("permute", "unpermute")):
            ax = axes[row][col]
            for impl, style in ((SOL, "-"), (OPS_IMPL, "--")):
                for dtype, color in (("auto", "tab:blue"), ("fp8_w8a8", "tab:orange")):
                    pts = sorted((k[2], v[1]) for k, v in data.items() if k[0] == model and k[1] == dtype
                                 and k[3] == impl and k[4] == op)
                    if pts:
                        ax.plot(*zip(*pts), style, color=color, marker="o", ms=3, label=f"{impl} {dtype}")
            ax.axhline(GOAL_FLOOR[op], color="gray", lw=0.8, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{model.split('/')[-1]}: {op}")
            ax.set_ylabel("% of the bandwidth floor")
            if row == 1:
                ax.set_xlabel("tokens (T)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"triton-sol (solid) vs vLLM's moe_permute/unpermute (dashed), {device}, warm L2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--md", type=Path, required=True)
    p.add_argument("--png", type=Path)
    args = p.parse_args(argv)
    data, devices = collect(args.results)
    args.md.write_text(table(data))
    if args.png:
        plot(data, args.png, ", ".join(sorted(devices)))
    print(f"{len({k[:3] for k in data})} (model, dtype, T) rows from {', '.join(sorted(devices))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
