"""The correctness gate: an implementation's permute and unpermute against the oracle's truth.

Nothing is compared buffer to buffer, since row order inside one expert's segment is free. Instead,
for every local (token, slot) the inverse map must point to a row that (a) holds that token's
activations, bit for bit (fp8: the dequantized row within e4m3 rounding of the input), and (b) lies
inside that expert's segment; the inverse map must be one-to-one. Unpermute must equal the fp32
weighted sum of the rows it was given, within the output dtype's rounding.
"""

from __future__ import annotations

import torch

from .impls.base import CustomLayout, Layout, StandardLayout
from .impls.reference import as_bytes
from .quant import fp8_error_bound
from .routing import MoEInputs

# Relative tolerance of unpermute: fp32 accumulation, one rounding to the output dtype, plus the
# different summation orders of fused kernels.
UNPERMUTE_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _slot_rows(layout: Layout, n: int) -> torch.Tensor:
    inv = layout.inv_perm if isinstance(layout, StandardLayout) else layout.inv_permuted_idx
    if inv.numel() != n:
        raise AssertionError(f"inverse map has {inv.numel()} entries, expected T*k = {n}")
    return inv.long()


def _row_experts(layout: Layout, rows: torch.Tensor, n_local: int) -> torch.Tensor:
    """Local expert of each row in ``rows``, read from the layout's own metadata."""
    if isinstance(layout, StandardLayout):
        return layout.expert_ids.long()[rows // layout.block_m]
    efto = layout.expert_first_token_offset.long()
    if efto.numel() != n_local + 1:
        raise AssertionError(f"expert_first_token_offset has {efto.numel()} entries, expected {n_local + 1}")
    seg = torch.bucketize(rows, efto[1:], right=True)
    return torch.where(seg < n_local, seg, -1)


def check_permute(inputs: MoEInputs, layout: Layout) -> str | None:
    """None if ``layout`` is a correct permutation of ``inputs``, else what is wrong."""
    t, k = inputs.topk_ids.shape
    n = t * k
    local = inputs.local_ids()
    # The standard path keeps other ranks' slots (their blocks carry expert -1).
    check = torch.ones_like(local, dtype=torch.bool) if isinstance(layout, StandardLayout) else local >= 0
    slots = torch.nonzero(check).squeeze(1)
    try:
        rows = _slot_rows(layout, n)[slots]
    except AssertionError as exc:
        return str(exc)
    r_max = layout.permuted.shape[0]
    if rows.numel() and (rows.min() < 0 or rows.max() >= r_max):
        return f"inverse map points outside the {r_max} permuted rows"
    if torch.unique(rows).numel() != rows.numel():
        return "inverse map is not one-to-one: two (token, slot) pairs share a row"
    try:
        experts = _row_experts(layout, rows, inputs.n_local_experts)
    except AssertionError as exc:
        return str(exc)
    if not torch.equal(experts, local[slots]):
        bad = int(torch.nonzero(experts != local[slots])[0, 0])
        s = int(slots[bad])
        return (f"slot (token {s // k}, k {s % k}) of expert {int(local[s])} sits in a row of "
                f"expert {int(experts[bad])}")
    if isinstance(layout, StandardLayout):
        if not torch.equal(layout.sorted_token_ids.long()[rows], slots):
            return "sorted_token_ids does not name the slot its inverse map points to"
    elif layout.permuted_idx is not None:
        if not torch.equal(layout.permuted_idx.long()[rows], slots):
            return "permuted_idx does not name the slot its inverse map points to"
    if isinstance(layout, CustomLayout) and layout.m_indices is not None:
        if not torch.equal(layout.m_indices.long()[rows], local[slots]):
            return "m_indices disagrees with expert_first_token_offset"
    got = as_bytes(layout.permuted)[rows].view(layout.permuted.dtype)
    src = inputs.hidden[slots // k]
    if layout.scale is not None:
        deq = got.float() * layout.scale.float()
        bad = (deq - src.float()).abs() > fp8_error_bound(src, layout.scale) * 1.001
        if bool(bad.any()):
            return f"fp8 rows differ from the input beyond e4m3 rounding ({int(bad.sum())} values)"
    elif not torch.equal(got, src):
        return f"permuted rows differ from the input ({int((got != src).any(1).sum())} rows)"
    return None


def expected_unpermute(inputs: MoEInputs, layout: Layout, rows_in: torch.Tensor) -> torch.Tensor:
    """fp32 weighted sum over each token's local slots of the rows unpermute was given."""
    t, k = inputs.topk_ids.shape
    rows = _slot_rows(layout, t * k).clamp(0, rows_in.shape[0] - 1)
    w = inputs.topk_weights.float().reshape(-1)
    terms = rows_in.index_select(0, rows).float() * w[:, None]
    if isinstance(layout, CustomLayout):
        # Other ranks' rows are never written (uninitialised memory, maybe NaN): select, don't
        # multiply by zero, or NaN * 0 would poison the expectation and disable the check.
        terms = torch.where((inputs.local_ids() >= 0)[:, None], terms, 0.0)
    return terms.view(t, k, -1).sum(1)


def check_unpermute(inputs: MoEInputs, layout: Layout, rows_in: torch.Tensor, out: torch.Tensor) -> str | None:
    """None if ``out`` is the weighted reduction of ``rows_in`` through ``layout``."""
    want = expected_unpermute(inputs, layout, rows_in)
    if out.shape != want.shape:
        return f"unpermute output has shape {tuple(out.shape)}, expected {tuple(want.shape)}"
    if not bool(torch.isfinite(out).all()):
        return "unpermute output has NaN or Inf"
    rtol = UNPERMUTE_RTOL.get(out.dtype, 1.6e-2)
    err = (out.float() - want).abs()
    limit = rtol * want.abs() + rtol * want.abs().mean()
    if not bool((err <= limit).all()):  # written so that a NaN anywhere fails
        return (f"unpermute differs from the fp32 reference: max error {float(err.max()):.3g} "
                f"at rtol {rtol}")
    return None
