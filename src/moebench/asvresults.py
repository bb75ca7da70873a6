"""asv's results read once, for everyone: ``alerts``, ``bisection``, ``overview``, ``history``
and the evidence tools see the same series, filtered by asv's own rule (a benchmark whose
``version`` changed starts a new history), and a file asv cannot read is named, never skipped.
Also the one unit scaling of seconds for display.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import BadInput


@dataclass(frozen=True)
class Measurement:
    commit: str
    date_ms: int
    samples: tuple[float, ...]  # empty: asv stored a value but no samples (no --record-samples)
    value: float | None = None  # asv's value (the median of the samples)
    stats: dict | None = None  # asv's statistics of the samples (quartiles, 99 % interval)


@dataclass(frozen=True)
class Series:
    """One parameter combination of one benchmark on one machine and environment."""

    machine: str
    env: str
    benchmark: str
    param_index: int | None
    params: tuple[tuple[str, str], ...]
    unit: str
    measurements: tuple[Measurement, ...]

    @property
    def entry(self) -> str:
        """asv's entry name: ``name(v1, v2)``, the string ``regressions_thresholds`` matches."""
        if self.param_index is None:
            return self.benchmark
        return f"{self.benchmark}({', '.join(v for _, v in self.params)})"

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params) or "—"


def param_value(text: str):
    """A parameter's value from asv's record of it (asv keeps each value's ``repr``): 'fp8' is
    fp8, '16' is 16; a repr that is not a Python literal (a benchmark's own objects) stays text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_json(path: Path, api_version: int | None) -> dict:
    from asv import util

    try:
        return util.load_json(str(path), api_version=api_version)
    except util.UserError as exc:
        raise BadInput(f"corrupt asv file {path}: {exc}") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_rows(path: Path) -> None:
    """asv reads a malformed row as a benchmark of another version (so it would be skipped as
    history that restarted): every row must be a list of asv's columns with a string version."""
    data = json.loads(path.read_text())
    columns = data.get("result_columns") or []
    version = columns.index("version") if "version" in columns else None
    for key, row in (data.get("results") or {}).items():
        if not (isinstance(row, list) and version is not None and version < len(row) <= len(columns)
                and isinstance(row[version], str)):
            raise ValueError(f"{key}: a row that is not asv's {len(columns)} result columns")


def result_files(mdir: Path, machine: str):
    """Every asv results file of one machine directory, loaded: ``(path, Results)``. A file asv
    cannot read is named in a BadInput (asv's own iterator logs a warning and drops it)."""
    from asv import util
    from asv.results import Results

    files = sorted(p for p in mdir.glob("*.json") if p.name != "machine.json")
    if not files:
        raise BadInput(f"no result files for machine {machine} in {mdir}")
    for path in files:
        try:
            res = Results.load(str(path), machine_name=machine)
            _check_rows(path)
        except util.UserError as exc:
            raise BadInput(f"corrupt asv results file {path}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInput(f"corrupt asv results file {path}: {type(exc).__name__}: {exc}") from None
        yield path, res


def load_series(results_dir: Path, machines: Sequence[str] | None, benchmark: str | None = None) -> list[Series]:
    """Every series in an asv results directory (of ``benchmark`` only, where given: the other
    benchmarks' values are not read); bad or missing files raise BadInput naming them."""
    if not results_dir.is_dir():
        raise BadInput(f"no asv results directory at {results_dir}")
    benchmarks = load_json(results_dir / "benchmarks.json", api_version=2)
    present = sorted(p.name for p in results_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    wanted = list(machines) if machines else present
    unknown = [m for m in wanted if m not in present]
    if unknown:
        raise BadInput(f"no results for machine {', '.join(unknown)} in {results_dir} "
                       f"(machines there: {', '.join(present) or 'none'})")
    if not wanted:
        raise BadInput(f"no machine directories in {results_dir}")

    grouped: dict[tuple[str, str, str, int], list[Measurement]] = {}
    for machine in wanted:
        mdir = results_dir / machine
        info = load_json(mdir / "machine.json", api_version=1)
        if info.get("machine") != machine:
            raise BadInput(f"corrupt asv file {mdir / 'machine.json'}: machine is not {machine!r}")
        for path, res in result_files(mdir, machine):
            for key in res.get_all_result_keys():
                if benchmark is not None and key != benchmark:
                    continue
                meta = benchmarks.get(key)
                # asv's own rule: a benchmark no longer in the suite, or whose `version` changed,
                # starts a new history; its old results are not comparable (rows that are not
                # asv's were named by result_files).
                if meta is None or res.benchmark_version.get(key) != meta.get("version"):
                    continue
                try:
                    values = res.get_result_value(key, meta["params"])
                    samples = res.get_result_samples(key, meta["params"])
                    stats = res.get_result_stats(key, meta["params"]) or [None] * len(values)
                except (KeyError, TypeError, ValueError) as exc:
                    raise BadInput(f"corrupt asv results file {path}: {key}: {exc}") from None
                for j, (value, s, st) in enumerate(zip(values, samples, stats)):
                    if value is None or (isinstance(value, float) and math.isnan(value)):
                        continue  # failed or skipped (NotImplementedError) at this commit
                    clean = tuple(x for x in (s or ()) if x is not None and not math.isnan(x))
                    grouped.setdefault((machine, res.env_name, key, j), []).append(
                        Measurement(res.commit_hash, int(res.date), clean, value, st))

    series = []
    combos_of: dict[str, list[tuple]] = {}  # a benchmark's parameter grid, built once
    for (machine, env, key, j), items in sorted(grouped.items()):
        meta = benchmarks[key]
        combos = combos_of.setdefault(key, list(itertools.product(*meta["params"]))) if meta["params"] else []
        param_index = j if meta["params"] else None
        params = tuple(zip(meta.get("param_names", []), combos[j])) if meta["params"] else ()
        series.append(Series(
            machine=machine, env=env, benchmark=key, param_index=param_index, params=params,
            unit=meta.get("unit") or "", measurements=tuple(items)))
    return series


_SECONDS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))


def scaled(x: float, unit: str) -> tuple[float, str]:
    """Divisor and unit name to print ``x`` (and numbers near it) in: seconds get a prefix."""
    if unit == "seconds" and math.isfinite(x) and x > 0:
        return next(((f, n) for f, n in _SECONDS if x >= f), _SECONDS[-1])
    return 1.0, unit
