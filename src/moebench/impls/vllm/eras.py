"""vLLM's API eras, told apart by introspection (op schemas and Python signatures), never by
version strings.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from .source import Kernels, PythonApi, Unavailable, _has_op


def _schema_text(schema: Any) -> str:
    """A registered or parsed schema without namespace and alias-set names, e.g.
    ``moe_unpermute(Tensor permuted_hidden_states, ..., Tensor! hidden_states) -> ()``."""
    def arg(a: Any) -> str:
        write = "!" if a.alias_info is not None and a.alias_info.is_write else ""
        return f"{a.type}{write} {a.name}".strip()
    name = schema.name.split("::")[-1]
    return f"{name}({', '.join(map(arg, schema.arguments))}) -> ({', '.join(map(arg, schema.returns))})"


@functools.cache
def _parsed(schema: str) -> str:
    return _schema_text(torch._C.parse_schema(schema))


def _registered(ops: Any, name: str) -> str | None:
    if not _has_op(ops, name):
        return None
    return _schema_text(getattr(ops, name).default._schema)


@dataclass(frozen=True)
class OpsEra:
    """One generation of the ``_moe_C`` permute/unpermute op schemas (verbatim from the wheels)."""

    name: str
    releases: str
    permute: tuple[str, ...]  # accepted spellings
    unpermute: str
    kmajor: bool  # the caller passes k-major token_expert_indices; the map comes back k-major
    align: bool  # takes align_block_size and writes m_indices
    writes_permuted_idx: bool

    def matches(self, ops: Any) -> bool:
        return (_registered(ops, "moe_permute") in {_parsed(s) for s in self.permute}
                and _registered(ops, "moe_unpermute") == _parsed(self.unpermute))


_UNPERMUTE_B = ("moe_unpermute(Tensor permuted_hidden_states, Tensor topk_weights,Tensor inv_permuted_idx, "
                "Tensor? expert_first_token_offset, int topk, Tensor! hidden_states)->()")
OPS_ERAS = (
    OpsEra("A", "0.9.0–0.10.0", (
        "moe_permute(Tensor input, Tensor topk_weight, Tensor! topk_ids,Tensor token_expert_indicies, "
        "Tensor? expert_map, int n_expert,int n_local_expert,int topk, int? align_block_size,Tensor! "
        "permuted_input, Tensor! expert_first_token_offset, Tensor! src_row_id2dst_row_id_map, "
        "Tensor! m_indices)->()",
        "moe_permute(Tensor input, Tensor topk_weight, Tensor! topk_ids,Tensor token_expert_indices, "
        "Tensor? expert_map, int n_expert,int n_local_expert,int topk, int? align_block_size,Tensor! "
        "permuted_input, Tensor! expert_first_token_offset, Tensor! src_row_id2dst_row_id_map, "
        "Tensor! m_indices)->()"),
        "moe_unpermute(Tensor permuted_hidden_states, Tensor topk_weights,Tensor topk_ids,Tensor "
        "src_row_id2dst_row_id_map, Tensor expert_first_token_offset, int n_expert, int "
        "n_local_expert,int topk, Tensor! hidden_states)->()",
        kmajor=True, align=True, writes_permuted_idx=False),
    OpsEra("B", "0.10.1–0.15.1", (
        "moe_permute(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? expert_map, "
        "int n_expert,int n_local_expert,int topk, int? align_block_size,Tensor! permuted_input, "
        "Tensor! expert_first_token_offset, Tensor! inv_permuted_idx, Tensor! permuted_idx, "
        "Tensor! m_indices)->()",),
        _UNPERMUTE_B, kmajor=False, align=True, writes_permuted_idx=True),
    OpsEra("C", "0.16.0 on", (
        "moe_permute(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? expert_map, "
        "int n_expert,int n_local_expert,int topk, Tensor! permuted_input, Tensor! "
        "expert_first_token_offset, Tensor! inv_permuted_idx, Tensor! permuted_idx)->()",),
        _UNPERMUTE_B, kmajor=False, align=False, writes_permuted_idx=True),
)
WITH_SCRATCH_SCHEMA = (
    "moe_permute_with_scratch(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? "
    "expert_map, int n_expert,int n_local_expert,int topk, Tensor! permuted_input, Tensor! "
    "expert_first_token_offset, Tensor! inv_permuted_idx, Tensor! permuted_idx, Tensor! "
    "sort_workspace, Tensor! permuted_experts_id, Tensor! sorted_row_idx, Tensor! "
    "topk_ids_for_sort)->()")


def detect_ops_era(kernels: Kernels) -> OpsEra:
    for era in OPS_ERAS:
        if era.matches(kernels.ops):
            return era
    found = "; ".join(_registered(kernels.ops, n) or f"no {n}" for n in ("moe_permute", "moe_unpermute"))
    known = ", ".join(f"{e.name} ({e.releases})" for e in OPS_ERAS)
    raise Unavailable(f"unknown _moe_C kernel era in {kernels.origin}: {found} (known: {known})")


_PERMUTE_A = ("hidden_states", "topk_weights", "topk_ids", "token_expert_indices", "topk", "n_expert",
              "n_local_expert", "expert_map", "align_block_size", "fill_invalid_expert")
_UNPERMUTE_A = ("permuted_hidden_states", "topk_weights", "topk_ids", "src_row_id2dst_row_id_map",
                "expert_first_token_offset", "topk", "n_expert", "n_local_expert")
_PERMUTE_B = ("hidden_states", "a1q_scale", "topk_ids", "n_expert", "n_local_expert", "expert_map",
              "align_block_size", "fill_invalid_expert")
_PERMUTE_C = ("hidden_states", "a1q_scale", "topk_ids", "n_expert", "n_local_expert", "expert_map",
              "permuted_hidden_states")
_UNPERMUTE = ("out", "permuted_hidden_states", "topk_weights", "inv_permuted_idx", "expert_first_token_offset")
SCRATCH_V1 = ("max_num_tokens", "topk", "num_experts", "num_local_experts", "device", "hidden_size", "hidden_dtype")
SCRATCH_V2 = ("num_experts", "num_local_experts", "device")
STANDARD_PERMUTE = ("curr_hidden_states", "a1q_scale", "curr_topk_ids", "global_num_experts", "expert_map", "block_m")
STANDARD_UNPERMUTE = ("out", "curr_hidden", "inv_perm", "topk_weight", "apply_router_weight_on_input")


@dataclass(frozen=True)
class ApiEra:
    """One generation of vLLM's Python ``moe_permute``/``moe_unpermute`` (and scratch class)."""

    name: str
    releases: str
    permute: tuple[str, ...]
    unpermute: tuple[str, ...]
    scratch: tuple[str, ...] | None  # MoEPermuteScratch's constructor parameters
    ops: OpsEra  # the kernels this Python calls
    passes_scale: bool  # a per-tensor a1q_scale goes through untouched (0.10.1 gathers it: carry it)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.releases})"


