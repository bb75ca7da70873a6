"""Registry of implementations. Names are the values of ``--impl`` and of the asv ``impl`` axis.

The standard path is what the seed timed by default; ``--use-customized-permute`` selects the
customized one. vLLM-backed implementations come from ``impls.vllm``, the only module that
imports vLLM, and report themselves unavailable (with the reason) where vLLM is absent.
"""

from __future__ import annotations

from ..axes import CUSTOM_PATH, STANDARD_PATH
from ..axes import IMPLS as ALL
from .base import CUSTOM, STANDARD, Implementation
from .reference import ReferenceCustom, ReferenceStandard
from .triton_sol import TritonSol


def implementations(vllm_ops_library: str | None = None, vllm_module: str | None = None) -> dict[str, Implementation]:
    """Every implementation by name, in ``ALL`` order (vLLM's from ``vllm_ops_library`` and
    ``vllm_module`` where given: ``impls.vllm``). A ``vllm_ops_library`` that is missing or not a
    shared library is BadInput here, so every front end rejects it the same way."""
    from ..kernelwheel import check_library_path
    from .vllm import vllm_implementations

    if vllm_ops_library:
        check_library_path(vllm_ops_library)

    found = [ReferenceStandard(), ReferenceCustom(), TritonSol(), *vllm_implementations(vllm_ops_library, vllm_module)]
    by_name = {i.name: i for i in found}
    return {name: by_name[name] for name in ALL if name in by_name}


__all__ = ["ALL", "CUSTOM", "CUSTOM_PATH", "STANDARD", "STANDARD_PATH", "Implementation", "implementations"]
