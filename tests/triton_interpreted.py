"""triton-sol's real kernels, run by Triton's interpreter on CPU tensors: the correctness gate (as
``runpoint._gate`` applies it), equality with ``reference-custom``, every output rewritten by every
call (what CUDA graph replays rely on), fp8 rounding and launch counts.

Not collected by a plain ``pytest`` (the file name does not start with ``test_``): the interpreter
is chosen for the whole process when Triton is imported, so ``test_triton_sol.py`` runs this file
in a child process with ``TRITON_INTERPRET=1``. By hand: ``TRITON_INTERPRET=1 pytest
tests/triton_interpreted.py``.

The interpreter runs programs one after another, so the split path's atomic reservations land in
program order and its row order equals the reference's stable order exactly; on a GPU only the
gate's order-free checks apply. The interpreter's own float8 cast rounds wrongly, so there the
kernels round in integer arithmetic (``_e4m3_bits``); the compiled hardware cast is checked on a
GPU (``evidence/gate_everywhere.py``).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from conftest import small_inputs
from moebench.check import check_permute, check_unpermute
from moebench.impls.base import gemm_output_standin
from moebench.impls.reference import ReferenceCustom, as_bytes
from moebench.impls.triton_sol import TritonSol, Tuning
from moebench.routing import ExpertParallel

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs under TRITON_INTERPRET=1 (test_triton_sol.py starts it so)")

# (experts, top-k) of the shipped families: Mixtral, Qwen3-30B-A3B, DeepSeek-V3; hidden size small
# (and not a power of two, so column masks are exercised) to keep the interpreter fast.
FAMILIES = [(8, 2), (128, 8), (256, 8)]
HIDDEN = 96
EPS = [ExpertParallel(), ExpertParallel(2, 0), ExpertParallel(2, 1)]


@pytest.fixture(scope="module")
def kernels():
    from moebench.impls import triton_kernels

    assert triton_kernels.INTERPRETED, "TRITON_INTERPRET=1 was set after Triton was imported"
    return triton_kernels


def gate(inp, run) -> None:
    """sweep._gate: permute checked, unpermute run and checked."""
    assert check_permute(inp, run.layout()) is None, check_permute(inp, run.layout())
    run.unpermute()
    why = check_unpermute(inp, run.layout(), run.unpermute_input(), run.unpermute_output())
    assert why is None, why


def assert_matches_reference(inp, run, unpermute: bool = True) -> None:
    ref = ReferenceCustom().prepare(inp)
    got, want = run.layout(), ref.layout()
    assert got.permuted.shape == want.permuted.shape and got.permuted.dtype == want.permuted.dtype
    assert got.align_block_size == want.align_block_size
    assert torch.equal(got.expert_first_token_offset, want.expert_first_token_offset)
    assert torch.equal(got.permuted_idx, want.permuted_idx)
    if want.m_indices is None:
        assert got.m_indices is None
    else:
        assert torch.equal(got.m_indices, want.m_indices)
    local = inp.local_ids() >= 0
    inv = got.inv_permuted_idx.long()
    assert torch.equal(inv[local], want.inv_permuted_idx[local])
    assert bool((inv[~local] == -1).all()), "slots of other ranks' experts must be dropped (-1)"
    used = inv[local]
    assert torch.equal(as_bytes(got.permuted)[used], as_bytes(want.permuted)[used])
    if want.scale is None:
        assert got.scale is None
    else:
        assert torch.equal(got.scale, want.scale)
    if not unpermute:
        return
    ref.unpermute()
    # both sum in fp32 and round once: at most one ulp of the output dtype apart
    torch.testing.assert_close(run.unpermute_output().float(), ref.unpermute_output().float(),
                               rtol=torch.finfo(inp.hidden.dtype).eps, atol=1e-6)


@pytest.mark.parametrize("ep", EPS, ids=lambda ep: f"ep{ep.size}r{ep.rank}")
@pytest.mark.parametrize("t", [1, 3, 64])
@pytest.mark.parametrize("mode", ["auto", "fp8_w8a8"])
@pytest.mark.parametrize("e,k", FAMILIES, ids=lambda v: str(v))
def test_gate_passes_and_outputs_equal_the_reference(kernels, e, k, mode, t, ep):
    inp = small_inputs(t=t, e=e, k=k, h=HIDDEN, dtype=torch.bfloat16, mode=mode, ep=ep)
    # at T=64 fewer, larger copy and unpermute tiles only to keep the interpreter quick (same code;
    # the default tiles run at T=1, 3 here and in the tests below)
    tuning = Tuning(copy_tokens=16, unpermute_rows=64) if t > 16 else Tuning()
    run = TritonSol(kernels, tuning).prepare(inp)
    gate(inp, run)
    assert_matches_reference(inp, run)
    # one launch (routing inside the copy) only where the routing is cheap, and never for fp8
    bins = run._counters.numel() - 4
    assert run.fused == (mode == "auto" and t * k * bins <= Tuning().fuse_limit and t * k <= Tuning().fuse_slots)


# Tile sizes far from the defaults reach what the small shapes above do not: several routing,
# fill and column programs, histogram chunks that straddle a program's first slot, the one-hot
# select instead of tl.gather, both paths forced.
TILINGS = {
    "split-onehot": Tuning(fuse_limit=0, gather=False),
    "tiny-tiles": Tuning(route_slots=16, rank_rows=4, tail_rows=1024, pad_experts=4, amax_block=256, amax_iters=2,
                         copy_tokens=2, copy_bytes=64, hist_chunk=16, unpermute_rows=32, unpermute_bytes=64),
    "fused-big": Tuning(fuse_limit=1 << 30, gather=False, copy_tokens=1, hist_chunk=32),
}


@pytest.mark.parametrize("tiling", TILINGS, ids=str)
@pytest.mark.parametrize("e,k,mode,ep", [(8, 2, "auto", ExpertParallel(2, 1)), (128, 8, "auto", ExpertParallel()),
                                         (256, 8, "fp8_w8a8", ExpertParallel(2, 1)),
                                         (64, 6, "auto", ExpertParallel(2, 0))],  # DeepSeek-V2-Lite: k not 2^n
                         ids=str)
def test_other_tilings(kernels, tiling, e, k, mode, ep):
    inp = small_inputs(t=24, e=e, k=k, h=HIDDEN, dtype=torch.bfloat16, mode=mode, ep=ep, routing="skewed")
    run = TritonSol(kernels, TILINGS[tiling]).prepare(inp)
    gate(inp, run)
    assert_matches_reference(inp, run)


@pytest.mark.parametrize("tuning", [Tuning(), Tuning(fuse_limit=0)], ids=["default", "split"])
@pytest.mark.parametrize("e,k,mode", [(8, 2, "auto"), (128, 8, "fp8_w8a8")], ids=str)
def test_every_call_rewrites_every_output(kernels, tuning, e, k, mode):
    """A replayed graph sees new routing and new activations in the same buffers: nothing may rely
    on a prefill, a counter left over, or the previous call's outputs."""
    ep = ExpertParallel(2, 1)
    inp = small_inputs(t=40, e=e, k=k, h=HIDDEN, dtype=torch.bfloat16, mode=mode, ep=ep)
    run = TritonSol(kernels, tuning).prepare(inp)
    new = small_inputs(t=40, e=e, k=k, h=HIDDEN, dtype=torch.bfloat16, mode=mode, ep=ep, seed=7, routing="skewed")
    inp.hidden.copy_(new.hidden * 3)
    inp.topk_ids.copy_(new.topk_ids)
    inp.topk_weights.copy_(new.topk_weights)
    lay = run.layout()
    for t in (lay.expert_first_token_offset, lay.inv_permuted_idx, lay.permuted_idx, run._scratch):
        t.fill_(-3)
    as_bytes(lay.permuted).fill_(0x7F)
    if lay.m_indices is not None:
        lay.m_indices.fill_(-3)
    if lay.scale is not None:
        lay.scale.fill_(0.0)
    run.permute()
    assert bool((run._counters == 0).all()), "a ticket or count was not reset"
    assert_matches_reference(inp, run, unpermute=False)
    # the expert GEMM writes unpermute's input anew each call: so does this stand-in
    run.unpermute_input().copy_(gemm_output_standin(run.layout(), inp.hidden.dtype))
    gate(inp, run)


