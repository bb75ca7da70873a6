"""The runs of the vLLM implementations: each era's calls, and their outputs converted to the
core's layouts (untimed) for the correctness gate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ...quant import FP8_ALIGN_BLOCK, fp8_dtype, quantize_fp8_per_tensor
from ...routing import MoEInputs
from ..base import CustomLayout, Layout, Run, StandardLayout, gemm_output_standin
from ..reference import STANDARD_BLOCK_M, round_up
from .eras import SCRATCH_V1

if TYPE_CHECKING:
    from .implementations import Binding


def _kmajor_indices(t: int, k: int, device: torch.device) -> torch.Tensor:
    """Era A's token_expert_indices as fused_topk makes them: element [t, j] = j*T + t."""
    return torch.arange(t * k, dtype=torch.int32, device=device).view(k, t).t().contiguous()


def _rowmajor_inverse(src2dst: torch.Tensor, t: int, k: int) -> torch.Tensor:
    """Era A's map is read k-major (entry j*T+t is pair (t, j)); the layouts want t*k+j."""
    return src2dst.reshape(k, t).t().reshape(-1)


def _quantizer(inputs: MoEInputs, vllm_quantize: Callable | None) -> Callable[[], tuple[torch.Tensor, torch.Tensor | None]]:
    """What the timed permute calls first: fp8_w8a8 quantizes per tensor, else the input as is."""
    h = inputs.hidden
    if inputs.dtype_mode != "fp8_w8a8":
        return lambda: (h, None)
    if vllm_quantize is not None:
        return lambda: vllm_quantize(h, None, False)
    q = torch.empty(h.shape, dtype=fp8_dtype(), device=h.device)
    scale = torch.empty(1, dtype=torch.float32, device=h.device)

    def quantize() -> tuple[torch.Tensor, torch.Tensor]:
        quantize_fp8_per_tensor(h, q, scale)
        return q, scale
    return quantize


class _VllmRun(Run):
    """Shared by the vLLM runs: the eager first permute, the unpermute input and output."""

    def __init__(self, inputs: MoEInputs) -> None:
        self.inputs = inputs
        self.t, self.k = inputs.topk_ids.shape
        self.fp8 = inputs.dtype_mode == "fp8_w8a8"
        self._result: torch.Tensor | None = None

    def _first_permute(self) -> None:
        """The gate reads what this wrote; an era broken as shipped fails here, in prepare."""
        self.permute()
        self._rows_in = gemm_output_standin(self.layout(), self.inputs.hidden.dtype)

    def unpermute_input(self) -> torch.Tensor:
        return self._rows_in

    def unpermute_output(self) -> torch.Tensor:
        assert self._result is not None, "unpermute has not run"
        return self._result

    def close(self) -> None:
        self.__dict__.clear()


class _StandardRun(_VllmRun):
    def __init__(self, binding: Binding, inputs: MoEInputs) -> None:
        super().__init__(inputs)
        m = binding.python.module
        self._moe_permute, self._reduce = m._moe_permute, m._moe_unpermute_and_reduce
        self._quantize = _quantizer(inputs, binding.python.fp8_quantize)
        self._result = torch.empty_like(inputs.hidden)
        self._first_permute()
        # unpermute reads this permute's inverse map, kept apart so its timing stands alone
        self._reduce_args = dict(out=self._result, curr_hidden=self._rows_in, inv_perm=self._out[0][4].clone(),
                                 topk_weight=inputs.topk_weights, apply_router_weight_on_input=False)

    def permute(self) -> None:
        x, scale = self._quantize()
        inp = self.inputs
        # a1q_scale=None: _moe_permute gathers any scale by token, which a per-tensor [1] scale
        # cannot survive; the binding carries it.
        self._out = (self._moe_permute(curr_hidden_states=x, a1q_scale=None, curr_topk_ids=inp.topk_ids,
                                       global_num_experts=inp.num_experts, expert_map=inp.expert_map,
                                       block_m=STANDARD_BLOCK_M), scale)

    def unpermute(self) -> None:
        self._reduce(**self._reduce_args)

    def layout(self) -> Layout:
        (permuted, _, sorted_ids, row_experts, inv), scale = self._out
        # expert_ids come back one per row (repeat_interleave'd); the layout keeps one per block.
        return StandardLayout(permuted=permuted, scale=scale, sorted_token_ids=sorted_ids,
                              expert_ids=row_experts[::STANDARD_BLOCK_M], inv_perm=inv, block_m=STANDARD_BLOCK_M)


