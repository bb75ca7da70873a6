"""What a sweep can vary, and how a point is timed: the one torch-free owner of the grid's axes
(the expert-parallel shard among them) and of the timer's settings and defaults.

Every module takes them from here: the CLI (whose ``-h`` must not wait for torch), asv's
discovery and fork server (``suite``, which must not initialize CUDA), the sweep, the
implementations' registry and the timer itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import BadInput

if TYPE_CHECKING:
    import torch

DTYPE_MODES = ("auto", "fp8_w8a8", "int8_w8a16")
STANDARD_PATH = ("reference-standard", "vllm-standard")
CUSTOM_PATH = ("reference-custom", "vllm-custom", "vllm-custom-scratch", "vllm-ops", "triton-sol")
IMPLS = STANDARD_PATH + CUSTOM_PATH
# moebench's own code, which no vLLM commit changes: beside a vLLM series of the same shape, a step
# in one of these at the same commit is the machine (clocks, driver, a neighbour), not the commit.
CONTROL_IMPLS = ("triton-sol", "reference-custom", "reference-standard")
BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
OPS = ("permute", "unpermute")
L2_MODES = ("warm", "cold")
ROUTINGS = ("uniform", "skewed")

HOLD_S = 100e-6  # launching a graph of a few kernels takes the host ~5-50 µs
MAX_HOLD_S = 10e-3  # a graph of many nodes takes a few hundred; a late replay doubles the hold


@dataclass(frozen=True)
class TimerConfig:
    """How ``timing`` takes samples and ``runpoint.run_point`` takes rounds."""

    calls_per_graph: int = 10
    replays: int = 20  # per round
    warmup: int = 5
    rounds: int = 5  # independent measurements of a point (runpoint.run_point): fresh buffers and graph
    l2: str = "warm"
    max_seconds: float = 0.5  # host timer only
    min_replays: int = 5  # host timer only
    hold_s: float = HOLD_S  # CUDA: 0 = vLLM's recipe, host launch latency in every sample

    def __post_init__(self) -> None:
        if min(self.calls_per_graph, self.replays, self.rounds) < 1 or self.warmup < 0 or self.hold_s < 0:
            raise ValueError("calls_per_graph, replays and rounds must be >= 1, warmup and hold_s >= 0")
        if self.l2 not in L2_MODES:
            raise ValueError(f"l2 must be one of {L2_MODES}, got {self.l2!r}")


@dataclass(frozen=True)
class ExpertParallel:
    """Which shard of the experts this rank owns."""

    size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise BadInput(f"--ep-size must be >= 1, got {self.size}")
        if not 0 <= self.rank < self.size:
            raise BadInput(f"--ep-rank must be in [0, --ep-size={self.size}), got {self.rank}")

    def local_range(self, num_experts: int) -> range:
        """Global expert ids of this rank: contiguous, the first ranks take the remainder."""
        if self.size > num_experts:
            raise BadInput(f"--ep-size {self.size} exceeds the model's {num_experts} experts")
        base, extra = divmod(num_experts, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def expert_map(self, num_experts: int) -> torch.Tensor | None:
        """int32 [num_experts]: local id, or -1 for experts of other ranks. None without EP."""
        if self.size == 1:
            return None
        import torch

        local = self.local_range(num_experts)
        emap = torch.full((num_experts,), -1, dtype=torch.int32)
        emap[local.start : local.stop] = torch.arange(len(local), dtype=torch.int32)
        return emap


def device_type(device: torch.device | str) -> str:
    """"cuda" or "cpu" of a torch device or of its name ("cuda:1"), without importing torch."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def default_calls_per_graph(device: torch.device | str, l2: str) -> int:
    """10 calls per CUDA graph amortise the graph launch (warm L2, the seed's recipe). Cold L2
    flushes before each replay, so only a graph's first call would see a cold cache: one call.
    The host timer needs no amortising: one call."""
    return 10 if device_type(device) == "cuda" and l2 == "warm" else 1


def clock_name(device: torch.device | str) -> str:
    """The label every result carries: how its samples were taken."""
    return "cuda-graph" if device_type(device) == "cuda" else "cpu"
