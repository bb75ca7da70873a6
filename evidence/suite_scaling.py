#!/usr/bin/env python3
"""How much faster is the asv suite on every GPU of a machine (through Ray) than on one, and are
the numbers the same? For any machine with several GPUs and Ray installed (``--asv``: and asv).

    python evidence/suite_scaling.py --out docs/data/scaling [--env MOEBENCH_MODELS=... ...]
    python evidence/suite_scaling.py --asv --warm-up --out docs/data/nightly

Without ``--asv``: the suite's ``setup_cache`` (``suite.setup_grid``) in a fresh process, as asv
runs it. With ``--asv``: a whole ``asv run`` of the suite for one commit (``moebench.asvlocal``:
this interpreter, a stand-in commit, forkserver), i.e. what the nightly spends per vLLM commit.
Each once with ``MOEBENCH_RAY=off`` (one GPU) and once with ``MOEBENCH_RAY=auto`` (one Ray worker
per GPU), for the grid the ``MOEBENCH_*`` variables (and ``--env``) choose; the suite's defaults
are the nightly's grid. Per run: the wall time, and its breakdown: setup_cache (imports and model
resolution, executor start = Ray + workers + ceiling, points) and, for ``--asv``, asv's lookups
(one process per parameter combination and track, from asv's own durations) and the rest (asv's
start, discovery, result files). ``--warm-up`` first runs the grid once with one short round per
point on every GPU, untimed in the comparison: Triton compiles triton-sol's kernels for each new
shape once per machine (its disk cache), which a nightly pays only after a Triton or kernel change;
its time is reported. Then every point's median on all GPUs over its median on one: the two runs
agree when those ratios stay within the noise between fresh processes. Writes ``OUT/scaling.json``
and each run's log (and grid or asv results) under ``OUT``.

Cards of one model differ (by up to ~9 % at some small-T points on one H200 host), and an all-GPU
run measures each point on the card ``moebench.cardplan.plan`` gives it. ``--card K`` makes the
one-GPU run use card K (``CUDA_VISIBLE_DEVICES``); ``--cards OTHER_OUT ...`` names folders holding
one-GPU asv runs on the other cards. Then each card's share of the all-GPU run is also compared
with a one-GPU run on that same card (``per_card``): the agreement the second GPU itself costs.
Which card measured which point is written beside the all-GPU run (``all-gpus-cards.json``) when it
is made, from the plan of the code that made it.
"""

from __future__ import annotations

import argparse
import functools
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
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "evidence"))
RUNS = {"one-gpu": "off", "all-gpus": "auto"}  # MOEBENCH_RAY of each run
BREAKDOWN = re.compile(r"measured (\d+) points on (.*?): .*?, ([\d.]+) s \(imports and models ([\d.]+) s, "
                       r"executor start ([\d.]+) s, points ([\d.]+) s, executor stop ([\d.]+) s\)")


def _parts(said: str) -> dict | None:
    """setup_grid's report line as numbers: where, points and the seconds of each part."""
    if not (m := BREAKDOWN.search(said)):
        return None
    points, where, suite_s, imports_s, start_s, points_s, stop_s = m.groups()
    return {"where": where, "points": int(points), "suite_s": float(suite_s), "imports_and_models_s": float(imports_s),
            "executor_start_s": float(start_s), "points_s": float(points_s), "executor_stop_s": float(stop_s)}


