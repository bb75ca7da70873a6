"""Stand-ins for vLLM on a CPU-only machine, one per release that starts or changes an API era.

vLLM's MoE kernels exist only for CUDA, so CPU tests cannot run them. These stand-ins copy, per
release, what the binding depends on and compute real outputs, so that the binding's calls, its
layout conversion and the core correctness gate all run for real on the CPU:

- op schemas: each release's ``_moe_C`` schema strings, verbatim from its wheel (the digest's
  ``/work/vllm-src/sostrings/<release>.schemas.txt``), registered with ``torch.library`` under a
  namespace of their own (``moebench_standin_<release>``; one process cannot define two eras'
  ``_moe_C``), with CPU kernels that do what the CUDA kernels do (digest §7): stable sort by expert,
  non-local pairs placed after the local rows and not copied, era A's k-major map and in-place
  rewrite of ``topk_ids``, alignment and ``m_indices``. Rows a kernel does not write hold
  ``POISON``, a finite value far from any input, where the CUDA buffer holds whatever it held:
  a binding that reads them shows in the output;
- Python API: ``moe_permute``/``moe_unpermute`` (and ``MoEPermuteScratch``, ``_moe_permute``,
  ``_moe_unpermute_and_reduce``) with the release's exact signatures and bodies that follow the
  real ones line by line, calling the stand-in namespace instead of ``torch.ops._moe_C``;
  ``_fp8_quantize`` as vLLM's dynamic per-tensor path computes it;
- a ``vllm`` package (``install_vllm_package``) holding the modules the real
  ``moe_permute_unpermute.py`` files import, for loading those real files in a subprocess whose
  ``_moe_C`` is a stand-in; and a ``vllm`` package whose kernels fail to load
  (``write_vllm_without_kernels``).
"""

from __future__ import annotations

import functools
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moebench.impls.vllm import Kernels, PythonApi, Source

POISON = 300.0
FP8_MAX = 448.0

# --- op schemas, verbatim ------------------------------------------------------------------------

_PERMUTE_A_090 = ("moe_permute(Tensor input, Tensor topk_weight, Tensor! topk_ids,Tensor token_expert_indicies, "
                  "Tensor? expert_map, int n_expert,int n_local_expert,int topk, int? align_block_size,Tensor! "
                  "permuted_input, Tensor! expert_first_token_offset, Tensor! src_row_id2dst_row_id_map, "
                  "Tensor! m_indices)->()")
_PERMUTE_A = _PERMUTE_A_090.replace("token_expert_indicies", "token_expert_indices")
_UNPERMUTE_A = ("moe_unpermute(Tensor permuted_hidden_states, Tensor topk_weights,Tensor topk_ids,Tensor "
                "src_row_id2dst_row_id_map, Tensor expert_first_token_offset, int n_expert, int n_local_expert,"
                "int topk, Tensor! hidden_states)->()")
_PERMUTE_B = ("moe_permute(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? expert_map, int "
              "n_expert,int n_local_expert,int topk, int? align_block_size,Tensor! permuted_input, Tensor! "
              "expert_first_token_offset, Tensor! inv_permuted_idx, Tensor! permuted_idx, Tensor! m_indices)->()")
_PERMUTE_C = ("moe_permute(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? expert_map, int "
              "n_expert,int n_local_expert,int topk, Tensor! permuted_input, Tensor! expert_first_token_offset, "
              "Tensor! inv_permuted_idx, Tensor! permuted_idx)->()")
_UNPERMUTE_B = ("moe_unpermute(Tensor permuted_hidden_states, Tensor topk_weights,Tensor inv_permuted_idx, "
                "Tensor? expert_first_token_offset, int topk, Tensor! hidden_states)->()")
_WITH_SCRATCH = ("moe_permute_with_scratch(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? "
                 "expert_map, int n_expert,int n_local_expert,int topk, Tensor! permuted_input, Tensor! "
                 "expert_first_token_offset, Tensor! inv_permuted_idx, Tensor! permuted_idx, Tensor! "
                 "sort_workspace, Tensor! permuted_experts_id, Tensor! sorted_row_idx, Tensor! "
                 "topk_ids_for_sort)->()")
_SORT_SIZE = "moe_permute_sort_workspace_size(int num_expanded_rows, int n_expert) -> int"
_SUPPORTED = "moe_permute_unpermute_supported() -> bool"
_SUM_2 = "moe_sum(Tensor input, Tensor! output) -> ()"
_SUM_4 = "moe_sum(Tensor input, Tensor! output, Tensor? topk_ids=None, Tensor? expert_map=None) -> ()"
_ALIGN_6 = ("moe_align_block_size(Tensor topk_ids, int num_experts, int block_size, Tensor! sorted_token_ids, "
            "Tensor! experts_ids, Tensor! num_tokens_post_pad) -> ()")
_ALIGN_7 = _ALIGN_6.replace(") -> ()", ", Tensor? maybe_expert_map) -> ()")
_ALIGN_8 = _ALIGN_6.replace(") -> ()", ", Tensor? maybe_expert_map, Tensor(a!)? scatter_idx=None) -> ()")

