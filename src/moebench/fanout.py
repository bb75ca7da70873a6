"""Points spread over a Ray cluster: one worker per GPU, or per CPU slot where there is no GPU.

Why: a grid's points are independent, so N GPUs measure it about N times faster. ``Pool`` is the
Ray executor of ``grid.run_grid`` (``executors.open_executor`` makes it, inside the
``raycluster.session`` that owns the connection), for the CLI (``--ray``, ``--ray-address``) and
the asv suite alike.

A worker is a Ray actor that does exactly what a single-GPU run does: it resolves its device (Ray
sets CUDA_VISIBLE_DEVICES per actor, so ``cuda:0`` is its card; ``cpu`` with the host timer on a
cluster without GPUs), builds the implementation registry, the bandwidth ceiling and NVML once
(a ``runpoint.DeviceRunner``), and runs each point it is handed with it. Each result therefore names the
card (``device``) and host (``node``) that measured it; a mixed cluster (H100 + H200) is
reported per card, and no number is ever averaged across cards.

Which worker measures which point is decided before the first point, from the points and the
workers' cards alone (``cardplan.plan``: the same card, after the same neighbours, every night;
points that share their inputs together), and each worker measures its share in grid order. The
price: a slower card is not relieved by a faster one. A worker that dies (a crash in a kernel
library, an OOM kill, node loss) loses only the point it was measuring: that point and the rest of
its share go to its replacement (or, if none starts, to the other workers), the point at most
``MAX_ATTEMPTS`` times in all (a point that kills every worker it touches must not take the whole
cluster down); a point that cannot be finished becomes a failed result whose reason starts with
``lost:``. A worker whose point left its CUDA context unusable (``isolate.broken_after``: a sticky
error), or that exceeds the point's watchdog limit (``isolate.watchdog_s``), is killed and its
point failed with that reason. Each lost worker is replaced by a fresh one with the same settings
and ceiling (``recoveries``; ``meta["ray"]["replaced"]``). Results reach ``run_grid`` as each one
finishes, so its results file holds every finished point and ``--resume`` continues a killed sweep.

Ray is imported only when a pool is made (``raycluster.ray_module``): it is an optional extra.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .axes import TimerConfig, clock_name
from .cardplan import by_card
from .errors import BadInput, describe
from .grid import Job
from .isolate import FRESH, Recovery, device_runner, run_and_judge, unusable_reason, watchdog_reason, watchdog_s
from .raycluster import Cluster, ray_module
from .results import Point, PointResult

if TYPE_CHECKING:
    import torch

    from .executors import Placement
    from .roofline import Ceiling

MAX_ATTEMPTS = 2  # tries of one point on different workers before it is reported lost
START_TIMEOUT_S = 300.0  # workers waiting for a free GPU, importing torch, measuring the ceiling


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


class _Actor:
    """Body of a Ray worker: one device, set up once, then point after point."""

    def __init__(self, vllm_ops_library: str | None, vllm_module: str | None, use_gpu: bool,
                 registry: Callable[..., dict] | None = None) -> None:
        import torch

        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError(f"Ray gave this worker GPU(s) {os.environ.get('CUDA_VISIBLE_DEVICES')} "
                               "but torch sees no CUDA device")
        device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        self.runner = device_runner(device, vllm_ops_library, vllm_module, registry)

    def info(self) -> WorkerInfo:
        import ray

        from .roofline import device_name

        r = self.runner
        return WorkerInfo(node=socket.gethostname(), device=device_name(r.device), pid=os.getpid(),
                          gpu_ids=tuple(str(g) for g in ray.get_gpu_ids()), ceiling=r.ceiling)

    def use_ceiling(self, shared: Ceiling) -> None:
        self.runner.ceiling = shared

    def run(self, point: Point, timer: TimerConfig) -> tuple[PointResult, str | None]:
        """The point's result, and why this process can no longer be trusted with its device
        (``isolate.run_and_judge``; the pool then replaces it), or None."""
        return run_and_judge(self.runner, point, timer)


@dataclass
class Share:
    """One worker's part of the sweeps: how many points, the seconds it spent on them (from
    handing a point over to its result) and when, from the first point handed to any worker, it
    gave its last result. Why a fan-out is not N times faster shows here: busy seconds that add
    up to more than one GPU's (each worker pays its own first-use costs), or one worker done
    long before the others (an uneven plan)."""

    points: int = 0
    busy_s: float = 0.0
    done_s: float = 0.0


@dataclass(frozen=True)
class _Live:
    index: int
    handle: Any
    info: WorkerInfo


@dataclass(frozen=True)
class _Running:
    """A point handed to a worker and not yet back."""

    worker: _Live
    index: int  # the job's
    attempt: int
    handed: float  # time.monotonic() when it was handed over
    deadline: float  # when the watchdog gives up on it


class Pool:
    """Workers on a Ray cluster, started once and used for any number of ``run`` calls.

    Use as a context manager: leaving it kills the workers (the cluster's connection belongs to
    the ``raycluster.session`` it was made in). One pool runs jobs with any timers (the asv
    suite's warm- and cold-L2 points together), paying the workers' start once.
    """

    def __init__(self, cluster: Cluster, placement: "Placement", *, console=None) -> None:
        ray = ray_module()
        t0 = time.monotonic()
        self.cluster = cluster
        self.device_type = cluster.device_type
        self._console = console
        self._handles: list[Any] = []
        self.deaths: list[Death] = []
        self.ran_on: dict[str, int] = {}  # point key -> index of the worker that measured it
        self.shares: dict[int, Share] = {}  # worker index -> what it did in ``run`` (meta, setup log)
        self.recoveries: list[Recovery] = []  # workers replaced after a fault, a death or a hang
        self.point_timeout_s = placement.point_timeout_s
        self._clock = clock_name(self.device_type)
        try:
            count = cluster.worker_count(placement.workers)
            use_gpu = bool(cluster.gpus)
            actor = ray.remote(_Actor).options(num_gpus=1 if use_gpu else 0, num_cpus=1,
                                               scheduling_strategy="SPREAD")
            self._new = lambda: actor.remote(placement.vllm_ops_library, placement.vllm_module,  # noqa: E731
                                             use_gpu, placement.registry)
            self._handles = [self._new() for _ in range(count)]
            self._live = self._start(ray)
        except BaseException:
            self.close()
            raise
        self.workers = [w.info for w in self._live]
        self.startup_s = time.monotonic() - t0
        self.sweep_s = 0.0

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(self.device_type)

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
        return PointResult.failure(point, reason, device=device, clock=self._clock,
                                   calls_per_graph=timer.calls_per_graph, node=node)

    def _lost(self, point: Point, timer: TimerConfig, death: Death, detail: str) -> PointResult:
        return self._failed(point, timer, death.device, death.node,
                            f"lost: worker on {death.node} died ({death.error}); {detail}")

    def run(self, jobs: Sequence[Job], on_result: Callable[[int, PointResult], None],
            on_start: Callable[[int], None] | None = None) -> None:
        """Every job run once, on the worker ``cardplan.plan`` gives it; ``on_result(i, result)``
        as each one finishes (in completion order). ``on_start`` is not called: points run several
        at a time."""
        ray = ray_module()
        from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

        worker_died = (RayActorError, WorkerCrashedError, ObjectLostError)
        t0 = time.monotonic()
        points, timers = [p for p, _ in jobs], [t for _, t in jobs]
        shares = _shares(points, self._live)  # worker index -> its (job index, attempt) in grid order
        idle = list(self._live)
        running: dict[Any, _Running] = {}  # Ray's reference to the result -> what it is

        def hand_over(w: _Live, fresh: list[_Live], retry: tuple[int, int] | None = None) -> None:
            """``w``'s share (and ``retry`` first) to its replacement, else to the other workers."""
            left = shares.pop(w.index, deque())
            if retry is not None:
                left.appendleft(retry)
            if fresh:
                shares[fresh[0].index] = left
                idle.extend(fresh)
            elif not self._live:
                shares[w.index] = left  # no worker left: reported lost below
            else:
                for job in left:
                    min((shares.setdefault(x.index, deque()) for x in self._live), key=len).append(job)

        while any(shares.values()) or running:
            for w in [w for w in idle if shares.get(w.index)]:
                idle.remove(w)
                i, attempt = shares[w.index].popleft()
                now = time.monotonic()
                running[w.handle.run.remote(points[i], timers[i])] = _Running(
                    w, i, attempt, now, now + watchdog_s(points[i], self.point_timeout_s))
            if not running:  # points left, workers all dead
                for i, _ in (job for share in shares.values() for job in share):
                    on_result(i, self._lost(points[i], timers[i], self.deaths[-1], "no live worker left to run it"))
                break
            wait_s = max(0.0, min(r.deadline for r in running.values()) - time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            if not ready:  # the watchdog: every point past its limit costs its worker
                for ref in [ref for ref, r in running.items() if r.deadline <= time.monotonic()]:
                    late = running.pop(ref)
                    w, i = late.worker, late.index
                    why = watchdog_reason(watchdog_s(points[i], self.point_timeout_s))
                    self._bury(w, points[i], why)
                    on_result(i, self._failed(points[i], timers[i], w.info.device, w.info.node, f"{why} {FRESH}"))
                    hand_over(w, self._replace(w, points[i], why))
                continue
            back = running.pop(ready[0])
            w, i, attempt = back.worker, back.index, back.attempt
            share = self.shares.setdefault(w.index, Share())
            share.points, share.busy_s = share.points + 1, share.busy_s + time.monotonic() - back.handed
            share.done_s = self.sweep_s + time.monotonic() - t0
            try:
                result, broken = ray.get(ready[0])
            except worker_died as exc:
                death = self._bury(w, points[i], _death_reason(exc))
                fresh = self._replace(w, points[i], death.error)
                if not self._live:
                    hand_over(w, fresh)
                    on_result(i, self._lost(points[i], timers[i], death, "no live worker left to retry it"))
                elif attempt < MAX_ATTEMPTS:
                    hand_over(w, fresh, retry=(i, attempt + 1))
                    self._note(f"Ray worker {w.index} (pid {w.info.pid} on {w.info.node}) died "
                               f"({death.error}); {points[i].key} goes to another worker")
                else:
                    hand_over(w, fresh)
                    on_result(i, self._lost(points[i], timers[i], death, f"attempt {attempt} of {MAX_ATTEMPTS}"))
                continue
            except ray.exceptions.RayTaskError as exc:  # a bug, not a point's own problem
                result, broken = self._failed(points[i], timers[i], w.info.device, w.info.node,
                                              describe(getattr(exc, "cause", None) or exc)), None
            self.ran_on[points[i].key] = w.index
            if broken is None:
                idle.append(w)
            else:  # its CUDA context is gone: the rest goes to a fresh worker
                why = unusable_reason(result, broken)
                self._bury(w, points[i], why)
                result = replace(result, reason=f"{why} {FRESH}")
                hand_over(w, self._replace(w, points[i], why))
            on_result(i, result)
        self.sweep_s += time.monotonic() - t0

    def describe(self) -> str:
        devices = sorted({w.info.device for w in self._live})
        return f"{len(self._live)} Ray worker(s): {', '.join(devices)}"

    def _bury(self, w: _Live, point: Point, error: str) -> Death:
        ray = ray_module()
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
        ray = ray_module()
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
            "startup_s": round(self.startup_s, 3), "sweep_s": round(self.sweep_s, 3),
            "shares": {i: {k: round(v, 3) for k, v in asdict(s).items()} for i, s in sorted(self.shares.items())}}}
        if len(ceilings) == 1:
            (out["ceiling"],) = ceilings.values()
        return out

    def close(self) -> None:
        ray = ray_module()
        for h in self._handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # already dead or never started: nothing left to release
                pass
        self._handles = []

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shares(points: Sequence[Point], workers: Sequence[_Live]) -> dict[int, deque]:
    """``cardplan.plan``'s lanes as each live worker's share: (job index, attempt 1), keyed by
    worker index."""
    ordered = sorted(workers, key=lambda w: w.index)
    lanes = by_card(points, [(w.info.node, w.info.gpu_ids) for w in ordered])
    return {w.index: deque((i, 1) for i in lane) for w, lane in zip(ordered, lanes)}


def _death_reason(exc: BaseException) -> str:
    """Ray's actor-death text is a paragraph; keep the sentence that says why (exit detail for a
    killed or crashed process, the cause for a lost node)."""
    text = " ".join(str(exc).split())
    for pattern in (r"Worker exit detail: (.*?)(?: Some common causes|$)", r"The actor is dead because (.*)"):
        if found := re.search(pattern, text):
            return found.group(1)[:160]
    return describe(exc, 160)
