"""Does GPU memory held by another process move the suite's numbers? A probe for any CUDA machine.

    python evidence/held_memory.py --vllm-ops-library PATH/_moe_C*.so --out docs/data/held-memory

Runs the asv suite (``moebench.asvlocal``, real asv, fresh processes) ``--runs`` times on one
model, alternating two conditions: nothing else on the GPU, and another process holding
``--hold-gib`` of device memory (allocated before the suite's process creates its CUDA context,
as a benchmark driver that measured something first would). Prints per series the values of
each condition and the gap between the conditions' medians; writes ``OUT/held-memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench import asvlocal  # noqa: E402
from moebench.asvresults import load_series  # noqa: E402

HOLDER = ("import sys, time, torch\n"
          "x = torch.empty(int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device='cuda')\n"
          "x.fill_(1); torch.cuda.synchronize(); print('holding', flush=True); time.sleep(3600)\n")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-ops-library", required=True)
    p.add_argument("--model", default="mistralai/Mixtral-8x7B-Instruct-v0.1")
    p.add_argument("--impls", default="vllm-ops,reference-custom")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--hold-gib", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/held-memory"))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    args = p.parse_args(argv)
    work, machine = args.work, "gpu"
    conf = asvlocal.write_config(work, work / "project", work / "html")
    env = {**os.environ, "MOEBENCH_MODELS": args.model, "MOEBENCH_DTYPES": "auto", "MOEBENCH_IMPLS": args.impls,
           "MOEBENCH_L2": "warm", "MOEBENCH_VLLM_OPS_LIBRARY": str(Path(args.vllm_ops_library).resolve()),
           "MOEBENCH_RAY": "off"}
    asvlocal.asv(["machine", "--yes", "--machine", machine], conf, env, capture=True)
    conditions = {}
    for k in range(args.runs):
        held = k % 2 == 1
        commit = asvlocal.commit_state(work / "project", f"run {k}, held {held}\n")
        holder = None
        if held:
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(args.hold_gib)], stdout=subprocess.PIPE, text=True)
            holder.stdout.readline()
        t0 = time.perf_counter()
        proc = asvlocal.run_commit(conf, commit, machine=machine, env=env, capture=True)
        if holder is not None:
            holder.kill()
            holder.wait()
        print(f"run {k} held={held}: rc {proc.returncode}, {time.perf_counter() - t0:.1f} s", flush=True)
        if proc.returncode:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            return 1
        conditions[commit] = "held" if held else "free"
    rows = []
    for s in load_series(work / "results", [machine]):
        if "vs_floor" in s.benchmark:
            continue
        vals = {c: [float(np.median(m.samples)) for m in s.measurements if conditions.get(m.commit) == c]
                for c in ("free", "held")}
        gap = np.median(vals["held"]) / np.median(vals["free"]) - 1
        rows.append({"entry": s.entry, "free": vals["free"], "held": vals["held"], "gap": gap})
    args.out.mkdir(parents=True, exist_ok=True)
    # nvidia-smi, not torch: a CUDA context in this process would itself be memory held
    device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True).stdout.strip()
    (args.out / "held-memory.json").write_text(json.dumps({"device": device, "hold_gib": args.hold_gib,
                                                           "rows": rows}, indent=1))
    for r in sorted(rows, key=lambda r: -abs(r["gap"]))[:14]:
        print(f"{r['gap']:+.2%} free {' '.join(f'{v * 1e6:.3f}' for v in r['free'])} | held "
              f"{' '.join(f'{v * 1e6:.3f}' for v in r['held'])}  {r['entry'][14:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
