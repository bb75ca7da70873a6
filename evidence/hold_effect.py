"""What the GPU hold changes: the same points timed by vLLM's recipe and by moebench's (recipe 2).

    python evidence/hold_effect.py REL/_moe_C_stable_libtorch.abi3.so --out docs/data

vLLM's recipe records the start event on an idle stream and then launches the graph, so each
sample holds the host's launch latency (divided by the calls per graph); moebench queues the graph
behind a GPU hold first (``moebench.timing``). Each point is measured A B B A (vLLM, hold, hold,
vLLM) in one process, so drift cannot pass for a difference. Writes OUT/hold-effect.json and
prints median µs per call of both recipes, their ratio, the largest IQR / median of each recipe's
two measurements, and which measurements stayed unsteady after ``runpoint.ATTEMPTS`` tries.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench.gpustate import Nvml  # noqa: E402
from moebench.impls import implementations  # noqa: E402
from moebench.models import resolve  # noqa: E402
from moebench.roofline import ceiling  # noqa: E402
from moebench.grid import SweepSpec  # noqa: E402
from moebench.runpoint import run_point  # noqa: E402
from moebench.axes import TimerConfig, default_calls_per_graph  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("library", type=Path, help="a vLLM _moe_C*.so (timed as vllm-ops)")
    p.add_argument("--model", default="mistralai/Mixtral-8x7B-Instruct-v0.1")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 4096])
    p.add_argument("--impls", nargs="+", default=["vllm-ops", "reference-custom"])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    registry = implementations(str(args.library))
    ceil, nvml = ceiling(device), Nvml()
    rows = []
    shape = resolve(args.model)
    for l2 in ("warm", "cold"):
        spec = SweepSpec(shape=shape, dtype_modes=("auto",), impls=tuple(args.impls),
                         batch_sizes=tuple(args.tokens), l2=l2)
        calls = default_calls_per_graph(device, l2)
        recipes = {"vllm": TimerConfig(calls_per_graph=calls, l2=l2, hold_s=0),
                   "hold": TimerConfig(calls_per_graph=calls, l2=l2)}
        for point in spec.points():
            # recipe -> op -> (median µs, IQR / median, attempts) of each measurement
            taken: dict[str, dict[str, list[tuple[float, float, int]]]] = {"vllm": {}, "hold": {}}
            unsteady: dict[str, list[str]] = {"vllm": [], "hold": []}
            for recipe in ("vllm", "hold", "hold", "vllm"):
                r = run_point(point, registry[point.impl], device, recipes[recipe], ceil, nvml)
                if not r.ops:  # an unsteady point keeps its samples; anything else is a bug here
                    raise SystemExit(f"{point.key}: {r.status}: {r.reason}")
                if r.status != "ok":
                    unsteady[recipe].append(r.reason or r.status)
                for o in r.ops:
                    taken[recipe].setdefault(o.op, []).append((o.median_us, o.rel_iqr, o.attempts))
            for op in ("permute", "unpermute"):
                v, h = (float(np.mean([m for m, _, _ in taken[k][op]])) for k in ("vllm", "hold"))
                v_iqr, h_iqr = (max(q for _, q, _ in taken[k][op]) for k in ("vllm", "hold"))
                rows.append({"l2": l2, "calls_per_graph": calls, "impl": point.impl, "tokens": point.num_tokens,
                             "op": op, "vllm_recipe_us": v, "hold_us": h, "vllm_over_hold": v / h,
                             "vllm_recipe_rel_iqr_max": v_iqr, "hold_rel_iqr_max": h_iqr,
                             "attempts": {k: [a for _, _, a in taken[k][op]] for k in taken},
                             "unsteady": {k: [w for w in unsteady[k] if w.startswith(op)] for k in unsteady}})
                print(f"{l2:4} {point.impl:17} T={point.num_tokens:5} {op:9} vLLM recipe {v:9.2f} us "
                      f"(IQR {v_iqr:5.1%})  hold {h:9.2f} us (IQR {h_iqr:5.1%})  x{v / h:.3f}"
                      + "".join(f"  {k} UNSTEADY x{len(w)}" for k, w in rows[-1]["unsteady"].items() if w),
                      flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hold-effect.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
         "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
