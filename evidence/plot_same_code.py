"""Plot of ``same_code.py``'s summary: between-run spread of every series against batch size.

    python evidence/plot_same_code.py docs/data/same-code/summary.json docs/same-code-spread.png

Top row: all same-code runs; bottom row: the runs of the first uninterrupted stretch
(``--first N``, default 7), to separate within-session noise from the step between sessions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OPS = ("permute", "unpermute")
MARKERS = {"Mixtral-8x7B-Instruct-v0.1": "o", "Qwen3-30B-A3B": "s", "DeepSeek-V3": "^"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("summary", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--first", type=int, default=7)
    args = p.parse_args(argv)
    data = json.loads(args.summary.read_text())
    rows = [r for r in data["spread"] if "vs_floor" not in r["entry"]]
    impls = sorted({r["impl"].strip("'") for r in rows})
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True, sharey=True)
    for row, (title, pick) in enumerate([(f"all {data['runs']} runs", lambda v: v),
                                         (f"runs 1-{args.first} (one session)", lambda v: v[:args.first])]):
        for col, op in enumerate(OPS):
            ax = axes[row, col]
            for r in rows:
                if f"track_{op}(" not in r["entry"]:
                    continue
                v = pick(r["values"])
                model = r["model"].strip("'").split("/")[-1]
                ax.scatter(r["tokens"], 100 * (max(v) / min(v) - 1), color=colors[r["impl"].strip("'")],
                           marker=MARKERS.get(model, "x"), s=22, alpha=0.8)
            ax.plot([1, 255], [2, 2], color="0.3", ls="--", lw=1)
            ax.plot([256, 4096], [1, 1], color="0.3", ls="--", lw=1)
            ax.set(xscale="log", title=f"{op} — {title}", xlabel="batch size (tokens)",
                   ylabel="(max - min) / min of the run values, %")
            ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=i) for i, c in colors.items()]
    handles += [plt.Line2D([], [], color="0.3", marker=m, ls="", label=n) for n, m in MARKERS.items()]
    handles += [plt.Line2D([], [], color="0.3", ls="--", label="goal")]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncol=7, frameon=False)
    fig.suptitle(f"Same code, {data['runs']} asv runs in fresh processes — {data['device']}", y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(args.png, dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
