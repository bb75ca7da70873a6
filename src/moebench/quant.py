"""Activation dtypes of the benchmark and the fp8 quantization the permute carries.

``auto`` keeps the model's activation dtype. ``fp8_w8a8`` quantizes activations per tensor
(dynamic scale) inside the timed permute, and the scale travels with the permuted rows (the seed
computed a scale and then dropped it). ``int8_w8a16`` quantizes weights only: activations are
untouched, so permute/unpermute do exactly the work of ``auto`` — it is kept as an axis so results
line up with the seed's flags, and every output says so.
"""

from __future__ import annotations

import torch

from .axes import DTYPE_MODES
from .errors import one_line
FP8_MAX_E4M3 = 448.0
# DeepGEMM-style grouped GEMMs want each expert's rows aligned to 128 for fp8.
FP8_ALIGN_BLOCK = 128


def fp8_dtype() -> torch.dtype | None:
    return getattr(torch, "float8_e4m3fn", None)


def act_dtype(name: str) -> torch.dtype:
    """torch dtype of a model's activations from its config name ("bfloat16", ...)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"not a floating torch dtype: {name}")
    return dtype


def unsupported_reason(mode: str, device: torch.device) -> str | None:
    """Why ``mode`` cannot run on ``device`` with this torch, or None."""
    if mode not in DTYPE_MODES:
        return f"unknown dtype mode {mode!r} (choose from {', '.join(DTYPE_MODES)})"
    if mode == "fp8_w8a8":
        if fp8_dtype() is None:
            return f"torch {torch.__version__} has no float8_e4m3fn"
        try:
            torch.ones(16, device=device).to(fp8_dtype())
        except (RuntimeError, TypeError) as exc:
            return f"float8 casts fail on {device.type}: {one_line(exc, 120)}"
    return None


def quantize_fp8_per_tensor(
    x: torch.Tensor, out: torch.Tensor, scale: torch.Tensor
) -> None:
    """Dynamic per-tensor e4m3 quantization into preallocated ``out`` and ``scale`` (shape [1]).

    No host sync and no allocation that depends on data, so it can live in a CUDA graph.
    """
    amax = x.abs().amax().float().reshape(1)
    torch.clamp(amax / FP8_MAX_E4M3, min=1e-12, out=scale)
    out.copy_((x.float() / scale).clamp_(-FP8_MAX_E4M3, FP8_MAX_E4M3))


def fp8_error_bound(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Largest |dequant(quant(x)) - x| e4m3 rounding allows: half an ulp (3 mantissa bits) of
    each value, or half the subnormal spacing (2^-9 of the scale) near zero."""
    return x.abs().float() * 2.0**-4 + scale.float() * 2.0**-10