def test_fp8_rounds_to_nearest_even_like_torch(kernels):
    """Ties, subnormals, the largest value and negative zero, with the scale exactly 1."""
    inp = small_inputs(t=4, e=8, k=2, h=16, dtype=torch.float32, mode="fp8_w8a8")
    # value -> e4m3fn byte: 448 sets the scale to 1; ties go to the even neighbour
    want = [(448.0, 0x7E), (1.0625, 0x38), (1.1875, 0x3A), (440.0, 0x7E), (2.0**-10, 0x00), (3 * 2.0**-10, 0x02),
            (2.0**-6 - 2.0**-10, 0x08), (-0.0, 0x80), (-1.0625, 0xB8), (2.0**-12, 0x00)]
    values = torch.tensor([v for v, _ in want] + [0.3, -7.77, 100.0, 17.0, -448.0, 0.0])
    inp.hidden.copy_(values * torch.tensor([1.0, -1.0, 0.5, 1.0])[:, None])
    run = TritonSol(kernels).prepare(inp)
    assert float(run.scale) == 1.0
    gate(inp, run)
    assert_matches_reference(inp, run)
    row = as_bytes(run.permuted)[int(run.inv[0])]  # token 0, unscaled
    for col, (value, byte) in enumerate(want):
        assert int(row[col]) == byte, f"{value} quantized to {int(row[col]):#04x}, expected {byte:#04x}"


