"""GPU run of the vLLM binding over one kernel library, next to the torch reference.

    PYTHONPATH=src python scripts/gpu_vllm.py .vllm-ops/0.33.0 --out "$OUT"

DIR holds one ``_moe_C*.so`` (loaded as ``--vllm-ops-library``; no vLLM install needed) and,
optionally, a copy of the same release's ``moe_permute_unpermute.py``: if present it becomes the
Python API (``MOEBENCH_VLLM_MODULE``), so ``vllm-custom`` and ``vllm-custom-scratch`` run the real
Python of that release over its real kernels (the files of 0.16–0.26 import only torch).

Every shipped model × dtype × batch size runs ``reference-custom`` and every vLLM implementation
through the sweep's own ``run_point``: correctness gate before and after timing, CUDA-graph timer.
``vllm-ops`` is always in the grid (if it cannot run, its points say why); the API paths only where
they are available. Writes ``OUT/vllm-<DIR name>/<model>.json`` (one results file per model,
rewritten after every point) and ``summary.json`` (library, eras, compact per-point rows), prints a
table of median µs per call (permute / unpermute). Stops starting new models after ``--budget-s``.
Exit status: 0 when every vLLM point ran and passed, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console

from moebench.errors import BadInput
from moebench.impls import implementations
from moebench.impls.vllm import MODULE_ENV, check_library_path, file_sha256
from moebench.models import resolve, shipped_models
from moebench.results import FAILED, OK, SKIPPED
from moebench.sweep import Measurer, SweepSpec, run_sweep, validate_row_bytes
from moebench.timing import TimerConfig, default_calls_per_graph

MODULE_FILE = "moe_permute_unpermute.py"
VLLM_IMPLS = ("vllm-ops", "vllm-custom", "vllm-custom-scratch")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="directory with one _moe_C*.so (and optionally moe_permute_unpermute.py)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    p.add_argument("--models", nargs="+", default=shipped_models())
    p.add_argument("--dtypes", nargs="+", default=["auto", "fp8_w8a8"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 256, 1024, 4096])
    p.add_argument("--replays", type=int, default=50)
    p.add_argument("--budget-s", type=float, default=450.0, help="start no new model after this many seconds")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def find_library(directory: Path) -> Path:
    """The one ``_moe_C*.so`` of a release folder (also used by hold_effect.py and gpu_alerts.py)."""
    found = sorted(directory.glob("_moe_C*.so"))
    if len(found) != 1:
        sys.exit(f"error: expected one _moe_C*.so in {directory}, found {len(found)}")
    check_library_path(str(found[0]))
    return found[0]


def cell(r) -> str:
    if r.status != OK:
        return r.status
    perm, unperm = (op.median_us for op in r.ops)
    return f"{perm:8.1f} / {unperm:<8.1f}"


def print_table(rows, impls) -> None:
    by_key = {(r.point.model, r.point.dtype_mode, r.point.num_tokens, r.point.impl): r for r in rows}
    cases = sorted({k[:3] for k in by_key}, key=lambda k: (k[0], k[1], k[2]))
    print(f"{'model':34s} {'dtype':9s} {'T':>5s}  " + "  ".join(f"{i:>19s}" for i in impls))
    print(f"{'':50s}  " + "  ".join(f"{'permute / unpermute':>19s}" for _ in impls))
    for model, mode, t in cases:
        cells = [cell(by_key[(model, mode, t, i)]) if (model, mode, t, i) in by_key else "-" for i in impls]
        print(f"{model.split('/')[-1][:34]:34s} {mode:9s} {t:5d}  " + "  ".join(f"{c:>19s}" for c in cells))


def main(argv: list[str]) -> int:
    args = parse(argv)
    library = find_library(args.dir)
    module = args.dir / MODULE_FILE
    if module.is_file():
        os.environ[MODULE_ENV] = str(module)  # read when the implementations are built
    device = torch.device(args.device)
    err = Console(stderr=True)
    if device.type != "cuda":
        err.print("[yellow]note:[/yellow] no CUDA device: a CPU dry run (vLLM's kernels will be unavailable)")
    registry = implementations(str(library))
    vllm = {n: registry[n] for n in VLLM_IMPLS}
    available = {n: i.unavailable("auto", device) for n, i in vllm.items()}
    for name, why in available.items():
        err.print(f"{name}: {'available' if why is None else 'unavailable: ' + why}", soft_wrap=True)
    impls = ("reference-custom", "vllm-ops") + tuple(n for n in VLLM_IMPLS[1:] if available[n] is None)
    timer = TimerConfig(calls_per_graph=default_calls_per_graph(device, "warm"), replays=args.replays)
    out = args.out / f"vllm-{args.dir.name}"
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "library": str(library), "library_sha256": file_sha256(str(library)),
        "python_module": str(module) if module.is_file() else None, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "binding": {n: i.binding_info(device) for n, i in vllm.items()},
        "timer": asdict(timer), "impls": list(impls), "points": [], "models_not_run": []}
    start = time.monotonic()
    results = []
    for model in args.models:
        if time.monotonic() - start > args.budget_s:
            summary["models_not_run"].append(model)
            continue
        shape = resolve(model)
        validate_row_bytes(shape, args.dtypes)
        spec = SweepSpec(shape=shape, dtype_modes=tuple(args.dtypes), impls=impls,
                         batch_sizes=tuple(args.batch_sizes))
        path = out / (model.replace("/", "__") + ".json")
        meta = {"script": "scripts/gpu_vllm.py", "argv": argv, "shape": shape.summary(),
                "binding": summary["binding"]}
        results += run_sweep(spec, timer, Measurer(device, registry), json_path=str(path), meta=meta, console=err)
        err.print(f"{model}: done at {time.monotonic() - start:.0f} s")
    for r in results:
        medians = {op.op: round(op.median_us, 3) for op in r.ops}
        summary["points"].append([r.point.model, r.point.dtype_mode, r.point.num_tokens, r.point.impl, r.status,
                                  medians.get("permute"), medians.get("unpermute"), r.reason])
    bad = [r for r in results if r.point.impl.startswith("vllm") and r.status != OK]
    summary["vllm_points_not_ok"] = len(bad)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"library {library} · {summary['device']} · torch {torch.__version__} · "
          f"{timer.calls_per_graph} calls/graph × {timer.replays} replays · median µs per call")
    for name, info in summary["binding"].items():
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print_table(results, impls)
    counts = {s: sum(r.status == s for r in results) for s in (OK, FAILED, SKIPPED)}
    print(f"points: {counts}; not run (budget): {summary['models_not_run'] or 'none'}; wrote {out}")
    for r in bad:
        print(f"NOT OK {r.point.key}: {r.status}: {r.reason}")
    return 1 if bad or summary["models_not_run"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BadInput as exc:
        sys.exit(f"gpu_vllm: error: {exc}")
