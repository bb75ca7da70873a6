"""Bytes each op must move, the device's copy bandwidth, and the resulting time floor.

Bytes count each input read once and each output written once (the least any implementation can
move): permute reads the activations and the routing ids and writes the permuted rows plus its
index outputs; unpermute reads the rows of local slots, the weights and the inverse map and writes
the tokens. The ceiling is a measured streaming copy (read + write bytes per second), cached per
device name: a datasheet number would flatter every kernel. On CUDA the copy is a Triton kernel
where Triton is installed (torch's ``copy_`` reaches only ~2/3 of the bandwidth on H200), else
``copy_``; the source is recorded with the number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .axes import TimerConfig
from .files import cached, remember
from .gpustate import nvml

if TYPE_CHECKING:  # torch only where a ceiling is measured: a Ceiling unpickles without it
    import torch

CEILINGS = "ceilings.json"  # the cache file (``files.cache_dir``)
COPY_BYTES = 1 << 30  # large enough to defeat any cache (H200 L2 is 60 MiB)
CPU_COPY_BYTES = 256 << 20
INDEX_BYTES = 4  # routing ids and index outputs are int32


@dataclass(frozen=True)
class Ceiling:
    device: str
    bytes_per_s: float
    method: str  # "triton-copy", "torch-copy" or "cpu-copy"


def permute_bytes(t: int, k: int, h: int, n_local_slots: int, n_local: int, in_elt: int, out_elt: int) -> int:
    """Activations read once, routing ids read once, local rows written once, plus the inverse
    map, the source index of each row and the per-expert offsets (int64)."""
    return t * h * in_elt + t * k * INDEX_BYTES + n_local_slots * (h * out_elt + 2 * INDEX_BYTES) + (n_local + 1) * 8


def unpermute_bytes(t: int, k: int, h: int, n_local_slots: int, elt: int) -> int:
    """Rows of local slots read once, weights and inverse map read once, tokens written once."""
    return n_local_slots * h * elt + t * k * (4 + INDEX_BYTES) + t * h * elt


def floor_us(nbytes: int, ceiling: Ceiling) -> float:
    return nbytes / ceiling.bytes_per_s * 1e6


def _triton_copy():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def _copy(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)

    def copy(src: torch.Tensor, dst: torch.Tensor) -> None:
        n = src.numel()
        _copy[(triton.cdiv(n, 4096),)](src, dst, n, BLOCK=4096)

    return copy


def measure_ceiling(device: torch.device) -> Ceiling:
    """Stream a buffer far larger than any cache and time it like any other op."""
    import torch

    from .timing import measure

    name = device_name(device)
    nbytes = COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy = _triton_copy() if device.type == "cuda" else None
    method = "triton-copy" if copy else ("torch-copy" if device.type == "cuda" else "cpu-copy")
    if copy is None:
        copy = lambda s, d: d.copy_(s)  # noqa: E731
    cfg = TimerConfig(calls_per_graph=5, replays=20, warmup=3, max_seconds=2.0)
    samples = sorted(measure(lambda: copy(src, dst), device, cfg))
    best_median = samples[len(samples) // 2]
    del src, dst
    return Ceiling(device=name, bytes_per_s=2 * nbytes / best_median, method=method)


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _driver() -> str | None:
    """The NVIDIA driver's version (NVML), or None where there is none: a new driver can move the
    copy bandwidth, so the cache keys on it."""
    try:
        version = nvml().nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None


def cache_key(device: torch.device) -> str:
    name = device_name(device)
    driver = _driver() if device.type == "cuda" else None
    return f"{name} | driver {driver}" if driver else name


def ceiling(device: torch.device, refresh: bool = False) -> Ceiling:
    """Cached per device name and driver version; measured on first use. Workers of one machine
    (Ray actors, replaced isolated workers, every asv commit's setup_cache) share the file."""
    key = cache_key(device)
    if not refresh and (entry := cached(CEILINGS).get(key)) is not None:
        return Ceiling(**entry)
    c = measure_ceiling(device)
    remember(CEILINGS, key, asdict(c))
    return c
