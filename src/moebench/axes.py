"""What a sweep can vary, and how a point is timed: the one torch-free owner of the grid's axes
and of the timer's settings.

Every module takes them from here: the CLI (whose ``-h`` must not wait for torch), asv's
discovery and fork server (``suite``, which must not initialize CUDA), the sweep, the
implementations' registry and the timer itself.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_MODES = ("auto", "fp8_w8a8", "int8_w8a16")
STANDARD_PATH = ("reference-standard", "vllm-standard")
CUSTOM_PATH = ("reference-custom", "vllm-custom", "vllm-custom-scratch", "vllm-ops", "triton-sol")
IMPLS = STANDARD_PATH + CUSTOM_PATH
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
