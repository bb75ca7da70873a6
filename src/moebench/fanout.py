"""Fan a sweep out over a Ray cluster: one worker per GPU, or per CPU slot where there is no GPU.

Why: a sweep's points are independent, so N GPUs measure it about N times faster. The CLI
(``--ray``, ``--ray-address``) and the asv suite (``Pool``) share this one path.

A worker is a Ray actor that does exactly what a single-GPU run does: it resolves its device (Ray
sets CUDA_VISIBLE_DEVICES per actor, so ``cuda:0`` is its card; ``cpu`` with the host timer on a
cluster without GPUs), builds the implementation registry, the bandwidth ceiling and NVML once
(a ``sweep.Measurer``), and measures each point it is handed with it. Each result therefore names the
card (``device``) and host (``node``) that measured it; a mixed cluster (H100 + H200) is
reported per card, and no number is ever averaged across cards.

The driver hands out points one at a time (a worker gets the next point as soon as it finishes
one, so a slower card never holds up the rest) and returns results in grid order. A worker that
dies (a crash in a kernel library, an OOM kill, node loss) loses only the point it was measuring:
that point goes back to the queue for another worker, at most ``MAX_ATTEMPTS`` times in all (a
point that kills every worker it touches must not take the whole cluster down); a point that
cannot be finished becomes a failed result whose reason starts with ``lost:``. A worker whose
point left its CUDA context unusable (``isolate.broken_after``: a sticky error), or that exceeds
the point's watchdog limit (``isolate.watchdog_s``), is killed and its point failed with that
reason. Each lost worker is replaced by a fresh one with the same settings and ceiling
(``recoveries``; ``meta["ray"]["replaced"]``). ``run_sweep_ray`` rewrites the results file
atomically, in grid order, after every point, so a killed sweep leaves everything finished so
far and ``--resume`` continues it.

This is the only module that imports Ray, and only when called: Ray is an optional extra.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import torch

from .errors import BadInput, describe, stop_on_sigterm
from .isolate import FRESH, Recovery, measure_and_judge, unusable_reason, watchdog_reason, watchdog_s, worker_measurer
from .results import FAILED, Point, PointResult, ResultsFile
from .roofline import Ceiling, device_name
from .sweep import SweepSpec, previous_file, progress_bar
from .timing import TimerConfig, clock_name

INSTALL_HINT = "pip install 'moebench[ray]'"
MAX_ATTEMPTS = 2  # tries of one point on different workers before it is reported lost
CONNECT_TIMEOUT_S = 15.0  # the pre-flight connection to an existing cluster
PROBE_TIMEOUT_S = 5.0
START_TIMEOUT_S = 300.0  # workers waiting for a free GPU, importing torch, measuring the ceiling
LOCAL_OBJECT_STORE_BYTES = 256 << 20  # results are kilobytes: no need for Ray's 30 % of RAM


def _ray():
    try:
        import ray
    except ImportError:
        raise BadInput(f"Ray is not installed here: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """What the driver sees of the cluster it joined."""

    address: str
    gpus: int
    cpus: int
    nodes: int

    @property
    def device_type(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def worker_count(self, requested: int | None) -> int:
        """One worker per GPU. Without GPUs, one per node by default: CPU workers that share a
        node compete for its cores and memory bandwidth and skew each other's host timings."""
        if self.gpus:
            if requested is not None and requested > self.gpus:
                raise BadInput(f"{requested} Ray workers asked for, but the cluster has {self.gpus} "
                               "GPU(s) and runs one worker per GPU")
            return requested or self.gpus
        if requested is not None and requested > self.cpus:
            raise BadInput(f"{requested} Ray workers asked for, but the cluster has no GPU and "
                           f"{self.cpus} CPU(s), one per worker")
        return requested or self.nodes


