"""What the asv suite (``benchmarks/``) runs: its axes, and one measurement of its whole grid.

asv starts a fresh process for every parameter combination of every ``track_*`` method. If each
of those imported torch and vLLM, created a CUDA context and captured its own graphs, one commit
of one model would cost seconds x ~2600 processes. Instead the suite's one ``setup_cache`` (its
own process, shared by every class) measures the whole grid, both L2 modes, once per commit and
environment, through ``setup_grid``: ``grid.run_grid`` over the executor ``MOEBENCH_RAY`` and
``MOEBENCH_ISOLATE`` choose (``executors``: this machine's GPU, or every GPU through Ray when there
are several), ``runpoint.run_point`` for each point (CUDA graphs, the correctness gate, NVML
state). The grid it returns holds only plain Python values (``suitegrid``: ``SuitePoint``,
packed), so each combination's process unpickles it and looks its point up (``suitegrid.lookup``)
without importing torch and without touching CUDA: asv's ``forkserver`` can fork those processes
from a server that never initialized CUDA, which is what makes it safe.

This module is imported by asv's discovery and by its fork server, so it imports nothing heavy at
module level: torch, the implementations and Ray are imported inside ``setup_grid`` only. The
axes come from the torch-free ``moebench.axes``, like everyone else's.

A run is configured by environment variables (read by ``SuiteConfig.from_env``); the same
variables give the same parameter lists:

    MOEBENCH_MODELS            comma-separated models (hub id, shipped snapshot or local config
                               dir); default: every shipped model (nine)
    MOEBENCH_DTYPES            subset of auto,fp8_w8a8,int8_w8a16 (default: auto,fp8_w8a8)
    MOEBENCH_IMPLS             subset of the implementations (default: vllm-ops,triton-sol; those
                               unavailable at a commit or on a device are skipped, NaN in asv)
    MOEBENCH_BATCH_SIZES       token counts (default: the seed's 18, 1 ... 4096)
    MOEBENCH_L2                L2 modes to measure: warm,cold (default) or one of them; the
                               other class's combinations are then skipped
    MOEBENCH_COLD_MODELS       the models measured with cold L2 too, "all" for every one (default:
                               Mixtral-8x7B and DeepSeek-V3 where measured, else every model);
                               the ColdL2 class's model axis is this list
    MOEBENCH_ROUNDS            independent rounds per point (default 5): each round's value is one
                               asv sample, so asv's median, CI and tests are over rounds
    MOEBENCH_REPLAYS           timed replays per round (default 20)
    MOEBENCH_CALLS_PER_GRAPH   calls per CUDA graph (default 10 with warm L2 on GPU, else 1)
    MOEBENCH_VLLM_OPS_LIBRARY  a _moe_C*.so to time as ``vllm-ops`` (no vLLM install needed);
                               default: the kernel directory that asv's install step left in this
                               environment in kernel-library mode (``moebench.kernelwheel``)
    MOEBENCH_VLLM_MODULE       a moe_permute_unpermute.py for the API paths over that library;
                               default: the kernel directory's
    MOEBENCH_RAY               auto (default: Ray when it is installed and more than one GPU is
                               visible), off, or a Ray cluster address
    MOEBENCH_RAY_WORKERS       Ray workers (default: one per GPU of the cluster)
    MOEBENCH_ISOLATE           auto (default: on for CUDA), on or off: measure in a worker process
                               replaced when a kernel faults, crashes or hangs (``moebench.isolate``)
    MOEBENCH_POINT_TIMEOUT     seconds one point may take before its worker is killed (default
                               60 s + 2 ms per token)
    MOEBENCH_SETUP_LOG         a file that setup_cache appends its report to (points measured,
                               failed and n/a, the time each part took): asv shows setup_cache's
                               output only when it fails
    MOEBENCH_REGISTRY          package.module:function (or file.py:function) that builds the
                               implementations instead of moebench's own, called as
                               function(vllm_ops_library, vllm_module)
                               and returning {impl name: Implementation}: a kernel under
                               development, or a stand-in that faults (evidence/faults.py)
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from .argtypes import positive_int, positive_seconds
from .axes import (BATCH_SIZES, DTYPE_MODES, IMPLS, L2_MODES, OPS,  # noqa: F401  (OPS: the suite's ops)
                   TimerConfig, default_calls_per_graph)
from .errors import BadInput
from .models import shipped_models
from .suitegrid import Grid, GridKey, OpTiming, SuitePoint

if TYPE_CHECKING:
    from .results import Point

PARAM_NAMES = ("model", "dtype", "impl", "tokens")
# The benchmark class of each L2 mode (benchmarks/moe.py declares them under these names).
L2_CLASSES = {"warm": "WarmL2", "cold": "ColdL2"}
# asv's ``version`` of every benchmark class: bump it when what a number means changes (timer
# recipe, inputs, bytes model), never for refactoring, so history survives code edits.
# 1: vLLM's recipe (events around the graph launch). 2: the host's launch latency and stalls are
# no longer in the samples (``timing``'s GPU hold); unsteady measurements are taken again.
# 3: rounds: each sample is one independent round's value (new buffers, new graph, no garbage
# collector pause), the number asv shows is their median.
RECIPE_VERSION = "3"

# The nightly's grid, the defaults (docs/operations.md, "The nightly grid"): every shipped model;
# the dtype modes of vLLM's MoE layers; vLLM's kernels (every commit has them; its Python API paths
# need a full vLLM install, MOEBENCH_IMPLS adds them) beside triton-sol, the speed of light, which
# no vLLM commit changes: a step in it is the machine, not the commit. Cold L2 for the two shapes
# at the ends (8 experts of 14336-wide rows; 256 experts, top-8).
DEFAULT_DTYPES = ("auto", "fp8_w8a8")
DEFAULT_IMPLS = ("vllm-ops", "triton-sol")
DEFAULT_COLD_MODELS = ("mistralai/Mixtral-8x7B-Instruct-v0.1", "deepseek-ai/DeepSeek-V3")
ALL = "all"  # MOEBENCH_COLD_MODELS: every model

ISOLATE = {"auto": None, "on": True, "off": False}  # MOEBENCH_ISOLATE -> SuiteConfig.isolate


def _split(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not values or len(set(values)) != len(values):
        raise BadInput(f"{name}={raw!r}: expected a comma-separated list without repeats")
    return values


def _choose(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
    values = _split(env, name, default)
    if unknown := [v for v in values if v not in allowed]:
        raise BadInput(f"{name}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return values


def _one_of(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    """One of ``allowed`` (the first is the default)."""
    value = env.get(name, "").strip() or allowed[0]
    if value not in allowed:
        raise BadInput(f"{name}={value!r}: choose one of {', '.join(allowed)}")
    return value


def _seconds(name: str, text: str) -> float:
    try:
        return positive_seconds(text)
    except argparse.ArgumentTypeError as exc:
        raise BadInput(f"{name}: {exc}") from None


def _setup_log(path: str | None) -> str | None:
    """MOEBENCH_SETUP_LOG, refused at once if its folder does not exist (not after the grid)."""
    if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise BadInput(f"MOEBENCH_SETUP_LOG={path}: no folder {os.path.dirname(os.path.abspath(path))}")
    return path


def _positive(name: str, text: str) -> int:
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise BadInput(f"{name}: {exc}") from None


@dataclass(frozen=True)
class SuiteConfig:
    models: tuple[str, ...] = tuple(shipped_models())
    dtype_modes: tuple[str, ...] = DEFAULT_DTYPES
    impls: tuple[str, ...] = DEFAULT_IMPLS
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    l2_modes: tuple[str, ...] = L2_MODES
    cold_models: tuple[str, ...] | None = None  # None: DEFAULT_COLD_MODELS where measured, else every model
    rounds: int = 5
    replays: int = 20  # per round
    calls_per_graph: int | None = None  # None: the timer's default for the device and L2 mode
    vllm_ops_library: str | None = None
    vllm_module: str | None = None
    ray: str = "auto"  # "auto", "off" or a Ray cluster address
    ray_workers: int | None = None  # None: one per GPU of the cluster
    isolate: bool | None = None  # None: on for CUDA devices
    point_timeout_s: float | None = None  # None: isolate.watchdog_s's default
    registry: str | None = None  # "package.module:function" building the implementations
    setup_log: str | None = None  # a file setup_cache's report is appended to

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "SuiteConfig":
        from .kernelwheel import installed

        sizes = _split(env, "MOEBENCH_BATCH_SIZES", tuple(map(str, BATCH_SIZES)))
        kernels = installed()
        calls = env.get("MOEBENCH_CALLS_PER_GRAPH", "").strip()
        return cls(
            models=(models := _split(env, "MOEBENCH_MODELS", cls.models)),
            dtype_modes=_choose(env, "MOEBENCH_DTYPES", DTYPE_MODES, cls.dtype_modes),
            impls=_choose(env, "MOEBENCH_IMPLS", IMPLS, cls.impls),
            batch_sizes=tuple(_positive("MOEBENCH_BATCH_SIZES", s) for s in sizes),
            l2_modes=_choose(env, "MOEBENCH_L2", L2_MODES, cls.l2_modes),
            cold_models=models if (cold := _split(env, "MOEBENCH_COLD_MODELS", ())) == (ALL,) else cold or None,
            rounds=_positive("MOEBENCH_ROUNDS", env.get("MOEBENCH_ROUNDS", "").strip() or str(cls.rounds)),
            replays=_positive("MOEBENCH_REPLAYS",
                              env.get("MOEBENCH_REPLAYS", "").strip() or str(cls.replays)),
            calls_per_graph=_positive("MOEBENCH_CALLS_PER_GRAPH", calls) if calls else None,
            vllm_ops_library=env.get("MOEBENCH_VLLM_OPS_LIBRARY", "").strip()
            or (str(kernels.library_path) if kernels else None),
            vllm_module=env.get("MOEBENCH_VLLM_MODULE", "").strip()
            or (str(kernels.module_path) if kernels and kernels.module else None),
            ray=env.get("MOEBENCH_RAY", "").strip() or "auto",
            ray_workers=_positive("MOEBENCH_RAY_WORKERS", workers) if (workers := env.get(
                "MOEBENCH_RAY_WORKERS", "").strip()) else None,
            isolate=ISOLATE[_one_of(env, "MOEBENCH_ISOLATE", tuple(ISOLATE))],
            point_timeout_s=_seconds("MOEBENCH_POINT_TIMEOUT", timeout) if (timeout := env.get(
                "MOEBENCH_POINT_TIMEOUT", "").strip()) else None,
            registry=env.get("MOEBENCH_REGISTRY", "").strip() or None,
            setup_log=_setup_log(env.get("MOEBENCH_SETUP_LOG", "").strip() or None),
        )

    def __post_init__(self) -> None:
        if self.cold_models is not None and (extra := [m for m in self.cold_models if m not in self.models]):
            raise BadInput(f"MOEBENCH_COLD_MODELS: {', '.join(extra)} is not in MOEBENCH_MODELS "
                           f"({', '.join(self.models)})")

    def models_for(self, l2: str) -> tuple[str, ...]:
        """The models measured with ``l2``: cold L2 only for ``cold_models`` where given, else for
        those of ``DEFAULT_COLD_MODELS`` measured, else for every model (cold L2 costs a flush per
        replay and one call per graph, so a nightly keeps it for a few shapes)."""
        if l2 != "cold":
            return self.models
        if self.cold_models is not None:
            return self.cold_models
        return tuple(m for m in self.models if m in DEFAULT_COLD_MODELS) or self.models

    def params_for(self, l2: str) -> list[list]:
        """asv ``params`` of the ``l2`` class, in ``PARAM_NAMES`` order."""
        return [list(self.models_for(l2)), list(self.dtype_modes), list(self.impls), list(self.batch_sizes)]


def _ray_placement(cfg: SuiteConfig) -> str | None:
    """``Placement.ray`` for ``MOEBENCH_RAY``: auto is a Ray cluster started here when Ray is
    installed and more than one GPU is visible, this machine's device otherwise."""
    import importlib.util

    from .executors import LOCAL_RAY
    from .gpustate import visible_gpus

    if cfg.ray == "off":
        return None
    if cfg.ray != "auto":
        return cfg.ray
    return LOCAL_RAY if importlib.util.find_spec("ray") is not None and visible_gpus() > 1 else None


