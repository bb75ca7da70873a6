"""Fault recovery (``moebench.isolate``): a worker process per sweep, replaced when a point leaves it
unusable (a sticky CUDA error), kills it (``os._exit``, SIGSEGV) or hangs past the watchdog. The
faults are stand-in kernels (``standins.faults``) in real worker processes on the CPU."""

from __future__ import annotations

from dataclasses import replace

import pytest

from moebench.axes import TimerConfig
from moebench.grid import SweepSpec
from moebench.isolate import IsolatedRunner, WorkerSetup, is_sticky, watchdog_s
from moebench.models import resolve
from moebench.results import FAILED, OK
from standins import faults

TIMER = TimerConfig(calls_per_graph=1, replays=3, rounds=2, warmup=1)
SIZES = (1, 2, 4, 8)


def _points():
    spec = SweepSpec(shape=resolve("Qwen/Qwen3-30B-A3B"), dtype_modes=("auto",), impls=("reference-custom",),
                     batch_sizes=SIZES)
    return spec.points()


def _sweep(fault: str, timeout: float | None = None):
    with IsolatedRunner(WorkerSetup("cpu", registry=faults.factory(fault)), point_timeout_s=timeout) as m:
        results = [m.run(p, TIMER) for p in _points()]
        return results, list(m.recoveries)


@pytest.mark.parametrize("fault, reason", [
    ("sticky@4", f"RuntimeError: {faults.STICKY_ERROR}"),
    ("exit@4", "the worker process died while measuring it (exit code 3)"),
    ("segv@4", "the worker process died while measuring it (killed by SIGSEGV)"),
    ("hang@4", "exceeded the watchdog limit of 6 s; its worker was killed"),
])
def test_a_faulting_point_fails_with_its_reason_and_every_other_point_is_measured(fault, reason):
    results, recoveries = _sweep(fault, timeout=6.0)  # ample for a CPU point on a loaded machine
    by_t = {r.point.num_tokens: r for r in results}
    assert [by_t[t].status for t in SIZES] == [OK, OK, FAILED, OK]
    assert by_t[4].reason.startswith(reason) and by_t[4].reason.endswith("(the rest goes on in a fresh process)")
    assert all(by_t[t].op("permute").median_us > 0 for t in (1, 2, 8))
    assert [r.point for r in recoveries] == [by_t[4].point.key] and recoveries[0].seconds > 0


def test_without_isolation_a_sticky_error_fails_every_later_point():
    """The control: the same stand-in in one process poisons the rest of the sweep."""
    import torch

    from moebench.runpoint import DeviceRunner

    m = DeviceRunner(torch.device("cpu"), faults.registry(fault="sticky@4"))
    try:
        statuses = [m.run(p, TIMER).status for p in _points()]
    finally:
        faults._poisoned = False
    assert statuses == [OK, OK, FAILED, FAILED]


def test_a_clean_sweep_keeps_one_worker():
    results, recoveries = _sweep("none@0")
    assert [r.status for r in results] == [OK] * len(SIZES) and recoveries == []


def test_watchdog_scales_with_batch_size_and_can_be_set():
    small, large = _points()[0], _points()[-1]
    assert watchdog_s(small) < watchdog_s(large) < watchdog_s(replace(large, num_tokens=65536)) <= 200
    assert watchdog_s(large, 5.0) == 5.0
    assert is_sticky("CUDA error: device-side assert triggered") and not is_sticky("CUDA out of memory")


def test_the_sweep_saves_every_point_and_the_fault_as_it_goes(tmp_path):
    from moebench.executors import Placement, open_executor
    from moebench.grid import run_grid
    from moebench.results import load

    spec = SweepSpec(shape=resolve("Qwen/Qwen3-30B-A3B"), dtype_modes=("auto",), impls=("reference-custom",),
                     batch_sizes=SIZES)
    with open_executor(Placement(device="cpu", isolate=True, registry=faults.factory("segv@2"))) as executor:
        results = run_grid(spec.jobs(TIMER), executor, json_path=str(tmp_path / "s.json"))
    meta, _ = load(tmp_path / "s.json")
    assert [r["point"] for r in meta["replaced"]] == [results[1].point.key]
    _, on_disk = load(tmp_path / "s.json")
    assert [(r.point.num_tokens, r.status) for r in on_disk] == [(r.point.num_tokens, r.status) for r in results]
    assert [r.status for r in on_disk] == [OK, FAILED, OK, OK] and "SIGSEGV" in on_disk[1].reason