def _host_port(address: str) -> tuple[str, int] | None:
    """None for ``auto`` (Ray finds the cluster); BadInput for what is no address at all."""
    if address == "auto":
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BadInput(f"Ray address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _probe(address: str, host: str, port: int) -> None:
    """Fail fast on an address nothing listens on: Ray itself retries such a one for minutes."""
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = f"no answer within {PROBE_TIMEOUT_S:.0f} s" if isinstance(exc, TimeoutError) else (
            exc.strerror or describe(exc))
        raise BadInput(f"cannot reach the Ray cluster at {address}: {why}") from None


def _preflight(address: str) -> None:
    """Connect once from a child process with a deadline: something that accepts connections but
    is not a Ray cluster (or a stale ``auto``) makes ``ray.init`` retry for minutes, logging each
    retry to stderr from Ray's C++ core; a child's stderr and lifetime are ours to cut short."""
    code = ("import logging, sys, ray; "
            "ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)")
    try:
        child = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True,
                               timeout=CONNECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BadInput(f"the Ray cluster at {address} did not answer within {CONNECT_TIMEOUT_S:.0f} s") from None
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or [f"exit status {child.returncode}"]
        error = next((ln for ln in reversed(lines) if re.match(r"[\w.]+(Error|Exception)\b", ln)), lines[-1])
        raise BadInput(f"cannot connect to the Ray cluster at {address}: {error.split(': ', 1)[-1]}")


def connect(address: str | None = None) -> Cluster:
    """Join the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) or start a
    local one (None). A process already connected to Ray keeps that connection (``address`` is
    then not used). An unreachable address is a BadInput within ``CONNECT_TIMEOUT_S`` seconds."""
    ray = _ray()
    if address is not None:
        _host_port(address)  # a malformed address is reported even where the connection is reused
    if not ray.is_initialized():
        if address is None:
            ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        else:
            if (host_port := _host_port(address)) is not None:
                _probe(address, *host_port)
            _preflight(address)
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    resources = ray.cluster_resources()
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client connections have no GCS address of their own
        gcs = address or "local"
    return Cluster(address=gcs, gpus=int(resources.get("GPU", 0)), cpus=int(resources.get("CPU", 0)),
                   nodes=sum(1 for n in ray.nodes() if n.get("Alive")))


@dataclass(frozen=True)
class WorkerInfo:
    """Where one worker runs: recorded in the results file's meta."""

    node: str
    device: str
    pid: int
    gpu_ids: tuple[str, ...]
    ceiling: Ceiling


@dataclass(frozen=True)
class Death:
    """A worker that died, and the point it was measuring (or was about to be handed)."""

    worker: int
    node: str
    device: str
    pid: int
    point: str
    error: str


class _Worker:
    """Body of a Ray actor: one device, set up once, then point after point."""

    def __init__(self, vllm_ops_library: str | None, vllm_module: str | None, use_gpu: bool,
                 registry: Callable[..., dict] | None = None) -> None:
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError(f"Ray gave this worker GPU(s) {os.environ.get('CUDA_VISIBLE_DEVICES')} "
                               "but torch sees no CUDA device")
        device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        self.measurer = worker_measurer(device, vllm_ops_library, vllm_module, registry)

    def info(self) -> WorkerInfo:
        import ray

        m = self.measurer
        return WorkerInfo(node=socket.gethostname(), device=device_name(m.device), pid=os.getpid(),
                          gpu_ids=tuple(str(g) for g in ray.get_gpu_ids()), ceiling=m.ceiling)

    def use_ceiling(self, shared: Ceiling) -> None:
        self.measurer.ceiling = shared

    def run(self, point: Point, timer: TimerConfig) -> tuple[PointResult, str | None]:
        """The point's result, and why this process can no longer be trusted with its device
        (``isolate.measure_and_judge``; the pool then replaces it), or None."""
        return measure_and_judge(self.measurer, point, timer)


@dataclass(frozen=True)
class _Live:
    index: int
    handle: Any
    info: WorkerInfo


class Pool:
    """Workers on a Ray cluster, started once and used for any number of ``measure`` calls.

    Use as a context manager: leaving it kills the workers, and shuts Ray down if this pool was
    the one that started it. One pool can measure several lists of points, each with its own
    timer (the asv suite's warm- and cold-L2 grids), paying Ray's and the workers' start once.
    """

    def __init__(self, *, vllm_ops_library: str | None = None, vllm_module: str | None = None,
                 address: str | None = None, num_workers: int | None = None, console=None,
                 point_timeout_s: float | None = None, registry: Callable[..., dict] | None = None) -> None:
        ray = _ray()
        t0 = time.monotonic()
        self._owns_ray = not ray.is_initialized()
        self._console = console
        self._handles: list[Any] = []
        self.deaths: list[Death] = []
        self.ran_on: dict[str, int] = {}  # point key -> index of the worker that measured it
        self.recoveries: list[Recovery] = []  # workers replaced after a fault, a death or a hang
        self.point_timeout_s = point_timeout_s
        try:
            self.cluster = connect(address)
            stop_on_sigterm()  # after Ray's own handler, which would abort with a C++ stack
            self._clock = clock_name(torch.device(self.cluster.device_type))
            count = self.cluster.worker_count(num_workers)
            use_gpu = bool(self.cluster.gpus)
            actor = ray.remote(_Worker).options(num_gpus=1 if use_gpu else 0, num_cpus=1,
                                                scheduling_strategy="SPREAD")
            self._new = lambda: actor.remote(vllm_ops_library, vllm_module, use_gpu, registry)  # noqa: E731
            self._handles = [self._new() for _ in range(count)]
            self._live = self._start(ray)
        except BaseException:
            self.close()
            raise
        self.workers = [w.info for w in self._live]
        self.startup_s = time.monotonic() - t0
        self.sweep_s = 0.0

    def _note(self, text: str) -> None:
        if self._console is not None:
            self._console.print(f"[yellow]note:[/yellow] {text}")

    def _start(self, ray) -> list[_Live]:
        """Wait until every worker has set up; drop (and name) the ones that cannot."""
        pending = {h.info.remote(): h for h in self._handles}
        ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=START_TIMEOUT_S)
        live, errors = [], []
        for ref in ready:
            try:
                live.append(_Live(len(live), pending[ref], ray.get(ref)))
            except ray.exceptions.RayError as exc:
                errors.append(describe(exc))
        for ref in late:
            ray.kill(pending[ref], no_restart=True)
            errors.append(f"not started within {START_TIMEOUT_S:.0f} s (no free "
                          f"{'GPU' if self.cluster.gpus else 'CPU'}?)")
        if not live:
            raise BadInput(f"no Ray worker could start: {errors[0]}")
        for e in errors:
            self._note(f"a Ray worker did not start and is left out: {e}")
        return self._share_ceilings(ray, live)

    @staticmethod
    def _share_ceilings(ray, live: list[_Live]) -> list[_Live]:
        """Workers on cards of one name use one ceiling (the fastest copy any of them measured,
        since contention only slows a copy down), so their floors agree."""
        best: dict[str, Ceiling] = {}
        for w in live:
            c = w.info.ceiling
            if c.device not in best or c.bytes_per_s > best[c.device].bytes_per_s:
                best[c.device] = c
        ray.get([w.handle.use_ceiling.remote(best[w.info.device]) for w in live])
        return [replace(w, info=replace(w.info, ceiling=best[w.info.device])) for w in live]

    def _failed(self, point: Point, timer: TimerConfig, device: str, node: str, reason: str) -> PointResult:
        return PointResult(point=point, status=FAILED, device=device, clock=self._clock, reason=reason,
                           calls_per_graph=timer.calls_per_graph, node=node)

    def _lost(self, point: Point, timer: TimerConfig, death: Death, detail: str) -> PointResult:
        return self._failed(point, timer, death.device, death.node,
                            f"lost: worker on {death.node} died ({death.error}); {detail}")

    def measure(self, points: Sequence[Point], timer: TimerConfig,
                on_result: Callable[[int, PointResult], None] | None = None) -> list[PointResult]:
        """Every point measured once, results in the given order; ``on_result(i, result)`` is
        called as each one finishes (in completion order).

        The largest points are handed out first: with the smallest last, no worker is left
        measuring one big point while the others sit idle at the end of the sweep.
        """
        ray = _ray()
        from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

        worker_died = (RayActorError, WorkerCrashedError, ObjectLostError)
        t0 = time.monotonic()
        largest_first = sorted(range(len(points)), key=lambda i: -_size(points[i]))
        queue = deque((i, 1) for i in largest_first)  # (index, attempt)
        idle = list(self._live)
        running: dict[Any, tuple[_Live, int, int, float]] = {}  # ref -> worker, index, attempt, deadline
        done: dict[int, PointResult] = {}

        def finish(i: int, result: PointResult) -> None:
            done[i] = result
            if on_result is not None:
                on_result(i, result)
            progress.advance(task)

        with progress_bar(self._console) as progress:
            task = progress.add_task(self._describe(), total=len(points))
            while queue or running:
                while queue and idle:
                    w, (i, attempt) = idle.pop(0), queue.popleft()
                    deadline = time.monotonic() + watchdog_s(points[i], self.point_timeout_s)
                    running[w.handle.run.remote(points[i], timer)] = (w, i, attempt, deadline)
                if not running:  # points left, workers all dead
                    for i, _ in queue:
                        finish(i, self._lost(points[i], timer, self.deaths[-1], "no live worker left to run it"))
                    break
                wait_s = max(0.0, min(deadline for *_, deadline in running.values()) - time.monotonic())
                ready, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
                if not ready:  # the watchdog: every point past its limit costs its worker
                    for ref in [r for r, v in running.items() if v[3] <= time.monotonic()]:
                        w, i, _, _ = running.pop(ref)
                        why = watchdog_reason(watchdog_s(points[i], self.point_timeout_s))
                        self._bury(w, points[i], why)
                        finish(i, self._failed(points[i], timer, w.info.device, w.info.node, f"{why} {FRESH}"))
                        idle += self._replace(w, points[i], why)
                    progress.update(task, description=self._describe())
                    continue
                w, i, attempt, _ = running.pop(ready[0])
                try:
                    result, broken = ray.get(ready[0])
                except worker_died as exc:
                    death = self._bury(w, points[i], _death_reason(exc))
                    idle += self._replace(w, points[i], death.error)
                    progress.update(task, description=self._describe())
                    if not self._live:
                        finish(i, self._lost(points[i], timer, death, "no live worker left to retry it"))
                    elif attempt < MAX_ATTEMPTS:
                        queue.appendleft((i, attempt + 1))
                        self._note(f"Ray worker {w.index} (pid {w.info.pid} on {w.info.node}) died "
                                   f"({death.error}); {points[i].key} goes to another worker")
                    else:
                        finish(i, self._lost(points[i], timer, death, f"attempt {attempt} of {MAX_ATTEMPTS}"))
                    continue
                except ray.exceptions.RayTaskError as exc:  # a bug, not a point's own problem
                    result, broken = self._failed(points[i], timer, w.info.device, w.info.node,
                                                  describe(getattr(exc, "cause", None) or exc)), None
                self.ran_on[points[i].key] = w.index
                if broken is None:
                    idle.append(w)
                else:  # its CUDA context is gone: the rest goes to a fresh worker
                    why = unusable_reason(result, broken)
                    self._bury(w, points[i], why)
                    result = replace(result, reason=f"{why} {FRESH}")
                    idle += self._replace(w, points[i], why)
                finish(i, result)
        self.sweep_s += time.monotonic() - t0
        return [done[i] for i in range(len(points))]

    def _describe(self) -> str:
        devices = sorted({w.info.device for w in self._live})
        return f"{len(self._live)} Ray worker(s): {', '.join(devices)}"

    def _bury(self, w: _Live, point: Point, error: str) -> Death:
        ray = _ray()
        self._live = [x for x in self._live if x.index != w.index]
        try:  # a worker that only became unreachable, or hangs, must not take more points
            ray.kill(w.handle, no_restart=True)
        except Exception:
            pass
        death = Death(worker=w.index, node=w.info.node, device=w.info.device, pid=w.info.pid,
                      point=point.key, error=error)
        self.deaths.append(death)
        return death

    def _replace(self, w: _Live, point: Point, reason: str) -> list[_Live]:
        """A fresh worker in place of ``w``, with its ceiling; [] (and a note) if none starts."""
        ray = _ray()
        t0 = time.monotonic()
        handle = self._new()
        self._handles.append(handle)
        try:
            info = ray.get(handle.info.remote(), timeout=START_TIMEOUT_S)
            ray.get(handle.use_ceiling.remote(w.info.ceiling))
        except Exception as exc:
            self._note(f"no fresh Ray worker could replace worker {w.index}: {describe(exc)}")
            return []
        fresh = _Live(len(self.workers), handle, replace(info, ceiling=w.info.ceiling))  # indices never repeat
        self._live.append(fresh)
        self.workers.append(fresh.info)
        self.recoveries.append(Recovery(point.key, reason, round(time.monotonic() - t0, 3)))
        return [fresh]

    def meta(self) -> dict[str, Any]:
        """What a results file records of this fan-out: the workers, deaths, who measured what,
        and the ceiling where every worker has the same device."""
        ceilings = {w.ceiling.device: asdict(w.ceiling) for w in self.workers}
        out: dict[str, Any] = {"ray": {
            "address": self.cluster.address, "workers": [asdict(w) for w in self.workers],
            "died": [asdict(d) for d in self.deaths], "ran_on": dict(self.ran_on),
            "replaced": [asdict(r) for r in self.recoveries],
            "startup_s": round(self.startup_s, 3), "sweep_s": round(self.sweep_s, 3)}}
        if len(ceilings) == 1:
            (out["ceiling"],) = ceilings.values()
        return out

    def close(self) -> None:
        ray = _ray()
        for h in self._handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # already dead or never started: nothing left to release
                pass
        self._handles = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _size(p: Point) -> int:
    """Bytes a point's activations occupy, as a proxy for how long it takes to measure."""
    return p.num_tokens * p.topk * p.hidden_size