# The releases modelled, the era the binding must find in each, and the schemas of their ops.
ERAS = {"0.9.0": "A", "0.10.0": "A", "0.10.1": "B", "0.15.1": "B'", "0.22.1": "C", "0.24.0": "D", "0.33.0": "F"}
OPS_ERAS = {"A": "A", "B": "B", "B'": "B", "C": "C", "D": "C", "F": "C"}
SCHEMAS = {
    "0.9.0": (_PERMUTE_A_090, _UNPERMUTE_A, _SUPPORTED, _SUM_2, _ALIGN_6),
    "0.10.0": (_PERMUTE_A, _UNPERMUTE_A, _SUPPORTED, _SUM_2, _ALIGN_6),
    "0.10.1": (_PERMUTE_B, _UNPERMUTE_B, _SUPPORTED, _SUM_2, _ALIGN_6),
    "0.15.1": (_PERMUTE_B, _UNPERMUTE_B, _SUPPORTED, _SUM_2, _ALIGN_7),
    "0.22.1": (_PERMUTE_C, _UNPERMUTE_B, _SUPPORTED, _SUM_2, _ALIGN_7),
    "0.24.0": (_PERMUTE_C, _UNPERMUTE_B, _WITH_SCRATCH, _SORT_SIZE, _SUPPORTED, _SUM_2, _ALIGN_7),
    "0.33.0": (_PERMUTE_C, _UNPERMUTE_B, _WITH_SCRATCH, _SORT_SIZE, _SUPPORTED, _SUM_4, _ALIGN_8),
}

# --- CPU kernels -----------------------------------------------------------------------------------


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t


def _check(cond: bool, msg: str) -> None:
    if not cond:  # TORCH_CHECK
        raise RuntimeError(msg)


def _sort_keys(topk_ids: torch.Tensor, expert_map: torch.Tensor | None, n_expert: int) -> torch.Tensor:
    """preprocessTopkIdKernel: local experts -> local id, the others -> id + n_expert."""
    ids = topk_ids.long()
    if expert_map is None:
        return ids
    local = expert_map.long()[ids]  # ids already rewritten (>= n_expert) index out of bounds
    return torch.where(local >= 0, local, ids + n_expert)


