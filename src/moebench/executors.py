"""Where a grid's points run: the one place that chooses between this machine and a Ray cluster.

``open_executor(placement)`` turns what the user asked for (the CLI's ``--device``, ``--isolate``,
``--ray``; the asv suite's ``MOEBENCH_RAY``, ``MOEBENCH_ISOLATE``) into an executor for
``grid.run_grid``:

- ``LocalExecutor`` runs the points one after another on this machine's device, either in this
  process (``runpoint.DeviceRunner``) or in a worker process that is replaced when a kernel
  faults, crashes or hangs (``isolate.IsolatedRunner``, the default on CUDA);
- ``fanout.Pool`` spreads them over a Ray cluster's GPUs, inside a ``raycluster.session`` that
  owns the connection (and shuts down a cluster it started).
Every executor builds its implementations from the same settings (``Placement``), so a point's
number does not depend on which one ran it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from .errors import BadInput
from .gpustate import visible_gpus
from .grid import Executor, Job
from .results import PointResult

if TYPE_CHECKING:
    import torch

LOCAL_RAY = "local"  # Placement.ray: start a Ray cluster on this machine


@dataclass(frozen=True)
class Placement:
    """Where points run and with which implementations."""

    ray: str | None = None  # None: this machine; LOCAL_RAY: a Ray cluster started here; else its address
    device: str | None = None  # this machine only (default: cuda if available, else cpu)
    workers: int | None = None  # Ray only (default: one per GPU)
    isolate: bool | None = None  # this machine only (default: on for CUDA, and with a point timeout)
    point_timeout_s: float | None = None  # None: isolate.watchdog_s's default
    vllm_ops_library: str | None = None
    vllm_module: str | None = None
    registry: Callable[..., dict] | None = None  # builds the implementations; default impls.implementations


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a device moebench can time on (BadInput otherwise); None: cuda if available."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise BadInput(f"bad --device {name!r}: {exc}") from None
    if dev.type not in ("cpu", "cuda"):
        raise BadInput(f"--device {name}: moebench times on cuda or cpu, not {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: no CUDA device is available here")
    return dev


class LocalExecutor:
    """Jobs one after another on this machine's device, through ``runner`` (a
    ``runpoint.DeviceRunner`` or an ``isolate.IsolatedRunner``)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.device_type = runner.device_type

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def recoveries(self) -> list:
        return getattr(self.runner, "recoveries", [])

    def run(self, jobs: Sequence[Job], on_result: Callable[[int, PointResult], None],
            on_start: Callable[[int], None] | None = None) -> None:
        for i, (point, timer) in enumerate(jobs):
            if on_start is not None:
                on_start(i)
            on_result(i, self.runner.run(point, timer))

    def describe(self) -> str:
        return self.runner.device_spec

    def meta(self) -> dict:
        out: dict = {"ceiling": asdict(self.runner.ceiling)}
        if self.recoveries:
            out["replaced"] = [asdict(r) for r in self.recoveries]
        return out


@contextmanager
def open_executor(placement: Placement, console=None) -> Iterator[Executor]:
    """The executor ``placement`` asks for, set up (workers started, ceiling known) for the length
    of the block; leaving it stops every worker it started."""
    if placement.ray is not None:
        if placement.device is not None:
            raise BadInput("--device does not apply with --ray/--ray-address: each Ray worker uses its "
                           "own GPU (the CPU on a cluster without GPUs)")
        if placement.isolate is False:
            raise BadInput("--no-isolate does not apply with --ray/--ray-address: each Ray worker is a "
                           "process of its own, replaced after a fault")
        from .fanout import Pool
        from .raycluster import session

        with session(None if placement.ray == LOCAL_RAY else placement.ray) as cluster:
            with Pool(cluster, placement, console=console) as pool:
                yield pool
        return
    if placement.workers is not None:
        raise BadInput("--ray-workers needs --ray or --ray-address")
    isolate = placement.isolate
    if isolate is False and placement.point_timeout_s is not None:
        raise BadInput("a point timeout needs the worker process to kill: drop --no-isolate "
                       "(or MOEBENCH_ISOLATE=off)")
    # torch names the device where this process measures, or where it was told one; a process
    # that only hands points to a worker leaves the choice to the worker and never imports torch
    # (NVML's count says whether to isolate).
    device = resolve_device(placement.device) if placement.device is not None or isolate is False else None
    if isolate is None:
        on_cuda = device.type == "cuda" if device is not None else visible_gpus() > 0
        isolate = on_cuda or placement.point_timeout_s is not None
    if isolate:
        from .isolate import IsolatedRunner, WorkerSetup

        setup = WorkerSetup(None if device is None else str(device), placement.vllm_ops_library,
                            placement.vllm_module, registry=placement.registry)
        with IsolatedRunner(setup, placement.point_timeout_s) as runner:
            yield LocalExecutor(runner)
        return
    from .isolate import device_runner

    device = device if device is not None else resolve_device(None)
    yield LocalExecutor(device_runner(device, placement.vllm_ops_library, placement.vllm_module, placement.registry))
