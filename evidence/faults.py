"""Does a kernel that faults or hangs on the GPU cost one point, and do the other points keep their
numbers? A probe for any CUDA machine (``--device cpu`` runs the same with simulated faults).

    python evidence/faults.py --out docs/data/faults [--ways local suite ray asv]

One grid (a model, 18 batch sizes, ``reference-custom``), measured several ways, each through the
product's own driver (``grid.run_grid`` on an ``executors.open_executor``):
1. clean, in an isolated worker (``moebench.isolate``): the reference numbers;
2. with a kernel that makes an illegal memory access at ``--fault-at`` tokens (a Triton store to
   an address far outside any allocation: a sticky CUDA error);
3. with a kernel that never returns at ``--hang-at`` tokens (a Triton kernel spinning on a flag
   nobody sets), under a ``--timeout`` watchdog;
4. with both: through the asv suite's ``setup_cache`` (``suite.setup_grid``), through a one-worker
   Ray pool, and by a real ``asv run`` of the suite, which takes the faulting implementation through
   ``MOEBENCH_REGISTRY=evidence/faults.py:registry_from_env`` (``--ways`` picks).
Reports, per way: which points failed and why, the recoveries and what each cost, and the largest
gap between a surviving point's median and the clean run's. Writes ``OUT/faults.json``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from moebench.axes import BATCH_SIZES, TimerConfig  # noqa: E402
from moebench.impls.reference import ReferenceCustom  # noqa: E402
from moebench.executors import LOCAL_RAY, Placement, open_executor  # noqa: E402
from moebench.grid import SweepSpec, run_grid  # noqa: E402
from moebench.models import resolve  # noqa: E402

IMPL = "reference-custom"
WAYS = ("local", "suite", "ray", "asv")
FAULTS_ENV = "MOEBENCH_FAULTS"  # registry_from_env's faults: "256:illegal,1024:hang"


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


def registry_from_env(vllm_ops_library=None, vllm_module=None) -> dict:
    """``registry`` with the faults ``$MOEBENCH_FAULTS`` names: the asv suite's entry
    (``MOEBENCH_REGISTRY``), which can only pass settings through the environment."""
    faults = dict(item.split(":") for item in os.environ.get(FAULTS_ENV, "").split(",") if item)
    return registry(faults={int(t): kind for t, kind in faults.items()})


def _gap(run: dict, clean: dict | None) -> float | None:
    """The largest relative gap between a surviving point's median and the clean run's."""
    if clean is None:
        return None
    gaps = [abs(v[op] / clean[t][op] - 1) for t, v in run["medians_us"].items() for op in v if t in clean]
    return max(gaps) if gaps else None


def _summary(results, clean: dict | None) -> dict:
    out = {"failed": {str(r.point.num_tokens): r.reason for r in results if r.status == "failed"},
           "medians_us": {str(r.point.num_tokens): {o.op: o.median_us for o in r.ops}
                          for r in results if r.status == "ok"}}
    if clean is not None:
        out["largest_gap_vs_clean"] = _gap(out, clean)
    return out


def _asv_run(args, cfg, faults: dict[int, str], clean: dict) -> dict:
    """The suite as the nightly runs it, by asv itself (its setup_cache process, its per-combination
    processes), with the faulting implementation; what asv recorded for each batch size."""
    from moebench import asvlocal
    from moebench.asvresults import load_series

    work = Path(tempfile.mkdtemp(prefix="moebench-faults-asv-"))
    env = {**os.environ, "MOEBENCH_REGISTRY": f"{Path(__file__).resolve()}:registry_from_env",
           FAULTS_ENV: ",".join(f"{t}:{k}" for t, k in faults.items()),
           "MOEBENCH_MODELS": args.model, "MOEBENCH_DTYPES": "auto", "MOEBENCH_IMPLS": IMPL, "MOEBENCH_L2": "warm",
           "MOEBENCH_BATCH_SIZES": ",".join(map(str, cfg.batch_sizes)), "MOEBENCH_ROUNDS": str(cfg.rounds),
           "MOEBENCH_REPLAYS": str(cfg.replays), "MOEBENCH_POINT_TIMEOUT": str(args.timeout), "MOEBENCH_RAY": "off"}
    commit = asvlocal.commit_state(work / "project", asvlocal.environment_state())
    conf = asvlocal.write_config(work, work / "project", work / "html")
    machine = platform.node() or "localhost"
    asvlocal.asv(["machine", "--yes", "--machine", machine], conf, env, capture=True)
    t0 = time.monotonic()
    proc = asvlocal.run_commit(conf, commit, machine=machine, env=env, bench=r"WarmL2\.track_(un)?permute\b", capture=True)
    wall = round(time.monotonic() - t0, 1)
    log = proc.stdout + proc.stderr
    (args.out / "asv-run.log").write_text(log)
    medians: dict[str, dict[str, float]] = {}
    for s in load_series(work / "results", [machine]):
        op = s.benchmark.rsplit("track_", 1)[1]
        medians.setdefault(dict(s.params)["tokens"], {})[op] = s.measurements[-1].value * 1e6
    run = {"exit_code": proc.returncode, "wall_s": wall, "medians_us": medians,
           # each failed combination's process raises suitegrid.PointFailed with the point's reason
           "failed": {m.group(1): m.group(2) for m in re.finditer(
               r"PointFailed: \S+/T(\d+)/L2 \w+ on .*?: (.*)$", log, re.M)}}
    run["no_number"] = sorted(set(map(str, cfg.batch_sizes)) - set(medians), key=int)
    run["largest_gap_vs_clean"] = _gap(run, clean)
    print(f"asv run: exit {proc.returncode}, {wall} s, {len(medians)} batch sizes with numbers, failed {run['failed']}",
          flush=True)
    return run


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="mistralai/Mixtral-8x7B-Instruct-v0.1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--fault-at", type=int, default=256)
    p.add_argument("--hang-at", type=int, default=1024)
    p.add_argument("--timeout", type=float, default=20.0, help="watchdog per point, seconds")
    p.add_argument("--ways", nargs="+", choices=WAYS, default=["local", "suite"],
                   help="local: an isolated worker, one fault at a time; suite: the suite's setup_cache; "
                        "ray: a one-worker Ray pool (needs Ray); asv: a real `asv run` (needs asv). A clean "
                        "local run, the reference, always comes first (default: local suite)")
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

    def grid(placement: Placement) -> tuple[list, list]:
        with open_executor(placement) as executor:
            return run_grid(spec.jobs(timer), executor), [r.__dict__ for r in executor.recoveries]

    clean = None
    both = {args.fault_at: "illegal", args.hang_at: "hang"}
    ways = [("clean", {})]
    if "local" in args.ways:
        ways += [("illegal-access", {args.fault_at: "illegal"}), ("hang", {args.hang_at: "hang"})]
    for name, faults in ways:
        t0 = time.monotonic()
        results, recoveries = grid(Placement(device=str(device), isolate=True, point_timeout_s=args.timeout,
                                             registry=functools.partial(registry, faults=faults)))
        report["runs"][name] = {**_summary(results, clean), "recoveries": recoveries,
                                "wall_s": round(time.monotonic() - t0, 1)}
        clean = clean or report["runs"]["clean"]["medians_us"]
        save()
        print(f"{name}: failed {report['runs'][name]['failed']}; recoveries "
              f"{[r['seconds'] for r in recoveries]} s; gap {report['runs'][name].get('largest_gap_vs_clean')}",
              flush=True)

    from moebench import suite

    t0 = time.monotonic()
    cfg = suite.SuiteConfig(models=(args.model,), dtype_modes=("auto",), impls=(IMPL,), batch_sizes=tuple(args.batch_sizes),
                            l2_modes=("warm",), rounds=timer.rounds, replays=timer.replays, ray="off", isolate=True,
                            point_timeout_s=args.timeout)
    if "suite" in args.ways:
        cache = suite.setup_grid(cfg, registry=functools.partial(registry, faults=both))
        report["runs"]["suite-setup-cache"] = {
            "failed": {str(k[4]): m.failed for k, m in cache.items() if m.failed},
            "medians_us": {str(k[4]): {o.op: statistics.median(o.rounds_s) * 1e6 for o in m.ops}
                           for k, m in cache.items() if m.ops and not m.failed},
            "wall_s": round(time.monotonic() - t0, 1)}
        report["runs"]["suite-setup-cache"]["largest_gap_vs_clean"] = _gap(report["runs"]["suite-setup-cache"], clean)
        save()
    if "ray" in args.ways:
        t0 = time.monotonic()
        results, recoveries = grid(Placement(ray=LOCAL_RAY, workers=1, point_timeout_s=args.timeout,
                                             registry=functools.partial(registry, faults=both)))
        report["runs"]["ray"] = {**_summary(results, clean), "recoveries": recoveries,
                                 "wall_s": round(time.monotonic() - t0, 1)}
        save()
    if "asv" in args.ways:
        report["runs"]["asv-run"] = _asv_run(args, cfg, both, clean)
        save()
    print(json.dumps({k: {"failed": v["failed"], "gap": v.get("largest_gap_vs_clean")} for k, v in report["runs"].items()},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
