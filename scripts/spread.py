"""Same-process repeatability of the CUDA-graph recipe: each point is prepared once and timed
``--repeats`` times in a row; prints each repeat's median and the coefficient of variation of
those medians (the noise figure a regression threshold must clear).

    PYTHONPATH=src python scripts/spread.py --model deepseek-ai/DeepSeek-V3 --impl reference-custom \
        --batch-size 1 256 4096 --l2 warm --json out/spread.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from moebench.impls import implementations
from moebench.models import resolve
from moebench.quant import act_dtype
from moebench.routing import make_inputs
from moebench.stats import summarize
from moebench.timing import TimerConfig, measure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--impl", default="reference-custom")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, nargs="+", required=True)
    p.add_argument("--l2", default="warm")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--replays", type=int, default=100)
    p.add_argument("--calls-per-graph", type=int, default=10)
    p.add_argument("--vllm-ops-library")
    p.add_argument("--json")
    a = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = resolve(a.model)
    impl = implementations(a.vllm_ops_library)[a.impl]
    cfg = TimerConfig(calls_per_graph=a.calls_per_graph, replays=a.replays, l2=a.l2)
    rows = []
    for t in a.batch_size:
        inputs = make_inputs(num_experts=shape.num_experts, topk=shape.topk,
                             hidden_size=shape.hidden_size, num_tokens=t,
                             dtype=act_dtype(shape.dtype), dtype_mode=a.dtype, device=dev, seed=0)
        run = impl.prepare(inputs)
        for op in ("permute", "unpermute"):
            meds = [summarize(measure(getattr(run, op), dev, cfg)).median_us for _ in range(a.repeats)]
            cv = statistics.pstdev(meds) / statistics.mean(meds) * 100
            rows.append({"model": shape.model, "impl": a.impl, "dtype": a.dtype, "l2": a.l2,
                         "tokens": t, "op": op, "medians_us": meds, "cv_pct": cv,
                         "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"})
            print(f"{shape.model:40s} {a.impl:18s} L2 {a.l2:4s} T={t:5d} {op:9s} "
                  f"median {statistics.median(meds):9.2f} µs  CV {cv:5.2f} %  "
                  + " ".join(f"{m:.2f}" for m in meds), flush=True)
        run.close()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