def _make_scratch(cls: Any, scratch_params: tuple[str, ...], inputs: MoEInputs) -> Any:
    t, k = inputs.topk_ids.shape
    dev = inputs.hidden.device
    if scratch_params == SCRATCH_V1:
        # no hidden_size: the permuted buffer is passed explicitly, as vLLM's cutlass MoE does
        return cls(max_num_tokens=t, topk=k, num_experts=inputs.num_experts,
                   num_local_experts=inputs.n_local_experts, device=dev)
    scratch = cls(num_experts=inputs.num_experts, num_local_experts=inputs.n_local_experts, device=dev)
    scratch.reserve(t * k)  # grows (reallocates) only here, before any CUDA graph capture
    return scratch


class _ApiCustomRun(_VllmRun):
    def __init__(self, binding: Binding, inputs: MoEInputs, scratch: bool) -> None:
        super().__init__(inputs)
        era = self.era = binding.api_era
        m = binding.python.module
        self._moe_permute, self._moe_unpermute = m.moe_permute, m.moe_unpermute
        self._quantize = _quantizer(inputs, binding.python.fp8_quantize)
        t, k, dev = self.t, self.k, inputs.hidden.device
        self.align = FP8_ALIGN_BLOCK if self.fp8 and era.ops.align else None
        emap = inputs.expert_map
        self._ids_work = torch.empty_like(inputs.topk_ids) if era.ops.kmajor and emap is not None else None
        common = dict(n_expert=inputs.num_experts, n_local_expert=inputs.n_local_experts, expert_map=emap)
        if era.ops.kmajor:
            self._kwargs = dict(common, topk_weights=inputs.topk_weights, topk=k,
                                token_expert_indices=_kmajor_indices(t, k, dev), align_block_size=self.align)
        else:
            self._kwargs = dict(common, topk_ids=inputs.topk_ids)
            if era.ops.align:
                self._kwargs["align_block_size"] = self.align
            if scratch:
                row_dtype = fp8_dtype() if self.fp8 else inputs.hidden.dtype
                self._kwargs.update(
                    permuted_hidden_states=torch.empty(t * k, inputs.hidden.shape[1], dtype=row_dtype, device=dev),
                    scratch=_make_scratch(m.MoEPermuteScratch, era.scratch, inputs))
        self._first_permute()
        # unpermute reads copies of this permute's maps, so its timing does not depend on permute's
        res = self._out[0]
        if era.ops.kmajor:
            ids = inputs.topk_ids if self._ids_work is None else self._ids_work
            self._unpermute_kwargs = dict(
                permuted_hidden_states=self._rows_in, topk_weights=inputs.topk_weights, topk_ids=ids.clone(),
                src_row_id2dst_row_id_map=res[2].clone(), expert_first_token_offset=res[1].clone(), topk=k,
                n_expert=inputs.num_experts, n_local_expert=inputs.n_local_experts)
        else:
            self._result = torch.empty_like(inputs.hidden)
            self._unpermute_kwargs = dict(
                out=self._result, permuted_hidden_states=self._rows_in, topk_weights=inputs.topk_weights,
                inv_permuted_idx=res[3].clone(), expert_first_token_offset=res[2].clone())

    def permute(self) -> None:
        x, scale = self._quantize()
        if self.era.ops.kmajor:
            ids = self.inputs.topk_ids
            if self._ids_work is not None:  # era A rewrites the ids it is given when EP is on
                ids = self._ids_work.copy_(ids)
            self._out = (self._moe_permute(hidden_states=x, topk_ids=ids, **self._kwargs), scale)
        else:
            passed = scale if self.era.passes_scale else None
            self._out = (self._moe_permute(hidden_states=x, a1q_scale=passed, **self._kwargs), scale)

    def unpermute(self) -> None:
        if self.era.ops.kmajor:
            self._result = self._moe_unpermute(**self._unpermute_kwargs)
        else:
            self._moe_unpermute(**self._unpermute_kwargs)

    def layout(self) -> Layout:
        res, scale = self._out
        if self.era.ops.kmajor:
            permuted, offsets, src2dst, m_indices = res
            inv, permuted_idx = _rowmajor_inverse(src2dst, self.t, self.k), None
        else:
            permuted, returned_scale, offsets, inv, fifth = res
            if self.era.passes_scale:
                scale = returned_scale
            # the fifth output is m_indices where the era aligns, else permuted_idx
            permuted_idx, m_indices = (None, fifth) if self.era.ops.align else (fifth, None)
        return CustomLayout(permuted=permuted, scale=scale, expert_first_token_offset=offsets,
                            inv_permuted_idx=inv.reshape(-1), permuted_idx=permuted_idx,
                            m_indices=m_indices, align_block_size=self.align)