def registry_factory(spec: str | None):
    """The callable ``MOEBENCH_REGISTRY`` names, or None: ``package.module:function``, or
    ``path/to/file.py:function`` (asv starts benchmarks without ``PYTHONPATH``, so a module outside
    the environment is named by its file; its folder joins ``sys.path``, which worker processes
    inherit)."""
    if not spec:
        return None
    import importlib
    import sys
    from pathlib import Path

    module, sep, name = spec.rpartition(":")
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise BadInput(f"MOEBENCH_REGISTRY={spec}: no file {path}")
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        module = path.stem
    try:
        found = getattr(importlib.import_module(module), name) if sep and module and name else None
    except (ImportError, AttributeError) as exc:
        raise BadInput(f"MOEBENCH_REGISTRY={spec}: {exc}") from None
    if not callable(found):
        raise BadInput(f"MOEBENCH_REGISTRY={spec}: expected package.module:function or file.py:function, "
                       "naming a callable")
    return found


def grid_points(cfg: SuiteConfig) -> tuple[Grid, list[tuple[GridKey, Point]]]:
    """What ``setup_grid`` does not measure (the L2 modes left out; the dtype modes a model's rows
    cannot take, skipped with why), and every point it measures with its key, in measuring order:
    that order, and the cards, decide which card measures a point (``cardplan.plan``)."""
    from .grid import SweepSpec, validate_row_bytes
    from .models import resolve

    left_out = SuitePoint(skipped=f"L2 mode not measured (MOEBENCH_L2={','.join(cfg.l2_modes)})")
    grid: Grid = {(l2, *rest): left_out for l2 in L2_MODES if l2 not in cfg.l2_modes
                  for rest in itertools.product(cfg.models_for(l2), cfg.dtype_modes, cfg.impls, cfg.batch_sizes)}
    keyed = []  # in measuring order
    for model in cfg.models:
        shape = resolve(model)
        modes = []
        for mode in cfg.dtype_modes:
            try:
                validate_row_bytes(shape, [mode])
                modes.append(mode)
            except BadInput as exc:
                grid.update({(l2, model, mode, i, t): SuitePoint(skipped=str(exc)) for l2 in cfg.l2_modes
                             if model in cfg.models_for(l2) for i in cfg.impls for t in cfg.batch_sizes})
        for l2 in (l2 for l2 in cfg.l2_modes if model in cfg.models_for(l2)):
            spec = SweepSpec(shape=shape, dtype_modes=tuple(modes), impls=cfg.impls,
                             batch_sizes=cfg.batch_sizes, l2=l2)
            keyed += [((l2, model, p.dtype_mode, p.impl, p.num_tokens), p) for p in spec.points()]
    return grid, keyed


