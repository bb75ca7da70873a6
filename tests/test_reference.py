"""Properties of the pure-torch oracle and of the correctness gate built on it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import small_inputs
from moebench.check import check_permute, check_unpermute, expected_unpermute
from moebench.impls.base import CustomLayout, StandardLayout
from moebench.impls.reference import STANDARD_BLOCK_M, ReferenceCustom, ReferenceStandard, as_bytes
from moebench.quant import fp8_error_bound
from moebench.routing import ExpertParallel

IMPLS = [ReferenceStandard(), ReferenceCustom()]


def rows_per_slot(layout, n):
    inv = layout.inv_perm if isinstance(layout, StandardLayout) else layout.inv_permuted_idx
    return as_bytes(layout.permuted)[inv.long()[:n]]


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
@pytest.mark.parametrize("t,e,k", [(1, 8, 2), (37, 8, 2), (64, 128, 8), (200, 16, 4)])
def test_gate_accepts_reference(impl, t, e, k, device):
    inp = small_inputs(t=t, e=e, k=k, device=device)
    run = impl.prepare(inp)
    assert check_permute(inp, run.layout()) is None
    run.unpermute()
    assert check_unpermute(inp, run.layout(), run.unpermute_input(), run.unpermute_output()) is None


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_unit_weights_unpermute_of_permute_is_k_times_input(impl):
    inp = small_inputs(t=50, e=8, k=3)
    inp = dataclasses.replace(inp, topk_weights=torch.ones_like(inp.topk_weights))
    run = impl.prepare(inp)
    run.unpermute()
    torch.testing.assert_close(run.unpermute_output(), inp.hidden * 3, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("routing", ["uniform", "skewed"])
def test_both_layouts_agree(routing):
    inp = small_inputs(t=123, e=16, k=4, routing=routing, dtype=torch.bfloat16)
    std, cus = (impl.prepare(inp) for impl in IMPLS)
    n = 123 * 4
    assert torch.equal(rows_per_slot(std.layout(), n), rows_per_slot(cus.layout(), n))
    std.unpermute(), cus.unpermute()
    assert torch.equal(std.unpermute_output(), cus.unpermute_output())


def test_standard_layout_pads_each_expert_to_the_block():
    inp = small_inputs(t=300, e=8, k=2)
    lay = ReferenceStandard().prepare(inp).layout()
    ids = lay.sorted_token_ids.long()
    n = 600
    counts = torch.bincount(inp.topk_ids.reshape(-1).long(), minlength=8)
    for e in range(8):
        blocks = torch.nonzero(lay.expert_ids == e).squeeze(1)
        assert len(blocks) == -(-int(counts[e]) // STANDARD_BLOCK_M)
        rows = torch.cat([torch.arange(b * STANDARD_BLOCK_M, (b + 1) * STANDARD_BLOCK_M) for b in blocks])
        real = ids[rows][ids[rows] < n]
        assert len(real) == counts[e]
        assert bool((inp.topk_ids.reshape(-1)[real] == e).all())


def test_custom_layout_offsets_are_prefix_counts():
    inp = small_inputs(t=77, e=8, k=2, routing="skewed")
    lay = ReferenceCustom().prepare(inp).layout()
    counts = torch.bincount(inp.topk_ids.reshape(-1).long(), minlength=8)
    want = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    assert torch.equal(lay.expert_first_token_offset, want)
    assert lay.m_indices is None  # only the fp8 (aligned) layout carries m_indices


def test_fp8_dequantizes_within_e4m3_rounding():
    inp = small_inputs(t=64, e=8, k=2, h=128, dtype=torch.bfloat16, mode="fp8_w8a8")
    run = ReferenceCustom().prepare(inp)
    lay = run.layout()
    assert lay.scale is not None and lay.scale.numel() == 1
    assert lay.align_block_size == 128
    starts = lay.expert_first_token_offset
    assert bool((starts % 128 == 0).all())
    got = rows_per_slot(lay, 128).view(lay.permuted.dtype).float() * lay.scale
    src = inp.hidden.float().repeat_interleave(2, dim=0)
    err = (got - src).abs()
    bound = fp8_error_bound(src, lay.scale)
    assert bool((err <= bound).all())
    # The bound is tight enough to mean something: errors use a good part of it.
    assert float((err / bound).max()) > 0.25
    assert float(lay.scale) == pytest.approx(float(inp.hidden.float().abs().max()) / 448, rel=1e-6)
    assert check_permute(inp, lay) is None


def test_fp8_aligned_layout_marks_padding_rows():
    inp = small_inputs(t=10, e=4, k=2, h=64, dtype=torch.bfloat16, mode="fp8_w8a8")
    lay = ReferenceCustom().prepare(inp).layout()
    m = lay.m_indices
    off = lay.expert_first_token_offset
    for e in range(4):
        assert bool((m[int(off[e]):int(off[e + 1])] == e).all())  # padding rows included
    assert bool((m[int(off[-1]):] == -1).all())


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_ep_rows_of_other_ranks_are_skipped(impl):
    ep = ExpertParallel(size=4, rank=1)  # experts 4..7 of 16
    inp = small_inputs(t=90, e=16, k=2, ep=ep)
    assert inp.n_local_experts == 4
    assert torch.equal(inp.expert_map[4:8], torch.arange(4, dtype=torch.int32))
    assert bool((inp.expert_map[:4] == -1).all()) and bool((inp.expert_map[8:] == -1).all())
    run = impl.prepare(inp)
    lay = run.layout()
    assert check_permute(inp, lay) is None
    local = (inp.topk_ids >= 4) & (inp.topk_ids < 8)
    if isinstance(lay, CustomLayout):
        assert int(lay.expert_first_token_offset[-1]) == int(local.sum())
    run.unpermute()
    out = run.unpermute_output()
    w = inp.topk_weights * local
    want = (inp.hidden.unsqueeze(1) * w.unsqueeze(-1)).sum(1)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    no_local = ~local.any(1)
    assert bool(no_local.any()) and bool((out[no_local] == 0).all())


# --- the gate must catch what a broken kernel would do ----------------------------------------

def _custom(**changes):
    inp = small_inputs(t=40, e=8, k=2)
    run = ReferenceCustom().prepare(inp)
    return inp, run, dataclasses.replace(run.layout(), **changes) if changes else run.layout()


def test_gate_catches_rows_swapped_across_experts():
    inp, run, lay = _custom()
    p = lay.permuted.clone()
    first, last = 0, int(lay.expert_first_token_offset[-1]) - 1
    p[[first, last]] = p[[last, first]]
    assert "differ" in check_permute(inp, dataclasses.replace(lay, permuted=p))


def test_gate_catches_one_wrong_value():
    inp, run, lay = _custom()
    p = lay.permuted.clone()
    p[5, 3] += 1
    assert "differ" in check_permute(inp, dataclasses.replace(lay, permuted=p))


def test_gate_catches_wrong_segment_offsets():
    inp, run, lay = _custom()
    off = lay.expert_first_token_offset.clone()
    off[3] += 1
    assert check_permute(inp, dataclasses.replace(lay, expert_first_token_offset=off)) is not None


def test_gate_catches_a_non_bijective_inverse_map():
    inp, run, lay = _custom()
    inv = lay.inv_permuted_idx.clone()
    inv[1] = inv[0]
    assert "one-to-one" in check_permute(inp, dataclasses.replace(lay, inv_permuted_idx=inv))


def test_gate_catches_a_wrong_unpermute():
    inp, run, lay = _custom()
    run.unpermute()
    out = run.unpermute_output().clone()
    assert check_unpermute(inp, lay, run.unpermute_input(), out) is None
    out[7] *= 1.01
    assert "differs" in check_unpermute(inp, lay, run.unpermute_input(), out)
    out[7] = float("nan")
    assert "NaN" in check_unpermute(inp, lay, run.unpermute_input(), out)


def test_expected_unpermute_uses_fp32_accumulation():
    inp = small_inputs(t=8, e=4, k=4, h=32, dtype=torch.bfloat16)
    run = ReferenceCustom().prepare(inp)
    want = expected_unpermute(inp, run.layout(), run.unpermute_input())
    assert want.dtype == torch.float32


def test_inputs_are_the_seeded_draws_in_new_buffers_every_time(monkeypatch):
    """make_inputs keeps recent draws (drawing T x H normals costs more than timing a point), but
    every call gets new buffers with the values of a fresh draw, and the cache stays in its bytes."""
    from moebench import routing

    args = dict(num_experts=8, topk=2, hidden_size=64, num_tokens=32, dtype=torch.float32,
                dtype_mode="auto", device=torch.device("cpu"), seed=3)
    first = routing.make_inputs(**args)
    first.hidden.zero_()  # an implementation that wrote into its input must not change the next point's
    again = routing.make_inputs(**args)
    fresh = routing._draw(3, 32, 64, 8, 2, "uniform")
    assert torch.equal(again.hidden, fresh[0]) and torch.equal(again.topk_weights, fresh[1])
    assert torch.equal(again.topk_ids, fresh[2].int())
    assert again.hidden.data_ptr() != routing._DRAWS.get((3, 32, 64, 8, 2, "uniform"))[0].data_ptr()

    draws = routing._Draws(limit=3 * sum(t.numel() * t.element_size() for t in fresh))  # room for three
    calls = []
    monkeypatch.setattr(routing, "_draw", lambda *key: calls.append(key) or fresh)
    for seed in (0, 1, 2, 0, 3, 0, 1):
        draws.get((seed, 32, 64, 8, 2, "uniform"))
    assert [k[0] for k in calls] == [0, 1, 2, 3, 1]  # 0 stayed (used again), 1 was the oldest when 3 came
    assert draws.bytes <= draws.limit
    tiny = routing._Draws(limit=16)
    assert tiny.get((0, 32, 64, 8, 2, "uniform")) is fresh and tiny.bytes == 0  # too large to keep
