#!/usr/bin/env python3
"""Does a fresh run give the numbers a recorded history holds? Per point, the median of a new run
(an asv results directory, or the CLI's ``--json`` files) over the recorded one.

    python evidence/same_numbers.py --reference docs/releases/results --commit 4f2a... \
        --asv /tmp/rerun/results --json cli-auto.json cli-fp8.json --out docs/data/same-numbers

Points are matched by (L2 mode, model, dtype, implementation, batch size, op); the reference is the
recorded measurement at ``--commit`` (a hash prefix), the run's is its only (or latest) one. A
point agrees when the ratio is within ``--tolerance`` (default 3 %: the spread between fresh
processes at small batch sizes, docs/measurements.md). Prints the spread per source and op and
writes ``OUT/same-numbers.json`` with every ratio. Exit 1 when a point of the reference is
missing from the run or a ratio is outside the tolerance, else 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench.asvresults import Measurement, load_series, param_value  # noqa: E402
from moebench.results import OK, load  # noqa: E402
from moebench.suite import L2_CLASSES  # noqa: E402

Key = tuple[str, str, str, str, int, str]  # l2, model, dtype, impl, tokens, op
CLASS_L2 = {cls: l2 for l2, cls in L2_CLASSES.items()}


def asv_measurements(results: Path, commit: str | None) -> dict[Key, "Measurement"]:
    """The measurement (value = asv's median, samples = rounds) of every timing series
    (``track_permute``, ``track_unpermute``), at ``commit`` or at the series' latest measurement."""
    out: dict[Key, Measurement] = {}
    for s in load_series(results, None):
        cls, _, track = s.benchmark.split(".", 1)[1].partition(".")
        op = track.removeprefix("track_")
        if op not in ("permute", "unpermute"):
            continue
        chosen = [m for m in s.measurements if commit is None or m.commit.startswith(commit)]
        if chosen:
            p = {k: param_value(v) for k, v in s.params}
            out[(CLASS_L2[cls], p["model"], p["dtype"], p["impl"], p["tokens"], op)] = chosen[-1]
    return out


def asv_medians(results: Path, commit: str | None) -> dict[Key, float]:
    """Seconds per call of every timing series, at ``commit`` or at its latest measurement."""
    return {k: m.value for k, m in asv_measurements(results, commit).items()}


def cli_medians(path: Path) -> dict[Key, float]:
    _, results = load(path)
    return {(r.point.l2, r.point.model, r.point.dtype_mode, r.point.impl, r.point.num_tokens, o.op): o.median_us * 1e-6
            for r in results if r.status == OK for o in r.ops}


def compare(reference: dict[Key, float], run: dict[Key, float], tolerance: float) -> dict:
    shared = sorted(set(reference) & set(run))
    ratios = {k: run[k] / reference[k] for k in shared}
    per_op = {}
    for op in ("permute", "unpermute"):
        devs = [abs(r - 1) for k, r in ratios.items() if k[5] == op]
        if devs:
            per_op[op] = {"points": len(devs), "median_abs_dev": statistics.median(devs), "max_abs_dev": max(devs),
                          "outside": sum(d > tolerance for d in devs)}
    worst = sorted(ratios.items(), key=lambda kv: -abs(kv[1] - 1))[:5]
    return {"points": len(shared), "per_op": per_op,
            "worst": [{"point": "/".join(map(str, k)), "ratio": round(r, 4)} for k, r in worst],
            "ratios": {"/".join(map(str, k)): round(r, 5) for k, r in ratios.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="recorded asv results directory")
    ap.add_argument("--commit", help="the reference's commit (hash prefix); default each series' latest")
    ap.add_argument("--asv", type=Path, nargs="*", default=[], help="asv results directories of the new run")
    ap.add_argument("--json", type=Path, nargs="*", default=[], help="results files of CLI sweeps")
    ap.add_argument("--tolerance", type=float, default=0.03)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    reference = asv_medians(args.reference, args.commit)
    if not reference:
        print(f"no timing series at commit {args.commit} in {args.reference}", file=sys.stderr)
        return 2
    sources = {str(p): asv_medians(p, None) for p in args.asv} | {str(p): cli_medians(p) for p in args.json}
    report = {"reference": str(args.reference), "commit": args.commit, "tolerance": args.tolerance, "sources": {}}
    bad = False
    for name, run in sources.items():
        wanted = {k for k in reference if k[:4] in {r[:4] for r in run}}  # the combinations this source ran
        result = compare(reference, run, args.tolerance)
        result["missing"] = ["/".join(map(str, k)) for k in sorted(wanted - set(run))]
        report["sources"][name] = result
        bad |= bool(result["missing"]) or any(v["outside"] for v in result["per_op"].values())
        for op, v in result["per_op"].items():
            print(f"{name}: {op}: {v['points']} points, median |ratio-1| {v['median_abs_dev']:.2%}, "
                  f"max {v['max_abs_dev']:.2%}, {v['outside']} outside {args.tolerance:.0%}")
        worst = ", ".join(f"{w['point']} {w['ratio']}" for w in result["worst"][:3])
        print(f"  worst: {worst}; missing {len(result['missing'])}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "same-numbers.json").write_text(json.dumps(report, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
