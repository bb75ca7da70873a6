"""Shared fixtures: small seeded inputs on CPU (and on CUDA where a GPU exists)."""

from __future__ import annotations

import pytest
import torch

from moebench.routing import ExpertParallel, make_inputs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def small_inputs(*, t=37, e=8, k=2, h=64, dtype=torch.float32, mode="auto", seed=0,
                 routing="uniform", ep=ExpertParallel(), device="cpu"):
    return make_inputs(num_experts=e, topk=k, hidden_size=h, num_tokens=t, dtype=dtype,
                       dtype_mode=mode, device=torch.device(device), seed=seed, routing=routing, ep=ep)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
