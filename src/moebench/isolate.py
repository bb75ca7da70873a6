"""Points measured in a worker process that is replaced when it can no longer be trusted: a kernel
that faults or hangs costs one point, not the sweep.

A kernel that faults on the GPU (an illegal address, a device-side assert) leaves the process's
CUDA context unusable: every later point in it would fail too. A kernel library can also crash
the process outright (SIGSEGV), or a kernel can never return. So ``IsolatedRunner`` runs each
point in a worker process (started once, with ``multiprocessing``'s spawn: no CUDA state is ever
inherited) and, after every point, decides whether that worker can go on:

- the worker answered, and the point is fine or failed for a reason of its own (the correctness
  gate, out of memory): it goes on;
- the point failed with a sticky CUDA error (``STICKY``), or the device no longer answers a
  trivial operation afterwards: the point is failed with that reason, the worker exits, and the
  next point starts a fresh one;
- the worker died (a crash in a kernel library, ``os._exit``) or exceeded the watchdog limit
  (``watchdog_s``; killed): the point is failed with the signal, exit code or limit, and the next
  point starts a fresh worker.
A fresh worker gets the same device, the same bandwidth ceiling (measured once, by the first
worker) and the same implementations; it primes each implementation again (``runpoint.DeviceRunner``).
Every result is returned before anything is retried, so whatever the caller saves after each point
(``grid.run_grid``'s results file) is never lost. ``recoveries`` records each replacement and its cost.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from . import axes
from .axes import TimerConfig, clock_name
from .errors import describe, one_line
from .results import FAILED, Point, PointResult

# Messages of CUDA errors after which a context cannot be used again (cudaGetErrorString texts).
STICKY = ("illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address",
          "illegal instruction", "hardware stack error", "uncorrectable ecc", "launch timed out")
FRESH = "(the rest goes on in a fresh process)"
WATCHDOG_BASE_S = 60.0
WATCHDOG_PER_TOKEN_S = 0.002
START_TIMEOUT_S = 300.0


def watchdog_s(point: Point, override: float | None = None) -> float:
    """How long one point may take before its worker is killed: ``override`` if given, else a
    minute plus 2 ms per token (T = 4096: 68 s, T = 65536: 191 s; a point takes seconds)."""
    return override if override is not None else WATCHDOG_BASE_S + WATCHDOG_PER_TOKEN_S * point.num_tokens


def is_sticky(reason: str | None) -> bool:
    return reason is not None and any(s in reason.lower() for s in STICKY)


def unusable_reason(result: PointResult, broken: str) -> str:
    """A failed point's reason, naming the device's state where that is not the reason itself."""
    return result.reason if is_sticky(result.reason) else f"{result.reason}; the device was unusable afterwards ({broken})"


def watchdog_reason(limit: float) -> str:
    return f"exceeded the watchdog limit of {limit:.0f} s; its worker was killed"


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to set itself up; picklable. ``registry`` builds the implementations
    in the worker (a module-level function), default ``impls.implementations``."""

    device: str | None  # None: the worker's choice, cuda if its torch sees one, else cpu
    vllm_ops_library: str | None = None
    vllm_module: str | None = None
    ceiling: Any = None  # roofline.Ceiling, measured by the first worker when None
    registry: Callable[..., dict] | None = None


def _device_unusable(device) -> str | None:
    """Why the device cannot run a trivial operation any more, or None."""
    import torch

    if device.type != "cuda":
        return None
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception as exc:
        return one_line(exc)
    return None


def broken_after(result: PointResult, device) -> str | None:
    """Why the process that measured ``result`` can no longer be trusted with the device (a sticky
    CUDA error, or a device that no longer answers after a failure), or None."""
    if result.status != FAILED:
        return None
    return result.reason if is_sticky(result.reason) else _device_unusable(device)


def device_runner(device, vllm_ops_library: str | None, vllm_module: str | None,
                    registry: Callable[..., dict] | None = None, ceiling: Any = None):
    """A worker's ``runpoint.DeviceRunner`` (an isolated worker's or a Ray actor's): its device made
    current, its implementations built in this process (``registry``, default
    ``impls.implementations``)."""
    import torch

    from .impls import implementations
    from .runpoint import DeviceRunner

    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return DeviceRunner(device, (registry or implementations)(vllm_ops_library, vllm_module), ceiling)