def _death_reason(exc: BaseException) -> str:
    """Ray's actor-death text is a paragraph; keep the sentence that says why (exit detail for a
    killed or crashed process, the cause for a lost node)."""
    text = " ".join(str(exc).split())
    for pattern in (r"Worker exit detail: (.*?)(?: Some common causes|$)", r"The actor is dead because (.*)"):
        if found := re.search(pattern, text):
            return found.group(1)[:160]
    return describe(exc, 160)


def run_sweep_ray(spec: SweepSpec, timer: TimerConfig, *, vllm_ops_library: str | None = None,
                  address: str | None = None, num_workers: int | None = None,
                  json_path: str | None = None, resume: bool = False, meta: dict | None = None,
                  console=None, point_timeout_s: float | None = None) -> list[PointResult]:
    """``sweep.run_sweep`` over a Ray cluster: same points, same order, same file format, plus
    ``meta["ray"]`` (workers, deaths, which worker measured each point, startup and sweep seconds).

    The file holds every finished point in grid order after each one; with ``resume`` the
    points already in it (except failed ones) are kept, not measured again.
    """
    points = spec.points()
    previous = previous_file(json_path, resume, timer)
    kept = previous.kept()
    outside = previous.outside(points)
    results = {i: kept[p.key] for i, p in enumerate(points) if p.key in kept}
    todo = [i for i in range(len(points)) if i not in results]
    if resume and console is not None:
        console.print(f"resume: {len(results)} of {len(points)} points kept from {json_path}")
    out = ResultsFile(json_path, previous.meta_for(dict(meta or {}))) if json_path else None

    def save(pool: Pool | None = None) -> None:
        if out is None:
            return
        if pool is not None:
            out.meta.update(pool.meta())
        out.results = outside + [results[i] for i in sorted(results)]
        out.write()

    if todo:
        with Pool(vllm_ops_library=vllm_ops_library, address=address, num_workers=num_workers,
                  console=console, point_timeout_s=point_timeout_s) as pool:
            save(pool)  # the workers (and their pids) are on record before the first point

            def on_result(j: int, result: PointResult) -> None:
                results[todo[j]] = result
                save(pool)

            pool.measure([points[i] for i in todo], timer, on_result=on_result)
            save(pool)
    else:
        save()
    return [results[i] for i in range(len(points))]
