"""The grid: which points a sweep has, and the one driver that runs any list of them.

A *job* is a point and the timer it is measured with (the asv suite's warm- and cold-L2 points
differ in calls per graph). ``run_grid`` is how the CLI, the asv suite's ``setup_cache`` and the
evidence tools run jobs: it hands them to an executor (``moebench.executors``: this machine's
device, in this process or an isolated worker, or a Ray pool), keeps what ``--resume`` found,
rewrites the results file in grid order after every point, and shows progress. It never decides
where points run, and an executor never touches files, so every front end saves, resumes and
reports the same way. Torch-free: the process that only hands points to workers never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

from .axes import BATCH_SIZES, ExpertParallel, TimerConfig
from .errors import BadInput
from .models import ACTIVATION_BYTES, MoEShape
from .results import FAILED, Point, PointResult, ResultsFile, load

if TYPE_CHECKING:
    import torch

FP8_BYTES = 1  # an e4m3 element

Job = tuple[Point, TimerConfig]


@dataclass(frozen=True)
class SweepSpec:
    shape: MoEShape
    dtype_modes: tuple[str, ...]
    impls: tuple[str, ...]
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    routing: str = "uniform"
    l2: str = "warm"
    ep: ExpertParallel = ExpertParallel()
    seed: int = 0

    def points(self) -> list[Point]:
        """Grid order: dtype, then batch size, then implementation (tables group by size)."""
        s = self.shape
        return [
            Point(model=s.model, num_experts=s.num_experts, topk=s.topk, hidden_size=s.hidden_size,
                  act_dtype=s.dtype, dtype_mode=mode, impl=impl, num_tokens=t, routing=self.routing,
                  l2=self.l2, ep_size=self.ep.size, ep_rank=self.ep.rank, seed=self.seed)
            for mode in self.dtype_modes for t in self.batch_sizes for impl in self.impls
        ]

    def jobs(self, timer: TimerConfig) -> list[Job]:
        """Every point with one timer: the CLI's sweep."""
        return [(p, timer) for p in self.points()]


def validate_row_bytes(shape: MoEShape, dtype_modes: Iterable[str]) -> None:
    """vLLM's kernels move rows in 16-byte vectors: reject shapes they cannot take."""
    for mode in dtype_modes:
        elt = FP8_BYTES if mode == "fp8_w8a8" else ACTIVATION_BYTES[shape.dtype]
        if shape.hidden_size * elt % 16:
            raise BadInput(f"hidden size {shape.hidden_size} x {elt}-byte {mode} elements is not a "
                           "multiple of 16 bytes, which the permute kernels require")


@dataclass(frozen=True)
class Previous:
    """What ``--resume`` found in the results file: every result in it, and its settings."""

    meta: dict
    results: tuple[PointResult, ...] = ()

    def kept(self) -> dict[str, PointResult]:
        """Reusable results by point key; failed ones are left out so they are measured again."""
        return {r.point.key: r for r in self.results if r.status != FAILED}

    def outside(self, points: Iterable[Point]) -> list[PointResult]:
        """Results of points this sweep does not measure: kept in the file, never dropped."""
        keys = {p.key for p in points}
        return [r for r in self.results if r.point.key not in keys]

    def meta_for(self, meta: dict) -> dict:
        """This run's settings, with the earlier runs' settings on record too."""
        if not self.meta:
            return meta
        earlier = [*self.meta.get("earlier_runs", []), {k: v for k, v in self.meta.items() if k != "earlier_runs"}]
        return {**meta, "earlier_runs": earlier}


def previous_file(json_path: str | None, resume: bool, timer: dict | None) -> Previous:
    """With ``resume``, the results file as it is. A file measured with other timing settings
    (``timer``: this run's ``TimerConfig`` as a dict) is refused (BadInput): one file never mixes
    two kinds of sample."""
    if not (resume and json_path and Path(json_path).exists()):
        return Previous({})
    meta, results = load(json_path)
    theirs, ours = meta.get("timer"), timer or {}
    if theirs is not None and {k: theirs.get(k) for k in ours} != ours:
        diff = ", ".join(f"{k} {theirs.get(k)} there, {v} now" for k, v in ours.items() if theirs.get(k) != v)
        raise BadInput(f"--resume: {json_path} was measured with other timing settings ({diff}); "
                       "use the same flags or another --json file")
    return Previous(meta, tuple(results))


def progress_bar(console):
    """The grid's progress bar (on the stderr console)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


class Executor(Protocol):
    """Where jobs run (``moebench.executors``)."""

    device_type: str  # "cuda" or "cpu", known without torch: decides the timer's defaults
    recoveries: list  # isolate.Recovery: workers replaced after a fault, a crash or a hang

    @property
    def device(self) -> torch.device:
        """The device as torch names it (imports torch: for callers that check implementations)."""

    def run(self, jobs: Sequence[Job], on_result: Callable[[int, PointResult], None],
            on_start: Callable[[int], None] | None = None) -> None:
        """Run every job once; ``on_result(i, result)`` as job i finishes, in any order."""

    def describe(self) -> str:
        """A few words for the progress bar."""

    def meta(self) -> dict:
        """What a results file records of this executor (ceiling, workers, recoveries)."""


def run_grid(jobs: Sequence[Job], executor: Executor, *, json_path: str | None = None, resume: bool = False,
             meta: dict | None = None, console=None) -> list[PointResult]:
    """Every job's result, in the given order. With ``json_path`` the file holds every finished
    point, in grid order, after each one (and the results of points outside this grid that it
    already held); with ``resume`` the points already in it (except failed ones) are kept, not run
    again. ``meta`` are this run's settings; its ``timer`` must match a resumed file's."""
    points = [p for p, _ in jobs]
    previous = previous_file(json_path, resume, (meta or {}).get("timer"))
    kept = previous.kept()
    results = {i: kept[p.key] for i, p in enumerate(points) if p.key in kept}
    todo = [i for i in range(len(points)) if i not in results]
    if resume and console is not None:
        console.print(f"resume: {len(results)} of {len(points)} points kept from {json_path}")
    outside = previous.outside(points)
    out = ResultsFile(json_path, previous.meta_for(dict(meta or {}))) if json_path else None

    def save() -> None:
        if out is not None:
            out.meta.update(executor.meta())
            out.results = outside + [results[i] for i in sorted(results)]
            out.write()

    save()  # the executor (its ceiling, its workers' pids) is on record before the first point
    with progress_bar(console) as progress:
        task = progress.add_task(executor.describe(), total=len(todo))

        def on_start(j: int) -> None:
            p = points[todo[j]]
            progress.update(task, description=f"{p.impl} T={p.num_tokens} {p.dtype_mode}")

        def on_result(j: int, result: PointResult) -> None:
            results[todo[j]] = result
            save()
            progress.advance(task)
            progress.update(task, description=executor.describe())

        if todo:
            executor.run([jobs[i] for i in todo], on_result, on_start)
            save()  # the executor's final account (e.g. Ray's sweep seconds) once every point is in
    return [results[i] for i in range(len(points))]
