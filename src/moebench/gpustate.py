"""The GPU's state next to each number: SM clock, temperature, power and throttle reasons (NVML);
and how many GPUs this process may use, asked without torch (``visible_gpus``).

A point measured while the card was power- or thermally-throttled is flagged, never silently
averaged in. NVML is addressed by the CUDA device's UUID so CUDA_VISIBLE_DEVICES reordering cannot
attach another card's state to a number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import one_line

if TYPE_CHECKING:
    import torch

# NVML clocks-event (throttle) reason bits that mean the number is not the card's normal speed.
# GPU idle (0x1), application clocks (0x2), sync boost (0x10) and display clocks (0x100) are not
# slowdowns of a running kernel.
THROTTLE_BITS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
}


@dataclass(frozen=True)
class GpuState:
    """What NVML said of the card after a measurement; where it could not say, only ``error``."""

    sm_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    throttle_reasons: tuple[str, ...] = ()
    error: str | None = None  # why the state is unknown (no NVML library, driver or permission)

    @property
    def throttled(self) -> bool:
        return bool(self.throttle_reasons)


def decode_reasons(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_BITS.items() if mask & bit)


def nvml():
    """NVML (nvidia-ml-py's ``pynvml``), initialized: the one place that opens it. Raises where
    there is no library, driver or permission; callers decide what that means for them."""
    import pynvml

    pynvml.nvmlInit()
    return pynvml


class Nvml:
    """Opened once per process. ``read`` returns None off CUDA devices; on a CUDA device whose
    state NVML cannot give, a ``GpuState`` with only ``error``, so a result says why its state is
    unknown instead of being silent about it."""

    def __init__(self) -> None:
        self.error: str | None = None
        try:
            self._nv = nvml()
        except Exception as exc:  # no library, no driver, no permission: state is just unknown
            self._nv = None
            self.error = f"NVML unavailable: {one_line(exc, 120)}"
        # per CUDA index: NVML's handle and the card's max SM clock (a property of the card, read
        # once: it took 1.5 ms a read on an H200, the other four queries ~0.1 ms together)
        self._cards: dict[int, tuple[object, int]] = {}

    def _card(self, device: torch.device) -> tuple[object, int]:
        import torch

        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in self._cards:
            nv = self._nv
            uuid = getattr(torch.cuda.get_device_properties(idx), "uuid", None)
            try:
                h = nv.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid else None
            except nv.NVMLError:
                h = None
            h = h if h is not None else nv.nvmlDeviceGetHandleByIndex(idx)
            self._cards[idx] = (h, nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM))
        return self._cards[idx]

    def read(self, device: torch.device) -> GpuState | None:
        if device.type != "cuda":
            return None
        if self._nv is None:
            return GpuState(error=self.error)
        nv = self._nv
        try:
            h, max_clock = self._card(device)
            reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
            return GpuState(
                sm_clock_mhz=nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                max_sm_clock_mhz=max_clock,
                temperature_c=nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                power_w=nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                throttle_reasons=decode_reasons(reasons_fn(h)),
            )
        except Exception as exc:
            return GpuState(error=f"NVML read failed: {one_line(exc, 120)}")


def visible_gpus() -> int:
    """GPUs this process may use, without importing torch (3.6 s on an H200 host: the asv suite's
    setup_cache process only hands points to workers): NVML's count, cut to CUDA_VISIBLE_DEVICES
    where it is set (CUDA stops at its first invalid entry: "-1" hides every GPU). 0 where NVML
    cannot answer."""
    try:
        count = nvml().nvmlDeviceGetCount()
    except Exception:  # no library, no driver: no GPU this process could use
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count
    ids = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry.startswith("-"):
            break
        ids.append(entry)
    return min(len(ids), count)
