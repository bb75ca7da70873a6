"""Stand-in project histories measured by real asv, for tests that need asv results on a CPU.

The real project measures vLLM commits on a GPU; on a CPU machine neither exists. This module
builds the smallest thing that exercises the same asv machinery end to end: a local git repository
whose every commit sets, per kernel, the mean of the timed quantity, and an asv suite whose
``track_time`` draws seeded samples from N(mean, noise * mean) and returns them as
``{"samples": [...], "number": 1}`` (seconds, lower is better), exactly like moebench's suite.
So the numbers are what the commit says, not this machine's noise, and every result file,
``benchmarks.json``, ``machine.json`` and the published ``html/`` are written by asv itself.

API
---
``build_history(root, means, *, noise=0.015, samples=25, machine="standin-cpu", publish=True,
record_samples=True)``
    ``root``: an empty directory (e.g. pytest's ``tmp_path``).
    ``means``: one mapping per commit, oldest first, ``{kernel: mean_seconds}``; every commit
    names the same kernels, which become the values of the benchmark's one parameter ``kernel``
    (so one history carries several independent scenarios, one per kernel). A list of means
    instead of one is a kernel with several states: each sample picks one of them at random and
    lies within ``LEVEL_NOISE`` of it (a GPU point whose rounds land in different states).
    ``noise``: relative standard deviation of the samples within one run.
    ``samples``: samples per run. Each commit's generator is seeded by (commit index, kernel).
    Commits are dated one hour apart, so asv's commit-date order is the history order.
    Runs ``asv machine``, then per commit ``git checkout`` + ``asv run --set-commit-hash``
    (``environment_type: existing`` with this interpreter) with ``--record-samples`` (without
    it asv keeps only the median: ``record_samples=False`` shows that case), then ``asv publish``
    when asked. ``measured``: the indices of the commits to run asv for (default: all), as a
    nightly that measured only some of them would have left the history.
    Returns a ``History``: ``repo``, ``conf``, ``results`` (asv's results dir), ``html``,
    ``machine``, ``commits`` (full hashes, oldest first), ``benchmark`` (the full asv name).

``subset_results(history, n, dest)``
    Copies the results of the first ``n`` commits to ``dest`` (what a nightly run would have
    seen after measuring commit ``n - 1``) and returns ``dest``.

``HOME`` is pointed into ``root`` for every asv call, so ``~/.asv-machine.json`` of the user is
never touched. One asv run costs ~1-2 s per commit on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

BENCHMARK = "suite.Kernel.track_time"
LEVEL_NOISE = 0.0005  # relative spread inside one level of a multi-level kernel

# Both stand-in suites start with this: standin.py loaded from the working tree at each run, so
# the checked-out commit decides the numbers.
_LOADER = '''\
import importlib.util
import random
from pathlib import Path

_MODULE = Path(__file__).resolve().parents[1] / "standin.py"


def _standin():
    spec = importlib.util.spec_from_file_location("standin", _MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
'''

_SUITE = '''\
"""Stand-in suite: samples whose mean the checked-out commit of the stand-in project sets."""
''' + _LOADER.replace("{", "{{").replace("}", "}}") + '''


class Kernel:
    params = [{kernels!r}]
    param_names = ["kernel"]
    unit = "seconds"
    version = "1"

    def track_time(self, kernel):
        s = _standin()
        rng = random.Random(f"{{s.COMMIT_INDEX}}/{{kernel}}")
        mean = s.MEANS[kernel]
        if isinstance(mean, list):  # levels: each sample (round) lands on one of them
            return {{"samples": [rng.choice(mean) * (1 + rng.gauss(0, s.LEVEL_NOISE)) for _ in range(s.SAMPLES)],
                     "number": 1}}
        return {{"samples": [rng.gauss(mean, s.NOISE * mean) for _ in range(s.SAMPLES)],
                 "number": 1}}
'''


# The same stand-in in the shape of moebench's own suite (benchmarks/moe.py): a class per L2 mode,
# time and roofline tracks per op, parameters model x dtype x impl x tokens. ``means`` keys are
# "op/model/dtype/impl/tokens"; the roofline floor of a key is 40 % of its first commit's mean.
_MOE_SUITE = '''\
"""Stand-in in the shape of moebench's suite: seeded rounds whose mean the commit sets."""
''' + _LOADER.replace("{", "{{").replace("}", "}}") + '''


def _rounds(op, model, dtype, impl, tokens):
    s = _standin()
    key = f"{{op}}/{{model}}/{{dtype}}/{{impl}}/{{tokens}}"
    rng = random.Random(f"{{s.COMMIT_INDEX}}/{{key}}")
    mean = s.MEANS[key]
    return [rng.gauss(mean, s.NOISE * mean) for _ in range(s.SAMPLES)], s.FLOOR[key]


