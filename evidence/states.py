"""What moves one point between its timing states: a probe for any CUDA machine.

    python evidence/states.py --vllm-ops-library PATH/_moe_C*.so --out docs/data/states

The same point with the same seeded inputs can read two levels that differ by several percent
while the replays of one measurement agree to 0.05 %. This probe measures one point many times,
changing one thing at a time, and records every tensor's device address next to each time:

- ``recapture``: the same buffers, a new CUDA graph each time (graph placement, re-measurement);
- ``reprepare``: inputs and outputs allocated anew each time, caching allocator kept (it usually
  hands back the same blocks);
- ``offset``: like ``reprepare``, after a padding allocation of ``i * 512`` bytes that is kept
  alive, so every buffer moves by whole 512-byte steps (the allocator's rounding);
- ``fresh-segment``: the caching allocator's cache emptied before each preparation, so the
  buffers come from new ``cudaMalloc`` segments (other physical pages);
- ``recapture-empty-cache``: the same buffers; the cache emptied before each capture, so the
  memory a graph allocates for itself (its private pool: intermediates, library workspaces) is
  released and taken again;
- ``recapture-shared-pool``: the same buffers; every capture uses the first capture's memory pool,
  so in-graph allocations land where the previous graph's were;
- ``recapture-paced``: ``recapture`` with a pause between measurements (a cause in time, such as
  a clock cycle, would change its pattern; a cause in the count of captures would not);
- ``recapture-gc-off``: ``recapture`` with Python's garbage collector off (its pauses come every
  so many allocations: a cycle in the count of measurements);
- ``spacer``: like ``fresh-segment``, after a spacer allocation of a random number of whole
  2 MiB pages (up to 2 GiB, seeded), kept alive, so the buffers land on other physical pages;
- ``hold``: the same graph timed behind GPU holds of fixed lengths (``HOLDS_S``; 0 = no hold,
  vLLM's recipe), ``repeats`` measurements each, in turn.

``--knobs`` selects some; ``--fresh-processes N`` also measures the point first thing in N new
processes (the first measurement of a process is where the issue was seen).

Writes ``OUT/states.json`` (every measurement: knob, index, medians, IQRs and addresses) and
prints per (point, knob) the spread of the medians and how many levels they form.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import subprocess
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench.gpustate import Nvml  # noqa: E402
from moebench.impls import implementations  # noqa: E402
from moebench.models import resolve  # noqa: E402
from moebench.quant import act_dtype  # noqa: E402
from moebench.routing import make_inputs  # noqa: E402
from moebench.stats import summarize  # noqa: E402
from moebench.timing import TimerConfig, measure  # noqa: E402

KNOBS = ("recapture", "reprepare", "offset", "fresh-segment", "recapture-empty-cache",
         "recapture-shared-pool", "recapture-paced", "recapture-gc-off", "hold", "spacer")
PAGE = 2 << 20  # the driver maps device memory in 2 MiB pages
MAX_SPACER_PAGES = 1024
HOLDS_S = (0.0, 25e-6, 50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3)
PACE_S = 0.3
STEP = 512  # the caching allocator rounds every block to 512 bytes


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-ops-library", help="a _moe_C*.so to probe as vllm-ops")
    p.add_argument("--impls", nargs="+", default=["vllm-ops", "reference-custom"])
    p.add_argument("--models", nargs="+", default=["mistralai/Mixtral-8x7B-Instruct-v0.1", "deepseek-ai/DeepSeek-V3"])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 4096])
    p.add_argument("--repeats", type=int, default=8, help="measurements per knob (offset: 4x this)")
    p.add_argument("--replays", type=int, default=50)
    p.add_argument("--knobs", nargs="+", choices=KNOBS, default=list(KNOBS))
    p.add_argument("--fresh-processes", type=int, default=0, metavar="N")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    return p.parse_args(argv)


def addresses(inputs, run) -> dict[str, int]:
    """Every device tensor a run holds, by attribute name: what the kernels touch."""
    found = {"hidden": inputs.hidden.data_ptr(), "topk_ids": inputs.topk_ids.data_ptr(),
             "topk_weights": inputs.topk_weights.data_ptr()}
    for name, value in vars(run).items():
        if isinstance(value, torch.Tensor) and value.is_cuda:
            found[name.strip("_")] = value.data_ptr()
    return found


def probe(impl, shape, t: int, knob: str, repeats: int, timer: TimerConfig, device, nvml) -> list[dict]:
    def prepare():
        inputs = make_inputs(num_experts=shape.num_experts, topk=shape.topk, hidden_size=shape.hidden_size,
                             num_tokens=t, dtype=act_dtype(shape.dtype), dtype_mode="auto", device=device,
                             seed=0)
        return inputs, impl.prepare(inputs)

    rows = []
    rng = random.Random(0)
    inputs, run = prepare()
    n = 4 * repeats if knob in ("offset", "spacer") else repeats
    graph = torch.cuda.graph
    if knob == "recapture-shared-pool":
        torch.cuda.graph = functools.partial(graph, pool=torch.cuda.graph_pool_handle())
    if knob == "hold":
        n = repeats * len(HOLDS_S)
    if knob == "recapture-gc-off":
        gc.disable()
    t0 = time.perf_counter()
    for i in range(n):
        hold_s = HOLDS_S[i % len(HOLDS_S)] if knob == "hold" else timer.hold_s
        pad = None
        if knob == "recapture-empty-cache":
            torch.cuda.empty_cache()
        if knob == "recapture-paced" and i:
            time.sleep(PACE_S)
        if not knob.startswith("recapture"):
            run.close()
            del inputs, run
            if knob in ("fresh-segment", "spacer"):
                torch.cuda.empty_cache()
            if knob == "spacer":
                pad = torch.empty(rng.randrange(MAX_SPACER_PAGES) * PAGE + 1, dtype=torch.uint8, device=device)
            if knob == "offset":
                pad = torch.empty(i * STEP, dtype=torch.uint8, device=device) if i else None
            inputs, run = prepare()
        row = {"knob": knob, "i": i, "pad_bytes": pad.numel() if pad is not None else 0,
               "hold_s": hold_s, "t_s": round(time.perf_counter() - t0, 4), "reserved_bytes": torch.cuda.memory_reserved(),
               "addresses": addresses(inputs, run)}
        for op in ("permute", "unpermute"):
            s = summarize(measure(getattr(run, op), device, replace(timer, hold_s=hold_s)))
            state = nvml.read(device)
            row[op] = {"median_us": s.median_us, "rel_iqr": s.rel_iqr,
                       "sm_clock_mhz": state.sm_clock_mhz if state else None}
        rows.append(row)
        del pad
    torch.cuda.graph = graph
    gc.enable()
    run.close()
    torch.cuda.empty_cache()
    return rows


def levels(values: list[float], gap: float = 0.01) -> int:
    """Clusters of sorted values separated by more than ``gap`` (relative)."""
    v = sorted(values)
    return 1 + sum(1 for a, b in zip(v, v[1:]) if b > a * (1 + gap))


def first_in_process(args) -> list[dict]:
    """Each (impl, model, T) measured ``recapture``-style as the first thing of N new processes."""
    out = []
    for k in range(args.fresh_processes):
        for impl in args.impls:
            for model in args.models:
                for t in args.tokens:
                    cmd = [sys.executable, __file__, "--impls", impl, "--models", model, "--tokens", str(t),
                           "--knobs", "recapture", "--repeats", "4", "--replays", str(args.replays),
                           "--out", str(args.out / f"fresh-{k}")]
                    if args.vllm_ops_library:
                        cmd += ["--vllm-ops-library", args.vllm_ops_library]
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    data = json.loads((args.out / f"fresh-{k}" / "states.json").read_text())
                    for rec in data["records"]:
                        rec["process"] = k
                        for row in rec["rows"]:
                            row["knob"] = "first-in-process"
                        out.append(rec)
                        med = [r["permute"]["median_us"] for r in rec["rows"]]
                        print(f"process {k} {impl} {model.split('/')[-1][:12]} T={t}: permute "
                              + " ".join(f"{m:.3f}" for m in med), flush=True)
    return out


def main(argv: list[str]) -> int:
    args = parse(argv)
    device = torch.device("cuda")
    registry = implementations(args.vllm_ops_library)
    timer = TimerConfig(calls_per_graph=10, replays=args.replays)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "library": args.vllm_ops_library, "timer": asdict(timer),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    records = []
    print(f"{meta['device']}  torch {meta['torch']}")
    nvml = Nvml()
    if args.fresh_processes:
        records += first_in_process(args)
    print(f"{'impl':16s} {'model':12s} {'T':>5s} {'knob':14s} {'op':9s} {'min us':>8s} {'max us':>8s} "
          f"{'spread':>7s} {'levels':>6s} {'max IQR':>7s}")
    for impl_name in args.impls:
        impl = registry[impl_name]
        if (why := impl.unavailable("auto", device)) is not None:
            print(f"{impl_name}: unavailable: {why}")
            continue
        for model in args.models:
            shape = resolve(model)
            for t in args.tokens:
                for knob in args.knobs:
                    rows = probe(impl, shape, t, knob, args.repeats, timer, device, nvml)
                    records.append({"impl": impl_name, "model": model, "tokens": t, "rows": rows})
                    for op in ("permute", "unpermute"):
                        med = [r[op]["median_us"] for r in rows]
                        print(f"{impl_name:16s} {model.split('/')[-1][:12]:12s} {t:5d} {knob:14s} {op:9s} "
                              f"{min(med):8.3f} {max(med):8.3f} {(max(med) - min(med)) / min(med):7.2%} "
                              f"{levels(med):6d} {max(r[op]['rel_iqr'] for r in rows):7.2%}", flush=True)
    (args.out / "states.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
