"""The CLI end to end in subprocesses: sweeps on the CPU, and every bad input -> exit 2, one
clear line, no traceback."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from moebench.results import load

MIXTRAL_LIKE = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                "hidden_size": 256, "num_local_experts": 8, "num_experts_per_tok": 2,
                "torch_dtype": "bfloat16", "intermediate_size": 512, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}


def moebench(*args, env=None, preexec_fn=None, timeout=240):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "moebench", *map(str, args)], capture_output=True,
                          text=True, env=e, preexec_fn=preexec_fn, timeout=timeout)


def model_dir(tmp_path, name="tiny", **overrides):
    d = tmp_path / name
    d.mkdir()
    cfg = {k: v for k, v in {**MIXTRAL_LIKE, **overrides}.items() if v is not None}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def assert_bad_input(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_sweep_writes_json_csv_png_and_table(tmp_path):
    m = model_dir(tmp_path)
    out = tmp_path / "out"
    p = moebench("--model", m, "--batch-size", "1", "16", "--json", out / "r.json", "--csv",
                 out / "r.csv", "--plot", out / "r.png", "--replays", "5", "--rounds", "2")
    assert p.returncode == 0, p.stderr
    assert "reference-standard" in p.stdout and "CPU host timer, not GPU data" in p.stdout
    meta, rs = load(out / "r.json")
    assert [(r.point.num_tokens, r.point.impl, r.status) for r in rs] == [
        (1, "reference-standard", "ok"), (16, "reference-standard", "ok")]
    assert all(r.clock == "cpu" and r.device.startswith("cpu") for r in rs)
    assert all([len(r) for r in o.rounds_us] == [5, 5] and len(o.round_values_us) == 2 for r in rs for o in r.ops)
    assert "Δrounds" in p.stdout and "median of 2 independent rounds" in p.stdout
    assert meta["timer"]["rounds"] == 2 and meta["timer"]["replays"] == 5
    assert meta["ceiling"]["method"] == "cpu-copy"
    assert (out / "r.csv").read_text().count("\n") == 1 + 4
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_customized_path_fp8_and_ep(tmp_path):
    m = model_dir(tmp_path)
    p = moebench("--model", m, "--batch-size", "33", "--use-customized-permute", "--dtype",
                 "fp8_w8a8", "--ep-size", "2", "--ep-rank", "1", "--routing", "skewed",
                 "--json", tmp_path / "r.json", "--replays", "3")
    assert p.returncode == 0, p.stderr
    _, rs = load(tmp_path / "r.json")
    ok = [r for r in rs if r.status == "ok"]
    assert [r.point.impl for r in ok] == ["reference-custom"]
    assert ok[0].point.ep_size == 2 and ok[0].point.dtype_mode == "fp8_w8a8"
    assert any(r.status == "skipped" and r.point.impl.startswith("vllm") for r in rs) or len(rs) == 1


def test_int8_w8a16_says_activations_are_untouched(tmp_path):
    p = moebench("--model", model_dir(tmp_path), "--batch-size", "2", "--dtype", "int8_w8a16",
                 "--replays", "2")
    assert p.returncode == 0 and "activations are untouched" in p.stderr


def test_resume_measures_only_missing_points(tmp_path):
    m = model_dir(tmp_path)
    j = tmp_path / "r.json"
    assert moebench("--model", m, "--batch-size", "1", "--json", j, "--replays", "2").returncode == 0
    first = load(j)[1][0]
    p = moebench("--model", m, "--batch-size", "1", "2", "--json", j, "--resume", "--replays", "2")
    assert p.returncode == 0, p.stderr
    rs = load(j)[1]
    assert [r.point.num_tokens for r in rs] == [1, 2]
    assert rs[0] == first  # kept as it was, not measured twice


def test_info_json_of_a_local_config(tmp_path):
    p = moebench("info", "--model", model_dir(tmp_path), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"model": str(tmp_path / "tiny"), "num_experts": 8, "topk": 2,
                                    "hidden_size": 256, "dtype": "bfloat16"}


def test_unknown_model_offline_lists_shipped_ones():
    p = moebench("info", "--model", "nobody/no-such-moe")
    assert_bad_input(p, "unknown model 'nobody/no-such-moe'", "Shipped:", "Mixtral-8x7B-Instruct-v0.1")


def test_config_without_moe_fields(tmp_path):
    d = model_dir(tmp_path, architectures=["LlamaForCausalLM"], model_type="llama",
                  num_local_experts=None, num_experts_per_tok=None)
    assert_bad_input(moebench("--model", d), "not a supported MoE config", "no expert count field",
                     "num_local_experts")


@pytest.mark.parametrize("args,needle", [
    (["--dtype", "fp16"], "invalid choice: 'fp16'"),
    (["--batch-size", "0"], "must be > 0"),
    (["--batch-size", "-3"], "must be > 0"),
    (["--batch-size", "1.5"], "not an integer"),
    (["--ep-size", "2", "--ep-rank", "2"], "--ep-rank must be in [0, --ep-size=2)"),
    (["--impl", "cutlass"], "unknown --impl cutlass"),
    (["--resume"], "--resume needs --json"),
])
def test_bad_flags(tmp_path, args, needle):
    assert_bad_input(moebench("--model", model_dir(tmp_path), *args), needle)


def test_hidden_size_not_16_byte_rows(tmp_path):
    d = model_dir(tmp_path, hidden_size=260)
    assert_bad_input(moebench("--model", d), "hidden size 260", "multiple of 16 bytes")


def test_unwritable_output_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_bad_input(moebench("--model", model_dir(tmp_path), "--json", blocker / "r.json"),
                     "cannot write --json")


def test_out_of_memory_at_one_size_keeps_the_others(tmp_path):
    """An allocation that fails at one batch size fails that point only; exit 2 names it."""
    m = model_dir(tmp_path, hidden_size=4096)
    limit = 6 << 30  # address space: torch starts fine, 600k x 4096 fp32 inputs (9.8 GB) cannot

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    j = tmp_path / "r.json"
    p = moebench("--model", m, "--batch-size", "1", "600000", "16", "--json", j, "--replays", "2",
                 preexec_fn=cap)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "out of memory at 600000 tokens" in p.stderr
    rs = load(j)[1]
    assert [(r.point.num_tokens, r.status) for r in rs] == [(1, "ok"), (600000, "failed"), (16, "ok")]


# ---------------------------------------------------------------- hostile inputs (a new user's tries)

@pytest.mark.parametrize("args,needle", [
    (["--impl", ","], "names no implementation"),
    (["--impl", "reference-standard,reference-standard"], "--impl names reference-standard more than once"),
    (["--impl", "vllm-custom"], "no implementation of --impl can run here: vllm-custom: "),
    (["--batch-size", "4", "8", "4"], "--batch-size repeats 4"),
    (["--seed", str(2**70)], "must be < 2**63"),
    (["--seed", "-1"], "must be >= 0"),
    (["--device", "meta"], "--device meta: moebench times on cuda or cpu, not meta"),
])
def test_flags_that_would_measure_nothing_or_measure_twice(tmp_path, args, needle):
    assert_bad_input(moebench("--model", model_dir(tmp_path), "--replays", "1", "--rounds", "1", *args), needle)


def test_two_outputs_on_one_path_are_refused_before_anything_is_measured(tmp_path):
    x = tmp_path / "x"
    assert_bad_input(moebench("--model", model_dir(tmp_path), "--json", x, "--csv", x), "--json and --csv name the same file")
    assert not x.exists()


@pytest.mark.parametrize("overrides,needle", [
    ({"torch_dtype": "int4"}, "activation dtype 'int4' is not one moebench times"),
    ({"num_experts_per_tok": -2}, "the top-k must be a positive integer, got -2"),
    ({"hidden_size": -64}, "the hidden size must be a positive integer, got -64"),
])
def test_config_values_that_cannot_be_a_shape(tmp_path, overrides, needle):
    assert_bad_input(moebench("info", "--model", model_dir(tmp_path, **overrides)), needle)


def test_resume_with_other_sizes_keeps_every_earlier_point(tmp_path):
    m = model_dir(tmp_path)
    j = tmp_path / "s.json"
    common = ("--model", m, "--json", j, "--replays", "1", "--rounds", "1")
    assert moebench(*common, "--batch-size", "4", "8").returncode == 0
    assert moebench(*common, "--batch-size", "16", "--resume").returncode == 0
    meta, rs = load(j)
    assert sorted(r.point.num_tokens for r in rs) == [4, 8, 16]
    assert len(meta["earlier_runs"]) == 1 and meta["earlier_runs"][0]["argv"][-2:] == ["4", "8"]
    # other timing settings would mix two kinds of sample in one file: refused, file untouched
    before = j.read_text()
    assert_bad_input(moebench("--model", m, "--json", j, "--replays", "2", "--rounds", "1", "--resume",
                              "--batch-size", "32"), "other timing settings (replays 1 there, 2 now)")
    assert j.read_text() == before


def test_results_files_keep_their_mode_and_leave_no_temp_file(tmp_path):
    from moebench.files import atomic_write

    f = tmp_path / "r.json"
    f.write_text("{}")
    f.chmod(0o644)
    atomic_write(f, lambda fh: fh.write("[]"))
    assert f.stat().st_mode & 0o777 == 0o644 and f.read_text() == "[]"
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new.json", lambda fh: fh.write("1"))
    finally:
        os.umask(old)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644

    def interrupted(fh):
        fh.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(f, interrupted)
    assert f.read_text() == "[]" and sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "r.json"]


def test_alerts_without_asv_is_bad_input_not_regressions(tmp_path):
    """Exit 1 means "regressions found": a missing optional package must never look like that."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "asv").mkdir()
    (shim / "asv" / "__init__.py").write_text("raise ModuleNotFoundError('No module named asv', name='asv')\n")
    env = {"PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    assert_bad_input(moebench("alerts", tmp_path, env=env), "alerts needs asv, which is not installed",
                     "moebench[asv]")


def test_alerts_config_that_is_not_json(tmp_path):
    (tmp_path / "results").mkdir()
    bad = tmp_path / "not-json.txt"
    bad.write_text("this is { not json")
    assert_bad_input(moebench("alerts", tmp_path / "results", "--config", bad), "bad --config", "not asv's JSON")


def test_interrupt_message_names_the_json_only_when_there_is_one():
    from moebench import cli

    def stop(argv):
        raise KeyboardInterrupt

    import moebench.cli as c
    saved = c.cmd_sweep
    c.cmd_sweep = stop
    try:
        import contextlib
        import io

        for argv, want in ((["--json", "x"], "interrupted; finished points are in the --json file"),
                           ([], "interrupted\n")):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                assert cli.main(argv) == 130
            assert err.getvalue().endswith(want + ("\n" if not want.endswith("\n") else ""))
    finally:
        c.cmd_sweep = saved


def test_make_from_another_folder_runs_the_target_in_the_checkout(tmp_path):
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(["make", "-f", str(root / "Makefile"), "-n", "venv"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    assert f"-C {root} venv" in p.stdout  # (what runs there depends on whether .venv is installed)
    assert not (tmp_path / ".venv").exists()