_OPS = {e.name: e for e in OPS_ERAS}
API_ERAS = (
    ApiEra("A", "0.9.0–0.10.0", _PERMUTE_A, _UNPERMUTE_A, None, _OPS["A"], passes_scale=False),
    ApiEra("B", "0.10.1", _PERMUTE_B, _UNPERMUTE, None, _OPS["B"], passes_scale=False),
    ApiEra("B'", "0.10.2–0.15.1", _PERMUTE_B + ("permuted_hidden_states",), _UNPERMUTE, None, _OPS["B"],
           passes_scale=True),
    ApiEra("C", "0.16–0.22", _PERMUTE_C, _UNPERMUTE, None, _OPS["C"], passes_scale=True),
    ApiEra("D", "0.23–0.31", _PERMUTE_C + ("scratch",), _UNPERMUTE, SCRATCH_V1, _OPS["C"], passes_scale=True),
    ApiEra("F", "0.32 on", _PERMUTE_C + ("scratch",), _UNPERMUTE, SCRATCH_V2, _OPS["C"], passes_scale=True),
)


def _params(module: Any, name: str) -> tuple[str, ...] | None:
    obj = getattr(module, name, None)
    if obj is None:
        return None
    try:
        return tuple(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def _describe(name: str, params: tuple[str, ...] | None) -> str:
    return f"no {name}" if params is None else f"{name}({', '.join(params)})"


def detect_api_era(python: PythonApi) -> ApiEra:
    m = python.module
    found = (_params(m, "moe_permute"), _params(m, "moe_unpermute"), _params(m, "MoEPermuteScratch"))
    for era in API_ERAS:
        if found == (era.permute, era.unpermute, era.scratch):
            return era
    seen = "; ".join(_describe(n, p) for n, p in zip(("moe_permute", "moe_unpermute", "MoEPermuteScratch"), found))
    known = ", ".join(e.label for e in API_ERAS)
    raise Unavailable(f"unknown vLLM Python API era in {python.origin}: {seen} (known: {known})")
