"""Which card measures which point when a grid is spread over several workers (the Ray pool's plan).

Why a plan: cards of one model differ (on one H200 host the second card ran the nightly grid ~7 %
slower, some small-T points up to ~9 %), and a point's number also depends a little on the points
its process measured before it. A history stays one history only if every night measures a point
on the same card after the same neighbours, so the plan is made from the points and the cards
alone, before the first point, never from which worker happened to be free (two two-GPU runs of the
nightly grid then disagreed on 58 `vllm-ops` points by more than 3 %; planned, on 2-4 of 1584
point-ops; docs/measurements.md).

How:
- Points that share their seeded inputs (``Point.inputs``: one shape, T and seed; every dtype,
  implementation and L2 mode) form a group and go to one worker, which draws the inputs once: split
  over two workers, the draws cost the pair 4-10 s more busy time than one GPU spends on the grid.
- Each group goes to the first card in its own order of preference (rendezvous hashing: the lanes
  ranked by a hash of the group and the lane) whose estimated load stays within ``SLACK`` of an even
  share, else to the least loaded; groups are taken in the order of their own hashes. So a group's
  card hardly depends on the rest of the grid: adding a model or a batch size to the nightly moves
  ~1-4 % of the existing points to another card (2 or 4 GPUs; at most ~10 %), where assigning the
  costliest group first to the least loaded card moved half of them (each a possible step in its
  history), and the loads stay within ~3 % of even (within ``SLACK`` and one group at worst).
- ``by_card`` hands lane k to the k-th card in (host, GPU ids) order, so a card gets the same
  lane whichever worker Ray started first; a lane lists its points in grid order, the order its
  worker measures them.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from .results import Point

SLACK = 0.02  # how far above an even share a card's estimated load may go to keep a group's first choice
# A point's seconds, estimated only to balance the plan: ~0.1 s of fixed work (captures, the gate,
# five rounds) plus its data (DeepSeek-V3 at T=4096, 235 M elements: ~0.7 s on an H200).
POINT_BASE_S = 0.1
POINT_ELEMENT_S = 3e-9


def cost(p: Point) -> float:
    return POINT_BASE_S + POINT_ELEMENT_S * p.num_tokens * p.topk * p.hidden_size


def _hash(*parts: object) -> int:
    """The same in every process and Python version (``hash`` of a str is salted per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def plan(points: Sequence[Point], workers: int) -> list[list[int]]:
    """The points (indices, in grid order) of each of ``workers`` lanes."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(p.inputs, []).append(i)
    costs = {g: sum(cost(points[i]) for i in members) for g, members in groups.items()}
    cap = (1 + SLACK) * sum(costs.values()) / workers
    load, lanes = [0.0] * workers, [[] for _ in range(workers)]
    for g in sorted(groups, key=_hash):
        ranked = sorted(range(workers), key=lambda k: _hash(g, k))
        k = next((k for k in ranked if load[k] + costs[g] <= cap), min(range(workers), key=lambda k: (load[k], k)))
        lanes[k] += groups[g]
        load[k] += costs[g]
    return [sorted(lane) for lane in lanes]


def by_card(points: Sequence[Point], cards: Sequence[tuple[str, Sequence[str]]]) -> list[list[int]]:
    """Each card's lane, in the order of ``cards`` (one (host, GPU ids) per worker, as Ray gave
    them, compared as text): lanes go to the cards sorted, workers with the same card (CPU
    workers have none) in the order given."""
    order = sorted(range(len(cards)), key=lambda i: (cards[i][0], tuple(cards[i][1])))
    lanes = plan(points, len(cards))
    out: list[list[int]] = [[] for _ in cards]
    for i, lane in zip(order, lanes):
        out[i] = lane
    return out
