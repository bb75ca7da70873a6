"""Benchmark inputs: hidden states, top-k routing and the expert-parallel shard.

Routing follows the seed (softmax over random gating logits, top-k, no renormalization) with a
seeded generator, plus a ``skewed`` mode where a few hot experts draw most tokens (real routers
are imbalanced, and imbalance changes the permute's scatter pattern). Expert parallelism gives
an ``expert_map`` (global id -> local id, -1 for other ranks' experts), contiguous shards like
vLLM's.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from .axes import ROUTINGS, ExpertParallel
from .errors import BadInput

# Skewed routing: this share of experts (at least one) gets a logit bonus large enough that they
# take roughly half of all (token, slot) assignments.
HOT_EXPERT_SHARE = 0.125
HOT_EXPERT_BONUS = 2.5
# The seeded draws of recent points are kept (host memory, least recently used first out): the
# points of one shape at one T differ only in dtype mode and implementation, and drawing T x H
# normals on the host took ~200 ms at T=4096 on an H200's host, longer than timing the point.
DRAWS_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class MoEInputs:
    """One point's inputs, already on the benchmark device."""

    hidden: torch.Tensor  # [T, H] activation dtype
    topk_weights: torch.Tensor  # [T, k] float32
    topk_ids: torch.Tensor  # [T, k] int32, global expert ids
    expert_map: torch.Tensor | None  # [E] int32, or None without expert parallelism
    num_experts: int
    n_local_experts: int
    dtype_mode: str

    @property
    def num_tokens(self) -> int:
        return self.hidden.shape[0]

    @property
    def topk(self) -> int:
        return self.topk_ids.shape[1]

    def copy(self) -> "MoEInputs":
        """The same values in newly allocated buffers: a round's fresh inputs."""
        return replace(self, hidden=self.hidden.clone(), topk_weights=self.topk_weights.clone(),
                       topk_ids=self.topk_ids.clone(),
                       expert_map=None if self.expert_map is None else self.expert_map.clone())

    def local_ids(self) -> torch.Tensor:
        """int64 [T*k]: local expert of each flat (token, slot), -1 if another rank owns it."""
        flat = self.topk_ids.reshape(-1).long()
        return flat if self.expert_map is None else self.expert_map.long()[flat]


def make_inputs(
    *,
    num_experts: int,
    topk: int,
    hidden_size: int,
    num_tokens: int,
    dtype: torch.dtype,
    dtype_mode: str,
    device: torch.device,
    seed: int,
    routing: str = "uniform",
    ep: ExpertParallel = ExpertParallel(),
) -> MoEInputs:
    """Seeded inputs, generated on the CPU so every device sees the same values."""
    if routing not in ROUTINGS:
        raise BadInput(f"unknown routing {routing!r} (choose from {', '.join(ROUTINGS)})")
    hidden, weights, ids = _DRAWS.get((seed, num_tokens, hidden_size, num_experts, topk, routing))
    emap = ep.expert_map(num_experts)
    return MoEInputs(
        # copies, never the cached draws themselves
        hidden=hidden.to(device=device, dtype=dtype, copy=True),
        topk_weights=weights.to(device, copy=True),
        topk_ids=ids.to(device=device, dtype=torch.int32, copy=True),
        expert_map=None if emap is None else emap.to(device),
        num_experts=num_experts,
        n_local_experts=len(ep.local_range(num_experts)),
        dtype_mode=dtype_mode,
    )


def _draw(seed: int, num_tokens: int, hidden_size: int, num_experts: int, topk: int,
          routing: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states (fp32), top-k weights and ids from one seeded CPU generator, in this order."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen, dtype=torch.float32)
    gating = torch.randn(num_tokens, num_experts, generator=gen, dtype=torch.float32)
    if routing == "skewed":
        n_hot = max(1, round(num_experts * HOT_EXPERT_SHARE))
        hot = torch.randperm(num_experts, generator=gen)[:n_hot]
        gating[:, hot] += HOT_EXPERT_BONUS
    weights, ids = torch.topk(torch.softmax(gating, dim=-1), topk, dim=-1)
    return hidden, weights, ids


class _Draws:
    """``_draw``'s results for recent arguments, within ``limit`` bytes (one draw larger than
    that is returned, not kept)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.bytes = limit, 0
        self._kept: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()

    def get(self, key: tuple) -> tuple[torch.Tensor, ...]:
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        drawn = _draw(*key)
        size = _nbytes(drawn)
        if size <= self.limit:
            while self.bytes + size > self.limit:
                _, old = self._kept.popitem(last=False)
                self.bytes -= _nbytes(old)
            self._kept[key] = drawn
            self.bytes += size
        return drawn


def _nbytes(tensors: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


_DRAWS = _Draws(DRAWS_CACHE_BYTES)
