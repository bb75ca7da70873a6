#!/usr/bin/env python3
"""Picture of the nightly grid's cost and agreement on one GPU and on two (``suite_scaling.py --asv``).

    python evidence/plot_nightly.py docs/data/nightly/run2 docs/nightly.png \
        --baseline cold-triton-cache-one-gpu

Left: the whole ``asv run`` of one commit on one GPU and on two, split into the measured points,
setup_cache's fixed part (process, imports and models, executor start and stop), asv's lookups
(one process per combination and track) and asv's own start: only the points shrink with a second
GPU. Right: per point and op, |median on two GPUs / median on one - 1| against T, beside the same
for two one-GPU runs (``--baseline``: the name of another one-GPU run's results in the folder).
Reads ``one-gpu.json``, ``all-gpus.json`` and ``<run>-results.tar.gz`` from the folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite_scaling import asv_rounds, ratios  # noqa: E402

PARTS = (("points_s", "points (setup_cache)"), ("fixed_s", "setup_cache fixed"), ("lookups_s", "asv lookups"),
         ("asv_rest_s", "asv's own"))


def _fixed(row: dict) -> float:
    return row["setup_cache_rest_s"] + row["imports_and_models_s"] + row["executor_start_s"] + row["executor_stop_s"]


def _deviations(work: Path, before: str, after: str) -> list[tuple[int, float]]:
    """(T, |median ratio - 1|) of every (point, op) both runs measured."""
    return [(int(k.split("/")[-2]), abs(r - 1))
            for k, r in ratios(asv_rounds(work, before), asv_rounds(work, after)).items()]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--baseline", help="another one-GPU run in the folder (its <name>-results.tar.gz)")
    args = p.parse_args(argv)
    rows = {n: json.loads((args.folder / f"{n}.json").read_text()) for n in ("one-gpu", "all-gpus")}
    work = Path(tempfile.mkdtemp())
    for name in ["one-gpu", "all-gpus"] + ([args.baseline] if args.baseline else []):
        (work / name).mkdir()
        with tarfile.open(args.folder / f"{name}-results.tar.gz") as tar:
            tar.extractall(work / name, filter="data")

    fig, (bars, dev) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.2]})
    labels = {"one-gpu": "1 × H200", "all-gpus": "2 × H200 (Ray)"}
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

    series = [("one-gpu", "all-gpus", "2 GPUs vs 1 GPU", "C3", "o")]
    if args.baseline:
        series.append((args.baseline, "one-gpu", f"1 GPU vs 1 GPU ({args.baseline})", "C0", "x"))
    for before, after, label, color, marker in series:
        pts = _deviations(work, before, after)
        beyond = sum(d > 0.03 for _, d in pts)
        dev.scatter([t for t, _ in pts], [100 * d for _, d in pts], s=10, alpha=0.5, color=color, marker=marker,
                    label=f"{label}: median {100 * statistics.median(d for _, d in pts):.2f} %, {beyond} beyond 3 %")
    dev.axhline(3, color="grey", lw=0.8, ls="--")
    dev.set_xscale("log", base=2)
    dev.set_xlabel("batch size T")
    dev.set_ylabel("|median ratio − 1|, %")
    dev.set_title("the same points' medians, run against run (permute and unpermute)", fontsize=10)
    dev.legend(fontsize=8)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
