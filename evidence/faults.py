"""Does a kernel that faults or hangs on the GPU cost one point, and do the other points keep their
numbers? A probe for any CUDA machine (``--device cpu`` runs the same with simulated faults).

    python evidence/faults.py --out docs/data/faults [--ray]

One grid (a model, 18 batch sizes, ``reference-custom``), measured four ways:
1. clean, in an isolated worker (``moebench.isolate``): the reference numbers;
2. with a kernel that makes an illegal memory access at ``--fault-at`` tokens (a Triton store to
   an address far outside any allocation: a sticky CUDA error);
3. with a kernel that never returns at ``--hang-at`` tokens (a Triton kernel spinning on a flag
   nobody sets), under a ``--timeout`` watchdog;
4. with both, through the asv suite's ``setup_cache`` (``suite.measure_grid``), and with
   ``--ray`` also through a one-worker Ray pool.
Reports, per way: which points failed and why, the recoveries and what each cost, and the largest
gap between a surviving point's median and the clean run's. Writes ``OUT/faults.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from moebench.axes import BATCH_SIZES, TimerConfig  # noqa: E402
from moebench.impls.reference import ReferenceCustom  # noqa: E402
from moebench.isolate import measurer_for  # noqa: E402
from moebench.models import resolve  # noqa: E402
from moebench.sweep import SweepSpec, run_sweep  # noqa: E402

IMPL = "reference-custom"


def _illegal_access(device) -> None:
    """A store 1 TiB past a live allocation: CUDA's 'an illegal memory access was encountered'."""
    if device.type != "cuda":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated on the CPU)")
    import triton
    import triton.language as tl

    @triton.jit
    def store_far(ptr, offset):
        tl.store(ptr + offset, 1.0)

    x = torch.zeros(1, device=device)
    store_far[(1,)](x, 1 << 38)
    torch.cuda.synchronize(device)


def _spin(device) -> None:
    """A kernel that waits for a flag nobody sets: the host blocks in synchronize for ever."""
    if device.type != "cuda":
        time.sleep(3600)
    import triton
    import triton.language as tl

    @triton.jit
    def wait_for(flag_ptr):
        while tl.load(flag_ptr, volatile=True) == 0:
            pass

    flag = torch.zeros(1, dtype=torch.int32, device=device)
    wait_for[(1,)](flag)
    torch.cuda.synchronize(device)


class Faulty(ReferenceCustom):
    """reference-custom whose permute faults at one batch size (after the clean permute, so a
    point's inputs, graph capture and gate are those of the clean implementation)."""

    def __init__(self, faults: dict[int, str]) -> None:
        self.faults = faults

    def prepare(self, inputs):
        run = super().prepare(inputs)
        kind = self.faults.get(inputs.num_tokens)
        if kind is not None:
            clean, device = run.permute, inputs.hidden.device

            def permute() -> None:
                clean()
                (_illegal_access if kind == "illegal" else _spin)(device)

            run.permute = permute
        return run


def registry(vllm_ops_library=None, vllm_module=None, *, faults: dict[int, str]) -> dict:
    return {IMPL: Faulty(faults)}


def _summary(results, clean: dict | None) -> dict:
    out = {"failed": {str(r.point.num_tokens): r.reason for r in results if r.status == "failed"},
           "medians_us": {str(r.point.num_tokens): {o.op: o.median_us for o in r.ops}
                          for r in results if r.status == "ok"}}
    if clean is not None:
        gaps = [abs(v[op] / clean[t][op] - 1) for t, v in out["medians_us"].items() for op in v if t in clean]
        out["largest_gap_vs_clean"] = max(gaps) if gaps else None
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="mistralai/Mixtral-8x7B-Instruct-v0.1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--fault-at", type=int, default=256)
    p.add_argument("--hang-at", type=int, default=1024)
    p.add_argument("--timeout", type=float, default=20.0, help="watchdog per point, seconds")
    p.add_argument("--ray", action="store_true", help="also through a one-worker Ray pool")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    timer = TimerConfig(calls_per_graph=10 if device.type == "cuda" else 1,
                        replays=20 if device.type == "cuda" else 3, rounds=5 if device.type == "cuda" else 2)
    spec = SweepSpec(shape=resolve(args.model), dtype_modes=("auto",), impls=(IMPL,), batch_sizes=tuple(args.batch_sizes))
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "model": args.model, "fault_at": args.fault_at,
                    "hang_at": args.hang_at, "timeout_s": args.timeout, "runs": {}}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every run: a cut-off probe keeps what it measured
        (args.out / "faults.json").write_text(json.dumps(report, indent=1) + "\n")

    clean = None
    ways = [("clean", {}), ("illegal-access", {args.fault_at: "illegal"}), ("hang", {args.hang_at: "hang"})]
    for name, faults in ways:
        t0 = time.monotonic()
        with measurer_for(device, {}, isolate=True, point_timeout_s=args.timeout,
                          registry_factory=functools.partial(registry, faults=faults)) as m:
            results = run_sweep(spec, timer, m)
            recoveries = [r.__dict__ for r in m.recoveries]
        report["runs"][name] = {**_summary(results, clean), "recoveries": recoveries,
                                "wall_s": round(time.monotonic() - t0, 1)}
        clean = clean or report["runs"]["clean"]["medians_us"]
        save()
        print(f"{name}: failed {report['runs'][name]['failed']}; recoveries "
              f"{[r['seconds'] for r in recoveries]} s; gap {report['runs'][name].get('largest_gap_vs_clean')}",
              flush=True)

    both = {args.fault_at: "illegal", args.hang_at: "hang"}
    from moebench import suite

    t0 = time.monotonic()
    cfg = suite.SuiteConfig(models=(args.model,), dtype_modes=("auto",), impls=(IMPL,), batch_sizes=tuple(args.batch_sizes),
                            l2_modes=("warm",), rounds=timer.rounds, replays=timer.replays, ray="off", isolate=True,
                            point_timeout_s=args.timeout)
    grid = suite.measure_grid(cfg, registry_factory=functools.partial(registry, faults=both))
    report["runs"]["suite-setup-cache"] = {
        "failed": {str(k[4]): m.failed for k, m in grid.items() if m.failed},
        "ok": sorted(k[4] for k, m in grid.items() if not m.failed and not m.skipped),
        "wall_s": round(time.monotonic() - t0, 1)}
    save()
    if args.ray:
        from moebench.fanout import Pool

        t0 = time.monotonic()
        with Pool(num_workers=1, point_timeout_s=args.timeout, registry=functools.partial(registry, faults=both)) as pool:
            results = pool.measure(spec.points(), timer)
            report["runs"]["ray"] = {**_summary(results, clean), "recoveries": [r.__dict__ for r in pool.recoveries],
                                     "wall_s": round(time.monotonic() - t0, 1)}
        save()
    print(json.dumps({k: {"failed": v["failed"], "gap": v.get("largest_gap_vs_clean")} for k, v in report["runs"].items()},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