def setup_grid(cfg: SuiteConfig, registry=None) -> Grid:
    """Measure every combination of ``cfg``, each selected L2 mode: the suite's ``setup_cache``.
    ``registry`` builds the implementations instead of ``impls.implementations`` (default: the
    callable ``MOEBENCH_REGISTRY`` names, if any)."""
    started = time.perf_counter()
    from .executors import Placement, open_executor
    from .grid import run_grid
    from .kernelwheel import check_library_path, installed
    from .results import FAILED, SKIPPED, gpu_state_errors

    def say(line: str) -> None:
        print(f"moebench: {line}", flush=True)
        if cfg.setup_log:
            try:
                with open(cfg.setup_log, "a", encoding="utf-8") as log:
                    log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            except OSError as exc:  # the report is a copy: never lose the grid over it
                print(f"moebench: cannot append to MOEBENCH_SETUP_LOG ({exc})", flush=True)

    if cfg.vllm_ops_library:
        check_library_path(cfg.vllm_ops_library)
    if (kernels := installed()) is not None and cfg.vllm_ops_library == str(kernels.library_path):
        say(f"kernel-library mode: vLLM {kernels.version} (commit {kernels.commit or 'unknown'}, "
            f"{kernels.library}, sha256 {kernels.library_sha256[:16]})")
    grid, keyed = grid_points(cfg)

    ray = _ray_placement(cfg)
    # Ray workers are processes of their own, replaced after a fault: MOEBENCH_ISOLATE is for this machine.
    placement = Placement(ray=ray, workers=cfg.ray_workers if ray else None, isolate=None if ray else cfg.isolate,
                          point_timeout_s=cfg.point_timeout_s, vllm_ops_library=cfg.vllm_ops_library,
                          vllm_module=cfg.vllm_module, registry=registry or registry_factory(cfg.registry))
    # One executor for both L2 modes: Ray and its workers (or the isolated worker) start once.
    opened = time.perf_counter()
    with open_executor(placement) as executor:
        device_type, ready = executor.device_type, time.perf_counter()  # workers started, ceiling known

        def timer(l2: str) -> TimerConfig:
            calls = cfg.calls_per_graph or default_calls_per_graph(device_type, l2)
            return TimerConfig(calls_per_graph=calls, replays=cfg.replays, rounds=cfg.rounds, l2=l2)

        results = run_grid([(p, timer(p.l2)) for _, p in keyed], executor)
        points_s = time.perf_counter() - ready
        for r in executor.recoveries:
            say(f"{r.point} left its worker unusable ({r.reason}); a fresh one took "
                f"{r.seconds:.1f} s to start")
        where, ray_meta = executor.describe(), executor.meta().get("ray", {})
        stopping = time.perf_counter()
    stopped = time.perf_counter()

    for (key, _), r in zip(keyed, results):  # run_grid returns results in the order of its jobs
        grid[key] = SuitePoint(
            ops=tuple(OpTiming(o.op, array("d", (us * 1e-6 for us in o.round_values_us)), o.floor_us * 1e-6)
                      for o in r.ops),
            skipped=r.reason if r.status == SKIPPED else None,
            failed=r.reason if r.status == FAILED else None,
            device=r.device)
    failed = {k: m.failed for k, m in grid.items() if m.failed is not None}
    # the other L2 class's combinations are left out, not skipped: they are not counted
    measured = sum(1 for k in grid if k[0] in cfg.l2_modes)
    skipped = sum(1 for k, m in grid.items() if m.skipped is not None and k[0] in cfg.l2_modes)
    say(f"measured {measured} points on {where}: "
        f"{measured - skipped - len(failed)} ok, {skipped} skipped, {len(failed)} failed, "
        f"{time.perf_counter() - started:.1f} s (imports and models {opened - started:.1f} s, executor start "
        f"{ready - opened:.1f} s, points {points_s:.1f} s, executor stop {stopped - stopping:.1f} s)")
    if shares := ray_meta.get("shares"):  # why N workers are not N times faster: busier in all, or uneven
        cards = {i: f"{w['node']} GPU {','.join(w['gpu_ids']) or '-'}" for i, w in enumerate(ray_meta["workers"])}
        say("Ray workers: " + "; ".join(f"{i} ({cards[i]}): {s['points']} points, busy {s['busy_s']:.1f} s, "
                                        f"done at {s['done_s']:.1f} s" for i, s in shares.items()))
    for why in gpu_state_errors(results):
        say(f"GPU state (clocks, throttling) unknown: {why}")
    for key, why in failed.items():
        say(f"failed {'/'.join(map(str, key))}: {why}")
    reasons = Counter((key[3], m.skipped) for key, m in grid.items() if m.skipped is not None and key[0] in cfg.l2_modes)
    for (impl, why), count in reasons.items():
        say(f"n/a {impl} at {count} points: {why}")
    return grid
