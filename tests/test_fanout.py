"""Ray fan-out on a real, CPU-only local Ray cluster (no mocks of Ray): the same points in the same
order as a single-process sweep, worker processes killed by pid mid-sweep, interrupt and resume,
and bad input.

One cluster (2 CPUs, small object store, no dashboard) serves the whole module. In-process tests
use it directly; CLI runs are subprocesses that join it with ``--ray-address``, as a second
driver would. Sweeps that must still be running when the test acts on them have 8 points of
H=2048 and ~2k tokens, about 0.7 s each on one core: seconds of margin after the first result.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from moebench.executors import Placement, open_executor
from moebench.grid import SweepSpec, run_grid
from moebench.models import resolve
from moebench.results import load
from moebench.timing import TimerConfig
from test_cli import assert_bad_input, model_dir, moebench

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TIMER = TimerConfig(calls_per_graph=1, replays=2, rounds=2)
SLOW_SIZES = [2048 + 16 * i for i in range(8)]  # distinct keys, each ~0.7 s at H=2048


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20,
             logging_level=logging.ERROR, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def summary(results):
    return [(r.point.key, r.status, r.reason) for r in results]


def start(*args):
    """The CLI in the background, for tests that act on it while it runs."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "moebench", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_results(path, n, proc, timeout=120):
    """The results file once it holds at least ``n`` points (it is replaced atomically, so every
    read sees a whole file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            meta, results = load(path)
            if len(results) >= n:
                return meta, results
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path} did not get {n} results within {timeout} s")


def table_rows(stdout):
    """(T, impl, dtype) of each row of the printed table, timings left out."""
    return re.findall(r"^│\s*(\d+)\s*│\s*(\S+)\s*│\s*(\S+)\s*│", stdout, re.M)


def test_ray_sweep_gives_the_single_process_points_in_order(cluster, tmp_path):
    shape = resolve(str(model_dir(tmp_path)))
    spec = SweepSpec(shape, ("auto",), ("reference-standard", "reference-custom", "vllm-custom"),
                     batch_sizes=(1, 7, 32))
    with open_executor(Placement(device="cpu", isolate=False)) as here:
        local = run_grid(spec.jobs(TIMER), here)
    with open_executor(Placement(ray=cluster, workers=2)) as pool:
        fanned = run_grid(spec.jobs(TIMER), pool, json_path=str(tmp_path / "r.json"))
    assert summary(fanned) == summary(local)
    assert [r.status for r in fanned].count("ok") == 6  # the vLLM ones are skipped, with reasons
    meta, on_file = load(tmp_path / "r.json")
    assert summary(on_file) == summary(local)
    workers = meta["ray"]["workers"]
    assert len({w["pid"] for w in workers}) == 2
    assert set(meta["ray"]["ran_on"]) == {p.key for p in spec.points()}
    assert set(meta["ray"]["ran_on"].values()) == {0, 1}  # both workers measured points
    # Each point names the device and node of the worker that measured it.
    assert {(r.device, r.node) for r in fanned} == {(workers[0]["device"], socket.gethostname())}
    assert meta["ceiling"] == workers[0]["ceiling"] == workers[1]["ceiling"]
    assert meta["ray"]["died"] == []
    assert meta["ray"]["startup_s"] > 0 and meta["ray"]["sweep_s"] > 0  # the final account is in the file
    # Each worker's share: its points (every point once), busy seconds within the sweep's, last result last.
    shares = meta["ray"]["shares"]
    assert set(shares) == {"0", "1"}
    assert sum(s["points"] for s in shares.values()) == len(spec.points())
    for i, s in shares.items():
        assert s["points"] == list(meta["ray"]["ran_on"].values()).count(int(i))
        assert 0 < s["busy_s"] <= s["done_s"] <= meta["ray"]["sweep_s"]
    assert max(s["done_s"] for s in shares.values()) == pytest.approx(meta["ray"]["sweep_s"], abs=0.05)


def test_pool_returns_results_in_the_order_given(cluster, tmp_path):
    shape = resolve(str(model_dir(tmp_path)))
    points = SweepSpec(shape, ("auto",), ("reference-standard",), batch_sizes=(64, 1, 16, 2)).points()[::-1]
    with open_executor(Placement(ray=cluster, workers=2)) as pool:
        results = run_grid([(p, TIMER) for p in points], pool)
        assert run_grid([], pool) == []
    assert [r.point for r in results] == points
    assert all(r.status == "ok" and len(r.ops) == 2 for r in results)


def test_cli_ray_address_prints_and_writes_the_local_run(cluster, tmp_path):
    m = model_dir(tmp_path)
    common = ["--model", m, "--batch-size", "1", "16", "--use-customized-permute", "--replays", "2"]
    local = moebench(*common, "--json", tmp_path / "local.json")
    fanned = moebench(*common, "--json", tmp_path / "ray.json", "--ray-address", cluster,
                      "--ray-workers", "2")
    assert local.returncode == 0 and fanned.returncode == 0, fanned.stderr
    assert table_rows(fanned.stdout) == table_rows(local.stdout) == [
        ("1", "reference-custom", "auto"), ("16", "reference-custom", "auto")]
    assert summary(load(tmp_path / "ray.json")[1]) == summary(load(tmp_path / "local.json")[1])


def test_killed_worker_point_is_retried_and_nothing_finished_is_lost(cluster, tmp_path):
    j = tmp_path / "r.json"
    proc = start("--model", model_dir(tmp_path, hidden_size=2048), "--batch-size", *SLOW_SIZES,
                 "--replays", "2", "--ray-address", cluster, "--ray-workers", "2", "--json", j)
    meta, finished = wait_for_results(j, 1, proc)
    victim = meta["ray"]["workers"][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    meta, results = load(j)
    assert [(r.point.num_tokens, r.status) for r in results] == [(t, "ok") for t in SLOW_SIZES]
    assert all(r in results for r in finished)  # as they were, not measured again
    (death,) = meta["ray"]["died"]
    assert death["pid"] == victim and death["worker"] == 1
    assert meta["ray"]["ran_on"][death["point"]] in (0, 2)  # the survivor or the victim's replacement
    assert [r["point"] for r in meta["ray"]["replaced"]] == [death["point"]]
    assert f"{death['point']}goestoanotherworker" in "".join(err.split())  # rich wraps lines


def test_a_dead_worker_is_replaced_and_its_point_measured_by_the_fresh_one(cluster, tmp_path):
    shape = resolve(str(model_dir(tmp_path)))
    points = SweepSpec(shape, ("auto",), ("reference-standard",), batch_sizes=(1, 2, 3, 4)).points()
    first: list[int] = []
    results = {}
    with open_executor(Placement(ray=cluster, workers=1)) as pool:
        (worker,) = pool.workers

        def kill_after_first(i, result):
            results[i] = result
            if not first:
                first.append(i)
                os.kill(worker.pid, signal.SIGKILL)

        pool.run([(p, TIMER) for p in points], kill_after_first)
    results = [results[i] for i in range(len(points))]
    assert [r.point for r in results] == points
    assert [r.status for r in results] == ["ok"] * len(points)
    (death,) = pool.deaths
    assert death.pid == worker.pid
    assert [r.point for r in pool.recoveries] == [death.point]
    fresh = pool.workers[-1]
    assert fresh.pid != worker.pid and fresh.ceiling == worker.ceiling  # same settings, same ceiling
    assert pool.ran_on[death.point] == 1 == len(pool.workers) - 1


def test_interrupted_sweep_resumes_without_measuring_a_point_twice(cluster, tmp_path):
    m = model_dir(tmp_path, hidden_size=2048)
    j = tmp_path / "r.json"
    args = ["--model", m, "--batch-size", *SLOW_SIZES, "--replays", "2", "--ray-address", cluster,
            "--json", j]
    proc = start(*args)
    wait_for_results(j, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    _, first = load(j)  # a valid file with what was finished
    assert 1 <= len(first) < len(SLOW_SIZES)
    again = moebench(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert f"resume: {len(first)} of {len(SLOW_SIZES)} points kept" in again.stderr
    meta, results = load(j)
    assert [(r.point.num_tokens, r.status) for r in results] == [(t, "ok") for t in SLOW_SIZES]
    assert all(r in results for r in first)
    kept = {r.point.key for r in first}
    assert set(meta["ray"]["ran_on"]) == {r.point.key for r in results} - kept


def test_sigterm_under_ray_stops_like_ctrl_c_without_a_stack_dump(tmp_path):
    """Ray installs a handler that answers SIGTERM with a C++ stack and abort (exit 134): a
    cancelled CI job must instead stop cleanly, with what was measured on disk."""
    j = tmp_path / "r.json"
    proc = start("--model", model_dir(tmp_path, hidden_size=2048), "--batch-size", *SLOW_SIZES, "--replays", "2",
                 "--ray", "--json", j)
    wait_for_results(j, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "moebench: terminated; finished points are in the --json file" in err
    assert "SIGTERM received" not in err and "Traceback" not in err
    assert 1 <= len(load(j)[1]) < len(SLOW_SIZES)


def test_unreachable_address_fails_fast(tmp_path):
    t0 = time.monotonic()
    p = moebench("--model", model_dir(tmp_path), "--ray-address", "127.0.0.1:1", timeout=60)
    assert_bad_input(p, "cannot reach the Ray cluster at 127.0.0.1:1: Connection refused")
    assert p.stderr.count("\n") == 1
    assert time.monotonic() - t0 < 30


def test_address_that_is_not_a_ray_cluster_fails_within_30_s(tmp_path):
    """Something listens but never speaks Ray: the connection deadline ends it."""
    with socket.create_server(("0.0.0.0", 0)) as silent:
        t0 = time.monotonic()
        p = moebench("--model", model_dir(tmp_path), "--ray-address",
                     f"127.0.0.1:{silent.getsockname()[1]}", timeout=60)
        elapsed = time.monotonic() - t0
    assert_bad_input(p, "did not answer within 15 s")
    assert p.stderr.count("\n") == 1  # Ray's own retry logs stay in the pre-flight child
    assert elapsed < 30


def test_ray_not_installed_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from moebench.cli import main; "
            f"sys.exit(main(['--model', {str(model_dir(tmp_path))!r}, '--ray']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr == "moebench: error: Ray is not installed here: pip install 'moebench[ray]'\n"


@pytest.mark.parametrize("args,needle", [
    (["--ray-workers", "2"], "--ray-workers needs --ray or --ray-address"),
    (["--ray", "--device", "cpu"], "--device does not apply with --ray"),
    (["--ray", "--no-isolate"], "--no-isolate does not apply with --ray/--ray-address"),
    (["--ray-address", "nowhere"], "Ray address 'nowhere': expected auto, HOST:PORT"),
    (["--ray-address", "CLUSTER", "--ray-workers", "3"],
     "3 Ray workers asked for, but the cluster has no GPU and 2 CPU(s)"),
])
def test_bad_ray_flags(cluster, tmp_path, capsys, args, needle):
    from moebench.cli import main

    # In-process: this process's connection to the cluster is reused, so no cluster starts.
    argv = ["--model", str(model_dir(tmp_path)), "--batch-size", "1", "--replays", "2"]
    assert main(argv + [cluster if a == "CLUSTER" else a for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize("fault, reason", [
    ("sticky@4", "RuntimeError: CUDA error: an illegal memory access was encountered (the rest goes on"),
    ("hang@4", "exceeded the watchdog limit of 8 s; its worker was killed (the rest goes on"),
    ("segv@4", "lost: worker on "),
])
def test_a_faulting_point_costs_its_worker_and_the_ray_grid_goes_on(cluster, fault, reason):
    from standins import faults

    ray.cloudpickle.register_pickle_by_value(faults)  # Ray's workers cannot import the tests' modules
    points = SweepSpec(resolve("Qwen/Qwen3-30B-A3B"), ("auto",), ("reference-custom",), batch_sizes=(1, 2, 4, 8)).points()
    placement = Placement(ray=cluster, workers=1, registry=faults.factory(fault), point_timeout_s=8.0)
    with open_executor(placement) as pool:
        results = run_grid([(p, TIMER) for p in points], pool)
        meta = pool.meta()["ray"]
    by_t = {r.point.num_tokens: r for r in results}
    assert [by_t[t].status for t in (1, 2, 4, 8)] == ["ok", "ok", "failed", "ok"]
    assert by_t[4].reason.startswith(reason), by_t[4].reason
    # the faulting point took its worker (a crash: both attempts' workers); a fresh one measured the rest
    # (a worker measures its share in grid order: T=8 is after the fault)
    assert len(meta["replaced"]) == len(meta["died"]) == (2 if fault.startswith("segv") else 1)
    assert meta["ran_on"][by_t[1].point.key] == 0
    assert meta["ran_on"][by_t[8].point.key] == len(meta["workers"]) - 1


def test_the_plan_puts_each_point_on_the_same_card_every_run():
    """Which card measures a point is decided from the points and the cards alone: the same grid
    gives every card the same share in every run, whichever worker Ray started first (two cards
    differ by up to ~9 % at small T, so a point that changed cards would step in its history);
    shares are balanced by estimated cost and measured in grid order."""
    from moebench.cardplan import SLACK, cost, plan
    from moebench.fanout import WorkerInfo, _Live, _shares
    from moebench.roofline import Ceiling

    shape = resolve("deepseek-ai/DeepSeek-V3")
    points = SweepSpec(shape, ("auto", "fp8_w8a8"), ("vllm-ops", "triton-sol")).points()
    ceiling = Ceiling("NVIDIA H200", 4e12, "triton-copy")

    def workers(gpus):  # Ray's start order: worker index i got physical GPU gpus[i]
        return [_Live(i, None, WorkerInfo("node", "NVIDIA H200", 100 + i, (g,), ceiling)) for i, g in enumerate(gpus)]

    def by_gpu(gpus):
        ws = workers(gpus)
        return {w.info.gpu_ids: list(share) for w, share in ((w, _shares(points, ws)[w.index]) for w in ws)}

    assert by_gpu(["0", "1"]) == by_gpu(["1", "0"])  # the same share per card, whoever started first
    shares = list(by_gpu(["0", "1"]).values())
    jobs = [i for share in shares for i, attempt in share]
    assert sorted(jobs) == list(range(len(points))) and {a for share in shares for _, a in share} == {1}
    assert all([i for i, _ in share] == sorted(i for i, _ in share) for share in shares)  # grid order
    # the points that share their inputs (every dtype and implementation at one T) on one card
    lanes = {i: k for k, share in enumerate(shares) for i, _ in share}
    assert all(len({lanes[i] for i, p in enumerate(points) if p.inputs == q.inputs}) == 1 for q in points)
    loads = [sum(cost(points[i]) for i, _ in share) for share in shares]
    group = max(sum(cost(p) for p in points if p.inputs == q.inputs) for q in points)
    assert max(loads) <= (1 + SLACK) * sum(loads) / 2 + group  # balanced within the slack and one group
    three = _shares(points, workers(["0", "1", "2"]))
    assert all(three.values()) and sum(map(len, three.values())) == len(points)
    # the lanes of ``plan`` are the cards in order: what an evidence tool reads to tell which card measured a point
    assert [[i for i, _ in share] for _, share in sorted(by_gpu(["1", "0"]).items())] == plan(points, 2)