def test_the_asv_suites_grid_goes_on_after_a_hang():
    from moebench import suite, suitegrid

    cfg = suite.SuiteConfig(models=("Qwen/Qwen3-30B-A3B",), dtype_modes=("auto",), impls=("reference-custom",),
                            batch_sizes=SIZES, l2_modes=("warm",), rounds=2, replays=3, ray="off",
                            isolate=True, point_timeout_s=6.0)
    grid = suite.setup_grid(cfg, registry=faults.factory("hang@2"))
    point = {t: grid[("warm", "Qwen/Qwen3-30B-A3B", "auto", "reference-custom", t)] for t in SIZES}
    assert "exceeded the watchdog limit of 6 s" in point[2].failed
    assert all(point[t].failed is None and point[t].op("permute").rounds_s for t in (1, 4, 8))
    with pytest.raises(suitegrid.PointFailed, match="watchdog"):
        suitegrid.lookup(grid, "warm", "Qwen/Qwen3-30B-A3B", "auto", "reference-custom", 2)


def test_a_point_timeout_without_isolation_is_bad_input(capsys):
    from moebench import cli

    assert cli.main(["--batch-size", "1", "--no-isolate", "--point-timeout", "5"]) == 2
    assert "a point timeout needs the worker process to kill" in capsys.readouterr().err


@pytest.mark.parametrize("sig, code, word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_stopping_an_isolated_sweep_keeps_what_was_measured_and_leaves_no_worker(tmp_path, sig, code, word):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    j = tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "moebench", "--isolate", "--batch-size", *map(str, range(2048, 2400, 16)),
                             "--impl", "reference-custom", "--replays", "2", "--rounds", "2", "--json", str(j)],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (j.exists() and json.loads(j.read_text() or "{}").get("results")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.2)
    os.killpg(proc.pid, getattr(signal, sig))  # as a terminal or a CI runner does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and f"moebench: {word}; finished points are in the --json file" in err, err
    assert "Traceback" not in err
    left = lambda: subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).stdout  # noqa: E731
    deadline = time.monotonic() + 10  # multiprocessing's resource tracker follows its parent out
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == b""  # no worker left behind


def test_a_cuda_errors_reason_is_the_error_not_torchs_advice():
    from moebench.errors import one_line

    seen_on_an_h200 = RuntimeError(  # torch 2.11's text after a real illegal access (evidence/faults.py)
        "CUDA error: an illegal memory access was encountered\nSearch for `cudaErrorIllegalAddress' in "
        "https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more information.\n"
        "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
        "might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1")
    assert one_line(seen_on_an_h200) == "CUDA error: an illegal memory access was encountered"
    assert is_sticky(one_line(seen_on_an_h200))
    assert one_line(ValueError("a  plain\nmessage")) == "a plain message"


def test_visible_gpus_is_nvmls_count_cut_to_cuda_visible_devices(monkeypatch):
    """How many GPUs this process may use, asked without torch: NVML's count, cut to
    CUDA_VISIBLE_DEVICES (up to its first invalid entry, as CUDA reads it); 0 without NVML."""
    import sys
    import types

    from moebench.gpustate import visible_gpus

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=lambda: None,
                                                                     nvmlDeviceGetCount=lambda: 4))
    for value, want in ((None, 4), ("0,1", 2), ("3", 1), ("", 0), ("-1", 0), ("1,-1,2", 1), ("0,1,2,3,4,5", 4)):
        if value is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == want, value
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML library: no GPU this process could use
    assert visible_gpus() == 0


def test_the_worker_picks_the_device_when_nvml_sees_a_gpu_torch_cannot_use(monkeypatch):
    """Without --device, a process that hands points to a worker decides to isolate from NVML's
    count alone; the worker picks the device with its own torch. NVML seeing a GPU that this torch
    cannot use (a CPU build) therefore still measures, isolated, on the CPU — as before, not an error."""
    from moebench import executors
    from moebench.executors import Placement, open_executor
    from moebench.grid import run_grid

    monkeypatch.setattr(executors, "visible_gpus", lambda: 1)
    points = SweepSpec(resolve("Qwen/Qwen3-30B-A3B"), ("auto",), ("reference-custom",), batch_sizes=(1, 2)).points()
    with open_executor(Placement()) as executor:
        assert isinstance(executor.runner, IsolatedRunner)
        results = run_grid([(p, TimerConfig(calls_per_graph=1, replays=2, rounds=2)) for p in points], executor)
        assert (executor.device_type, executor.describe(), str(executor.device)) == ("cpu", "cpu", "cpu")
    assert [r.status for r in results] == [OK, OK] and all(r.device.startswith("cpu") for r in results)
    monkeypatch.setattr(executors, "visible_gpus", lambda: 0)
    with open_executor(Placement()) as executor:  # no GPU anywhere: measured in this process
        assert not isinstance(executor.runner, IsolatedRunner) and executor.device_type == "cpu"
