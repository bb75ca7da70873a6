#!/usr/bin/env python3
"""The nightly grid's cost and agreement on one GPU and on two (``suite_scaling.py --asv`` runs).

    python evidence/plot_nightly.py docs/data/nightly/run4 docs/nightly.png \
        --json docs/data/nightly/run4/agreement.json

Reads a folder of runs, each as ``<run>.json`` (suite_scaling's row) and ``<run>-results.tar.gz``
(asv's results): ``one-gpu`` and ``all-gpus``, and where present ``one-gpu-again``,
``all-gpus-again`` (the same runs once more), ``card1-one-gpu`` and ``card1-one-gpu-again`` (one GPU,
the second card), with ``all-gpus-cards.json`` (which card measured which point of the all-GPU run).

Left: the whole ``asv run`` of one commit on one GPU and on two, split into the measured points,
setup_cache's fixed part (process, imports and models, executor start and stop), asv's lookups
(one process per combination and track) and asv's own start: only the points shrink with a second
GPU. Right: per batch size, the 95th percentile over (point, op) of |median in one run / median in
the other - 1|, for each pair of runs the folder allows: two GPUs against one GPU (card 0 only,
and each point against a one-GPU run on the card that measured it), one GPU against one GPU on the
same card, two GPUs against two GPUs. ``--json`` writes each pair's agreement (suite_scaling's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite_scaling import agreement, asv_rounds, on_card, ratios, said  # noqa: E402

PARTS = (("points_s", "points (setup_cache)"), ("fixed_s", "setup_cache fixed"), ("lookups_s", "asv lookups"),
         ("asv_rest_s", "asv's own"))
RUNS = ("one-gpu", "all-gpus", "one-gpu-again", "all-gpus-again", "card1-one-gpu", "card1-one-gpu-again")


def _fixed(row: dict) -> float:
    return row["setup_cache_rest_s"] + row["imports_and_models_s"] + row["executor_start_s"] + row["executor_stop_s"]


def pairs(rounds: dict[str, dict[str, list[float]]], cards: dict[str, str] | None) -> dict[str, tuple[dict, dict]]:
    """The pairs of runs to compare, by label: (before, after) rounds per (point, op)."""
    out = {"2 GPUs vs 1 GPU (card 0)": (rounds["one-gpu"], rounds["all-gpus"])}
    if cards and "card1-one-gpu" in rounds:  # each point against a one-GPU run on its own card
        by_card = {"0": rounds["one-gpu"], "1": rounds["card1-one-gpu"]}
        out["2 GPUs vs 1 GPU, same card"] = (
            {k: v for c, r in by_card.items() for k, v in on_card(r, cards, c).items()}, rounds["all-gpus"])
    if "one-gpu-again" in rounds:
        out["1 GPU vs 1 GPU (card 0)"] = (rounds["one-gpu"], rounds["one-gpu-again"])
    if "card1-one-gpu-again" in rounds:
        out["1 GPU vs 1 GPU (card 1)"] = (rounds["card1-one-gpu"], rounds["card1-one-gpu-again"])
    if "all-gpus-again" in rounds:
        out["2 GPUs vs 2 GPUs"] = (rounds["all-gpus"], rounds["all-gpus-again"])
    return out


def p95_by_t(before: dict, after: dict) -> dict[int, float]:
    """Per batch size T, the 95th percentile of |ratio - 1| over its (point, op)."""
    by_t: dict[int, list[float]] = defaultdict(list)
    for k, r in ratios(before, after).items():
        by_t[int(k.split("/")[-2])].append(abs(r - 1))
    return {t: statistics.quantiles(d, n=20)[-1] if len(d) > 1 else d[0] for t, d in sorted(by_t.items())}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--json", type=Path, help="write each pair's agreement here")
    args = p.parse_args(argv)
    present = [n for n in RUNS if (args.folder / f"{n}-results.tar.gz").is_file()]
    if not {"one-gpu", "all-gpus"} <= set(present):
        p.error(f"{args.folder}: needs one-gpu and all-gpus runs (<run>.json and <run>-results.tar.gz)")
    rows = {n: json.loads((args.folder / f"{n}.json").read_text()) for n in ("one-gpu", "all-gpus")}
    work = Path(tempfile.mkdtemp())
    for name in present:
        (work / name).mkdir()
        with tarfile.open(args.folder / f"{name}-results.tar.gz") as tar:
            tar.extractall(work / name, filter="data")
    cards_file = args.folder / "all-gpus-cards.json"
    compared = pairs({n: asv_rounds(work, n) for n in present},
                     json.loads(cards_file.read_text()) if cards_file.is_file() else None)

    fig, (bars, dev) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1, 1.2]})
    device = rows["all-gpus"].get("device", "GPU")
    labels = {"one-gpu": f"1 × {device}", "all-gpus": f"2 × {device} (Ray)"}
    for y, (name, row) in enumerate(rows.items()):
        left = 0.0
        for i, (key, label) in enumerate(PARTS):
            width = _fixed(row) if key == "fixed_s" else row[key]
            bars.barh(y, width, left=left, color=f"C{i}", label=label if y == 0 else None)
            left += width
        bars.text(left + 2, y, f"{row['wall_s']:.1f} s", va="center")
    one, two = rows["one-gpu"]["wall_s"], rows["all-gpus"]["wall_s"]
    bars.set_yticks(range(len(rows)), [labels[n] for n in rows])
    bars.set_xlabel("seconds per commit (whole asv run)")
    bars.set_xlim(0, one * 1.15)
    bars.set_title(f"nightly grid, {rows['one-gpu']['points']} points: {one / two:.2f}× with a second GPU "
                   f"(points {rows['one-gpu']['points_s'] / rows['all-gpus']['points_s']:.2f}×)", fontsize=10)
    bars.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))

    summary = {}
    for i, (label, (before, after)) in enumerate(compared.items()):
        a = summary[label] = agreement(before, after)
        curve = p95_by_t(before, after)
        dev.plot(list(curve), [100 * v for v in curve.values()], marker="o", ms=3, color=f"C{i + 3}",
                 label=f"{label}: median {100 * a['median_abs_dev']:.2f} %, max {100 * a['max_abs_dev']:.1f} %, "
                       f"{a['beyond_3pct']} of {a['points']} > 3 %")
    dev.axhline(3, color="grey", lw=0.8, ls="--")
    dev.set_xscale("log", base=2)
    dev.set_xlabel("batch size T")
    dev.set_ylabel("95th percentile of |median ratio − 1|, %")
    dev.set_title("the same points' medians, run against run (permute and unpermute)", fontsize=10)
    dev.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")
    for label, a in summary.items():
        print(said(label, a))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "pairs": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
