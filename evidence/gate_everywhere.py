#!/usr/bin/env python3
"""Does an implementation pass the correctness gate for every shipped model, dtype mode and
expert-parallel setting on this device, with its calls captured in CUDA graphs?

    python evidence/gate_everywhere.py --impl triton-sol --out docs/data/triton-sol/gate.json

For each shipped model snapshot × ``--modes`` × (no EP, EP 2 rank 0, EP 2 rank 1) × ``--tokens``,
one point through the product's point runner (``runpoint.run_point``: the gate before timing, a
short CUDA-graph round, the gate again after the replays). Prints one line per failure and a
count per model; writes every point's status and reason to ``--out``. Exit 1 if any point failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench.axes import DTYPE_MODES, TimerConfig  # noqa: E402
from moebench.gpustate import Nvml  # noqa: E402
from moebench.grid import SweepSpec  # noqa: E402
from moebench.impls import implementations  # noqa: E402
from moebench.models import resolve, shipped_models  # noqa: E402
from moebench.roofline import ceiling  # noqa: E402
from moebench.routing import ExpertParallel  # noqa: E402
from moebench.runpoint import run_point  # noqa: E402

EP_SETTINGS = (ExpertParallel(), ExpertParallel(2, 0), ExpertParallel(2, 1))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", required=True)
    p.add_argument("--vllm-ops-library")
    p.add_argument("--modes", nargs="+", default=list(DTYPE_MODES), choices=DTYPE_MODES)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 7, 256, 4096])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    impl = implementations(args.vllm_ops_library)[args.impl]
    ceil, nvml = ceiling(device), Nvml()
    timer = TimerConfig(calls_per_graph=2, replays=3, rounds=1, warmup=1)
    results, counts = [], Counter()
    for model in shipped_models():
        shape = resolve(model)
        for ep in EP_SETTINGS:
            spec = SweepSpec(shape, tuple(args.modes), (args.impl,), batch_sizes=tuple(args.tokens), ep=ep)
            for point in spec.points():
                r = run_point(point, impl, device, timer, ceil, nvml)
                counts[(model, r.status)] += 1
                results.append({"point": point.key, "status": r.status, "reason": r.reason})
                if r.status == "failed":
                    print(f"FAILED {point.key}: {r.reason}", flush=True)
        print(f"{model}: " + ", ".join(f"{n} {s}" for (m, s), n in sorted(counts.items()) if m == model), flush=True)
    by_status = Counter()
    for (_, status), n in counts.items():
        by_status[status] += n
    failed = by_status["failed"]
    print(f"{args.impl} on {ceil.device}: {by_status['ok']} of {sum(by_status.values())} points passed the gate, "
          f"{failed} failed, {by_status['skipped']} skipped (unavailable here)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"impl": args.impl, "device": ceil.device, "torch": torch.__version__,
                                    "results": results}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
