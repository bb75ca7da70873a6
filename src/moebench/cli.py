"""``moebench``: the seed benchmark's job, made trustworthy.

``moebench [flags]`` runs a sweep and takes the seed script's flags with the same meaning
(``--model --dtype --use-customized-permute --seed --batch-size --trust-remote-code``); other jobs
are subcommands (``moebench info``, ``moebench impls``). User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .argtypes import non_negative_int, positive_int, positive_seconds
from .errors import BadInput, stop_on_sigterm, terminated
from .models import DEFAULT_MODEL, resolve, shipped_models
# Torch-free at import (``moebench -h`` answers at once): modules that import torch load in the
# commands that need them.
from .axes import BATCH_SIZES, DTYPE_MODES, L2_MODES, ROUTINGS, TimerConfig

SUBCOMMANDS = ("info", "impls", "alerts", "bisect", "overview", "plot-history", "publish-offline", "releases")
# Subcommands owned by other modules: each exposes ``main(argv) -> int`` and raises BadInput for
# user errors. Imported only when used, so `moebench --help` stays fast.
EXTERNAL = {"alerts": "moebench.alerts", "bisect": "moebench.bisection", "overview": "moebench.overview",
            "plot-history": "moebench.history",
            "publish-offline": "moebench.dashboard", "releases": "moebench.releases"}


# Packages some subcommands need that a plain install lacks -> the extra that brings them.
OPTIONAL = {"asv": "asv", "asv_runner": "asv", "ray": "ray"}


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id, shipped snapshot name or local dir with config.json "
                        f"(default {DEFAULT_MODEL}; shipped snapshots resolve offline)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a config's custom code to run (off by default)")


def sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moebench",
        description="Time vLLM's MoE permute/unpermute (and a torch reference) over batch sizes. "
                    f"Subcommands: {', '.join(SUBCOMMANDS)} (moebench SUBCOMMAND -h).")
    _model_args(p)
    p.add_argument("--dtype", choices=DTYPE_MODES, default="auto",
                   help="activation handling: model dtype, per-tensor fp8 (quantized inside "
                        "permute, scale carried), or int8 weight-only (activations untouched)")
    p.add_argument("--use-customized-permute", action="store_true",
                   help="time the customized path (moe_permute/moe_unpermute) instead of the standard one")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the inputs (0 <= SEED < 2**63)")
    p.add_argument("--batch-size", type=positive_int, nargs="+", metavar="T",
                   help=f"token counts (default: {','.join(map(str, BATCH_SIZES))})")
    p.add_argument("--impl", help="comma-separated implementations (see `moebench impls`); "
                                  "default: every one of the selected path available here")
    p.add_argument("--vllm-ops-library", metavar="PATH",
                   help="a _moe_C*.so kernel library to time as vllm-ops (no vLLM install needed)")
    p.add_argument("--routing", choices=ROUTINGS, default="uniform")
    p.add_argument("--ep-size", type=positive_int, default=1, help="expert-parallel ranks")
    p.add_argument("--ep-rank", type=non_negative_int, default=0, help="this rank (< --ep-size)")
    p.add_argument("--l2", choices=L2_MODES, default="warm",
                   help="warm (the seed's) or cold: a buffer larger than L2 is flushed before each replay")
    p.add_argument("--calls-per-graph", type=positive_int,
                   help="calls captured per CUDA graph (default 10 on GPU with warm L2; 1 with "
                        "cold L2, where only a graph's first call would see the flushed cache, "
                        "and with the CPU timer)")
    p.add_argument("--rounds", type=positive_int, default=TimerConfig.rounds,
                   help="independent measurements per point, each with new buffers and a new graph; the "
                        f"number reported is their median (default {TimerConfig.rounds})")
    p.add_argument("--replays", type=positive_int, default=TimerConfig.replays,
                   help=f"timed replays (samples) per round (default {TimerConfig.replays})")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--json", metavar="PATH", help="write results (with samples) as JSON, after every point")
    p.add_argument("--csv", metavar="PATH", help="write one row per point and op")
    p.add_argument("--plot", metavar="PNG", help="latency vs batch size and %% of floor")
    p.add_argument("--resume", action="store_true",
                   help="keep the points already in --json and measure only the rest")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="measure in a worker process that is replaced when a kernel faults, crashes "
                        "or hangs, so that costs one point (default: on for CUDA devices; "
                        "--no-isolate keeps everything in this process, e.g. under a profiler)")
    p.add_argument("--point-timeout", type=positive_seconds, metavar="SECONDS",
                   help="watchdog per point with --isolate (default: 60 s + 2 ms per token)")
    p.add_argument("--ray", action="store_true",
                   help="spread points over every GPU of a local Ray cluster (one worker per GPU)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="spread points over an existing Ray cluster (e.g. auto, ray://host:10001)")
    p.add_argument("--ray-workers", type=positive_int, metavar="N",
                   help="Ray workers (default: one per GPU of the cluster; one per node where it "
                        "has no GPU, each timing on the CPU)")
    return p


def _seed(text: str) -> int:
    value = non_negative_int(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"must be < 2**63 (torch's generator seed), got {value}")
    return value


def info_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moebench info", description="Show a model's MoE shape.")
    _model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--list", action="store_true", help="list the shipped model snapshots")
    return p


def impls_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moebench impls", description="List implementations and whether they run here.")
    p.add_argument("--vllm-ops-library", metavar="PATH")
    p.add_argument("--device")
    return p


def _check_writable(path: str | None, flag: str) -> None:
    if path is None:
        return
    parent = Path(path).expanduser().resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise BadInput(f"cannot write {flag} {path}: {exc.strerror or exc}") from None
    if Path(path).is_dir():
        raise BadInput(f"cannot write {flag} {path}: it is a directory")


def _select_impls(args, registry, device) -> tuple[tuple[str, ...], list[str]]:
    from .impls import CUSTOM_PATH, STANDARD_PATH

    notes: list[str] = []
    if args.impl is not None:
        names = tuple(n.strip() for n in args.impl.split(",") if n.strip())
        if not names:
            raise BadInput(f"--impl {args.impl!r} names no implementation (choose from {', '.join(registry)})")
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise BadInput(f"--impl names {', '.join(repeated)} more than once")
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise BadInput(f"unknown --impl {', '.join(unknown)} (choose from {', '.join(registry)})")
        why = {n: registry[n].unavailable(args.dtype, device) for n in names}
        if all(why.values()):
            raise BadInput("no implementation of --impl can run here: "
                           + "; ".join(f"{n}: {w}" for n, w in why.items()))
        return names, notes
    path = CUSTOM_PATH if args.use_customized_permute else STANDARD_PATH
    names = tuple(n for n in path if registry[n].unavailable(args.dtype, device) is None)
    if not args.use_customized_permute and "vllm-standard" not in names:
        why = registry["vllm-standard"].unavailable(args.dtype, device)
        custom = registry["vllm-custom"]
        if custom.unavailable(args.dtype, device) is None:
            notes.append(f"vllm-standard is unavailable ({why}); timing vllm-custom instead")
            names += ("vllm-custom",)
    if not names:
        raise BadInput("no implementation of the selected path can run here (see `moebench impls`)")
    return names, notes


def cmd_sweep(argv: Sequence[str]) -> int:
    args = sweep_parser().parse_args(argv)
    stop_on_sigterm()
    from rich.console import Console

    console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True)
    outputs = {flag: getattr(args, flag) for flag in ("json", "csv", "plot") if getattr(args, flag)}
    for flag, path in outputs.items():
        _check_writable(path, f"--{flag}")
    same = [f for f in outputs if [Path(p).resolve() for p in outputs.values()].count(Path(outputs[f]).resolve()) > 1]
    if same:
        raise BadInput(f"--{' and --'.join(same)} name the same file: each output needs its own")
    if args.batch_size and (repeated := sorted({t for t in args.batch_size if args.batch_size.count(t) > 1})):
        raise BadInput(f"--batch-size repeats {', '.join(map(str, repeated))}: each size is one point")
    if args.resume and not args.json:
        raise BadInput("--resume needs --json PATH (the file to continue)")
    from .executors import LOCAL_RAY, Placement, open_executor
    from .grid import SweepSpec, run_grid, validate_row_bytes
    from .axes import ExpertParallel
    from .runpoint import OOM_PREFIX

    ep = ExpertParallel(args.ep_size, args.ep_rank)
    shape = resolve(args.model, trust_remote_code=args.trust_remote_code)
    ep.local_range(shape.num_experts)
    validate_row_bytes(shape, [args.dtype])
    ray = args.ray_address or (LOCAL_RAY if args.ray else None)
    placement = Placement(ray=ray, device=args.device, workers=args.ray_workers, isolate=args.isolate,
                          point_timeout_s=args.point_timeout, vllm_ops_library=args.vllm_ops_library)
    with open_executor(placement, console=err) as executor:
        # Implementations and timer follow the executor's device (a Ray cluster's GPUs, or CPUs).
        device = executor.device
        from .impls import implementations

        registry = implementations(args.vllm_ops_library)
        if args.vllm_ops_library:
            from .impls.vllm import NOT_VLLM

            why = registry["vllm-ops"].unavailable(args.dtype, device) or ""
            if NOT_VLLM in why:  # loads, but is some other library: never time around it silently
                raise BadInput(f"--vllm-ops-library {args.vllm_ops_library} is not a vLLM kernel library: {why}")
        names, notes = _select_impls(args, registry, device)
        for note in notes:
            err.print(f"[yellow]note:[/yellow] {note}")
        if args.dtype == "int8_w8a16":
            err.print("[yellow]note:[/yellow] int8_w8a16 quantizes weights only: activations are "
                      "untouched, so permute/unpermute do the same work as --dtype auto")

        from .axes import default_calls_per_graph

        calls = args.calls_per_graph or default_calls_per_graph(device, args.l2)
        if args.l2 == "cold" and calls > 1:
            err.print(f"[yellow]note:[/yellow] --l2 cold with {calls} calls per graph: only the first "
                      "call of each replay sees a cold L2")
        timer = TimerConfig(calls_per_graph=calls, replays=args.replays, rounds=args.rounds, l2=args.l2)
        spec = SweepSpec(shape=shape, dtype_modes=(args.dtype,), impls=names,
                         batch_sizes=tuple(args.batch_size or BATCH_SIZES),
                         routing=args.routing, l2=args.l2, ep=ep, seed=args.seed)
        meta = {"argv": list(argv), "shape": shape.summary(), "device": str(device),
                "timer": asdict(timer), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        results = run_grid(spec.jobs(timer), executor, json_path=args.json, resume=args.resume, meta=meta,
                           console=err)
        if recoveries := executor.recoveries:
            err.print(f"[yellow]note:[/yellow] {len(recoveries)} point(s) left their worker unusable; "
                      "the sweep went on in a fresh process each time")
    from .report import plot, print_report
    from .results import FAILED, gpu_state_errors, write_csv

    title = (f"{shape.model}: E={shape.num_experts} k={shape.topk} H={shape.hidden_size} "
             f"{shape.dtype} · dtype={args.dtype} · routing={args.routing} · L2 {args.l2}"
             + (f" · EP {ep.rank}/{ep.size}" if ep.size > 1 else ""))
    print_report(results, title, console)
    if args.csv:
        write_csv(args.csv, results)
    if args.plot:
        plot(results, args.plot, title)
    for path in (args.json, args.csv, args.plot):
        if path:
            err.print(f"wrote {path}")
    for why in gpu_state_errors(results):
        err.print(f"[yellow]note:[/yellow] GPU state (clocks, throttling) unknown: {why}")
    failed = [r for r in results if r.status == FAILED]
    for r in failed:
        err.print(f"[red]failed[/red] {r.point.key}: {r.reason}")
    if any(r.reason and r.reason.startswith(OOM_PREFIX) for r in failed):
        return 2
    return 1 if failed else 0


def cmd_info(argv: Sequence[str]) -> int:
    args = info_parser().parse_args(argv)
    if args.list:
        print("\n".join(shipped_models()))
        return 0
    shape = resolve(args.model, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(shape.summary()))
    else:
        for key, value in shape.summary().items():
            print(f"{key:12s} {value}")
        print(f"{'arch':12s} {shape.architecture} ({shape.source})")
    return 0


def cmd_impls(argv: Sequence[str]) -> int:
    args = impls_parser().parse_args(argv)
    from .impls import implementations

    from .executors import resolve_device

    device = resolve_device(args.device)
    registry = implementations(args.vllm_ops_library)
    for name, impl in registry.items():
        why = impl.unavailable("auto", device)
        print(f"{name:22s} {impl.layout:9s} {'available' if why is None else 'unavailable: ' + why}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"info": cmd_info, "impls": cmd_impls}
    try:
        if argv and argv[0] in EXTERNAL:
            import importlib

            return importlib.import_module(EXTERNAL[argv[0]]).main(argv[1:])
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return cmd_sweep(argv)
    except BadInput as exc:
        print(f"moebench: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name not in OPTIONAL:
            raise
        print(f"moebench: error: {argv[0] if argv else 'this'} needs {exc.name}, which is not installed "
              f"(pip install 'moebench[{OPTIONAL[exc.name]}]')", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (errors.Terminated)
        saved = "; finished points are in the --json file" if any(a.startswith("--json") for a in argv) else ""
        print(f"moebench: {'terminated' if terminated() else 'interrupted'}{saved}", file=sys.stderr)
        return 143 if terminated() else 130


if __name__ == "__main__":
    sys.exit(main())
