"""Where between releases did each kernel change, and by how much? Read from a release history.

    python evidence/release_steps.py --history docs/releases --out docs/data/releases [--plot PNG]

For every series of the history (``moebench releases record``; model, dtype, implementation, T,
permute or unpermute) it takes the median of each release's rounds and reports:
- per pair of consecutive releases, how many series moved by more than ``--threshold`` and the
  range of their ratios (a same-binary pair, e.g. a patch release that rebuilt nothing, shows
  the noise between processes);
- for the largest such step, the ratio per model, dtype, implementation and T, permute and
  unpermute side by side, as a markdown table.
Writes ``OUT/steps.json`` and ``OUT/steps.md``; ``--plot`` draws the step's ratio against T.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from moebench.asvresults import load_series  # noqa: E402

TRACKS = ("track_permute", "track_unpermute")


def _load(history: Path):
    releases = json.loads((history / "releases.json").read_text())["releases"]
    version_of = {r["standin_commit"]: r["version"] for r in releases}
    order = [r["version"] for r in releases]
    values = {}  # (track, model, dtype, impl, T) -> {version: median seconds}
    for s in load_series(history / "results", None):
        track = s.benchmark.rsplit(".", 1)[-1]
        if track not in TRACKS:
            continue
        p = dict(s.params)
        key = (track, p["model"].strip("'").split("/")[-1], p["dtype"].strip("'"), p["impl"].strip("'"), int(p["tokens"]))
        values[key] = {version_of[m.commit]: statistics.median(m.samples) for m in s.measurements if m.samples}
    return releases, order, values


def steps(order, values, threshold: float) -> list[dict]:
    out = []
    for a, b in zip(order, order[1:]):
        moved = defaultdict(list)
        for key, v in values.items():
            if a in v and b in v:
                ratio = v[b] / v[a]
                if abs(ratio - 1) > threshold:
                    moved[key[0]].append(ratio)
        out.append({"from": a, "to": b, "compared": sum(1 for v in values.values() if a in v and b in v),
                    **{f"{t}_moved": len(moved[t]) for t in TRACKS},
                    **{f"{t}_ratios": [min(moved[t]), max(moved[t])] if moved[t] else None for t in TRACKS}})
    return out


def table(values, a: str, b: str) -> tuple[str, list[dict]]:
    rows = []
    for key in sorted({k[1:] for k in values}):
        model, dtype, impl, t = key
        cells = {}
        for track in TRACKS:
            v = values.get((track, *key), {})
            if a in v and b in v:
                cells[track] = (v[a], v[b], v[b] / v[a])
        if cells:
            rows.append({"model": model, "dtype": dtype, "impl": impl, "tokens": t,
                         **{f"{tr}_us": [c[0] * 1e6, c[1] * 1e6] for tr, c in cells.items()},
                         **{f"{tr}_ratio": c[2] for tr, c in cells.items()}})
    lines = [f"| model | dtype | impl | T | permute {a} → {b} (µs) | ratio | unpermute {a} → {b} (µs) | ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cell = []
        for tr in TRACKS:
            if f"{tr}_us" in r:
                x, y = r[f"{tr}_us"]
                cell += [f"{x:.2f} → {y:.2f}", f"{r[f'{tr}_ratio']:.3f}"]
            else:
                cell += ["n/a", ""]
        lines.append(f"| {r['model']} | {r['dtype']} | {r['impl']} | {r['tokens']} | " + " | ".join(cell) + " |")
    return "\n".join(lines) + "\n", rows


def plot(rows, a: str, b: str, device: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, track in zip(axes, TRACKS):
        for (model, dtype), style in zip(sorted({(r["model"], r["dtype"]) for r in rows}),
                                         ["o-", "o--", "s-", "s--", "^-", "^--"]):
            pts = [(r["tokens"], r[f"{track}_ratio"]) for r in rows
                   if (r["model"], r["dtype"]) == (model, dtype) and f"{track}_ratio" in r and r["impl"] == "vllm-ops"]
            if pts:
                ax.plot(*zip(*sorted(pts)), style, ms=3, label=f"{model} {dtype}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens (T)")
        ax.set_title(f"{track.removeprefix('track_')}: vllm-ops {b} / {a}")
    axes[0].set_ylabel("time ratio (>1 = slower)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"vLLM {a} → {b}, warm L2, median of 5 rounds, {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--history", type=Path, default=ROOT / "docs" / "releases")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threshold", type=float, default=0.05)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    releases, order, values = _load(args.history)
    found = steps(order, values, args.threshold)
    for s in found:
        print(f"{s['from']:>7} → {s['to']:<7} permute moved {s['track_permute_moved']:>3}, "
              f"unpermute moved {s['track_unpermute_moved']:>3} of {s['compared'] // 2} series each")
    big = max(found, key=lambda s: s["track_permute_moved"] + s["track_unpermute_moved"])
    md, rows = table(values, big["from"], big["to"])
    device = releases[-1].get("device", "?")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steps.md").write_text(f"vLLM {big['from']} → {big['to']} on {device} "
                                       f"(torch {releases[-1].get('torch')})\n\n" + md)
    (args.out / "steps.json").write_text(json.dumps({"device": device, "steps": found, "largest": big,
                                                     "rows": rows}, indent=1) + "\n")
    if args.plot:
        plot(rows, big["from"], big["to"], device, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
