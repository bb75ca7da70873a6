#!/usr/bin/env python3
"""Compare two moebench results files of the same sweep: same points in the same order, per-point
median ratios (OTHER / BASE) with a noise verdict, and the speedup of the fan-out.

For instance BASE a 1-GPU run and OTHER a Ray run of the same sweep over two GPUs:

    python evidence/compare_runs.py single.json ray2.json --min-speedup 1.8
A point's medians agree when their ratio is within the larger of the two runs' relative IQRs, or
``--tolerance`` (default 5 %: two cards of one model differ by a few percent). The speedup is the
ratio of the runs' Ray sweep seconds (meta.ray.sweep_s: first point handed out to last result,
so Ray and worker start-up are left out) and, given ``--wall BASE_S OTHER_S``, of whole commands.

Exit 1 when the points or their statuses differ, or a ``--min-speedup`` is not met; else 0.
"""

from __future__ import annotations

import argparse
import math
import sys

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench.results import OK, OPS, load  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("other")
    ap.add_argument("--tolerance", type=float, default=0.05, help="relative (default 0.05)")
    ap.add_argument("--wall", type=float, nargs=2, metavar=("BASE_S", "OTHER_S"),
                    help="wall-clock seconds of the two whole commands")
    ap.add_argument("--min-speedup", type=float, help="exit 1 below this sweep speedup")
    args = ap.parse_args(argv)

    meta_a, a = load(args.base)
    meta_b, b = load(args.other)
    status_a = [(r.point.key, r.status) for r in a]
    status_b = [(r.point.key, r.status) for r in b]
    if status_a != status_b:
        print(f"POINTS DIFFER: {len(a)} vs {len(b)} results")
        for x, y in zip(status_a, status_b):
            if x != y:
                print(f"  {x} != {y}")
        return 1
    print(f"same {len(a)} points in the same order, same statuses")

    for name, meta, rs in (("base", meta_a, a), ("other", meta_b, b)):
        cards = sorted({(r.device, r.node) for r in rs if r.status == OK})
        workers = meta.get("ray", {}).get("workers", [])
        print(f"{name}: {len(workers) or 1} worker(s); measured on "
              + "; ".join(f"{d} @ {n}" for d, n in cards))

    print(f"\n{'point':64s} {'op':9s} {'base µs':>9s} {'other µs':>9s} {'ratio':>7s} {'band':>6s}")
    ratios, disagree = [], 0
    for ra, rb in zip(a, b):
        if ra.status != OK:
            continue
        for op in OPS:
            oa, ob = ra.op(op), rb.op(op)
            ratio = ob.median_us / oa.median_us
            band = max(args.tolerance, oa.rel_iqr, ob.rel_iqr)
            ok = abs(ratio - 1) <= band
            disagree += not ok
            ratios.append(ratio)
            print(f"{ra.point.key[-64:]:64s} {op:9s} {oa.median_us:9.2f} {ob.median_us:9.2f} "
                  f"{ratio:7.3f} {band:6.1%}{'' if ok else '  OUTSIDE'}")
    if ratios:
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"\nmedians: {len(ratios) - disagree} of {len(ratios)} (point, op) agree within noise; "
              f"geometric mean ratio {geo:.3f}, range {min(ratios):.3f}..{max(ratios):.3f}")

    code = 0
    sweep_a = meta_a.get("ray", {}).get("sweep_s")
    sweep_b = meta_b.get("ray", {}).get("sweep_s")
    if sweep_a and sweep_b:
        speedup = sweep_a / sweep_b
        print(f"sweep seconds: base {sweep_a:.1f}, other {sweep_b:.1f} -> speedup {speedup:.2f}x")
        if args.min_speedup is not None and speedup < args.min_speedup:
            print(f"SPEEDUP {speedup:.2f}x IS BELOW {args.min_speedup}x")
            code = 1
    elif args.min_speedup is not None:
        print("no meta.ray.sweep_s in both files: cannot check --min-speedup")
        code = 1
    if args.wall:
        wa, wb = args.wall
        print(f"whole commands: base {wa:.1f} s, other {wb:.1f} s -> {wa / wb:.2f}x")
    return code


if __name__ == "__main__":
    sys.exit(main())