def run_and_judge(runner, point: Point, timer: TimerConfig) -> tuple[PointResult, str | None]:
    """One point measured by a worker, and why the worker can no longer be trusted with its
    device afterwards (``broken_after``), or None. An exception that escapes the measurement (e.g.
    freeing memory after a sticky error raises again) is the point's failure, judged the same."""
    from .roofline import device_name

    try:
        result = runner.run(point, timer)
    except Exception as exc:
        result = PointResult.failure(point, describe(exc), device=device_name(runner.device),
                                     clock=clock_name(runner.device), calls_per_graph=timer.calls_per_graph,
                                     node=socket.gethostname())
    return result, broken_after(result, runner.device)


def _worker(conn, setup: WorkerSetup) -> None:
    """A worker process: set up, announce the ceiling, then measure until told to stop or until
    the device is no longer usable."""
    import torch

    from .roofline import device_name

    # Ctrl-C reaches the whole process group: the parent stops the sweep and kills this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    device = torch.device(setup.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    runner = device_runner(device, setup.vllm_ops_library, setup.vllm_module, setup.registry, setup.ceiling)
    conn.send(("ready", runner.ceiling, device_name(device), clock_name(device), str(device)))
    while True:
        job = conn.recv()
        if job is None:
            return
        result, broken = run_and_judge(runner, *job)
        conn.send(("result", result, broken))
        if broken is not None:
            return


def _death(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Recovery:
    point: str
    reason: str
    seconds: float  # from the fault's detection until the fresh worker was ready


@dataclass
class IsolatedRunner:
    """``runpoint.DeviceRunner``'s ``run`` in replaceable worker processes (see the module docstring)."""

    setup: WorkerSetup
    point_timeout_s: float | None = None  # None: ``watchdog_s``'s default, which scales with T
    recoveries: list[Recovery] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._process = self._conn = None
        self.ceiling = self.setup.ceiling
        self.device_name = self.clock = ""

    @property
    def device_spec(self) -> str:
        """The worker's device as torch names it ("cuda", "cuda:1", "cpu"), known once it has
        started, without torch in this process."""
        return self.setup.device or "auto"

    @property
    def device_type(self) -> str:
        return axes.device_type(self.device_spec)

    @property
    def device(self):
        import torch

        return torch.device(self.setup.device)

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._process = self._ctx.Process(target=_worker, args=(child, replace(self.setup, ceiling=self.ceiling)),
                                          daemon=True, name="moebench-worker")
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(START_TIMEOUT_S):
            self._stop(kill=True)
            raise RuntimeError(f"the measuring worker did not start within {START_TIMEOUT_S:.0f} s")
        try:
            _, self.ceiling, self.device_name, self.clock, device = parent.recv()
            self.setup = replace(self.setup, device=device)  # a fresh worker gets the same device
        except EOFError:
            self._process.join(timeout=5)
            why = _death(self._process)
            self._stop(kill=True)
            raise RuntimeError(f"the measuring worker could not set up ({why})") from None

    def _stop(self, kill: bool) -> None:
        if self._process is None:
            return
        if kill and self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=30)
        self._conn.close()
        self._process = self._conn = None

    def run(self, point: Point, timer: TimerConfig) -> PointResult:
        if self._process is None:
            self._start()
        limit = watchdog_s(point, self.point_timeout_s)
        self._conn.send((point, timer))
        why = None
        if self._conn.poll(limit):
            try:
                _, result, broken = self._conn.recv()
            except EOFError:
                self._process.join(timeout=5)
                why = f"the worker process died while measuring it ({_death(self._process)})"
            else:
                if broken is None:
                    return result
                self._stop(kill=False)
                reason = unusable_reason(result, broken)
                self._replaced(point, reason)
                return replace(result, reason=f"{reason} {FRESH}")
        else:
            why = watchdog_reason(limit)
        self._stop(kill=True)
        self._replaced(point, why)
        return PointResult.failure(point, f"{why} {FRESH}", device=self.device_name, clock=self.clock,
                                   calls_per_graph=timer.calls_per_graph, node=socket.gethostname())

    def _replaced(self, point: Point, reason: str) -> None:
        t0 = time.monotonic()
        self._start()
        self.recoveries.append(Recovery(point.key, reason, round(time.monotonic() - t0, 3)))

    def close(self) -> None:
        if self._process is not None and self._process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
        self._stop(kill=False)

    def __enter__(self) -> "IsolatedRunner":
        self._start()  # the ceiling is known from here on
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # interrupted, terminated or failed: the worker may be mid-point; do not wait for it
            self._stop(kill=True)
