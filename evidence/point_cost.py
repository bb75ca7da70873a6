#!/usr/bin/env python3
"""Where one point's seconds go: the host-side cost of ``runpoint.run_point``, phase by phase.

    python evidence/point_cost.py --out docs/data/point-cost/before.json \
        --models mistralai/Mixtral-8x7B-Instruct-v0.1 deepseek-ai/DeepSeek-V3 \
        --impls vllm-ops triton-sol --vllm-ops-library REL/_moe_C_stable_libtorch.abi3.so

For any CUDA machine (a CPU runs it too, with the host timer). Points run through the product's
own ``runpoint.DeviceRunner`` with the suite's recipe (``--rounds``, ``--replays``); each phase
(inputs, copies, prepare, the correctness gate, the timer, NVML reads, the allocator's
``empty_cache``, the thrown-away priming round) is timed by wrapping the function that does it, so
the numbers are the wall seconds the sweep spends there. The GPU's own share is the timed calls
(samples x calls per graph x replays): what remains is the host's. Prints a table per point and
the totals, writes every point's phases to ``--out``; ``--cprofile FILE`` also writes cProfile's
top functions (by cumulative time) of one more pass over the grid.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from moebench import runpoint  # noqa: E402
from moebench.axes import TimerConfig, default_calls_per_graph  # noqa: E402
from moebench.gpustate import Nvml  # noqa: E402
from moebench.grid import SweepSpec  # noqa: E402
from moebench.impls import implementations  # noqa: E402
from moebench.models import resolve  # noqa: E402
from moebench.routing import MoEInputs  # noqa: E402

MODELS = ("mistralai/Mixtral-8x7B-Instruct-v0.1", "deepseek-ai/DeepSeek-V3", "meta-llama/Llama-4-Scout-17B-16E")


class Phases:
    """Wall seconds per phase, accumulated by wrappers around the functions that do the work."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1

        setattr(owner, name, timed)

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        out = dict(self.seconds), dict(self.calls)
        self.seconds.clear()
        self.calls.clear()
        return out


@contextmanager
def _instrumented(phases: Phases, registry):
    """Wrap the phases run_point goes through (module attributes it looked up at import)."""
    wrapped = [(runpoint, "make_inputs", "inputs"), (runpoint, "_gate", "gate"), (runpoint, "measure", "timer"),
               (runpoint, "run_point", "run_point"), (MoEInputs, "copy", "copy inputs"), (Nvml, "read", "nvml"),
               (torch.cuda, "empty_cache", "empty_cache")]
    wrapped += [(impl, "prepare", "prepare") for impl in registry.values()]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in wrapped]
    for owner, name, label in wrapped:
        phases.wrap(owner, name, label)
    try:
        yield
    finally:
        for owner, name, value in saved:
            if owner in registry.values():
                delattr(owner, name)  # the instance attribute goes, the class's method shows again
            else:
                setattr(owner, name, value)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--dtypes", nargs="+", default=["auto", "fp8_w8a8"])
    p.add_argument("--impls", nargs="+", default=["vllm-ops", "triton-sol"])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 1024, 4096])
    p.add_argument("--rounds", type=int, default=TimerConfig.rounds)
    p.add_argument("--replays", type=int, default=TimerConfig.replays)
    p.add_argument("--vllm-ops-library")
    p.add_argument("--vllm-module")
    p.add_argument("--cprofile", type=Path, help="also write cProfile's top functions of one more pass here")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registry = implementations(args.vllm_ops_library, args.vllm_module)
    t0 = time.perf_counter()
    runner = runpoint.DeviceRunner(device, registry)
    start_s = time.perf_counter() - t0
    calls = default_calls_per_graph(device, "warm")
    timer = TimerConfig(calls_per_graph=calls, replays=args.replays, rounds=args.rounds)
    points = [p for m in args.models for p in SweepSpec(resolve(m), tuple(args.dtypes), tuple(args.impls),
                                                          batch_sizes=tuple(args.tokens)).points()]
    print(f"{runner.ceiling.device}: {len(points)} points, runner ready in {start_s:.2f} s", flush=True)
    phases, rows = Phases(), []
    with _instrumented(phases, registry):
        for point in points:
            t = time.perf_counter()
            r = runner.run(point, timer)
            wall = time.perf_counter() - t
            secs, counts = phases.take()
            # What the GPU spent in timed calls: every sample is one call's time.
            gpu_s = sum(sum(rnd) * 1e-6 * calls for o in r.ops for rnd in o.rounds_us)
            rows.append({"model": point.model, "dtype": point.dtype_mode, "impl": point.impl,
                         "tokens": point.num_tokens, "status": r.status, "reason": r.reason, "wall_s": wall,
                         "timed_gpu_s": gpu_s, "phases_s": secs, "calls": counts,
                         "attempts": {o.op: o.attempts for o in r.ops}})
            shown = "  ".join(f"{k} {v * 1e3:.0f}" for k, v in sorted(secs.items()) if k != "run_point")
            print(f"{point.model.split('/')[-1][:22]:22} {point.dtype_mode:8} {point.impl:10} T={point.num_tokens:<5} "
                  f"{r.status:6} {wall * 1e3:6.0f} ms (timed GPU {gpu_s * 1e3:5.0f}) ms: {shown}", flush=True)
    total = sum(r["wall_s"] for r in rows)
    by_phase: dict[str, float] = defaultdict(float)
    for r in rows:
        for k, v in r["phases_s"].items():
            by_phase[k] += v
    print(f"total {total:.1f} s for {len(rows)} points ({total / max(len(rows), 1) * 1e3:.0f} ms each); "
          + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(by_phase.items(), key=lambda kv: -kv[1])), flush=True)
    profile_top = None
    if args.cprofile:
        prof = cProfile.Profile()
        prof.enable()
        for point in points:
            runner.run(point, timer)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(45)
        profile_top = buf.getvalue()
        args.cprofile.parent.mkdir(parents=True, exist_ok=True)
        args.cprofile.write_text(profile_top)
    meta = {"device": runner.ceiling.device, "torch": torch.__version__, "timer": asdict(timer),
            "runner_start_s": start_s, "total_s": total, "phases_s": dict(by_phase)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "points": rows}, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
