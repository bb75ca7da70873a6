"""vLLM binding: the standard path, the customized path through vLLM's Python API (with and
without its reusable scratch) and the bare ``_moe_C`` kernels, in every API era 0.9 → 0.33.

What each implementation times:
- ``vllm-standard``: ``_moe_permute`` + ``_moe_unpermute_and_reduce`` (vLLM 0.9.0–0.15.1; the
  seed's default path), as called by vLLM's DeepGEMM MoE: everything they allocate is timed.
- ``vllm-custom``: ``moe_permute`` + ``moe_unpermute`` through the Python API, as a model layer
  calls them: every allocation the API makes is inside the timed call (unpermute's ``out`` is the
  caller's, allocated in prepare, except in era A whose API allocates it).
- ``vllm-custom-scratch``: the same with a reusable ``MoEPermuteScratch`` and a preallocated
  permuted buffer (eras D and F: nothing is allocated per call).
- ``vllm-ops``: the registered ``torch.ops._moe_C`` kernels called directly, every buffer
  allocated (and prefilled as the API prefills it) in prepare: kernel time only. It calls
  ``moe_permute``, the op every era has, so one kernel's history spans all eras (its sort
  temporaries come from the caching allocator, fixed in a CUDA graph); the scratch op
  ``moe_permute_with_scratch`` is timed through ``vllm-custom-scratch``.

fp8_w8a8: the API paths quantize inside the timed permute with vLLM's own ``_fp8_quantize(h, None,
False)`` (per-tensor scale [1]) where it is importable, else with ``quant.quantize_fp8_per_tensor``;
the scale is passed where the era lets a per-tensor scale through and carried by the binding where
it would be gathered (0.10.1's ``moe_permute``, every ``_moe_permute``); eras A and B align expert
segments to 128 rows. ``vllm-ops`` quantizes in prepare. Era A rewrites ``topk_ids`` in place when
given an ``expert_map``, so with expert parallelism the ids are copied into a work buffer inside
every timed permute.

Eras are told apart by introspection, never by version strings: the parameter names of the Python
functions (``inspect.signature``) and the registered op schemas
(``torch.ops._moe_C.moe_permute.default._schema``). Anything unknown makes the implementation
unavailable with a reason that shows what was found. Outputs of every era are converted to the
core's layouts (untimed) so the correctness gate checks them like any other implementation.

Where vLLM comes from (a process holds one ``_moe_C``):
- kernels: the library given with ``--vllm-ops-library PATH`` (a freshly built ``_moe_C*.so``; no
  vLLM install needed), else the installed vLLM's;
- Python API: the file named by the environment variable ``MOEBENCH_VLLM_MODULE`` (a copy of some
  release's ``moe_permute_unpermute.py``; for kernel developers and testing: the files of 0.16–0.26
  import only torch), else the installed vLLM's — which is used only with the installed vLLM's
  kernels, since it would load its own.
This is the only package that imports vLLM, and it does so on the first question asked of an
implementation, never at import.
"""

from .eras import SCRATCH_V2, ApiEra, OpsEra, detect_api_era, detect_ops_era
from .implementations import Binding, VllmCustom, VllmOps, VllmStandard, vllm_implementations
from .runs import _rowmajor_inverse
from .source import (API_MODULE, MODULE_ENV, NOT_VLLM, UTILS_MODULE, Kernels, PythonApi, Source, Unavailable,
                     default_source, file_python, installed_kernels, installed_python, library_kernels)

__all__ = ["API_MODULE", "MODULE_ENV", "NOT_VLLM", "SCRATCH_V2", "UTILS_MODULE", "ApiEra", "Binding", "Kernels", "OpsEra",
           "PythonApi", "Source", "Unavailable", "VllmCustom", "VllmOps", "VllmStandard", "_rowmajor_inverse",
           "default_source", "detect_api_era", "detect_ops_era", "file_python",
           "installed_kernels", "installed_python", "library_kernels", "vllm_implementations"]
