"""Results files: round trip, atomic rewrite, CSV rows, roofline arithmetic."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from rich.console import Console

from moebench.errors import BadInput
from moebench.gpustate import GpuState, decode_reasons
from moebench.report import print_report
from moebench.results import OK, SKIPPED, OpResult, Point, PointResult, ResultsFile, csv_rows, load
from moebench.roofline import Ceiling, floor_us, permute_bytes, unpermute_bytes

POINT = Point(model="m", num_experts=8, topk=2, hidden_size=4096, act_dtype="bfloat16",
              dtype_mode="auto", impl="reference-custom", num_tokens=16)


def _result(t=16, status=OK):
    p = Point(**{**POINT.__dict__, "num_tokens": t})
    gs = GpuState(sm_clock_mhz=1980, max_sm_clock_mhz=1980, temperature_c=40, power_w=300.0,
                  throttle_reasons=("sw_power_cap",))
    ops = (OpResult.from_rounds("permute", [[1e-5, 2e-5, 3e-5]], 1000, 0.5, gs),) if status == OK else ()
    return PointResult(point=p, status=status, device="NVIDIA H200", clock="cuda-graph", ops=ops,
                       reason=None if status == OK else "why")


def test_roundtrip_and_atomic_rewrite(tmp_path):
    path = tmp_path / "r.json"
    f = ResultsFile(path, {"k": 1})
    f.add(_result(1))
    f.add(_result(2, SKIPPED))
    meta, rs = load(path)
    assert meta == {"k": 1} and [r.point.num_tokens for r in rs] == [1, 2]
    assert rs[0].op("permute").median_us == pytest.approx(20) and rs[0].throttled
    assert rs[0] == _result(1)
    assert not [p for p in tmp_path.iterdir() if p.name != "r.json"]  # no temp files left


def test_load_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInput, match="bad.json"):
        load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema": 99, "results": []}))
    with pytest.raises(BadInput, match="schema"):
        load(tmp_path / "old.json")


def test_csv_rows_one_per_op_and_reason_rows():
    rows = list(csv_rows([_result(4), _result(8, SKIPPED)]))
    assert rows[0]["op"] == "permute" and rows[0]["median_us"] == 20.0 and rows[0]["n_samples"] == 3
    assert rows[0]["throttle_reasons"] == "sw_power_cap"
    assert rows[1]["status"] == SKIPPED and rows[1]["reason"] == "why" and "op" not in rows[1]


def test_op_result_derived_numbers():
    o = OpResult.from_rounds("unpermute", [[2e-6] * 5], 4000, 1.0, None)
    assert o.median_us == pytest.approx(2) and o.gbps == pytest.approx(2.0)
    assert o.pct_of_floor == pytest.approx(50)


# Three rounds in two states (10 % apart), each with one stalled replay: the odd round and the
# stalls must not move the point's value.
ROUNDS_S = [[5.0e-6, 5.0e-6, 5.1e-6, 5.0e-6, 9.0e-6],
            [5.5e-6, 5.5e-6, 5.6e-6, 5.5e-6, 9.0e-6],
            [5.0e-6, 5.1e-6, 5.0e-6, 5.0e-6, 9.0e-6]]


def test_rounds_each_give_a_value_and_the_point_takes_their_median():
    o = OpResult.from_rounds("permute", ROUNDS_S, 1000, 1.0, None)
    # a round's value: the mean of its middle half (5 samples: the middle three)
    assert o.round_values_us == pytest.approx((5.0333, 5.5333, 5.0333), abs=1e-4)
    assert o.median_us == pytest.approx(5.0333, abs=1e-4)
    assert o.round_spread == pytest.approx(0.5 / 5.0333, rel=1e-3)
    assert o.samples_us == tuple(round(x * 1e6, 4) for r in ROUNDS_S for x in r)
    assert o.attempts == 3 and not o.retaken and replace(o, attempts=4).retaken


def test_round_structure_reaches_json_and_csv(tmp_path):
    op = OpResult.from_rounds("permute", ROUNDS_S, 1000, 1.0, None)
    r = replace(_result(4), ops=(op,))
    ResultsFile(tmp_path / "r.json", {}).add(r)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema"] == 2
    stored = data["results"][0]["ops"][0]
    assert stored["rounds_us"] == [[round(x * 1e6, 4) for x in rs] for rs in ROUNDS_S]
    assert stored["round_values_us"] == list(op.round_values_us)
    assert load(tmp_path / "r.json")[1][0] == r
    (row,) = csv_rows([r])
    assert row["rounds"] == 3 and row["n_samples"] == 15
    assert row["round_values_us"] == "5.0333|5.5333|5.0333" and row["round_spread_pct"] == pytest.approx(9.934, abs=1e-3)
    assert [[float(x) for x in part.split()] for part in row["samples_us"].split(";")] == stored["rounds_us"]


def test_schema_1_files_load_as_one_round(tmp_path):
    old = {"schema": 1, "meta": {}, "results": [{
        "point": POINT.__dict__, "status": "ok", "device": "NVIDIA H200", "clock": "cuda-graph",
        "ops": [{"op": "permute", "samples_us": [1.0, 2.0, 3.0], "median_us": 2.0, "q1_us": 1.5, "q3_us": 2.5,
                 "bytes_moved": 10, "floor_us": 0.1, "gbps": 5.0, "pct_of_floor": 5.0, "gpu_state": None}]}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (o,) = load(tmp_path / "old.json")[1][0].ops
    assert o.rounds_us == ((1.0, 2.0, 3.0),) and o.round_values_us == (2.0,) and o.median_us == 2.0


def test_roofline_bytes():
    # Mixtral T=4096: bf16 rows, 8192 local slots, 8 experts.
    assert unpermute_bytes(4096, 2, 4096, 8192, 2) == 8192 * 4096 * 2 + 4096 * 2 * 8 + 4096 * 4096 * 2
    assert permute_bytes(1, 2, 16, 2, 8, 2, 1) == 32 + 8 + 2 * (16 + 8) + 9 * 8
    assert floor_us(4_000_000, Ceiling("x", 4e12, "triton-copy")) == pytest.approx(1.0)


def test_throttle_reason_decoding():
    assert decode_reasons(0x1 | 0x2) == ()  # idle / app clocks are not slowdowns
    assert decode_reasons(0x4 | 0x40) == ("sw_power_cap", "hw_thermal")


def test_files_from_before_attempts_load_as_one_measurement(tmp_path):
    path = tmp_path / "old.json"
    ResultsFile(path, {}).add(_result(1))
    data = json.loads(path.read_text())
    del data["results"][0]["ops"][0]["attempts"]
    path.write_text(json.dumps(data))
    assert load(path)[1][0].op("permute").attempts == 1


def test_report_marks_ops_that_were_measured_again():
    r = _result(16)
    again = replace(r, ops=(replace(r.ops[0], attempts=2),))
    console = Console(record=True, width=200)
    print_report([again], "t", console)
    text = console.export_text()
    assert "20.00 ! ↻" in text and "↻ = measured again" in text
    assert "median of 1 independent rounds" in text
    console = Console(record=True, width=200)
    print_report([r], "t", console)
    assert "↻" not in console.export_text()


def test_an_unknown_gpu_state_says_why_in_the_file_and_once_per_run(tmp_path, monkeypatch):
    """NVML that cannot be opened (no library, driver or permission) is not silence: each CUDA
    result's state carries the reason, the file keeps it, and the run names it once."""
    import sys

    import torch

    from moebench.gpustate import Nvml
    from moebench.results import gpu_state_errors

    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    nvml = Nvml()
    state = nvml.read(torch.device("cuda"))
    assert state == GpuState(error="NVML unavailable: import of pynvml halted; None in sys.modules")
    assert not state.throttled and nvml.read(torch.device("cpu")) is None
    unknown = replace(_result(1), ops=(replace(_result(1).ops[0], gpu_state=state),))
    f = ResultsFile(tmp_path / "r.json", {})
    f.add(unknown)
    f.add(_result(2))
    _, back = load(tmp_path / "r.json")
    assert back[0] == unknown and gpu_state_errors(back) == [state.error]
    assert gpu_state_errors([_result(1)]) == []