def run(name: str, env: dict[str, str], out: Path) -> dict:
    pkl = out / f"{name}.pkl"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SETUP_CACHE, str(pkl), str(ROOT / "src")], env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or (parts := _parts(proc.stdout)) is None:
        raise SystemExit(f"{name}: setup_cache failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    row = {**parts, "process_s": round(wall, 1), "process_start_s": round(wall - parts["suite_s"], 1)}
    print(f"{name}: {row['points']} points on {row['where']}: process {wall:.1f} s = start "
          f"{row['process_start_s']} s + imports and models {row['imports_and_models_s']} s + executor start "
          f"{row['executor_start_s']} s + points {row['points_s']} s + executor stop {row['executor_stop_s']} s",
          flush=True)
    return row


def cards_of(env: dict[str, str], gpus: int) -> dict[str, str]:
    """The card that measures each point (key ``l2/model/dtype/impl/T``) when the suite's grid for
    ``env`` runs on ``gpus`` GPUs of one host: ``cardplan.by_card`` over ``suite.grid_points``."""
    from moebench import cardplan, suite

    _, keyed = suite.grid_points(suite.SuiteConfig.from_env(env))
    cards = [str(g) for g in range(gpus)]
    lanes = cardplan.by_card([p for _, p in keyed], [("", (g,)) for g in cards])
    return {"/".join(map(str, keyed[i][0])): card for card, lane in zip(cards, lanes) for i in lane}


def on_card(rounds: dict[str, list[float]], card_of: dict[str, str], card: str) -> dict[str, list[float]]:
    """The (point, op) series of ``rounds`` that ``card`` measures in an all-GPU run."""
    return {k: v for k, v in rounds.items() if card_of[k.rsplit("/", 1)[0]] == card}


def card_agreement(card_of: dict[str, str], one_gpu: dict[str, dict[str, list[float]]],
                   every: dict[str, list[float]]) -> dict[str, dict]:
    """Per card: the all-GPU run's points on that card against a one-GPU run on the card
    (``one_gpu``: card -> rounds), for every card that has one."""
    return {card: agreement(on_card(one_gpu[card], card_of, card), on_card(every, card_of, card))
            for card in sorted(set(card_of.values())) if card in one_gpu}


def run_asv(name: str, env: dict[str, str], out: Path) -> dict:
    """One whole ``asv run`` of the suite; its wall time and where it went."""
    from asv_cost import report as asv_report

    work, setup_log = out / name, out / f"{name}-setup-cache.log"
    setup_log.unlink(missing_ok=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "moebench.asvlocal", "--work", str(work), "--html",
                           str(work / "html"), "--machine", name, "--no-publish"],
                          env={**env, "PYTHONPATH": str(ROOT / "src"), "MOEBENCH_SETUP_LOG": str(setup_log)},
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - t0
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    said = setup_log.read_text() if setup_log.is_file() else ""
    # exit 2 with the report written: asv ran everything, some points failed (named in the report)
    if proc.returncode not in (0, 2) or (parts := _parts(said)) is None:
        raise SystemExit(f"{name}: asv run failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    (run,) = asv_report(work / "results")["runs"]
    combos = sum(c["combinations"] for c in run["classes"].values())
    lookups = sum(c["combinations_s"] for c in run["classes"].values())
    setup = run["setup_cache_s"]
    row = {**parts, "asv_exit": proc.returncode, "failed": said.count(" failed "), "wall_s": round(wall, 1),
           "setup_cache_s": round(setup, 1),
           # process start, the suite's import, pickling the grid for asv
           "setup_cache_rest_s": round(setup - parts["suite_s"], 1),
           "lookups_s": round(lookups, 1), "combinations": combos,
           "per_combination_ms": round(1e3 * lookups / combos, 2), "asv_rest_s": round(wall - setup - lookups, 1)}
    print(f"{name}: asv run {wall:.1f} s = setup_cache {setup:.1f} s (start {row['setup_cache_rest_s']} s + imports "
          f"and models {row['imports_and_models_s']} s + executor start {row['executor_start_s']} s + "
          f"{row['points']} points {row['points_s']} s + executor stop {row['executor_stop_s']} s) + {combos} lookups "
          f"{lookups:.1f} s ({row['per_combination_ms']} ms each) + asv's own {row['asv_rest_s']} s", flush=True)
    return row


def warm_up(env: dict[str, str], out: Path) -> dict:
    """The grid once, one short round per point, on every GPU: Triton's compilations land in its
    disk cache (and the ceiling in moebench's), as after any earlier night."""
    quick = {**env, "MOEBENCH_RAY": "auto", "MOEBENCH_ROUNDS": "1", "MOEBENCH_REPLAYS": "1"}
    return {"wall_s": run("warm-up", quick, out)["process_s"]}


def asv_rounds(out: Path, name: str) -> dict[str, list[float]]:
    """Each timing series' rounds (asv's samples) in the asv run ``name`` under ``out``."""
    from same_numbers import asv_measurements

    return {"/".join(map(str, key)): list(m.samples)
            for key, m in asv_measurements(out / name / "results", None).items()}


def grid_rounds(path: Path) -> dict[str, list[float]]:
    grid = pickle.loads(path.read_bytes())
    return {f"{'/'.join(map(str, key))}/{o.op}": list(o.rounds_s)
            for key, m in grid.items() if m.ops and not m.failed for o in m.ops}


def ratios(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, float]:
    """Median over median of every (point, op) both runs measured."""
    return {k: statistics.median(after[k]) / statistics.median(before[k]) for k in sorted(set(before) & set(after))}


def _spread(rounds: list[float]) -> float:
    """(max - min) / median of one run's rounds: what that run says its noise is."""
    return (max(rounds) - min(rounds)) / statistics.median(rounds)


def agreement(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict:
    """Median over median per point, and how many lie within the larger of the two runs' own
    spread between rounds."""
    by_point = ratios(before, after)
    inside = sum(abs(r - 1) <= max(_spread(before[k]), _spread(after[k])) for k, r in by_point.items())
    devs = sorted(abs(r - 1) for r in by_point.values())
    return {"points": len(by_point), "only_in_one_run": len(set(before) ^ set(after)),
            "median_abs_dev": statistics.median(devs), "p95_abs_dev": devs[int(0.95 * (len(devs) - 1))],
            "max_abs_dev": devs[-1], "beyond_3pct": sum(d > 0.03 for d in devs), "within_round_spread": inside,
            "worst": sorted(by_point.items(), key=lambda kv: -abs(kv[1] - 1))[:8]}


def said(what: str, a: dict) -> str:
    """``agreement``'s figures in a line."""
    return (f"{what}: {a['points']} (point, op), median |ratio-1| {a['median_abs_dev']:.2%}, p95 {a['p95_abs_dev']:.2%}, "
            f"max {a['max_abs_dev']:.2%}, {a['beyond_3pct']} beyond 3 %, {a['within_round_spread']} within the "
            "larger round spread")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="MOEBENCH_* settings of the grid")
    ap.add_argument("--asv", action="store_true", help="time whole asv runs, not setup_cache alone")
    ap.add_argument("--warm-up", action="store_true", help="run the grid once, short, before timing")
    ap.add_argument("--runs", nargs="*", choices=RUNS, default=list(RUNS),
                    help="which runs now (each is kept in OUT; the comparison needs both there); none: only "
                         "compare the runs OUT already holds")
    ap.add_argument("--card", default="0", help="the card the one-GPU run uses (default 0)")
    ap.add_argument("--cards", type=Path, nargs="+", default=[], metavar="OTHER_OUT",
                    help="folders with a one-GPU asv run on another card (--card), for the per-card comparison")
    ap.add_argument("--baseline", type=Path, help="another OUT of asv runs: each run both hold is compared with its "
                                                  "namesake there (one GPU vs one GPU: the noise against which the "
                                                  "all-GPU run's differences are read; all GPUs vs all GPUs: whether "
                                                  "the plan keeps each point on its card)")
    args = ap.parse_args(argv)
    if (args.baseline or args.cards) and not args.asv:
        ap.error("--baseline and --cards compare asv runs: add --asv")
    if args.baseline and not args.baseline.is_dir():
        ap.error(f"--baseline {args.baseline}: no such folder")
    for d in args.cards:
        if not ((d / "one-gpu.json").is_file() and (d / "one-gpu" / "results").is_dir()):
            ap.error(f"--cards {d}: no one-GPU asv run there (one-gpu.json and one-gpu/results)")
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    grid_env = dict(item.split("=", 1) for item in args.env)
    base = {**os.environ, **grid_env}
    # where and what: recorded in each run's row, and the report's from the all-GPU run's
    here = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "grid": {k: v for k, v in base.items() if k.startswith("MOEBENCH_")}}
    report = {**here, "runs": {}}
    if args.warm_up:
        (args.out / "warm-up.json").write_text(json.dumps(warm_up(base, args.out)) + "\n")
    for name in args.runs:
        env = {**base, "MOEBENCH_RAY": RUNS[name]} | ({"CUDA_VISIBLE_DEVICES": args.card} if name == "one-gpu" else {})
        row = (run_asv if args.asv else run)(name, env, args.out)
        row |= here | ({"card": args.card} if name == "one-gpu" else {})
        (args.out / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
        if name == "all-gpus" and here["gpus"] > 1:  # which card measured which point, with the plan of this code
            (args.out / "all-gpus-cards.json").write_text(json.dumps(cards_of(base, here["gpus"]), indent=0) + "\n")
    if not all((args.out / f"{n}.json").is_file() for n in RUNS):
        return 0
    report["runs"] = runs = {n: json.loads((args.out / f"{n}.json").read_text()) for n in RUNS}
    # where the runs were made (when only comparing, this process may be on another machine)
    report |= {k: runs["all-gpus"][k] for k in here if k in runs["all-gpus"]}
    if (args.out / "warm-up.json").is_file():
        report["warm_up"] = json.loads((args.out / "warm-up.json").read_text())
    rounds = functools.partial(asv_rounds, args.out) if args.asv else (lambda n: grid_rounds(args.out / f"{n}.pkl"))
    one, every = rounds("one-gpu"), rounds("all-gpus")
    whole = "wall_s" if args.asv else "process_s"
    report["speedup"] = {k: round(runs["one-gpu"][k] / runs["all-gpus"][k], 3) for k in (whole, "points_s")}
    report["agreement"] = agreement(one, every)
    if args.baseline:
        report["baseline"] = {"out": str(args.baseline), "agreement": {
            n: agreement(asv_rounds(args.baseline, n), asv_rounds(args.out, n)) for n in RUNS
            if (args.baseline / n / "results").is_dir()}}
    if args.asv and (cards := args.out / "all-gpus-cards.json").is_file():
        one_gpu = {json.loads((d / "one-gpu.json").read_text()).get("card", "0"): asv_rounds(d, "one-gpu")
                   for d in [args.out, *args.cards]}
        report["per_card"] = card_agreement(json.loads(cards.read_text()), one_gpu, every)
    (args.out / "scaling.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"speedup: points {report['speedup']['points_s']}x, whole {'asv run' if args.asv else 'process'} "
          f"{report['speedup'][whole]}x", flush=True)
    print(said("all GPUs vs one", report["agreement"]), flush=True)
    for card, a in report.get("per_card", {}).items():
        print(said(f"card {card}: all GPUs vs one GPU on this card", a), flush=True)
    for n, a in report.get("baseline", {}).get("agreement", {}).items():
        print(said(f"{n} vs {n} of {args.baseline}", a), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
