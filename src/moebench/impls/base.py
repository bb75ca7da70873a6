"""The one interface every implementation answers, and the two layouts permute can produce.

An implementation says why it cannot run (``unavailable``), and ``prepare`` returns a ``Run``
holding every buffer the timed calls need — allocated outside the timed region. ``Run.permute``
and ``Run.unpermute`` are exactly what is timed: no host sync, capturable in a CUDA graph on GPU.
The sweep, the correctness gate, the CLI and the asv classes only ever see this interface.

Layouts: the *standard* path sorts (token, slot) pairs by expert into segments padded to a block
size (``moe_align_block_size``) and gathers; the *customized* path writes per-expert segments
described by ``expert_first_token_offset``. Row order inside one expert's segment is not part of
either contract, so correctness is checked through the inverse map (``check.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..routing import MoEInputs

STANDARD = "standard"
CUSTOM = "custom"


@dataclass(frozen=True)
class StandardLayout:
    """Output of the standard path: rows grouped by expert, each group padded to ``block_m``."""

    permuted: torch.Tensor  # [R, H] activation (or fp8) rows
    scale: torch.Tensor | None  # fp8 scale carried with the rows
    sorted_token_ids: torch.Tensor  # [R] flat slot t*k+j of each row; T*k on padding rows
    expert_ids: torch.Tensor  # [R // block_m] local expert of each block, -1 if not local
    inv_perm: torch.Tensor  # [T*k] row that holds flat slot t*k+j
    block_m: int


@dataclass(frozen=True)
class CustomLayout:
    """Output of the customized path (``moe_permute``)."""

    permuted: torch.Tensor  # [R, H]
    scale: torch.Tensor | None
    expert_first_token_offset: torch.Tensor  # [n_local+1] int64, start row of each local expert
    inv_permuted_idx: torch.Tensor  # [T*k] row of flat slot t*k+j (local slots only)
    permuted_idx: torch.Tensor | None  # [R] source flat slot of each row (T*k where unused)
    m_indices: torch.Tensor | None  # [R] expert of each row, -1 on padding (aligned eras)
    align_block_size: int | None


Layout = StandardLayout | CustomLayout


class Run(ABC):
    """Buffers of one point for one implementation; the two timed calls."""

    @abstractmethod
    def permute(self) -> None:
        """Timed: scatter the hidden states into expert order (fp8: quantize first)."""

    @abstractmethod
    def unpermute(self) -> None:
        """Timed: gather rows back per token and reduce over top-k with the router weights."""

    @abstractmethod
    def layout(self) -> Layout:
        """What the last ``permute`` wrote (read by the correctness gate, never timed)."""

    @abstractmethod
    def unpermute_input(self) -> torch.Tensor:
        """The [R, H] rows ``unpermute`` reads: stand-in for the expert GEMM output."""

    @abstractmethod
    def unpermute_output(self) -> torch.Tensor:
        """[T, H] result of the last ``unpermute``."""

    def close(self) -> None:
        """Release buffers (asv teardown, between points)."""


class Implementation(ABC):
    """A named way of doing permute + unpermute."""

    name: ClassVar[str]
    layout: ClassVar[str]  # STANDARD or CUSTOM
    description: ClassVar[str]

    @abstractmethod
    def unavailable(self, dtype_mode: str, device: torch.device) -> str | None:
        """Why this cannot run here (missing library, era lacks it, device), or None."""

    @abstractmethod
    def prepare(self, inputs: MoEInputs) -> Run:
        """Allocate outputs and scratch for ``inputs``; run nothing that is timed."""


def gemm_output_standin(layout: Layout, dtype: torch.dtype) -> torch.Tensor:
    """The unpermute input: permuted rows in the activation dtype, as the expert GEMM would
    emit them (the seed does the same cast). Rows of blocks owned by other expert-parallel ranks
    are zeroed, as the GEMM leaves them, so every layout reduces to the same sum."""
    rows = layout.permuted.to(dtype, copy=True)
    if isinstance(layout, StandardLayout):
        not_local = (layout.expert_ids < 0).repeat_interleave(layout.block_m)
        rows[not_local[: rows.shape[0]]] = 0
    return rows
