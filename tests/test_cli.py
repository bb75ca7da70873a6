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
