"""The four vLLM implementations over one source, and the binding of each to an era.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import BadInput
from ...quant import unsupported_reason
from ...routing import MoEInputs
from ..base import CUSTOM, STANDARD, Implementation, Run
from .eras import (STANDARD_PERMUTE, STANDARD_UNPERMUTE, WITH_SCRATCH_SCHEMA, ApiEra, OpsEra, _describe, _params,
                   _parsed, _registered, detect_api_era, detect_ops_era)
from .runs import _ApiCustomRun, _OpsRun, _StandardRun
from .source import MODULE_ENV, Kernels, PythonApi, Source, Unavailable, _has_op, default_source


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@dataclass(frozen=True)
class Binding:
    """What an implementation resolved: the pieces it calls and their eras."""

    kernels: Kernels
    python: PythonApi | None
    api_era: ApiEra | None
    ops_era: OpsEra | None
    device_ops: tuple[str, ...]  # ops that must have a kernel for the benchmark device

    def check_device(self, device: torch.device) -> None:
        key = _DISPATCH_KEYS.get(device.type)
        for name in self.device_ops:
            qualified = getattr(self.kernels.ops, name).default._schema.name
            if key is None or not torch._C._dispatch_has_computed_kernel_for_dispatch_key(qualified, key):
                raise Unavailable(f"{qualified} has no kernel for {device.type} devices ({self.kernels.origin})")
        ops = self.kernels.ops
        if _has_op(ops, "moe_permute_unpermute_supported") and not ops.moe_permute_unpermute_supported():
            raise Unavailable(f"moe_permute_unpermute_supported() is False for {self.kernels.origin}")

    def info(self) -> dict[str, str]:
        out = {"kernels": self.kernels.origin}
        if self.python is not None:
            out["python"] = self.python.origin
            out["fp8_quantizer"] = ("vLLM _fp8_quantize" if self.python.fp8_quantize is not None
                                    else "moebench quant.quantize_fp8_per_tensor")
        if self.api_era is not None:
            out["api_era"] = self.api_era.label
        if self.ops_era is not None:
            out["ops_era"] = f"{self.ops_era.name} ({self.ops_era.releases})"
        return out


class _VllmImplementation(Implementation):
    def __init__(self, source: Source) -> None:
        self.source = source
        self._bound: Binding | Unavailable | None = None

    @abstractmethod
    def _bind(self) -> Binding:
        """Resolve the pieces and their eras; raise Unavailable."""

    def binding(self, device: torch.device) -> Binding:
        """The resolved binding, usable on ``device``; raises Unavailable with the reason."""
        if self._bound is None:
            try:
                self._bound = self._bind()
            except Unavailable as exc:
                self._bound = exc
        if isinstance(self._bound, Unavailable):
            raise self._bound
        self._bound.check_device(device)
        return self._bound

    def unavailable(self, dtype_mode: str, device: torch.device) -> str | None:
        if (why := unsupported_reason(dtype_mode, device)) is not None:
            return why
        try:
            self.binding(device)
        except Unavailable as exc:
            return str(exc)
        return None

    def binding_info(self, device: torch.device) -> dict[str, str]:
        """Where the calls go and which eras were found (for result metadata)."""
        try:
            return self.binding(device).info()
        except Unavailable as exc:
            return {"unavailable": str(exc)}


class VllmStandard(_VllmImplementation):
    name = "vllm-standard"
    layout = STANDARD
    description = "vLLM _moe_permute + _moe_unpermute_and_reduce (0.9.0–0.15.1), block_m 128"

    def _bind(self) -> Binding:
        python = self.source.python()
        found = (_params(python.module, "_moe_permute"), _params(python.module, "_moe_unpermute_and_reduce"))
        if found == (None, None):
            raise Unavailable(f"{python.origin} has no _moe_permute/_moe_unpermute_and_reduce "
                              "(the standard path was removed in vLLM 0.16; time vllm-custom)")
        if found != (STANDARD_PERMUTE, STANDARD_UNPERMUTE):
            raise Unavailable(f"unknown standard-path signatures in {python.origin}: "
                              f"{_describe('_moe_permute', found[0])}; "
                              f"{_describe('_moe_unpermute_and_reduce', found[1])}")
        kernels = self.source.kernels()
        for op in ("moe_align_block_size", "moe_sum"):
            if not _has_op(kernels.ops, op):
                raise Unavailable(f"{kernels.origin} has no _moe_C::{op}, which the standard path calls")
        return Binding(kernels, python, None, None, ("moe_align_block_size", "moe_sum"))

    def prepare(self, inputs: MoEInputs) -> Run:
        return _StandardRun(self.binding(inputs.hidden.device), inputs)


class VllmCustom(_VllmImplementation):
    layout = CUSTOM

    def __init__(self, source: Source, scratch: bool) -> None:
        super().__init__(source)
        self.scratch = scratch
        self.name = "vllm-custom-scratch" if scratch else "vllm-custom"  # type: ignore[misc]
        self.description = ("vLLM moe_permute + moe_unpermute through the Python API"  # type: ignore[misc]
                            + (", reusable MoEPermuteScratch and permuted buffer" if scratch
                               else ", allocations included"))

    def _bind(self) -> Binding:
        python = self.source.python()
        era = detect_api_era(python)
        if self.scratch and era.scratch is None:
            raise Unavailable(f"vLLM's moe_permute takes no scratch in era {era.label}: nothing to reuse")
        kernels = self.source.kernels()
        if not era.ops.matches(kernels.ops):
            found = _registered(kernels.ops, "moe_permute") or "no moe_permute"
            raise Unavailable(f"the Python API ({python.origin}) is era {era.label} and calls era-{era.ops.name} "
                              f"kernels, but {kernels.origin} registers {found}")
        device_ops = ("moe_permute", "moe_unpermute")
        if self.scratch:
            if _registered(kernels.ops, "moe_permute_with_scratch") != _parsed(WITH_SCRATCH_SCHEMA):
                found = _registered(kernels.ops, "moe_permute_with_scratch") or "no moe_permute_with_scratch"
                raise Unavailable(f"{kernels.origin}: unknown scratch kernel ({found})")
            device_ops += ("moe_permute_with_scratch",)
        return Binding(kernels, python, era, era.ops, device_ops)

    def prepare(self, inputs: MoEInputs) -> Run:
        return _ApiCustomRun(self.binding(inputs.hidden.device), inputs, self.scratch)


class VllmOps(_VllmImplementation):
    name = "vllm-ops"
    layout = CUSTOM
    description = "vLLM's _moe_C moe_permute + moe_unpermute kernels, buffers preallocated (kernel time)"

    def _bind(self) -> Binding:
        kernels = self.source.kernels()
        return Binding(kernels, None, None, detect_ops_era(kernels), ("moe_permute", "moe_unpermute"))

    def prepare(self, inputs: MoEInputs) -> Run:
        return _OpsRun(self.binding(inputs.hidden.device), inputs)


def vllm_implementations(ops_library: str | None = None, module_path: str | None = None,
                         source: Source | None = None) -> list[Implementation]:
    """The four vLLM implementations over one source (by default: ``ops_library`` for the kernels,
    ``module_path`` or $MOEBENCH_VLLM_MODULE for the Python API, else the installed vLLM)."""
    if source is None:
        module_path = module_path or os.environ.get(MODULE_ENV) or None
        if module_path and not Path(module_path).expanduser().is_file():
            raise BadInput(f"{MODULE_ENV}={module_path}: no such file")
        source = default_source(ops_library, module_path)
    return [VllmStandard(source), VllmCustom(source, scratch=False), VllmCustom(source, scratch=True),
            VllmOps(source)]
