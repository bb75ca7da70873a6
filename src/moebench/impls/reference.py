"""Pure-torch permute/unpermute of both layouts: the oracle every other implementation is
checked against, and a baseline that runs on CPU and GPU.

Everything is fixed-shape (sizes derive from T, k, E and the block size, never from data), so the
calls contain no host sync and can be captured in a CUDA graph. Unpermute accumulates in fp32.
"""

from __future__ import annotations

import torch

from ..quant import FP8_ALIGN_BLOCK, fp8_dtype, quantize_fp8_per_tensor, unsupported_reason
from ..routing import MoEInputs
from .base import (
    CUSTOM,
    STANDARD,
    CustomLayout,
    Implementation,
    Layout,
    Run,
    StandardLayout,
    gemm_output_standin,
)

# The standard path's block size: DeepGEMM's M block, which is what `_moe_permute` served.
STANDARD_BLOCK_M = 128


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A uint8 view of a 1-byte float tensor (float8 lacks index kernels), else ``t``."""
    return t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.numel() + 1, dtype=torch.int64, device=x.device)
    out[1:] = torch.cumsum(x, 0)
    return out


def _segments(key: torch.Tensor, n_keys: int, align: int | None):
    """Stable sort of ``key`` (values in [0, n_keys)); returns the sorted order, the row of each
    sorted element when every key's segment is padded to ``align``, and per-key segment starts
    (padded)."""
    n = key.numel()
    sorted_key, order = torch.sort(key, stable=True)
    counts = torch.zeros(n_keys, dtype=torch.int64, device=key.device)
    counts.index_add_(0, key, torch.ones_like(key))
    start = _exclusive_cumsum(counts)
    padded = counts if align is None else (counts + align - 1) // align * align
    seg_start = _exclusive_cumsum(padded)
    rank = torch.arange(n, device=key.device) - start[sorted_key]
    return order, seg_start[sorted_key] + rank, seg_start


class _ReferenceRun(Run):
    def __init__(self, inputs: MoEInputs, rows: int) -> None:
        self.inputs = inputs
        t, h = inputs.hidden.shape
        n = t * inputs.topk
        dev = inputs.hidden.device
        self.fp8 = inputs.dtype_mode == "fp8_w8a8"
        self.row_dtype = fp8_dtype() if self.fp8 else inputs.hidden.dtype
        self.q = torch.empty(t, h, dtype=self.row_dtype, device=dev) if self.fp8 else inputs.hidden
        self.scale = torch.empty(1, dtype=torch.float32, device=dev) if self.fp8 else None
        self.permuted = torch.empty(rows, h, dtype=self.row_dtype, device=dev)
        # Row moves go through byte views: torch has no index kernels for float8 on every device.
        self._q_rows = as_bytes(self.q)
        self._p_rows = as_bytes(self.permuted)
        self.out = torch.empty_like(inputs.hidden)
        self.n = n
        self.permute()
        self._rows_in = gemm_output_standin(self.layout(), inputs.hidden.dtype)

    def _quantize(self) -> None:
        if self.fp8:
            quantize_fp8_per_tensor(self.inputs.hidden, self.q, self.scale)

    def unpermute_input(self) -> torch.Tensor:
        return self._rows_in

    def unpermute_output(self) -> torch.Tensor:
        return self.out

    def _reduce(self, inv: torch.Tensor, weights: torch.Tensor) -> None:
        t, h = self.inputs.hidden.shape
        rows = self._rows_in.index_select(0, inv).view(t, -1, h).float()
        self.out.copy_((rows * weights.unsqueeze(-1)).sum(dim=1))

    def close(self) -> None:
        self.__dict__.clear()


class _StandardRun(_ReferenceRun):
    def __init__(self, inputs: MoEInputs, block_m: int) -> None:
        self.block_m = block_m
        n, e = inputs.num_tokens * inputs.topk, inputs.num_experts
        # At most min(T*k, E) experts get rows, each padded to a block (vLLM caps it the same way).
        rows = min(round_up(n + e * (block_m - 1), block_m), n * block_m)
        dev = inputs.hidden.device
        self.sorted_ids = torch.empty(rows, dtype=torch.int32, device=dev)
        self.expert_ids = torch.empty(rows // block_m, dtype=torch.int32, device=dev)
        self.inv = torch.empty(n, dtype=torch.int64, device=dev)
        self.block_starts = torch.arange(0, rows, block_m, device=dev)
        super().__init__(inputs, rows)

    def permute(self) -> None:
        self._quantize()
        inp, n, k = self.inputs, self.n, self.inputs.topk
        key = inp.topk_ids.reshape(-1).long()
        order, pos, seg_start = _segments(key, inp.num_experts, self.block_m)
        self.sorted_ids.fill_(n)
        self.sorted_ids.index_copy_(0, pos, order.int())
        self.inv.index_copy_(0, order, pos)
        expert = torch.bucketize(self.block_starts, seg_start[1:], right=True)
        in_range = expert < inp.num_experts
        expert = expert.clamp(max=inp.num_experts - 1)
        if inp.expert_map is not None:
            expert = inp.expert_map.long()[expert]
        self.expert_ids.copy_(torch.where(in_range, expert, -1))
        src = self.sorted_ids.clamp(max=n - 1).long() // k
        torch.index_select(self._q_rows, 0, src, out=self._p_rows)

    def unpermute(self) -> None:
        self._reduce(self.inv, self.inputs.topk_weights)

    def layout(self) -> Layout:
        return StandardLayout(
            permuted=self.permuted,
            scale=self.scale,
            sorted_token_ids=self.sorted_ids,
            expert_ids=self.expert_ids,
            inv_perm=self.inv,
            block_m=self.block_m,
        )


class _CustomRun(_ReferenceRun):
    def __init__(self, inputs: MoEInputs, align: int | None) -> None:
        self.align = align
        n, n_local = inputs.num_tokens * inputs.topk, inputs.n_local_experts
        rows = n if align is None else round_up(n + n_local * (align - 1), align)
        dev = inputs.hidden.device
        self.efto = torch.empty(n_local + 1, dtype=torch.int64, device=dev)
        self.inv = torch.empty(n, dtype=torch.int64, device=dev)
        self.permuted_idx = torch.empty(rows, dtype=torch.int32, device=dev)
        self.m_indices = None if align is None else torch.empty(rows, dtype=torch.int32, device=dev)
        self.row_ids = torch.arange(rows, device=dev)
        self.row_src = torch.empty(rows, dtype=torch.int64, device=dev)
        self.valid_w = torch.empty_like(inputs.topk_weights)
        super().__init__(inputs, rows)

    def permute(self) -> None:
        self._quantize()
        inp, n, k = self.inputs, self.n, self.inputs.topk
        n_local = inp.n_local_experts
        local = inp.local_ids()
        valid = local >= 0
        # Other ranks' slots sort last, into a segment past every local expert.
        key = torch.where(valid, local, n_local)
        order, pos, seg_start = _segments(key, n_local + 1, self.align)
        # Rows beyond the aligned region hold the other ranks' slots; clamp keeps the buffer
        # fixed-size (they are never read back: unpermute masks them out).
        pos = pos.clamp(max=self.permuted.shape[0] - 1)
        self.efto.copy_(seg_start[: n_local + 1])
        self.inv.index_copy_(0, order, pos)
        sorted_valid = valid[order]
        self.permuted_idx.fill_(n)
        self.permuted_idx.index_copy_(0, pos, torch.where(sorted_valid, order, n).int())
        if self.m_indices is not None:
            # vLLM's aligned layout: every row of an expert's aligned segment (its padding
            # too) carries that expert; only rows past the last segment hold -1.
            seg = torch.bucketize(self.row_ids, self.efto[1:], right=True)
            self.m_indices.copy_(torch.where(seg < n_local, seg, -1))
        # One gather in destination order (a scatter would need a temporary copy of the rows).
        self.row_src.zero_()
        self.row_src.index_copy_(0, pos, order // k)
        torch.index_select(self._q_rows, 0, self.row_src, out=self._p_rows)
        self.valid_w.copy_(inp.topk_weights * valid.view_as(inp.topk_weights))

    def unpermute(self) -> None:
        self._reduce(self.inv, self.valid_w)

    def layout(self) -> Layout:
        return CustomLayout(
            permuted=self.permuted,
            scale=self.scale,
            expert_first_token_offset=self.efto,
            inv_permuted_idx=self.inv,
            permuted_idx=self.permuted_idx,
            m_indices=self.m_indices,
            align_block_size=self.align,
        )


class ReferenceStandard(Implementation):
    name = "reference-standard"
    layout = STANDARD
    description = "torch: sort by expert, pad each expert to a 128-row block, gather; fp32 reduce"

    def unavailable(self, dtype_mode: str, device: torch.device) -> str | None:
        return unsupported_reason(dtype_mode, device)

    def prepare(self, inputs: MoEInputs) -> Run:
        return _StandardRun(inputs, STANDARD_BLOCK_M)


class ReferenceCustom(Implementation):
    name = "reference-custom"
    layout = CUSTOM
    description = "torch: customized layout (expert offsets, inverse map; fp8 rows aligned to 128, m_indices)"

    def unavailable(self, dtype_mode: str, device: torch.device) -> str | None:
        return unsupported_reason(dtype_mode, device)

    def prepare(self, inputs: MoEInputs) -> Run:
        align = FP8_ALIGN_BLOCK if inputs.dtype_mode == "fp8_w8a8" else None
        return _CustomRun(inputs, align)
