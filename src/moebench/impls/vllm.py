"""vLLM binding (placeholder until the era-aware binding lands): reports vLLM as unavailable."""

from __future__ import annotations

import torch

from ..routing import MoEInputs
from .base import CUSTOM, STANDARD, Implementation, Run


class _Unavailable(Implementation):
    def __init__(self, name: str, layout: str) -> None:
        self.name, self.layout = name, layout  # type: ignore[misc]
        self.description = "vLLM"  # type: ignore[misc]

    def unavailable(self, dtype_mode: str, device: torch.device) -> str | None:
        return "the vLLM binding is not built yet"

    def prepare(self, inputs: MoEInputs) -> Run:
        raise NotImplementedError


def vllm_implementations(ops_library: str | None = None) -> list[Implementation]:
    return [_Unavailable("vllm-standard", STANDARD), _Unavailable("vllm-custom", CUSTOM),
            _Unavailable("vllm-custom-scratch", CUSTOM), _Unavailable("vllm-ops", CUSTOM)]


def check_library_path(path: str) -> None:
    """Placeholder: the binding validates --vllm-ops-library."""