class WarmL2:
    params = {params!r}
    param_names = ["model", "dtype", "impl", "tokens"]
    version = "1"

    def track_permute(self, *p):
        return {{"samples": _rounds("permute", *p)[0], "number": 1}}

    def track_unpermute(self, *p):
        return {{"samples": _rounds("unpermute", *p)[0], "number": 1}}

    def track_permute_vs_floor(self, *p):
        rounds, floor = _rounds("permute", *p)
        return {{"samples": [x / floor for x in rounds], "number": 1}}

    def track_unpermute_vs_floor(self, *p):
        rounds, floor = _rounds("unpermute", *p)
        return {{"samples": [x / floor for x in rounds], "number": 1}}

    track_permute.unit = track_unpermute.unit = "seconds"
    track_permute_vs_floor.unit = track_unpermute_vs_floor.unit = "x floor"
'''


def moe_key(op: str, model: str, dtype: str, impl: str, tokens: int) -> str:
    return f"{op}/{model}/{dtype}/{impl}/{tokens}"


@dataclass(frozen=True)
class History:
    repo: Path
    conf: Path
    results: Path
    html: Path
    machine: str
    commits: tuple[str, ...]
    benchmark: str = BENCHMARK
    home: Path | None = None  # HOME with asv's machine file, for later asv runs on this history


def _run(cmd: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, env=dict(env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _asv(args: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    return _run([sys.executable, "-m", "asv", *args, "--config", str(cwd / "asv.conf.json")], cwd, env)


def build_history(root: Path, means: Sequence[Mapping[str, float]], *, noise: float = 0.015,
                  samples: int = 25, machine: str = "standin-cpu", publish: bool = True,
                  record_samples: bool = True, measured: Sequence[int] | None = None,
                  shape: str = "kernel") -> History:
    kernels = list(means[0])
    if any(list(m) != kernels for m in means):
        raise ValueError("every commit must name the same kernels, in the same order")
    extra = ""
    if shape == "moe":
        axes = [list(dict.fromkeys(k.split("/")[i] for k in kernels)) for i in range(1, 5)]
        axes[3] = [int(t) for t in axes[3]]
        suite = _MOE_SUITE.format(params=axes)
        extra = f"FLOOR = {({k: 0.4 * v for k, v in means[0].items()})!r}\n"
    else:
        suite = _SUITE.format(kernels=kernels)
    repo = root / "standin"
    home = root / "home"
    repo.mkdir(parents=True)
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "stand-in", "GIT_AUTHOR_EMAIL": "standin@example.invalid",
           "GIT_COMMITTER_NAME": "stand-in", "GIT_COMMITTER_EMAIL": "standin@example.invalid"}

    (repo / "benchmarks").mkdir()
    (repo / "benchmarks" / "__init__.py").write_text("")
    (repo / "benchmarks" / "suite.py").write_text(suite)
    (repo / "asv.conf.json").write_text(json.dumps({
        "version": 1, "project": "standin", "project_url": "https://example.invalid/standin",
        "repo": ".", "branches": ["main"], "environment_type": "existing",
        "benchmark_dir": "benchmarks", "results_dir": "results", "html_dir": "html",
        "env_dir": ".asv/env", "show_commit_url": "https://example.invalid/standin/commit/",
    }, indent=2))
    # Only standin.py is versioned: the suite and asv's outputs stay put across checkouts.
    (repo / ".gitignore").write_text("benchmarks/\nresults/\nhtml/\n.asv/\nasv.conf.json\n")
    _run(["git", "init", "-q", "-b", "main"], repo, env)

    commits: list[str] = []
    for i, commit_means in enumerate(means):
        (repo / "standin.py").write_text(
            f"COMMIT_INDEX = {i}\nMEANS = {dict(commit_means)!r}\nNOISE = {noise!r}\nSAMPLES = {samples}\n"
            f"LEVEL_NOISE = {LEVEL_NOISE!r}\n" + extra)
        date = f"{1_700_000_000 + 3600 * i} +0000"
        dated = {**env, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        _run(["git", "add", "-A"], repo, dated)
        _run(["git", "commit", "-q", "-m", f"commit {i}"], repo, dated)
        commits.append(_run(["git", "rev-parse", "HEAD"], repo, env).strip())

    _asv(["machine", "--yes", "--machine", machine], repo, env)
    for sha in commits if measured is None else [commits[i] for i in measured]:
        _run(["git", "checkout", "-q", sha], repo, env)
        _asv(["run", "--environment", f"existing:{sys.executable}", "--set-commit-hash", sha,
              "--machine", machine, "--show-stderr"] + (["--record-samples"] if record_samples else []),
             repo, env)
    _run(["git", "checkout", "-q", "main"], repo, env)
    if publish:
        _asv(["publish"], repo, env)
    return History(repo=repo, conf=repo / "asv.conf.json", results=repo / "results",
                   html=repo / "html", machine=machine, commits=tuple(commits), home=home)


def subset_results(history: History, n: int, dest: Path) -> Path:
    keep = {sha[:8] for sha in history.commits[:n]}
    src = history.results
    shutil.copytree(src, dest, ignore=lambda d, names: [
        name for name in names
        if Path(d) != src and name.endswith(".json") and name != "machine.json"
        and name.split("-")[0] not in keep])
    return dest