def _route(keys: torch.Tensor, sources: torch.Tensor, n_local: int, align: int | None):
    """Destination row of every pair and the expert offsets. The radix sort is stable over the
    source index; with ``align`` each local segment is padded and every non-local pair gets the
    aligned total, without it non-local pairs follow the local rows."""
    n = keys.numel()
    order = torch.argsort(keys * (n + 1) + sources)
    sorted_keys = keys[order]
    counts = torch.bincount(keys.clamp(max=n_local), minlength=n_local + 1)[:n_local]
    sizes = counts if align is None else (counts + align - 1) // align * align
    offsets = torch.zeros(n_local + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(sizes, 0)
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(n)
    e = sorted_keys.clamp(max=n_local - 1)
    rest = pos if align is None else torch.full_like(pos, int(offsets[-1]))
    dst_sorted = torch.where(sorted_keys < n_local, offsets[e] + pos - first[e], rest)
    dst = torch.empty_like(dst_sorted)
    dst[order] = dst_sorted
    return dst, offsets


def _fill_segments(m_indices: torch.Tensor, offsets: torch.Tensor) -> None:
    rows = torch.arange(int(offsets[-1]))
    m_indices[: rows.numel()] = torch.bucketize(rows, offsets[1:], right=True).int()


def _scatter(inp, permuted, dst, src_token, offsets) -> torch.Tensor:
    copied = dst < offsets[-1]
    permuted.fill_(POISON)
    _bytes(permuted)[dst[copied]] = _bytes(inp)[src_token[copied]]
    return copied


def _permute_a(inp, topk_weight, topk_ids, tei, expert_map, n_expert, n_local, topk, align, permuted, offsets,
               src2dst, m_indices):
    _check(topk_ids.dtype == torch.int32, "topk_ids must be int32")
    _check(topk_weight.dtype == torch.float32, "topk_weights must be float32")
    keys = _sort_keys(topk_ids, expert_map, n_expert)
    if expert_map is not None:
        topk_ids.copy_(keys)  # the in-place rewrite behind `Tensor! topk_ids`
    src = tei.reshape(-1).long()
    dst, off = _route(keys.reshape(-1), src, n_local, align)
    _scatter(inp, permuted, dst, src % topk_ids.shape[0], off)  # source row = expanded % num_rows
    offsets.copy_(off)
    src2dst.view(-1)[src] = dst.int()
    _fill_segments(m_indices, off)


def _permute_rowmajor(inp, topk_ids, tei, expert_map, n_expert, n_local, topk, align, permuted, offsets, inv,
                      permuted_idx, m_indices):
    _check(topk_ids.dtype == torch.int32, "topk_ids must be int32")
    keys = _sort_keys(topk_ids, expert_map, n_expert).reshape(-1)
    src = tei.reshape(-1).long()
    dst, off = _route(keys, src, n_local, align)
    copied = _scatter(inp, permuted, dst, src // topk, off)  # source row = expanded / k
    offsets.copy_(off)
    inv.view(-1)[src] = dst.int()
    permuted_idx[dst[copied]] = src[copied].int()
    if m_indices is not None:
        _fill_segments(m_indices, off)


def _permute_b(inp, topk_ids, tei, expert_map, n_expert, n_local, topk, align, permuted, offsets, inv,
               permuted_idx, m_indices):
    _permute_rowmajor(inp, topk_ids, tei, expert_map, n_expert, n_local, topk, align, permuted, offsets, inv,
                      permuted_idx, m_indices)


def _permute_c(inp, topk_ids, tei, expert_map, n_expert, n_local, topk, permuted, offsets, inv, permuted_idx):
    _permute_rowmajor(inp, topk_ids, tei, expert_map, n_expert, n_local, topk, None, permuted, offsets, inv,
                      permuted_idx, None)


def _permute_with_scratch(inp, topk_ids, tei, expert_map, n_expert, n_local, topk, permuted, offsets, inv,
                          permuted_idx, sort_workspace, permuted_experts_id, sorted_row_idx, topk_ids_for_sort):
    _check(sort_workspace.numel() >= _sort_size(topk_ids.numel(), n_expert), "sort workspace too small")
    _permute_c(inp, topk_ids, tei, expert_map, n_expert, n_local, topk, permuted, offsets, inv, permuted_idx)


def _sort_size(rows: int, n_expert: int) -> int:
    return 256 + 8 * rows


def _unpermute_rows(permuted, weights, dst, offsets, out) -> None:
    """out[t] = sum_j w[t,j] * permuted[dst(t,j)] in fp32, skipping rows past the local ones."""
    _check(out.dtype == permuted.dtype, "hidden_states and permuted_hidden_states dtypes differ")
    _check(weights.dtype == torch.float32, "topk_weights are read as float")
    t, k = weights.shape
    rows = permuted[dst.clamp(0, permuted.shape[0] - 1)].float()
    keep = dst < offsets[-1] if offsets is not None else torch.ones_like(dst, dtype=torch.bool)
    contrib = torch.where(keep[:, None], rows * weights.reshape(-1, 1), 0.0)
    out.copy_(contrib.view(t, k, -1).sum(1))


def _unpermute_a(permuted, weights, topk_ids, src2dst, offsets, n_expert, n_local, topk, out):
    t = weights.shape[0]
    # the map is read at original_row + k_idx * num_rows; the offsets are always applied
    _unpermute_rows(permuted, weights, src2dst.reshape(topk, t).t().reshape(-1).long(), offsets, out)


def _unpermute_b(permuted, weights, inv, offsets, topk, out):
    _unpermute_rows(permuted, weights, inv.reshape(-1).long(), offsets, out)


def _moe_sum(inp, out, topk_ids=None, expert_map=None):
    out.copy_(inp.sum(dim=1))


def _align_block_size(topk_ids, num_experts, block_size, sorted_ids, expert_ids, num_post_pad,
                      maybe_expert_map=None, scatter_idx=None):
    flat = topk_ids.reshape(-1).long()
    n = flat.numel()
    counts = torch.bincount(flat, minlength=num_experts)
    starts = torch.zeros(num_experts + 1, dtype=torch.int64)
    starts[1:] = torch.cumsum((counts + block_size - 1) // block_size * block_size, 0)
    order = torch.argsort(flat, stable=True)
    rank = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[flat[order]]
    sorted_ids.fill_(n)
    sorted_ids[starts[flat[order]] + rank] = order.int()
    block_rows = torch.arange(expert_ids.numel()) * block_size
    owner = torch.bucketize(block_rows, starts[1:], right=True)
    expert_ids.copy_(torch.where(block_rows < starts[-1], owner, 0))
    num_post_pad.fill_(int(starts[-1]))


def _kernel_for(schema: str, supported: bool):
    name = schema.split("(")[0]
    if name == "moe_permute":
        return _permute_a if "topk_weight" in schema else _permute_b if "align_block_size" in schema else _permute_c
    if name == "moe_unpermute":
        return _unpermute_a if "src_row_id2dst_row_id_map" in schema else _unpermute_b
    return {"moe_permute_with_scratch": _permute_with_scratch, "moe_permute_sort_workspace_size": _sort_size,
            "moe_permute_unpermute_supported": lambda: supported, "moe_sum": _moe_sum,
            "moe_align_block_size": _align_block_size}.get(name)


_LIBRARIES: dict[str, torch.library.Library] = {}


def _slowed(kernel, seconds: float):
    def slow(*args):
        time.sleep(seconds)
        return kernel(*args)
    return slow


def register(schemas, namespace: str, dispatch_key: str = "CPU", supported: bool = True,
             slow_permute_s: float = 0.0) -> Any:
    """Define ``schemas`` under ``namespace`` with the CPU kernels above (ops this file has no
    kernel for are skipped), ``moe_permute`` slower by ``slow_permute_s`` per call (a commit
    that made the kernel slower); returns ``torch.ops.<namespace>``. Once per namespace and process."""
    if namespace not in _LIBRARIES:
        lib = torch.library.Library(namespace, "DEF")
        for schema in schemas:
            kernel = _kernel_for(schema, supported)
            if kernel is None:
                continue
            if slow_permute_s and schema.startswith("moe_permute("):
                kernel = _slowed(kernel, slow_permute_s)
            lib.define(schema)
            tensors = "Tensor" in schema.split("->")[0]
            lib.impl(schema.split("(")[0], kernel, dispatch_key if tensors else "CompositeExplicitAutograd")
        _LIBRARIES[namespace] = lib
    return getattr(torch.ops, namespace)


def namespace(release: str) -> Any:
    return register(SCHEMAS[release], "moebench_standin_" + release.replace(".", "_"))


# --- Python API: each release's functions, bodies following the real ones --------------------------


def _fp8_perm(m: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if torch.is_floating_point(m) and m.dtype.itemsize == 1:
        return m.view(dtype=torch.uint8)[idx, ...].view(dtype=m.dtype)
    return m[idx, ...]


def _fp8_quantize(A, A_scale, per_act_token, block_shape=None):
    """vLLM's dynamic per-tensor path (scaled_fp8_quant with scale=None): scale = amax / 448."""
    assert A_scale is None and not per_act_token and block_shape is None
    scale = (A.abs().amax().float() / FP8_MAX).clamp(min=1e-12).reshape(1)
    return (A.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _moe_sum_wrapper(ops):
    def moe_sum(input: torch.Tensor, output: torch.Tensor):
        ops.moe_sum(input, output)
    return moe_sum


def _align_wrapper(release: str, ops):
    """``fused_moe.moe_align_block_size.moe_align_block_size`` of the release."""
    if release in ("0.9.0", "0.10.0", "0.10.1", "0.10.2"):
        def moe_align_block_size(topk_ids, block_size, num_experts, expert_map=None, pad_sorted_ids=False):
            max_num_tokens_padded = topk_ids.numel() + num_experts * (block_size - 1)
            if pad_sorted_ids:
                max_num_tokens_padded = _round_up(max_num_tokens_padded, block_size)
            sorted_ids = torch.empty((max_num_tokens_padded,), dtype=torch.int32, device=topk_ids.device)
            if release == "0.9.0":
                sorted_ids.fill_(topk_ids.numel())
            max_num_m_blocks = -(-max_num_tokens_padded // block_size)
            make = torch.zeros if release == "0.9.0" else torch.empty
            expert_ids = make((max_num_m_blocks,), dtype=torch.int32, device=topk_ids.device)
            num_tokens_post_pad = torch.empty((1), dtype=torch.int32, device=topk_ids.device)
            ops.moe_align_block_size(topk_ids, num_experts, block_size, sorted_ids, expert_ids, num_tokens_post_pad)
            if expert_map is not None:
                expert_ids = expert_map[expert_ids]
            return sorted_ids, expert_ids, num_tokens_post_pad
        return moe_align_block_size

    def moe_align_block_size(topk_ids, block_size, num_experts, expert_map=None, pad_sorted_ids=False,
                             ignore_invalid_experts=False):
        max_num_tokens_padded = topk_ids.numel() + num_experts * (block_size - 1)
        if pad_sorted_ids:
            max_num_tokens_padded = _round_up(max_num_tokens_padded, block_size)
        if topk_ids.numel() < num_experts:
            max_num_tokens_padded = min(topk_ids.numel() * block_size, max_num_tokens_padded)
        sorted_ids = torch.empty((max_num_tokens_padded,), dtype=torch.int32, device=topk_ids.device)
        max_num_m_blocks = -(-max_num_tokens_padded // block_size)
        expert_ids = torch.empty((max_num_m_blocks,), dtype=torch.int32, device=topk_ids.device)
        num_tokens_post_pad = torch.empty((1), dtype=torch.int32, device=topk_ids.device)
        ops.moe_align_block_size(topk_ids, num_experts, block_size, sorted_ids, expert_ids, num_tokens_post_pad,
                                 expert_map if ignore_invalid_experts else None)
        if expert_map is not None and not ignore_invalid_experts:
            expert_ids = expert_map[expert_ids]
        return sorted_ids, expert_ids, num_tokens_post_pad
    return moe_align_block_size


def _standard_path(release: str, ops) -> dict[str, Any]:
    """``_moe_permute`` and ``_moe_unpermute_and_reduce`` (0.9.0–0.15.1); 0.9.0's as shipped."""
    moe_align_block_size, moe_sum = _align_wrapper(release, ops), _moe_sum_wrapper(ops)

    def _moe_permute(curr_hidden_states, a1q_scale, curr_topk_ids, global_num_experts, expert_map, block_m):
        top_k_num = curr_topk_ids.size(1)
        if release == "0.9.0":
            tokens_in_chunk = curr_hidden_states.sizze(0)  # sic: the shipped 0.9.0 typo
        else:
            tokens_in_chunk = curr_hidden_states.size(0)
        sorted_token_ids, expert_ids, num_tokens_post_padded = moe_align_block_size(
            curr_topk_ids, block_m, global_num_experts, expert_map, pad_sorted_ids=True)
        num_tokens = top_k_num * tokens_in_chunk
        expert_ids = torch.repeat_interleave(expert_ids, block_m, dim=0)
        inv_perm = torch.argsort(sorted_token_ids)[:num_tokens]
        sorted_token_ids = sorted_token_ids.clamp(max=num_tokens - 1)
        curr_hidden_states = _fp8_perm(curr_hidden_states, sorted_token_ids // top_k_num)
        if a1q_scale is not None:
            a1q_scale = a1q_scale[sorted_token_ids // top_k_num]
        return curr_hidden_states, a1q_scale, sorted_token_ids, expert_ids, inv_perm

    def _moe_unpermute_and_reduce(out, curr_hidden, inv_perm, topk_weight, apply_router_weight_on_input):
        M, topk = topk_weight.size()
        K = curr_hidden.size(-1)
        if inv_perm is not None:
            curr_hidden = curr_hidden[inv_perm, ...]
        curr_hidden = curr_hidden.view(-1, topk, K)
        if not apply_router_weight_on_input:
            curr_hidden.mul_(topk_weight.view(M, -1, 1))
        moe_sum(curr_hidden, out)

    return {"_moe_permute": _moe_permute, "_moe_unpermute_and_reduce": _moe_unpermute_and_reduce}


def _check_hidden(hidden_states: torch.Tensor) -> None:
    assert (hidden_states.size(1) * hidden_states.element_size()) % 16 == 0, "permue kernel need hidden dim align to 16B"


def _era_a(ops) -> dict[str, Any]:
    def moe_permute(hidden_states, topk_weights, topk_ids, token_expert_indices, topk, n_expert, n_local_expert,
                    expert_map=None, align_block_size=None, fill_invalid_expert=-1):
        n_token, n_hidden = hidden_states.size()
        _check_hidden(hidden_states)
        permuted_row_size = n_token * topk
        if align_block_size is not None:
            permuted_row_size = (permuted_row_size + n_expert * (align_block_size - 1) + align_block_size
                                 - 1) // align_block_size * align_block_size
        dev = hidden_states.device
        permuted_hidden_states = torch.empty((permuted_row_size, n_hidden), dtype=hidden_states.dtype, device=dev)
        m_indices = torch.full((permuted_row_size,), fill_invalid_expert, dtype=torch.int32, device=dev)
        expert_first_token_offset = torch.empty(n_local_expert + 1, dtype=torch.int64, device=dev)
        src_row_id2dst_row_id_map = torch.empty((n_token, topk), dtype=torch.int32, device=dev)
        ops.moe_permute(hidden_states, topk_weights, topk_ids, token_expert_indices, expert_map, n_expert,
                        n_local_expert, topk, align_block_size, permuted_hidden_states, expert_first_token_offset,
                        src_row_id2dst_row_id_map, m_indices)
        return permuted_hidden_states, expert_first_token_offset, src_row_id2dst_row_id_map, m_indices

    def moe_unpermute(permuted_hidden_states, topk_weights, topk_ids, src_row_id2dst_row_id_map,
                      expert_first_token_offset, topk, n_expert, n_local_expert):
        n_token, n_hidden = topk_weights.size(0), permuted_hidden_states.size(-1)
        _check_hidden(permuted_hidden_states)
        hidden_states = torch.empty((n_token, n_hidden), dtype=permuted_hidden_states.dtype,
                                    device=permuted_hidden_states.device)
        ops.moe_unpermute(permuted_hidden_states, topk_weights, topk_ids, src_row_id2dst_row_id_map,
                          expert_first_token_offset, n_expert, n_local_expert, topk, hidden_states)
        return hidden_states

    return {"moe_permute": moe_permute, "moe_unpermute": moe_unpermute}


def _unpermute_b_api(ops):
    def moe_unpermute(out, permuted_hidden_states, topk_weights, inv_permuted_idx, expert_first_token_offset=None):
        topk = topk_weights.size(1)
        _check_hidden(permuted_hidden_states)
        ops.moe_unpermute(permuted_hidden_states, topk_weights, inv_permuted_idx, expert_first_token_offset, topk, out)
    return moe_unpermute


def _permute_b_body(ops, hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert, expert_map,
                    align_block_size, fill_invalid_expert, permuted_hidden_states, scale_guard):
    n_token, n_hidden = hidden_states.size()
    topk = topk_ids.size(1)
    _check_hidden(hidden_states)
    permuted_row_size = n_token * topk
    if align_block_size is not None:
        permuted_row_size = (permuted_row_size + n_expert * (align_block_size - 1) + align_block_size
                             - 1) // align_block_size * align_block_size
    if n_local_expert == -1:
        n_local_expert = n_expert
    dev = hidden_states.device
    if permuted_hidden_states is None:
        permuted_hidden_states = torch.empty((permuted_row_size, n_hidden), dtype=hidden_states.dtype, device=dev)
    assert permuted_hidden_states.size() == (permuted_row_size, n_hidden)
    token_expert_indices = torch.arange(0, n_token * topk, dtype=torch.int32, device=dev).reshape((n_token, topk))
    m_indices = torch.full((permuted_row_size,), fill_invalid_expert, dtype=torch.int32, device=dev)
    expert_first_token_offset = torch.empty(n_local_expert + 1, dtype=torch.int64, device=dev)
    permuted_idx = torch.full((permuted_row_size,), n_token * topk, dtype=torch.int32, device=dev)
    inv_permuted_idx = torch.empty((n_token, topk), dtype=torch.int32, device=dev)
    topk_ids = topk_ids.to(torch.int32)
    ops.moe_permute(hidden_states, topk_ids, token_expert_indices, expert_map, n_expert, n_local_expert, topk,
                    align_block_size, permuted_hidden_states, expert_first_token_offset, inv_permuted_idx,
                    permuted_idx, m_indices)
    if a1q_scale is not None and (not scale_guard or a1q_scale.dim() > 1):
        a1q_scale = a1q_scale[permuted_idx.clamp(max=n_token * topk - 1) // topk]
    return permuted_hidden_states, a1q_scale, expert_first_token_offset, inv_permuted_idx.flatten(), m_indices


def _era_b(ops) -> dict[str, Any]:
    """0.10.1: no permuted_hidden_states parameter, and the scale is gathered unconditionally."""
    def moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
                    align_block_size=None, fill_invalid_expert=-1):
        return _permute_b_body(ops, hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert, expert_map,
                               align_block_size, fill_invalid_expert, None, scale_guard=False)
    return {"moe_permute": moe_permute, "moe_unpermute": _unpermute_b_api(ops)}


def _era_b2(ops) -> dict[str, Any]:
    """0.10.2–0.15.1: permuted_hidden_states may be passed; a scale of dim 1 passes through."""
    def moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
                    align_block_size=None, fill_invalid_expert=-1, permuted_hidden_states=None):
        return _permute_b_body(ops, hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert, expert_map,
                               align_block_size, fill_invalid_expert, permuted_hidden_states, scale_guard=True)
    return {"moe_permute": moe_permute, "moe_unpermute": _unpermute_b_api(ops)}


def _era_c(ops) -> dict[str, Any]:
    def moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
                    permuted_hidden_states=None):
        return _permute_c_body(ops, hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert, expert_map,
                               permuted_hidden_states, None)
    return {"moe_permute": moe_permute, "moe_unpermute": _unpermute_b_api(ops)}


def _permute_c_body(ops, hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert, expert_map,
                    permuted_hidden_states, scratch):
    """Eras C, D and F: era C's allocations without a scratch, the scratch op with one."""
    n_token, n_hidden = hidden_states.size()
    topk = topk_ids.size(1)
    _check_hidden(hidden_states)
    permuted_row_size = n_token * topk
    if n_local_expert == -1:
        n_local_expert = n_expert
    dev = hidden_states.device
    if permuted_hidden_states is None:
        if scratch is None or scratch.kind == "v2":
            permuted_hidden_states = torch.empty((permuted_row_size, n_hidden), dtype=hidden_states.dtype, device=dev)
        else:
            scratch.validate(hidden_states, topk_ids)
            assert scratch.permuted_hidden_states is not None
            permuted_hidden_states = scratch.permuted_hidden_states[: permuted_row_size * n_hidden].view(
                permuted_row_size, n_hidden)
    assert permuted_hidden_states.size() == (permuted_row_size, n_hidden)
    if scratch is None:
        token_expert_indices = torch.arange(0, n_token * topk, dtype=torch.int32, device=dev).reshape((n_token, topk))
        expert_first_token_offset = torch.empty(n_local_expert + 1, dtype=torch.int64, device=dev)
        permuted_idx = torch.full((permuted_row_size,), n_token * topk, dtype=torch.int32, device=dev)
        inv_permuted_idx = torch.empty((n_token, topk), dtype=torch.int32, device=dev)
        topk_ids = topk_ids.to(torch.int32)
        ops.moe_permute(hidden_states, topk_ids, token_expert_indices, expert_map, n_expert, n_local_expert, topk,
                        permuted_hidden_states, expert_first_token_offset, inv_permuted_idx, permuted_idx)
    else:
        if scratch.kind == "v1":
            scratch.validate(hidden_states, topk_ids)
        else:
            assert hidden_states.device == scratch.device and topk_ids.size(0) == n_token
        assert n_expert == scratch.num_experts
        assert n_local_expert == scratch.num_local_experts
        if scratch.kind == "v2":
            scratch.reserve(permuted_row_size)
        token_expert_indices = scratch.token_expert_indices[:permuted_row_size].view(n_token, topk)
        expert_first_token_offset = scratch.expert_first_token_offset
        permuted_idx = scratch.permuted_idx[:permuted_row_size]
        permuted_idx.fill_(permuted_row_size)
        inv_permuted_idx = scratch.inv_permuted_idx[:permuted_row_size].view(n_token, topk)
        permuted_experts_id = scratch.permuted_experts_id[:permuted_row_size].view(n_token, topk)
        sorted_row_idx = scratch.sorted_row_idx[:permuted_row_size].view(n_token, topk)
        topk_ids_for_sort = scratch.topk_ids_for_sort[:permuted_row_size].view(n_token, topk)
        topk_ids_int32 = scratch.prepare_topk_ids(topk_ids)
        ops.moe_permute_with_scratch(hidden_states, topk_ids_int32, token_expert_indices, expert_map, n_expert,
                                     n_local_expert, topk, permuted_hidden_states, expert_first_token_offset,
                                     inv_permuted_idx, permuted_idx, scratch.sort_workspace, permuted_experts_id,
                                     sorted_row_idx, topk_ids_for_sort)
    if a1q_scale is not None and a1q_scale.dim() > 1:
        a1q_scale = a1q_scale[permuted_idx.clamp(max=n_token * topk - 1) // topk]
    return (permuted_hidden_states, a1q_scale, expert_first_token_offset, inv_permuted_idx.flatten(), permuted_idx)


def _prepare_topk_ids(self, topk_ids: torch.Tensor) -> torch.Tensor:
    if topk_ids.dtype == torch.int32:
        return topk_ids
    topk_ids_int32 = self.topk_ids_int32[: topk_ids.numel()].view_as(topk_ids)
    topk_ids_int32.copy_(topk_ids)
    return topk_ids_int32


def _scratch_era_api(ops, scratch_cls) -> dict[str, Any]:
    """Eras D–F: the same moe_permute/moe_unpermute signatures; only MoEPermuteScratch differs."""

    def moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
                    permuted_hidden_states=None, scratch=None):
        return _permute_c_body(ops, hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert, expert_map,
                               permuted_hidden_states, scratch)

    return {"MoEPermuteScratch": scratch_cls, "moe_permute": moe_permute, "moe_unpermute": _unpermute_b_api(ops)}


def _era_d(ops) -> dict[str, Any]:
    @dataclass
    class MoEPermuteScratch:  # v1 (0.23–0.31)
        max_num_tokens: int
        topk: int
        num_experts: int
        num_local_experts: int
        device: torch.device
        hidden_size: int | None = None
        hidden_dtype: torch.dtype | None = None
        permuted_hidden_states: torch.Tensor | None = field(init=False, default=None)
        max_expanded_rows: int = field(init=False)
        kind = "v1"

        def __post_init__(self) -> None:
            assert self.max_num_tokens > 0 and self.topk > 0 and self.num_experts > 0 and self.num_local_experts > 0
            self.max_expanded_rows = rows = self.max_num_tokens * self.topk
            self.token_expert_indices = torch.arange(rows, dtype=torch.int32, device=self.device)
            self.expert_first_token_offset = torch.empty(self.num_local_experts + 1, dtype=torch.int64, device=self.device)
            if self.hidden_size is not None:
                self.permuted_hidden_states = torch.empty(rows * self.hidden_size, dtype=self.hidden_dtype,
                                                          device=self.device)
            for name in ("permuted_idx", "inv_permuted_idx", "permuted_experts_id", "sorted_row_idx",
                         "topk_ids_int32", "topk_ids_for_sort"):
                setattr(self, name, torch.empty(rows, dtype=torch.int32, device=self.device))
            size = ops.moe_permute_sort_workspace_size(rows, self.num_experts)
            self.sort_workspace = torch.empty(size, dtype=torch.int8, device=self.device)
            self.device = self.token_expert_indices.device

        def validate(self, hidden_states, topk_ids) -> None:
            n_token, n_hidden = hidden_states.shape
            assert hidden_states.device == self.device and topk_ids.device == self.device
            assert n_token <= self.max_num_tokens
            assert topk_ids.size(1) == self.topk and topk_ids.size(0) == n_token
            if self.hidden_size is not None:
                assert n_hidden == self.hidden_size and hidden_states.dtype == self.hidden_dtype

        prepare_topk_ids = _prepare_topk_ids

    return _scratch_era_api(ops, MoEPermuteScratch)


def _era_f(ops) -> dict[str, Any]:
    @dataclass
    class MoEPermuteScratch:  # v2 (0.32 on): grows on reserve, holds no hidden buffer
        num_experts: int
        num_local_experts: int
        device: torch.device
        max_expanded_rows: int = field(init=False, default=0)
        kind = "v2"

        def __post_init__(self) -> None:
            assert self.num_experts > 0 and self.num_local_experts > 0
            self.expert_first_token_offset = torch.empty(self.num_local_experts + 1, dtype=torch.int64, device=self.device)
            self.device = self.expert_first_token_offset.device

        def reserve(self, expanded_rows: int) -> None:
            if expanded_rows <= self.max_expanded_rows:
                return
            self.token_expert_indices = torch.arange(expanded_rows, dtype=torch.int32, device=self.device)
            for name in ("permuted_idx", "inv_permuted_idx", "permuted_experts_id", "sorted_row_idx",
                         "topk_ids_int32", "topk_ids_for_sort"):
                setattr(self, name, torch.empty(expanded_rows, dtype=torch.int32, device=self.device))
            size = ops.moe_permute_sort_workspace_size(expanded_rows, self.num_experts)
            self.sort_workspace = torch.empty(size, dtype=torch.int8, device=self.device)
            self.max_expanded_rows = expanded_rows

        prepare_topk_ids = _prepare_topk_ids

    return _scratch_era_api(ops, MoEPermuteScratch)


_API = {"A": _era_a, "B": _era_b, "B'": _era_b2, "C": _era_c, "D": _era_d, "F": _era_f}


def api_functions(release: str, ops) -> dict[str, Any]:
    """The customized path's functions of ``release`` (era C or later), calling ``ops``."""
    return _API[ERAS[release]](ops)


def api_module(release: str, ops) -> types.ModuleType:
    """The release's ``moe_permute_unpermute`` module, calling the op namespace ``ops``."""
    module = types.ModuleType(f"standin_vllm_{release}_moe_permute_unpermute")
    module.__dict__.update(_API[ERAS[release]](ops))
    if ERAS[release] in ("A", "B", "B'"):
        module.__dict__.update(_standard_path(release, ops))
    return module


@functools.cache
def source(release: str, with_vllm_quantizer: bool = True) -> Source:
    """A stand-in vLLM ``release``: its namespace's kernels and its Python API."""
    ops = namespace(release)
    module = api_module(release, ops)
    quantize = _fp8_quantize if with_vllm_quantizer else None
    return Source(lambda: Kernels(ops, f"stand-in _moe_C of vLLM {release}"),
                  lambda: PythonApi(module, quantize, f"stand-in vLLM {release}"))


# --- eras the binding does not know -----------------------------------------------------------------

FUTURE_PERMUTE = _PERMUTE_C.replace("int topk,", "int topk, int? routing_mode,")


@functools.cache
def future_source() -> Source:
    """A hypothetical later vLLM: moe_permute gained a parameter, and so did its op."""
    ops = register((FUTURE_PERMUTE, _UNPERMUTE_B, _SUPPORTED), "moebench_standin_future")
    module = types.ModuleType("standin_vllm_future")

    def moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert=-1, expert_map=None,
                    permuted_hidden_states=None, scratch=None, routing_mode=None):
        raise AssertionError("a binding must not call an era it does not know")
    module.moe_permute = moe_permute
    module.moe_unpermute = _unpermute_b_api(ops)
    return Source(lambda: Kernels(ops, "stand-in future _moe_C"),
                  lambda: PythonApi(module, None, "stand-in future vLLM"))


@functools.cache
def cuda_only_source() -> Source:
    """Era-F schemas whose kernels exist for CUDA only, as in every real library."""
    ops = register(SCHEMAS["0.33.0"], "moebench_standin_cuda_only", dispatch_key="CUDA")
    return Source(lambda: Kernels(ops, "stand-in CUDA-only _moe_C"),
                  lambda: PythonApi(api_module("0.33.0", ops), None, "stand-in vLLM 0.33.0"))


@functools.cache
def unsupported_source() -> Source:
    """Era-F kernels built where moe_permute_unpermute_supported() says False."""
    ops = register(SCHEMAS["0.33.0"], "moebench_standin_unsupported", supported=False)
    return Source(lambda: Kernels(ops, "stand-in unsupported _moe_C"),
                  lambda: PythonApi(api_module("0.33.0", ops), None, "stand-in vLLM 0.33.0"))


# --- a `vllm` package around the real moe_permute_unpermute.py files ------------------------------------


class _NoWorkspaceManager:
    """vllm.v1.worker.workspace outside a vLLM worker: no manager is initialized."""

    @staticmethod
    def is_workspace_manager_initialized() -> bool:
        return False

    @staticmethod
    def current_workspace_manager():
        raise AssertionError("no workspace manager outside a vLLM worker")


def install_vllm_package(release: str) -> None:
    """Put into ``sys.modules`` the vLLM modules a real ``moe_permute_unpermute.py`` of ``release``
    imports, over ``torch.ops._moe_C``. For subprocesses whose ``_moe_C`` is a stand-in."""
    ops = torch.ops._moe_C
    names = {
        "vllm": {},
        "vllm._custom_ops": {"moe_sum": _moe_sum_wrapper(ops)},
        "vllm.model_executor": {},
        "vllm.model_executor.layers": {},
        "vllm.model_executor.layers.fused_moe": {},
        "vllm.model_executor.layers.fused_moe.moe_align_block_size": {
            "moe_align_block_size": _align_wrapper(release, ops)},
        "vllm.model_executor.layers.fused_moe.utils": {"_fp8_perm": _fp8_perm, "_fp8_quantize": _fp8_quantize},
        "vllm.v1": {},
        "vllm.v1.worker": {},
        "vllm.v1.worker.workspace": {
            "is_workspace_manager_initialized": _NoWorkspaceManager.is_workspace_manager_initialized,
            "current_workspace_manager": _NoWorkspaceManager.current_workspace_manager},
    }
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def write_vllm_without_kernels(root: Path, real_library: Path | None = None) -> Path:
    """An installed-looking ``vllm`` package under ``root`` whose ``_moe_C`` cannot load: a link to
    a real CUDA library (which fails on a machine without the CUDA runtime) or, without one, a
    module that fails to import as such a library does."""
    pkg = root / "vllm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0.33.0+standin"\n')
    if real_library is not None:
        (pkg / real_library.name).symlink_to(real_library)
    else:
        (pkg / "_moe_C.py").write_text(
            'raise ImportError("libcuda.so.1: cannot open shared object file: No such file or directory")\n')
    return root
