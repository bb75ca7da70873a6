"""Model shapes: every shipped snapshot resolves offline to its published numbers, and the
resolution is generic over MoE field spellings (not a table per model)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from moebench.errors import BadInput
from moebench.models import resolve, shape_from_config, shipped_models

PUBLISHED = json.loads((Path(__file__).parent / "data" / "published_shapes.json").read_text())


@pytest.fixture(autouse=True)
def _own_shape_cache(tmp_path, monkeypatch):
    """Every test resolves through transformers, not through shapes another test cached."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_every_required_model_is_shipped():
    assert set(PUBLISHED) <= set(shipped_models())
    assert len(PUBLISHED) >= 9


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED))
def test_shipped_snapshot_resolves_offline_to_published_numbers(hub_id, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("a shipped snapshot must resolve without touching the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    shape = resolve(hub_id)
    want = PUBLISHED[hub_id]
    assert (shape.num_experts, shape.topk, shape.hidden_size, shape.dtype) == (
        want["num_experts"], want["topk"], want["hidden_size"], want["dtype"])
    assert shape.source == "snapshot" and shape.model == hub_id


def test_short_name_of_a_snapshot_resolves():
    assert resolve("qwen3-30b-a3b").model == "Qwen/Qwen3-30B-A3B"


class Cfg:
    """A bare config object: the resolver must read attributes, nested objects and dicts."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize("cfg,expect", [
    (Cfg(num_local_experts=8, num_experts_per_tok=2, hidden_size=64), (8, 2, 64)),
    (Cfg(n_routed_experts=64, num_experts_per_tok=6, hidden_size=2048), (64, 6, 2048)),
    (Cfg(num_experts=60, num_experts_per_tok=4, hidden_size=2048), (60, 4, 2048)),
    (Cfg(ffn_config={"moe_num_experts": 16, "moe_top_k": 4}, d_model=6144), (16, 4, 6144)),
    (Cfg(ffn_config=Cfg(moe_num_experts=16, moe_top_k=4), d_model=6144), (16, 4, 6144)),
    # A dense-variant default of 0 must not shadow the real field.
    (Cfg(num_local_experts=0, n_routed_experts=32, num_experts_per_tok=4, hidden_size=128), (32, 4, 128)),
])
def test_field_spellings(cfg, expect):
    s = shape_from_config(cfg, "x", "local")
    assert (s.num_experts, s.topk, s.hidden_size) == expect
    assert s.dtype == "bfloat16"  # a config without a dtype gets the common default


def test_nested_text_config():
    class Multi(Cfg):
        def get_text_config(self):
            return self.text_config

    s = shape_from_config(Multi(text_config=Cfg(num_local_experts=16, num_experts_per_tok=1,
                                                hidden_size=5120, dtype="float16")), "x", "local")
    assert (s.num_experts, s.topk, s.hidden_size, s.dtype) == (16, 1, 5120, "float16")


@pytest.mark.parametrize("cfg,missing", [
    (Cfg(architectures=["LlamaForCausalLM"], hidden_size=4096), "no expert count field"),
    (Cfg(num_experts=8, hidden_size=64), "no top-k field"),
    (Cfg(num_experts=8, num_experts_per_tok=2), "no hidden size field"),
    (Cfg(num_experts=4, num_experts_per_tok=8, hidden_size=64), "top-k 8 exceeds"),
])
def test_missing_fields_are_named(cfg, missing):
    with pytest.raises(BadInput, match=missing):
        shape_from_config(cfg, "x", "local")


def test_every_transformers_moe_architecture_resolves():
    """Default configs of the MoE architectures transformers knows: each resolves or names the
    missing field (never a crash)."""
    from transformers import CONFIG_MAPPING

    resolved = 0
    for model_type in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "dbrx",
                       "jamba", "glm4_moe", "llama4", "olmoe", "granitemoe", "phimoe", "gpt_oss"):
        if model_type not in CONFIG_MAPPING:
            continue
        try:
            s = shape_from_config(CONFIG_MAPPING[model_type](), model_type, "local")
        except BadInput as exc:  # some classes default to a dense variant (DeepSeek-V2: top-k None)
            assert "field (looked for" in str(exc) and "\n" not in str(exc)
            continue
        assert s.num_experts >= 2 and 1 <= s.topk <= s.num_experts and s.hidden_size > 0
        resolved += 1
    assert resolved >= 10


def test_remote_code_is_opt_in(tmp_path):
    d = tmp_path / "custom"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "totally_custom_moe",
                                               "auto_map": {"AutoConfig": "cfg.CustomConfig"}}))
    with pytest.raises(BadInput, match="--trust-remote-code"):
        resolve(str(d))


def test_a_resolved_shape_is_cached_until_its_config_changes(tmp_path, monkeypatch):
    """A snapshot's or a local directory's shape is read once through AutoConfig, then from the
    cache; a changed config.json is read again; a cache file that is not JSON is ignored."""
    import transformers

    calls = []
    real = transformers.AutoConfig.from_pretrained
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    d = tmp_path / "local"
    d.mkdir()
    config = {"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_size": 64}
    (d / "config.json").write_text(json.dumps(config))
    first = [resolve("deepseek-ai/DeepSeek-V3"), resolve(str(d))]
    assert [resolve("deepseek-ai/DeepSeek-V3"), resolve(str(d))] == first and len(calls) == 2
    assert first[0].source == "snapshot" and first[1].source == "local"
    (d / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    assert resolve(str(d)).hidden_size == 128 and len(calls) == 3
    (tmp_path / "cache" / "moebench" / "shapes.json").write_text("{not json")
    assert resolve("deepseek-ai/DeepSeek-V3") == first[0] and len(calls) == 4


def test_a_cached_shape_needs_no_transformers(tmp_path):
    """The suite's setup_cache resolves every model in a fresh process: from the second run on,
    transformers is not even imported (its first AutoConfig call took 7.8 s on an H200 host)."""
    import subprocess
    import sys

    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("import sys; from moebench.models import resolve; s = resolve('meta-llama/Llama-4-Scout-17B-16E-Instruct'); "
            "print(s.num_experts, s.topk, 'transformers' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs == [["16", "1", "True"], ["16", "1", "False"]]
