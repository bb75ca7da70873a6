"""What one parameter combination of the asv suite costs, before and after measuring the grid once.

  python evidence/asv_cost.py report RESULTS_DIR
      From asv's own records of a run (the duration of each benchmark over all its combinations,
      and of each setup_cache): per benchmark class, the grid measurement (setup_cache, once)
      and the cost per combination (process start-up + lookup), and in total.

  python evidence/asv_cost.py probe [--n 8] [--device cuda]
      The part a combination would add if it did its own GPU work, as in a suite without
      setup_cache: a fresh interpreter importing torch and moebench and creating the CUDA
      context (launch_method spawn), or a fork of a server that imported them (forkserver: a
      CUDA context cannot cross a fork, so each child still creates its own). Each also measures
      one small point, the work that moves into setup_cache.

Prints one JSON object (and a table for ``report``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

NAIVE_POINT = dict(model="mistralai/Mixtral-8x7B-Instruct-v0.1", impl="reference-custom", tokens=1)


def report(results_dir: Path) -> dict:
    benchmarks = json.loads((results_dir / "benchmarks.json").read_text())
    runs = []
    for path in sorted(results_dir.glob("*/*.json")):
        if path.name == "machine.json":
            continue
        data = json.loads(path.read_text())
        cols = data["result_columns"]
        classes: dict[str, dict] = {}
        for name, row in data["results"].items():
            cls = name.rsplit(".", 1)[0]
            entry = classes.setdefault(cls, {"benchmarks": 0, "combinations": 0, "combinations_s": 0.0})
            params = benchmarks[name]["params"]
            entry["benchmarks"] += 1
            entry["combinations"] += len(list(itertools.product(*params))) if params else 1
            entry["combinations_s"] += row[cols.index("duration")] or 0.0
            key = benchmarks[name].get("setup_cache_key")
            entry["setup_cache_s"] = data["durations"].get(f"<setup_cache {key}>", 0.0)
        for entry in classes.values():
            entry["per_combination_ms"] = 1e3 * entry["combinations_s"] / entry["combinations"]
        # Classes that share a setup_cache ran it once.
        setup_s = sum(v for k, v in data["durations"].items() if k.startswith("<setup_cache"))
        runs.append({"file": str(path), "classes": classes, "setup_cache_s": setup_s,
                     "total_s": setup_s + sum(e["combinations_s"] for e in classes.values())})
    return {"runs": runs}


def _naive_combination(device_name: str) -> dict:
    """One combination of a suite without setup_cache: imports, context, one point."""
    t0 = time.perf_counter()
    import torch

    from moebench.gpustate import Nvml
    from moebench.impls import implementations
    from moebench.models import resolve
    from moebench.roofline import ceiling
    from moebench.grid import SweepSpec
    from moebench.runpoint import run_point
    from moebench.axes import TimerConfig, default_calls_per_graph

    spec = SweepSpec(shape=resolve(NAIVE_POINT["model"]), dtype_modes=("auto",),
                     impls=(NAIVE_POINT["impl"],), batch_sizes=(NAIVE_POINT["tokens"],))
    registry = implementations()  # the vLLM binding imports vLLM here, where installed
    t_import = time.perf_counter()
    device = torch.device(device_name)
    torch.zeros(1, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_context = time.perf_counter()
    timer = TimerConfig(calls_per_graph=default_calls_per_graph(device, "warm"))
    (point,) = spec.points()
    r = run_point(point, registry[point.impl], device, timer, ceiling(device), Nvml())
    t_point = time.perf_counter()
    return {"import_s": t_import - t0, "context_s": t_context - t_import,
            "point_s": t_point - t_context, "status": r.status}


def probe(n: int, device: str) -> dict:
    spawn = []
    for _ in range(n):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "_child", device], check=True,
                             capture_output=True, text=True).stdout
        spawn.append({**json.loads(out.splitlines()[-1]), "process_s": time.perf_counter() - t})
    # The fork server of such a suite: torch, moebench and the model's config already loaded
    # (a CUDA context must not be, or the forked children could not use CUDA).
    from moebench.impls import implementations
    from moebench.models import resolve

    resolve(NAIVE_POINT["model"])
    implementations()

    fork = []
    for _ in range(n):
        read, write = os.pipe()
        t = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, json.dumps(_naive_combination(device)).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            data = json.loads(f.read())
        os.waitpid(pid, 0)
        fork.append({**data, "process_s": time.perf_counter() - t})

    def medians(rows: list[dict]) -> dict:
        keys = ("process_s", "import_s", "context_s", "point_s")
        return {k: statistics.median(r[k] for r in rows) for k in keys} | {"n": len(rows)}

    return {"device": device, "point": NAIVE_POINT, "spawn": medians(spawn), "fork": medians(fork)}


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        print(json.dumps(_naive_combination(sys.argv[2])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report")
    r.add_argument("results_dir", type=Path)
    q = sub.add_parser("probe")
    q.add_argument("--n", type=int, default=8)
    q.add_argument("--device", default="cuda")
    a = p.parse_args()
    if a.cmd == "report":
        out = report(a.results_dir)
        for run in out["runs"]:
            print(f"{'class':16s} {'setup_cache s':>13s} {'combinations':>12s} {'their s':>8s} {'ms each':>8s}")
            for cls, e in run["classes"].items():
                print(f"{cls:16s} {e['setup_cache_s']:13.1f} {e['combinations']:12d} "
                      f"{e['combinations_s']:8.1f} {e['per_combination_ms']:8.1f}")
            print(f"{'total':16s} {run['setup_cache_s']:13.1f} {'':12s} {run['total_s'] - run['setup_cache_s']:8.1f}"
                  f"   = {run['total_s']:.1f} s")
    else:
        out = probe(a.n, a.device)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