def test_nvml_reads_the_cards_max_clock_once_and_the_rest_every_time(monkeypatch):
    """The max SM clock is a property of the card (1.5 ms a query on an H200, ten queries a
    point): read once per card; clocks, temperature, power and throttling are read every time."""
    import sys
    import types

    import torch

    from moebench.gpustate import Nvml

    calls: list[str] = []

    def query(name, value):
        def fn(*args):
            calls.append(name)
            return value
        return fn

    fake = types.SimpleNamespace(
        NVML_CLOCK_SM=0, NVML_TEMPERATURE_GPU=0, NVMLError=RuntimeError, nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=query("handle", object()), nvmlDeviceGetMaxClockInfo=query("max", 1980),
        nvmlDeviceGetClockInfo=query("clock", 1755), nvmlDeviceGetTemperature=query("temp", 41),
        nvmlDeviceGetPowerUsage=query("power", 250_000), nvmlDeviceGetCurrentClocksEventReasons=query("reasons", 0x4))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda idx: types.SimpleNamespace())  # no uuid
    nvml = Nvml()
    states = [nvml.read(torch.device("cuda", 0)) for _ in range(3)]
    assert states[0] == GpuState(sm_clock_mhz=1755, max_sm_clock_mhz=1980, temperature_c=41, power_w=250.0,
                                 throttle_reasons=("sw_power_cap",))
    assert states[1] == states[2] == states[0]
    assert calls.count("max") == 1 and calls.count("handle") == 1
    assert calls.count("clock") == calls.count("temp") == calls.count("power") == calls.count("reasons") == 3
    nvml.read(torch.device("cuda", 1))  # another card: its own handle and max clock
    assert calls.count("max") == 2 and calls.count("handle") == 2