@pytest.mark.parametrize("dtype,mode", [(torch.float16, "auto"), (torch.float32, "auto"), (torch.float16, "fp8_w8a8"),
                                        (torch.bfloat16, "int8_w8a16")], ids=str)
def test_activation_dtypes_and_modes(kernels, dtype, mode):
    inp = small_inputs(t=20, e=128, k=8, h=HIDDEN, dtype=dtype, mode=mode)
    run = TritonSol(kernels).prepare(inp)
    gate(inp, run)
    assert_matches_reference(inp, run)
    if mode == "int8_w8a16":  # activations untouched: exactly auto's work and layout
        auto = TritonSol(kernels).prepare(dataclasses.replace(inp, dtype_mode="auto"))
        assert run.layout().scale is None and run.permuted.dtype == dtype
        assert torch.equal(run.permuted, auto.permuted) and torch.equal(run.inv, auto.inv)


class _CountingKernels:
    """The kernel module, with every launch recorded."""

    def __init__(self, module) -> None:
        self._module, self.launches = module, []

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not name.endswith("_kernel"):
            return attr
        launches = self.launches

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches.append(name)
                    return attr[grid](*args, **kwargs)
                return launch
        return Launcher()


@pytest.mark.parametrize("t,mode,permute_launches", [(2, "auto", ["scatter_kernel"]),
                                                     (40, "auto", ["route_kernel", "scatter_kernel"]),
                                                     (2, "fp8_w8a8", ["route_kernel", "scatter_kernel"])])
def test_launches_per_call(kernels, t, mode, permute_launches):
    counting = _CountingKernels(kernels)
    run = TritonSol(counting).prepare(small_inputs(t=t, e=256, k=8, h=32, dtype=torch.bfloat16, mode=mode))
    counting.launches.clear()
    run.permute()
    assert counting.launches == permute_launches
    counting.launches.clear()
    run.unpermute()
    assert counting.launches == ["unpermute_kernel"]
