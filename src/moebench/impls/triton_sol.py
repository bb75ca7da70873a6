"""``triton-sol``: our own Triton permute/unpermute of the customized layout, the "speed of light"
beside vLLM's ``moe_permute``/``moe_unpermute`` (docs/speed-of-light.md has the byte counts).

It writes what ``reference-custom`` writes: rows grouped by local expert, ``expert_first_token_offset``,
``inv_permuted_idx`` (-1 for slots of other expert-parallel ranks, which are dropped),
``permuted_idx`` (T*k on rows without a slot) and, under ``fp8_w8a8``, the per-tensor dynamic scale
(quant.py's semantics, bit for bit) with 128-aligned segments and ``m_indices``. ``int8_w8a16``
leaves activations alone and runs exactly as ``auto``. Inside one segment, slots of one block
keep slot order; blocks land in the order of their atomics (on CPU under the interpreter: the
reference's order exactly; on a GPU it may vary between calls, which the gate allows).

What limits each op, and the design that follows:

* The data: permute must read T*H activations once and write n_local_slots rows (the roofline's
  count). The row copy is token-major: a program reads TOK tokens x BH columns once (16-byte
  vectors) and stores them k times, so nothing is read twice; every store is a contiguous
  2 KiB run of a row, which DRAM takes at full speed. What is left is bytes in flight per SM
  (TOK x BH x elt per program, several programs per SM), tuned by ``Tuning``.
* The routing: each row's destination needs the count of every expert (a global prefix sum),
  i.e. a grid-wide dependency. Split path (2 launches): ``route_kernel`` ranks blocks of 128
  slots (a stable in-block rank, one ``tl.histogram``), reserves the block's rows in each
  expert with one atomic per touched expert, and its last program (a ticket counter) turns
  the final counts into segment starts; ``scatter_kernel`` then copies. O(T*k) work in total,
  a few microseconds of latency before the copy starts. Fused path (1 launch): where
  T*k * bins is small, every copy program re-histograms all slots itself
  (O(T*k * bins/32) per program) -- no second launch, and the row's DRAM read is already in
  flight meanwhile. Small T is launch-bound, so that is where it pays.
* fp8 per-tensor dynamic quantization needs max|x| of the whole tensor before the first
  quantized byte: extra programs of ``route_kernel``'s launch read the activations once more
  (T*H*elt bytes beyond the roofline's count; an L2 hit where the tensor fits the L2) into an
  atomic max, whose last program writes the scale. fp8 is therefore always 2 launches.
  Quantization happens once per input element, before the k stores.
* Unpermute (1 launch) moves exactly the roofline's bytes: a program gathers the k rows of its
  tokens (k independent 16-byte loads per thread in flight), sums in fp32, writes once; it is
  bounded by the gather of scattered rows and by occupancy.
* Every counter a kernel raises it resets before it ends, every output is rewritten by every
  call, all buffers are sized in ``prepare`` from T, k, E and H: no host sync, no allocation,
  nothing left from the previous call, so both calls replay in a CUDA graph with any routing.

Triton is imported lazily: the package imports where Triton is absent, and ``unavailable`` says
why this cannot run (CPU device, no Triton, fp8 on a GPU without float8 conversions).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

from ..errors import one_line
from ..quant import FP8_ALIGN_BLOCK, fp8_dtype, unsupported_reason
from ..routing import MoEInputs
from .base import CUSTOM, CustomLayout, Implementation, Layout, Run, gemm_output_standin
from .reference import round_up

KERNELS_MODULE = "moebench.impls.triton_kernels"
# Compute capability Triton needs for its float8e4nv conversion (Ada, Hopper and later).
FP8_MIN_CAPABILITY = (8, 9)
# Compile options of every launch. Triton's default for fusing a * b + c into one FMA flips to off
# in 3.10 (3.9 warns): unpermute's fp32 weighted sum was measured and gated with fusion on, so it
# stays on whatever the installed Triton's default.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


@dataclass(frozen=True)
class Tuning:
    """Launch parameters: tile sizes and warps (``evidence/triton_sol_tune.py`` sweeps them)."""

    # One launch (routing inside the copy) while T*k * bins <= fuse_limit and T*k <= fuse_slots (0:
    # never): every copy program re-histograms all slots, which an H200 hides up to ~2k slots.
    fuse_limit: int = 1 << 17
    fuse_slots: int = 2048
    hist_chunk: int = 1024  # slot ids one fused program histograms per step
    route_slots: int = 128  # slots one routing program ranks (a rank_rows x route_slots compare)
    rank_rows: int = 16
    gather: bool | None = None  # tl.gather for a slot's expert base, else a one-hot; None: if Triton has it
    route_warps: int = 8  # 8 beat 4 on an H200 (docs/speed-of-light.md)
    amax_block: int = 4096  # elements per step of an amax program
    amax_iters: int = 4  # steps per amax program (independent loads in flight)
    copy_tokens: int = 4  # tokens read (k times as many rows written) per program
    copy_bytes: int = 2048  # input bytes of one token's row chunk (fp8: twice, for 16-byte stores)
    copy_warps: int = 4
    pad_experts: int = 16  # experts whose alignment padding one fill program writes
    tail_rows: int = 2048  # tail rows one fill program writes
    unpermute_rows: int = 8  # rows gathered per program: max(1, unpermute_rows // k) tokens
    unpermute_bytes: int = 2048  # bytes of one row chunk
    unpermute_warps: int = 8  # 8 beat 4 on an H200


def _pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _import_kernels() -> ModuleType:
    return importlib.import_module(KERNELS_MODULE)


class _TritonRun(Run):
    def __init__(self, inputs: MoEInputs, kern: ModuleType, tuning: Tuning) -> None:
        hidden = inputs.hidden
        if not hidden.is_contiguous():
            raise ValueError("triton-sol needs contiguous hidden states")
        self.inputs, self.kern, self.tuning = inputs, kern, tuning
        t, h = hidden.shape
        k, n_local = inputs.topk, inputs.n_local_experts
        n, dev = t * k, hidden.device
        self.fp8 = inputs.dtype_mode == "fp8_w8a8"
        self.align = FP8_ALIGN_BLOCK if self.fp8 else None
        self.rows = n if self.align is None else round_up(n + n_local * (self.align - 1), self.align)
        self.nb = nb = _pow2(n_local + 2)  # bins: local experts, "another rank's", a spare one
        if n * nb >= 2**31:
            raise ValueError(f"triton-sol packs a slot's offset and expert in int32: T*k*{nb} is too large")
        self.permuted = torch.empty(self.rows, h, dtype=fp8_dtype() if self.fp8 else hidden.dtype, device=dev)
        self.scale = torch.empty(1, dtype=torch.float32, device=dev) if self.fp8 else None
        self.efto = torch.empty(n_local + 1, dtype=torch.int64, device=dev)
        self.inv = torch.empty(n, dtype=torch.int32, device=dev)
        self.permuted_idx = torch.empty(self.rows, dtype=torch.int32, device=dev)
        self.m_indices = torch.empty(self.rows, dtype=torch.int32, device=dev) if self.align else None
        # zero between calls: the kernels reset what they raise (triton_kernels' docstring)
        self._counters = torch.zeros(4 + nb, dtype=torch.int32, device=dev)
        self._scratch = s = torch.empty(n + 2 * nb, dtype=torch.int32, device=dev)
        # views of it: each slot's packed (offset in its expert, expert); segment starts; counts
        self._packed, self._start, self._count = s[:n], s[n:n + nb], s[n + nb:]
        self.out = torch.empty_like(hidden)
        self._ids, self._weights = inputs.topk_ids.contiguous(), inputs.topk_weights.contiguous()
        # any pointer will do where the kernel never reads one
        self._emap = self._ids if inputs.expert_map is None else inputs.expert_map
        self._scale_arg = self.scale if self.fp8 else self._counters
        self._gather = tuning.gather if tuning.gather is not None else kern.HAS_GATHER
        # fp8 needs the whole tensor's amax before its first row: never one launch
        self.fused = not self.fp8 and n * nb <= tuning.fuse_limit and n <= tuning.fuse_slots
        self._route = None if self.fused else self._route_launch()
        self._scatter = self._scatter_launch()
        self.permute()  # compiles; the gate reads what it wrote
        self._rows_in = gemm_output_standin(self.layout(), hidden.dtype)
        self._unpermute = self._unpermute_launch()

    def _route_launch(self):
        inp, tu, nb = self.inputs, self.tuning, self.nb
        t, h = inp.hidden.shape
        n = t * inp.topk
        bs = min(tu.route_slots, max(16, _pow2(n)))
        n_route = _cdiv(n, bs)
        amax_block = min(tu.amax_block, _pow2(t * h))
        amax_iters = max(1, min(tu.amax_iters, _cdiv(t * h, amax_block)))
        n_amax = _cdiv(t * h, amax_block * amax_iters) if self.fp8 else 0
        return functools.partial(
            self.kern.route_kernel[(n_route + n_amax,)], self._ids, self._emap, self._counters, self._packed,
            self._start, self._count, self.efto, inp.hidden, self._scale_arg, n, inp.n_local_experts, n_route,
            t * h, n_amax,
            HAS_EMAP=inp.expert_map is not None, ALIGN=self.align or 1, NB=nb, LOG_NB=nb.bit_length() - 1, BS=bs,
            SUB=min(tu.rank_rows, bs), GATHER=self._gather, FP8=self.fp8, AMAX_BLOCK=amax_block,
            AMAX_ITERS=amax_iters, num_warps=tu.route_warps, **LAUNCH_OPTIONS)

    def _scatter_launch(self):
        inp, tu, nb = self.inputs, self.tuning, self.nb
        t, h = inp.hidden.shape
        k, n_local = inp.topk, inp.n_local_experts
        n = t * k
        # Rows without a slot exist with alignment padding, or when other ranks' slots are dropped.
        fill = self.align is not None or inp.expert_map is not None
        eg, rc = min(tu.pad_experts, nb), min(tu.tail_rows, _pow2(self.rows))
        n_fill = max(_cdiv(n_local, eg) if self.align else 0, _cdiv(self.rows, rc)) if fill else 0
        bh = min(_pow2(h), max(16, tu.copy_bytes * (2 if self.fp8 else 1) // inp.hidden.element_size()))
        tok = min(tu.copy_tokens, _pow2(t))
        grid = (max(_cdiv(t, tok), n_fill), _cdiv(h, bh))
        dst = self.permuted.view(torch.uint8) if self.fp8 else self.permuted
        idx = self.permuted_idx
        return functools.partial(
            self.kern.scatter_kernel[grid], inp.hidden, self._ids, self._emap, self._packed, self._start,
            self._count, dst, self._scale_arg, self.inv, idx, idx if self.m_indices is None else self.m_indices, self.efto,
            t, h, n, n_local, self.rows,
            K=k, TOK=tok, BH=bh, NB=nb, LOG_NB=nb.bit_length() - 1, ROUTE=self.fused,
            HAS_EMAP=inp.expert_map is not None, SP=_pow2(tok * k), HB=min(tu.hist_chunk, _pow2(n)),
            GATHER=self._gather, FP8=self.fp8, SOFT_FP8=self.kern.INTERPRETED, HAS_M=self.m_indices is not None,
            ALIGN=self.align or 1, FILL=fill, EG=eg, RC=rc, num_warps=tu.copy_warps, **LAUNCH_OPTIONS)

    def _unpermute_launch(self):
        inp, tu = self.inputs, self.tuning
        t, h = inp.hidden.shape
        bh = min(_pow2(h), max(16, tu.unpermute_bytes // inp.hidden.element_size()))
        tok = min(_pow2(max(1, tu.unpermute_rows // inp.topk)), _pow2(t))
        grid = (_cdiv(t, tok), _cdiv(h, bh))
        return functools.partial(
            self.kern.unpermute_kernel[grid], self._rows_in, self.inv, self._weights, self.out, t, h,
            K=inp.topk, TOK=tok, BH=bh, num_warps=tu.unpermute_warps, **LAUNCH_OPTIONS)

    def permute(self) -> None:
        if self._route is not None:
            self._route()
        self._scatter()

    def unpermute(self) -> None:
        self._unpermute()

    def layout(self) -> Layout:
        return CustomLayout(permuted=self.permuted, scale=self.scale, expert_first_token_offset=self.efto,
                            inv_permuted_idx=self.inv, permuted_idx=self.permuted_idx, m_indices=self.m_indices,
                            align_block_size=self.align)

    def unpermute_input(self) -> torch.Tensor:
        return self._rows_in

    def unpermute_output(self) -> torch.Tensor:
        return self.out

    def close(self) -> None:
        self.__dict__.clear()


class TritonSol(Implementation):
    """One or two launches per permute (routing fused into the row copy where it is cheap, else
    a routing launch first; fp8 always two), one per unpermute; ``reference-custom``'s layout.
    ``kernels`` replaces the kernel module (the tests wrap it to count launches), ``tuning`` the
    tile sizes."""

    name = "triton-sol"
    layout = CUSTOM
    description = ("Triton: customized layout at the bandwidth floor; permute 1 launch (routing fused into "
                   "the copy) or 2 (routing, copy; fp8 amax in the first), unpermute 1")

    def __init__(self, kernels: ModuleType | None = None, tuning: Tuning = Tuning()) -> None:
        self._kernels = kernels
        self.tuning = tuning

    def kernels(self) -> ModuleType:
        """The kernel module, imported on first use (raises ImportError without Triton)."""
        if self._kernels is None:
            self._kernels = _import_kernels()
        return self._kernels

    def unavailable(self, dtype_mode: str, device: torch.device) -> str | None:
        device = torch.device(device)
        if dtype_mode not in ("auto", "int8_w8a16", "fp8_w8a8"):
            return unsupported_reason(dtype_mode, device) or f"triton-sol has no dtype mode {dtype_mode!r}"
        if device.type != "cuda":
            return f"Triton kernels need a CUDA device (got {device.type})"
        if not torch.cuda.is_available():
            return f"Triton kernels need a CUDA device (torch {torch.__version__} sees none)"
        if (why := unsupported_reason(dtype_mode, device)) is not None:
            return why
        try:
            self.kernels()
        except ImportError as exc:
            return f"triton is not installed: {one_line(exc, 160)}"
        except Exception as exc:  # a Triton that imports but cannot load (driver, ABI)
            return f"triton does not import: {one_line(exc, 160)}"
        if dtype_mode == "fp8_w8a8":
            if torch.version.hip is not None:
                return "triton-sol's fp8_w8a8 uses NVIDIA's float8e4nv conversion; not available on ROCm"
            cap = torch.cuda.get_device_capability(device)
            if cap < FP8_MIN_CAPABILITY:
                return (f"Triton's float8e4nv conversion needs compute capability >= "
                        f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} (this GPU: {cap[0]}.{cap[1]})")
        return None

    def prepare(self, inputs: MoEInputs) -> Run:
        return _TritonRun(inputs, self.kernels(), self.tuning)