class _OpsRun(_VllmRun):
    def __init__(self, binding: Binding, inputs: MoEInputs) -> None:
        super().__init__(inputs)
        era = self.era = binding.ops_era
        ops = binding.kernels.ops
        self._op_permute, self._op_unpermute = ops.moe_permute, ops.moe_unpermute
        t, k, dev = self.t, self.k, inputs.hidden.device
        n, h = t * k, inputs.hidden.shape[1]
        e, n_local, emap = inputs.num_experts, inputs.n_local_experts, inputs.expert_map
        self.align = FP8_ALIGN_BLOCK if self.fp8 and era.align else None
        # rows as vLLM's Python sizes them: with align, room for every global expert's padding
        rows = n if self.align is None else round_up(n + e * (self.align - 1), self.align)
        x, self.scale = _quantizer(inputs, None)()  # kernel time only: fp8 quantized once, here
        self.permuted = torch.empty(rows, h, dtype=x.dtype, device=dev)
        self.offsets = torch.empty(n_local + 1, dtype=torch.int64, device=dev)
        self.inv = torch.empty(t, k, dtype=torch.int32, device=dev)
        # prefilled once as the Python API prefills them per call: the kernels write only used rows
        self.permuted_idx = torch.full((rows,), n, dtype=torch.int32, device=dev) if era.writes_permuted_idx else None
        self.m_indices = torch.full((rows,), -1, dtype=torch.int32, device=dev) if era.align else None
        self._ids_work = torch.empty_like(inputs.topk_ids) if era.kmajor and emap is not None else None
        ids = inputs.topk_ids if self._ids_work is None else self._ids_work
        self._result = torch.empty_like(inputs.hidden)
        if era.kmajor:
            self._permute_args = (x, inputs.topk_weights, ids, _kmajor_indices(t, k, dev), emap, e, n_local, k,
                                  self.align, self.permuted, self.offsets, self.inv, self.m_indices)
        else:
            tei = torch.arange(n, dtype=torch.int32, device=dev).view(t, k)
            self._permute_args = ((x, ids, tei, emap, e, n_local, k)
                                  + ((self.align,) if era.align else ())
                                  + (self.permuted, self.offsets, self.inv, self.permuted_idx)
                                  + ((self.m_indices,) if era.align else ()))
        self._first_permute()
        if era.kmajor:
            self._unpermute_args = (self._rows_in, inputs.topk_weights, ids, self.inv, self.offsets, e, n_local, k,
                                    self._result)
        else:
            self._unpermute_args = (self._rows_in, inputs.topk_weights, self.inv, self.offsets, k, self._result)

    def permute(self) -> None:
        if self._ids_work is not None:  # era A rewrites topk_ids in place when EP is on
            self._ids_work.copy_(self.inputs.topk_ids)
        self._op_permute(*self._permute_args)

    def unpermute(self) -> None:
        self._op_unpermute(*self._unpermute_args)

    def layout(self) -> Layout:
        inv = _rowmajor_inverse(self.inv, self.t, self.k) if self.era.kmajor else self.inv.reshape(-1)
        return CustomLayout(permuted=self.permuted, scale=self.scale, expert_first_token_offset=self.offsets,
                            inv_permuted_idx=inv, permuted_idx=self.permuted_idx, m_indices=self.m_indices,
                            align_block_size=self.align)
