#!/usr/bin/env python3
"""How much faster is the asv suite's ``setup_cache`` on every GPU of a machine (through Ray) than
on one, and are the numbers the same? For any machine with several GPUs and Ray installed.

    python evidence/suite_scaling.py --out docs/data/scaling [--env MOEBENCH_MODELS=... ...]

Runs the suite's ``setup_cache`` (``suite.setup_grid``) in a fresh process, as asv does, once with
``MOEBENCH_RAY=off`` (one GPU) and once with ``MOEBENCH_RAY=auto`` (one Ray worker per GPU), for
the grid the ``MOEBENCH_*`` variables (and ``--env``) choose. Per run: the process's wall time,
and the suite's own breakdown (imports and model resolution, executor start = Ray + workers +
ceiling, points). Then every point's median on all GPUs over its median on one: the two runs
agree when those ratios stay within the noise between fresh processes. Writes
``OUT/scaling.json``; the grids themselves go to ``OUT/<run>.pkl`` for a closer look.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP_CACHE = ("import pickle, sys; sys.path.insert(0, sys.argv[2]); from moebench import suite; "
               "grid = suite.setup_grid(suite.SuiteConfig.from_env()); pickle.dump(grid, open(sys.argv[1], 'wb'))")
BREAKDOWN = re.compile(r"measured (\d+) points on (.*?): .*?, ([\d.]+) s \(executor start ([\d.]+) s, points ([\d.]+) s\)")


def run(name: str, env: dict[str, str], out: Path) -> dict:
    pkl = out / f"{name}.pkl"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SETUP_CACHE, str(pkl), str(ROOT / "src")], env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (m := BREAKDOWN.search(proc.stdout)):
        raise SystemExit(f"{name}: setup_cache failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    points, where, suite_s, start_s, points_s = m.groups()
    print(f"{name}: {points} points on {where}: process {wall:.1f} s = imports {wall - float(suite_s):.1f} s "
          f"+ executor start {start_s} s + points {points_s} s", flush=True)
    return {"where": where, "points": int(points), "process_s": round(wall, 1), "suite_s": float(suite_s),
            "executor_start_s": float(start_s), "points_s": float(points_s)}


def medians(path: Path) -> dict[str, float]:
    grid = pickle.loads(path.read_bytes())
    return {f"{'/'.join(map(str, key))}/{o.op}": statistics.median(o.rounds_s)
            for key, m in grid.items() if m.ops and not m.failed for o in m.ops}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="MOEBENCH_* settings of the grid")
    args = ap.parse_args(argv)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    grid_env = dict(item.split("=", 1) for item in args.env)
    base = {**os.environ, **grid_env}
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "gpus": torch.cuda.device_count(), "torch": torch.__version__,
              "grid": {k: v for k, v in base.items() if k.startswith("MOEBENCH_")}, "runs": {}}
    for name, ray in (("one-gpu", "off"), ("all-gpus", "auto")):
        report["runs"][name] = run(name, {**base, "MOEBENCH_RAY": ray}, args.out)
    one, every = (medians(args.out / f"{n}.pkl") for n in ("one-gpu", "all-gpus"))
    ratios = {k: every[k] / one[k] for k in sorted(set(one) & set(every))}
    devs = sorted(abs(r - 1) for r in ratios.values())
    runs = report["runs"]
    report["speedup"] = {k: round(runs["one-gpu"][k] / runs["all-gpus"][k], 3) for k in ("process_s", "points_s")}
    report["agreement"] = {"points": len(ratios), "only_in_one_run": len(set(one) ^ set(every)),
                           "median_abs_dev": statistics.median(devs), "p95_abs_dev": devs[int(0.95 * (len(devs) - 1))],
                           "max_abs_dev": devs[-1],
                           "worst": sorted(ratios.items(), key=lambda kv: -abs(kv[1] - 1))[:5]}
    (args.out / "scaling.json").write_text(json.dumps(report, indent=1) + "\n")
    a = report["agreement"]
    print(f"speedup: points {report['speedup']['points_s']}x, whole process {report['speedup']['process_s']}x; "
          f"medians: {a['points']} compared, median |ratio-1| {a['median_abs_dev']:.2%}, p95 {a['p95_abs_dev']:.2%}, "
          f"max {a['max_abs_dev']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
