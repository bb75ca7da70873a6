#!/usr/bin/env python3
"""triton-sol on a GPU: which launch parameters (``impls.triton_sol.Tuning``) are fastest here,
and how close to the bandwidth floor does each get? For any CUDA machine with Triton.

    python evidence/triton_sol_tune.py --out docs/data/triton-sol/tune.json
    python evidence/triton_sol_tune.py --variants default split copy-tok8 --tokens 1024 4096 --out ...

Every variant is timed by the product's own point runner (``runpoint.run_point``: the correctness
gate before and after timing, CUDA-graph rounds, the roofline floor), with a lighter recipe than
the suite's (``--rounds``, default 3) since only the ranking matters here; the table the docs
report comes from ``moebench --impl triton-sol,vllm-ops`` with the suite's recipe. Prints µs and %
of floor per (model, dtype, T, variant, op), then the fastest variant per op, and writes every
result to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench.axes import TimerConfig  # noqa: E402
from moebench.gpustate import Nvml  # noqa: E402
from moebench.grid import SweepSpec  # noqa: E402
from moebench.impls.triton_sol import TritonSol, Tuning  # noqa: E402
from moebench.models import resolve  # noqa: E402
from moebench.roofline import ceiling  # noqa: E402
from moebench.runpoint import run_point  # noqa: E402

MODELS = ("mistralai/Mixtral-8x7B-Instruct-v0.1", "Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V3")
# One knob at a time away from the defaults (``Tuning``'s comments say what each does).
VARIANTS = {
    "default": Tuning(),
    "split": Tuning(fuse_limit=0),
    "fuse-more": Tuning(fuse_limit=1 << 17),
    "onehot": Tuning(gather=False),
    "route-256": Tuning(route_slots=256),
    "route-4w": Tuning(route_warps=4),
    "copy-tok2": Tuning(copy_tokens=2),
    "copy-tok8": Tuning(copy_tokens=8),
    "copy-1k": Tuning(copy_bytes=1024),
    "copy-4k": Tuning(copy_bytes=4096),
    "copy-8w": Tuning(copy_warps=8),
    "amax-2": Tuning(amax_iters=2),
    "unperm-4": Tuning(unpermute_rows=4),
    "unperm-16": Tuning(unpermute_rows=16),
    "unperm-4k": Tuning(unpermute_bytes=4096),
    "unperm-4w": Tuning(unpermute_warps=4),
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 1024, 4096])
    p.add_argument("--modes", nargs="+", default=["auto", "fp8_w8a8"], choices=["auto", "fp8_w8a8"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    device = torch.device("cuda")
    ceil, nvml = ceiling(device), Nvml()
    timer = TimerConfig(calls_per_graph=10, replays=20, rounds=args.rounds)
    print(f"{ceil.device}: copy ceiling {ceil.bytes_per_s / 1e9:.0f} GB/s ({ceil.method})", flush=True)
    rows, best = [], {}
    for model in args.models:
        spec = SweepSpec(resolve(model), tuple(args.modes), ("triton-sol",), batch_sizes=tuple(args.tokens))
        for point in spec.points():
            for variant in args.variants:
                r = run_point(point, TritonSol(tuning=VARIANTS[variant]), device, timer, ceil, nvml)
                rows.append({"variant": variant, "tuning": asdict(VARIANTS[variant]), **asdict(replace(r, ops=()))} |
                            {"ops": {o.op: {"median_us": o.median_us, "pct_of_floor": o.pct_of_floor} for o in r.ops}})
                where = f"{point.model.split('/')[-1]:26} {point.dtype_mode:8} T={point.num_tokens:<5} {variant:10}"
                if r.status != "ok":
                    print(f"{where} {r.status}: {r.reason}", flush=True)
                    continue
                for o in r.ops:
                    print(f"{where} {o.op:9} {o.median_us:9.2f} µs {o.pct_of_floor:6.1f} % of floor", flush=True)
                    key = (point.model, point.dtype_mode, point.num_tokens, o.op)
                    if o.median_us < best.get(key, (float("inf"), ""))[0]:
                        best[key] = (o.median_us, variant)
    for (model, mode, t, op), (us, variant) in best.items():
        print(f"fastest: {model.split('/')[-1]} {mode} T={t} {op}: {variant} ({us:.2f} µs)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": ceil.device, "ceiling": asdict(ceil), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "timer": asdict(timer)}
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
