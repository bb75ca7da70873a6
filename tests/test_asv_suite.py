"""The asv suite: its axes and configuration, the grid measured once per class, and the whole chain
with real asv (``asv check``; ``asv run`` for three commits of a stand-in project repository in this
environment; ``asv publish``) on a tiny model, on this CPU."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
from array import array
from dataclasses import replace
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch

from moebench import asvlocal, suite, suitegrid
from moebench.errors import BadInput
from moebench.suite import SuiteConfig
from moebench.suitegrid import OpTiming, PointFailed, SuitePoint

REPO = Path(__file__).resolve().parents[1]
TINY = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 4,
        "num_experts_per_tok": 2, "hidden_size": 64, "torch_dtype": "bfloat16"}
BENCHMARKS = [f"moe.{cls}.track_{op}{kind}" for cls in ("ColdL2", "WarmL2")
              for op in ("permute", "unpermute") for kind in ("", "_vs_floor")]


def model_dir(root: Path, name: str, **overrides) -> str:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({**TINY, **overrides}))
    return str(path)


def test_the_axes_have_one_torch_free_owner():
    """moebench.axes is where every module takes the grid's axes from; importing it, the suite
    (asv's discovery and fork server) or the CLI (`moebench -h`) loads no torch."""
    from moebench import axes, grid, impls, quant, results, routing, timing

    assert (suite.DTYPE_MODES, suite.IMPLS, suite.BATCH_SIZES, suite.OPS, suite.L2_MODES) == (
        axes.DTYPE_MODES, axes.IMPLS, axes.BATCH_SIZES, axes.OPS, axes.L2_MODES)
    assert quant.DTYPE_MODES is axes.DTYPE_MODES and impls.ALL is axes.IMPLS and results.OPS is axes.OPS
    assert routing.ROUTINGS is axes.ROUTINGS and grid.BATCH_SIZES is axes.BATCH_SIZES
    assert timing.TimerConfig is axes.TimerConfig and timing.L2_MODES is axes.L2_MODES
    probe = ("import sys, moebench.cli, moebench.suite, moebench.suitegrid, moebench.models, moebench.files; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_from_env():
    """The defaults are the nightly's grid: every shipped model, auto and fp8_w8a8, vLLM's kernels
    and triton-sol, 18 sizes; cold L2 for Mixtral and DeepSeek-V3 only."""
    from moebench.models import shipped_models

    default = SuiteConfig.from_env({})
    assert default == SuiteConfig()
    rest = [["auto", "fp8_w8a8"], ["vllm-ops", "triton-sol"], list(suite.BATCH_SIZES)]
    assert len(shipped_models()) == 9 and default.params_for("warm") == [shipped_models(), *rest]
    assert default.params_for("cold") == [["deepseek-ai/DeepSeek-V3", "mistralai/Mixtral-8x7B-Instruct-v0.1"], *rest]
    # cold L2: those two where they are measured, else every model; "all" for every model
    only_qwen = SuiteConfig.from_env({"MOEBENCH_MODELS": "Qwen/Qwen3-30B-A3B,mistralai/Mixtral-8x7B-Instruct-v0.1"})
    assert only_qwen.models_for("cold") == ("mistralai/Mixtral-8x7B-Instruct-v0.1",)
    assert SuiteConfig.from_env({"MOEBENCH_MODELS": "a,b"}).models_for("cold") == ("a", "b")
    assert SuiteConfig.from_env({"MOEBENCH_COLD_MODELS": "all"}).models_for("cold") == tuple(shipped_models())
    cfg = SuiteConfig.from_env({"MOEBENCH_MODELS": "a, b", "MOEBENCH_DTYPES": "fp8_w8a8",
                                "MOEBENCH_IMPLS": "vllm-ops,reference-custom", "MOEBENCH_BATCH_SIZES": "8,1",
                                "MOEBENCH_L2": "cold", "MOEBENCH_REPLAYS": "7", "MOEBENCH_ROUNDS": "4",
                                "MOEBENCH_CALLS_PER_GRAPH": "3",
                                "MOEBENCH_VLLM_OPS_LIBRARY": "x.so", "MOEBENCH_RAY": "off",
                                "MOEBENCH_RAY_WORKERS": "2", "MOEBENCH_REGISTRY": "pkg.mod:make"})
    assert cfg == SuiteConfig(models=("a", "b"), dtype_modes=("fp8_w8a8",),
                              impls=("vllm-ops", "reference-custom"), batch_sizes=(8, 1),
                              l2_modes=("cold",), replays=7, rounds=4,
                              calls_per_graph=3, vllm_ops_library="x.so", ray="off", ray_workers=2,
                              registry="pkg.mod:make")


@pytest.mark.parametrize("name, value, message", [
    ("MOEBENCH_DTYPES", "auto,fp16", "unknown fp16"),
    ("MOEBENCH_IMPLS", "triton", "unknown triton"),
    ("MOEBENCH_BATCH_SIZES", "1,x", "not an integer"),
    ("MOEBENCH_BATCH_SIZES", "0", "must be > 0"),
    ("MOEBENCH_BATCH_SIZES", "4,4", "without repeats"),
    ("MOEBENCH_REPLAYS", "-1", "must be > 0"),
    ("MOEBENCH_MODELS", ",", "comma-separated"),
    ("MOEBENCH_L2", "hot", "unknown hot"),
    ("MOEBENCH_RAY_WORKERS", "0", "must be > 0"),
    ("MOEBENCH_COLD_MODELS", "org/elsewhere", "org/elsewhere is not in MOEBENCH_MODELS"),
    ("MOEBENCH_SETUP_LOG", "/no/such/folder/setup.log", "no folder /no/such/folder"),
])
def test_config_rejects(name, value, message):
    with pytest.raises(BadInput, match=f"{name}.*{message}"):
        SuiteConfig.from_env({name: value})


def test_suite_import_loads_no_torch():
    """asv imports the suite for discovery and in its fork server: that must stay cheap, and the
    fork server must never initialize CUDA."""
    code = ("import sys; import benchmarks.moe as m; "
            "print(len(m.WarmL2.params), sorted(x for x in ('torch', 'ray', 'vllm') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["4", "[]"]


def test_setup_cache_that_hands_points_to_a_worker_imports_no_torch(tmp_path):
    """The suite's setup_cache process, its points measured in a worker (isolation, the GPU
    default; or Ray workers), imports neither torch (3.6 s on an H200 host) nor transformers once
    the model's shape is cached (the first run resolves it through transformers, which may pull
    torch in): the worker does the CUDA work."""
    code = ("import sys; from moebench import suite; g = suite.setup_grid(suite.SuiteConfig.from_env()); "
            "print(sum(1 for m in g.values() if m.ops), 'torch' in sys.modules, 'transformers' in sys.modules)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "MOEBENCH_MODELS": "Qwen/Qwen3-30B-A3B",
           "MOEBENCH_DTYPES": "auto", "MOEBENCH_IMPLS": "reference-custom", "MOEBENCH_BATCH_SIZES": "1,2",
           "MOEBENCH_L2": "warm", "MOEBENCH_ISOLATE": "on", "MOEBENCH_ROUNDS": "2", "MOEBENCH_REPLAYS": "2"}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    first, second = (r.stdout.splitlines()[-1].split() for r in runs)
    assert first[0] == "2" and first[2] == "True" and second == ["2", "False", "False"]
    assert "measured 2 points on cpu: 2 ok" in runs[1].stdout


def test_lookup_and_track_values():
    ok = SuitePoint(ops=(OpTiming("permute", array("d", [2e-6, 4e-6]), 1e-6),
                       OpTiming("unpermute", array("d", [3e-6]), 1.5e-6)), device="cpu")
    grid = {("warm", "m", "auto", "reference-custom", 1): ok,
            ("warm", "m", "auto", "vllm-ops", 1): SuitePoint(skipped="no library"),
            ("warm", "m", "auto", "reference-standard", 1): SuitePoint(failed="permute mismatch: rows differ",
                                                                     device="cpu")}
    m = suitegrid.lookup(grid, "warm", "m", "auto", "reference-custom", 1)
    assert m.op("permute").timing() == {"samples": [2e-6, 4e-6], "number": 1}
    assert m.op("permute").vs_floor() == {"samples": [2.0, 4.0], "number": 1}
    assert m.op("unpermute").vs_floor()["samples"] == [pytest.approx(2.0)]
    with pytest.raises(NotImplementedError, match="no library"):
        suitegrid.lookup(grid, "warm", "m", "auto", "vllm-ops", 1)
    with pytest.raises(PointFailed, match="reference-standard/T1/L2 warm on cpu: permute mismatch"):
        suitegrid.lookup(grid, "warm", "m", "auto", "reference-standard", 1)
    with pytest.raises(PointFailed, match="not in the measured grid"):
        suitegrid.lookup(grid, "cold", "m", "auto", "reference-custom", 1)


def test_the_packed_grid_reads_like_the_grid_after_pickling():
    """setup_cache returns the grid packed: every point comes back from asv's pickle the same, and
    nothing is decoded until a combination looks its own point up."""
    import pickle

    grid = {("warm", f"m{i}", "auto", impl, t): SuitePoint(
        ops=(OpTiming("permute", array("d", [t * 1e-6, i * 1e-6]), 1e-6),), device=f"gpu {i}")
        for i in range(3) for impl in ("vllm-ops", "triton-sol") for t in (1, 4096)}
    grid[("cold", "m0", "auto", "vllm-ops", 1)] = SuitePoint(skipped="no library")
    back = pickle.loads(pickle.dumps(suitegrid.PackedGrid(grid)))
    assert back._points is None
    assert all(back[key] == point for key, point in grid.items())
    assert suitegrid.lookup(back, "warm", "m2", "auto", "triton-sol", 4096).op("permute").timing() == {
        "samples": [4096e-6, 2e-6], "number": 1}
    with pytest.raises(NotImplementedError, match="no library"):
        suitegrid.lookup(back, "cold", "m0", "auto", "vllm-ops", 1)
    with pytest.raises(PointFailed, match="not in the measured grid"):
        suitegrid.lookup(back, "cold", "m1", "auto", "vllm-ops", 1)


def test_setup_grid_on_cpu(tmp_path, monkeypatch):
    """Every combination of the grid gets a status; a wrong kernel fails, never becomes a number."""
    import moebench.impls
    from moebench.impls.reference import ReferenceCustom

    class WrongCustom(ReferenceCustom):  # stand-in for a broken kernel: permute drops the rows
        def prepare(self, inputs):
            run = super().prepare(inputs)
            permute = run.permute
            run.permute = lambda: (permute(), run.permuted.zero_())
            return run

    registry = moebench.impls.implementations
    monkeypatch.setattr(moebench.impls, "implementations",
                        lambda lib=None, module=None: {**registry(lib, module), "reference-custom": WrongCustom()})
    tiny = model_dir(tmp_path, "tiny")
    odd = model_dir(tmp_path, "odd", hidden_size=24)  # 24 fp8 bytes: not a multiple of 16
    cfg = SuiteConfig(models=(tiny, odd), dtype_modes=("auto", "fp8_w8a8"),
                      impls=("reference-standard", "reference-custom", "vllm-ops"), batch_sizes=(1, 5),
                      l2_modes=("warm",), replays=2, rounds=3, ray="off")
    grid = suite.setup_grid(cfg)
    assert set(grid) == set(itertools.product(suite.L2_MODES, cfg.models, cfg.dtype_modes, cfg.impls,
                                              cfg.batch_sizes))
    for (l2, model, dtype, impl, tokens), m in grid.items():
        if l2 == "cold":
            assert m.skipped == "L2 mode not measured (MOEBENCH_L2=warm)"
        elif model == odd and dtype == "fp8_w8a8":
            assert m.skipped and "multiple of 16 bytes" in m.skipped
        elif impl == "vllm-ops":
            assert m.skipped and not m.ops
        elif impl == "reference-custom":
            assert "permute mismatch" in m.failed and not m.ops
        else:
            assert m.skipped is None and m.failed is None and m.device.startswith("cpu")
            assert [o.op for o in m.ops] == ["permute", "unpermute"]
            # one asv sample per round
            assert all(len(o.rounds_s) == 3 and min(o.rounds_s) > 0 and o.floor_s > 0 for o in m.ops)
            assert all(o.timing()["samples"] == list(o.rounds_s) for o in m.ops)


def test_cold_l2_for_some_models_only(tmp_path):
    """MOEBENCH_COLD_MODELS: every model warm, the named ones cold too; the ColdL2 class's model
    axis is that list, so the others cost no asv process at all."""
    a, b = model_dir(tmp_path, "a"), model_dir(tmp_path, "b")
    cfg = SuiteConfig(models=(a, b), cold_models=(b,), dtype_modes=("auto",), impls=("reference-custom",),
                      batch_sizes=(1, 3), replays=2, rounds=2, ray="off", setup_log=str(tmp_path / "setup.log"))
    assert cfg.params_for("warm")[0] == [a, b] and cfg.params_for("cold")[0] == [b]
    grid = suite.setup_grid(cfg)
    assert set(grid) == ({("warm", m, "auto", "reference-custom", t) for m in (a, b) for t in (1, 3)}
                         | {("cold", b, "auto", "reference-custom", t) for t in (1, 3)})
    assert all(m.failed is None and [o.op for o in m.ops] == ["permute", "unpermute"] for m in grid.values())
    with pytest.raises(PointFailed, match="not in the measured grid"):
        suitegrid.lookup(grid, "cold", a, "auto", "reference-custom", 1)
    # MOEBENCH_SETUP_LOG keeps the report asv would drop (it shows setup_cache's output only on failure)
    report = (tmp_path / "setup.log").read_text()
    sys.path.insert(0, str(REPO / "evidence"))
    import suite_scaling  # the evidence tool that reads this line

    assert suite_scaling._parts(report) == {"where": ANY, "points": 6, "suite_s": ANY, "imports_and_models_s": ANY,
                                            "executor_start_s": ANY, "points_s": ANY, "executor_stop_s": ANY}
    assert "measured 6 points on cpu" in report and ": 6 ok, 0 skipped, 0 failed, " in report


def test_a_setup_log_that_cannot_be_written_costs_no_point(tmp_path, capsys):
    """The report is a copy: if MOEBENCH_SETUP_LOG cannot be appended to (here: it is a folder),
    setup_cache says so and still returns every point it measured."""
    cfg = SuiteConfig(models=(model_dir(tmp_path, "m"),), dtype_modes=("auto",), impls=("reference-custom",),
                      batch_sizes=(1,), l2_modes=("warm",), replays=2, rounds=2, ray="off", setup_log=str(tmp_path))
    grid = suite.setup_grid(cfg)
    assert [len(m.ops) for k, m in grid.items() if k[0] == "warm"] == [2]
    assert "cannot append to MOEBENCH_SETUP_LOG" in capsys.readouterr().out


def _verdicts(grid):
    """What a grid says of each combination, numbers left out: skipped, failed, the device (its
    kind: a Ray worker's CPU has one thread, num_cpus=1) and the rounds it has."""
    return {key: (m.skipped, m.failed, m.device.split(" (")[0], [(o.op, len(o.rounds_s)) for o in m.ops])
            for key, m in grid.items()}


@pytest.mark.slow
def test_two_ray_workers_give_the_local_grid(tmp_path, monkeypatch, capsys):
    """The multi-GPU path, on this machine's CPU: two Ray workers of a local cluster, one pool for
    both L2 modes, give the grid the local path gives (the same combinations, verdicts, devices
    and rounds; CPU timings differ only by noise)."""
    pytest.importorskip("ray")
    from moebench.executors import LOCAL_RAY

    tiny = model_dir(tmp_path, "tiny")
    cfg = SuiteConfig(models=(tiny,), dtype_modes=("auto",), impls=("reference-custom", "vllm-custom"),
                      batch_sizes=(1, 5, 9), replays=2, rounds=3, ray_workers=2)
    local = suite.setup_grid(replace(cfg, ray="off"))
    monkeypatch.setattr(suite, "_ray_placement", lambda cfg: LOCAL_RAY)
    fanned = suite.setup_grid(cfg)
    assert set(fanned) == set(itertools.product(suite.L2_MODES, [tiny], ["auto"], cfg.impls, [1, 5, 9]))
    assert _verdicts(fanned) == _verdicts(local)
    assert sum(1 for m in fanned.values() if m.ops) == 6  # reference-custom: 3 sizes x 2 L2 modes
    out = capsys.readouterr().out
    assert "measured 12 points on 2 Ray worker(s)" in out
    host = re.escape(socket.gethostname())  # a CPU cluster's workers have no GPU ids
    shares = re.search(rf"Ray workers: 0 \({host} GPU -\): (\d+) points, busy [\d.]+ s, done at [\d.]+ s; "
                       rf"1 \({host} GPU -\): (\d+) points, busy [\d.]+ s, done at [\d.]+ s$", out, re.M)
    assert shares and sum(map(int, shares.groups())) == 12


def test_ray_only_where_it_helps():
    from moebench.executors import LOCAL_RAY

    assert suite._ray_placement(SuiteConfig(ray="off")) is None
    assert suite._ray_placement(SuiteConfig(ray="ray://head:10001")) == "ray://head:10001"
    from moebench.gpustate import visible_gpus

    wanted = visible_gpus() > 1 and __import__("importlib").util.find_spec("ray") is not None
    assert suite._ray_placement(SuiteConfig(ray="auto")) == (LOCAL_RAY if wanted else None)


def test_registry_hook_names_a_callable(tmp_path):
    from moebench.impls import implementations

    assert suite.registry_factory("moebench.impls:implementations") is implementations
    assert suite.registry_factory(None) is None
    (tmp_path / "my_kernels.py").write_text("def registry(lib=None, module=None):\n    return {'x': lib}\n")
    assert suite.registry_factory(f"{tmp_path}/my_kernels.py:registry")("lib.so") == {"x": "lib.so"}
    for bad, why in [("moebench.impls", "expected package.module:function or file.py:function"),
                     ("moebench.nowhere:f", "No module named 'moebench.nowhere'"),
                     (f"{tmp_path}/none.py:f", f"no file {tmp_path}/none.py"),
                     ("moebench.impls:ALL", "expected package.module:function or file.py:function, naming a callable")]:
        with pytest.raises(BadInput, match=re.escape(f"MOEBENCH_REGISTRY={bad}: {why}")):
            suite.registry_factory(bad)


def _asv_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOEBENCH_")}
    # HOME keeps asv's machine file out of the user's; the roofline ceiling cache is shared.
    env.setdefault("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return {**env, "HOME": str(home)}


def test_asv_check(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "asv", "check", "--config", str(REPO / "asv.conf.json"),
                           "-E", f"existing:{sys.executable}"], env=_asv_env(tmp_path),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No problems found" in proc.stdout


@pytest.mark.slow
def test_asv_run_three_commits_and_publish(tmp_path):
    from moebench.impls import implementations

    tiny = model_dir(tmp_path, "tiny")
    env = {**_asv_env(tmp_path / "home"), "MOEBENCH_MODELS": tiny, "MOEBENCH_DTYPES": "auto,fp8_w8a8",
           "MOEBENCH_IMPLS": ",".join(suite.IMPLS), "MOEBENCH_BATCH_SIZES": "1,8", "MOEBENCH_REPLAYS": "2", "MOEBENCH_ROUNDS": "3",
           "MOEBENCH_RAY": "off"}
    (tmp_path / "home").mkdir()
    work, html = tmp_path / "work", tmp_path / "html"
    commits = []
    for i in range(3):
        date = f"{1_700_000_000 + 3600 * i} +0000"
        commits.append(asvlocal.commit_state(work / "project", f"stand-in state {i}\n",
                                             {**env, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}))
    assert len(set(commits)) == 3
    assert asvlocal.commit_state(work / "project", "stand-in state 2\n", env) == commits[-1]
    conf = asvlocal.write_config(work, work / "project", html)
    assert asvlocal.asv(["machine", "--yes", "--machine", "ci"], conf, env, capture=True).returncode == 0
    for commit in commits:
        proc = asvlocal.run_commit(conf, commit, machine="ci", env=env, capture=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    published = asvlocal.publish(conf, html, env, capture=True)
    assert published.returncode == 0, published.stdout + published.stderr

    params = [[repr(tiny)], ["'auto'", "'fp8_w8a8'"], [repr(i) for i in suite.IMPLS], ["1", "8"]]
    declared = json.loads((work / "results" / "benchmarks.json").read_text())
    assert sorted(k for k in declared if k != "version") == BENCHMARKS
    assert all(declared[b]["params"] == params and declared[b]["version"] == suite.RECIPE_VERSION
               for b in BENCHMARKS)

    registry = implementations()
    grid = list(itertools.product(["auto", "fp8_w8a8"], suite.IMPLS, [1, 8]))
    available = [registry[impl].unavailable(dtype, torch.device("cpu")) is None for dtype, impl, _ in grid]
    # Not vacuous: both references run here, and every vLLM implementation is absent on CI.
    assert {impl for (_, impl, _), a in zip(grid, available) if a} == {"reference-standard", "reference-custom"}

    files = sorted(p for p in (work / "results" / "ci").glob("*.json") if p.name != "machine.json")
    assert sorted(json.loads(p.read_text())["commit_hash"] for p in files) == sorted(commits)
    for path in files:
        data = json.loads(path.read_text())
        col = {name: i for i, name in enumerate(data["result_columns"])}
        assert sorted(data["results"]) == BENCHMARKS
        for name, row in data["results"].items():
            values, samples = row[col["result"]], row[col["samples"]]
            assert len(values) == len(grid) == len(samples)
            for ok, value, s in zip(available, values, samples):
                if ok:  # one sample per round; asv's value is their median, the point's value
                    assert math.isfinite(value) and value > 0 and len(s) == 3
                    assert value == pytest.approx(sorted(s)[1])
                else:
                    assert math.isnan(value) and s is None

    # ... and alerts read those rounds as each commit's replicates
    from moebench.asvresults import load_series

    series = load_series(work / "results", ["ci"])
    assert series and all(len(m.samples) == 3 for s in series for m in s.measurements)

    index = json.loads((html / "index.json").read_text())
    assert sorted(index["benchmarks"]) == BENCHMARKS
    assert index["benchmarks"]["moe.WarmL2.track_permute"]["unit"] == "seconds"
    assert (html / "graphs").is_dir() and "vendor/jquery" in (html / "index.html").read_text()
    # the landing page is the overview: a row per L2 class x op x dtype x implementation that ran
    # (the two references); asv's own page is one click away
    landing = (html / "index.html").read_text()
    assert "moebench overview" in landing and "summarygrid" in (html / "asv.html").read_text()
    assert landing.count('<tr><td>') + landing.count('<tr class="regressed"><td>') == 2 * 2 * 2 * 2


def test_the_scaling_tool_reads_each_card_against_a_run_on_that_card():
    """Cards of one model differ, and an all-GPU run measures each point on the card the Ray pool
    plans for it: the scaling tool's per-card comparison must pick the points each card measured,
    as the pool assigns them (whichever worker Ray started first), for the nightly grid."""
    sys.path.insert(0, str(REPO / "evidence"))
    import suite_scaling

    from moebench.fanout import WorkerInfo, _Live, _shares
    from moebench.roofline import Ceiling

    _, keyed = suite.grid_points(SuiteConfig.from_env({}))
    assert len(keyed) == 792  # the nightly grid
    ceiling = Ceiling("NVIDIA H200", 4e12, "triton-copy")
    started = [_Live(i, None, WorkerInfo("node", "NVIDIA H200", 100 + i, (g,), ceiling)) for i, g in enumerate("10")]
    card_of = {i: w.info.gpu_ids[0] for w in started for i, _ in _shares([p for _, p in keyed], started)[w.index]}
    speed = {"0": 1.0, "1": 1.1}  # card 1 is 10 % slower everywhere
    keys = {i: "/".join(map(str, k)) for i, (k, _) in enumerate(keyed)}
    series = [f"{keys[i]}/{op}" for i in keys for op in ("permute", "unpermute")]
    one_gpu = {c: {k: [s] * 3 for k in series} for c, s in speed.items()}
    every = {f"{keys[i]}/{op}": [speed[card_of[i]]] * 3 for i in keys for op in ("permute", "unpermute")}
    assert suite_scaling.agreement(one_gpu["0"], every)["beyond_3pct"] == sum(c == "1" for c in card_of.values()) * 2
    per_card = suite_scaling.card_agreement(suite_scaling.cards_of({}, 2), one_gpu, every)
    assert set(per_card) == {"0", "1"}
    assert all(a["max_abs_dev"] == pytest.approx(0) and a["only_in_one_run"] == 0 for a in per_card.values())
    assert sum(a["points"] for a in per_card.values()) == 1584


def test_the_nightly_picture_compares_each_pair_the_folder_holds():
    """plot_nightly's pairs: two GPUs against card 0, against each point's own card (where a
    one-GPU run on card 1 exists), and each configuration against its second run."""
    sys.path.insert(0, str(REPO / "evidence"))
    import plot_nightly

    cards = {"warm/m/auto/vllm-ops/1": "0", "warm/m/auto/vllm-ops/2": "1"}
    one = {"warm/m/auto/vllm-ops/1/permute": [1.0], "warm/m/auto/vllm-ops/2/permute": [1.0]}
    card1 = {k: [1.1] for k in one}  # the second card is 10 % slower
    two = {"warm/m/auto/vllm-ops/1/permute": [1.0], "warm/m/auto/vllm-ops/2/permute": [1.1]}
    got = plot_nightly.pairs({"one-gpu": one, "all-gpus": two}, cards)
    assert list(got) == ["2 GPUs vs 1 GPU (card 0)"]  # nothing else to compare with
    got = plot_nightly.pairs({"one-gpu": one, "all-gpus": two, "card1-one-gpu": card1, "one-gpu-again": one,
                              "all-gpus-again": two}, cards)
    assert list(got) == ["2 GPUs vs 1 GPU (card 0)", "2 GPUs vs 1 GPU, same card", "1 GPU vs 1 GPU (card 0)",
                         "2 GPUs vs 2 GPUs"]
    by_card, after = got["2 GPUs vs 1 GPU, same card"]
    assert by_card == {"warm/m/auto/vllm-ops/1/permute": [1.0], "warm/m/auto/vllm-ops/2/permute": [1.1]}
    assert plot_nightly.p95_by_t(by_card, after) == {1: 0.0, 2: pytest.approx(0.0)}
    assert plot_nightly.p95_by_t(*got["2 GPUs vs 1 GPU (card 0)"])[2] == pytest.approx(0.1)
