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
This is the only module that imports vLLM, and it does so on the first question asked of an
implementation, never at import.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import BadInput, one_line
from ..kernelwheel import file_sha256
from ..quant import FP8_ALIGN_BLOCK, fp8_dtype, quantize_fp8_per_tensor, unsupported_reason
from ..routing import MoEInputs
from .base import CUSTOM, STANDARD, CustomLayout, Implementation, Layout, Run, StandardLayout, gemm_output_standin
from .reference import STANDARD_BLOCK_M, round_up

MODULE_ENV = "MOEBENCH_VLLM_MODULE"
NOT_VLLM = "registers no _moe_C::moe_permute"  # a library that loads but is not vLLM's kernels
API_MODULE = "vllm.model_executor.layers.fused_moe.moe_permute_unpermute"
UTILS_MODULE = "vllm.model_executor.layers.fused_moe.utils"
# ELF, then Mach-O (32/64-bit, both byte orders, universal): what a loadable extension starts with.
LIBRARY_MAGIC = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                 b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


class Unavailable(Exception):
    """Why a piece of vLLM cannot be used here; the text becomes the implementation's reason."""


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc, 400)}"[:400]


# --- where the pieces come from ------------------------------------------------------------------

@dataclass(frozen=True)
class Kernels:
    """An op namespace holding vLLM's MoE kernels (``torch.ops._moe_C`` once they are loaded)."""

    ops: Any
    origin: str


@dataclass(frozen=True)
class PythonApi:
    """The module defining ``moe_permute`` & co, and vLLM's fp8 quantizer where importable."""

    module: Any
    fp8_quantize: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None
    origin: str


class Source:
    """Where this process's vLLM comes from. Each part loads once, on first use; a failure is kept
    as the reason. The kernels load before the Python API: the API needs them, and a failure to
    load them is the reason worth reporting."""

    def __init__(self, kernels: Callable[[], Kernels], python: Callable[[], PythonApi]) -> None:
        self._loaders = {"kernels": kernels, "python": python}
        self._loaded: dict[str, Any] = {}

    def _get(self, part: str) -> Any:
        if part not in self._loaded:
            try:
                self._loaded[part] = self._loaders[part]()
            except Unavailable as exc:
                self._loaded[part] = exc
            except Exception as exc:  # an import or a dlopen can fail in any way: a reason, not a crash
                self._loaded[part] = Unavailable(_one_line(exc))
        got = self._loaded[part]
        if isinstance(got, Unavailable):
            raise got
        return got

    def kernels(self) -> Kernels:
        return self._get("kernels")

    def python(self) -> PythonApi:
        self.kernels()
        return self._get("python")


def check_library_path(path: str) -> None:
    """BadInput unless ``path`` is a readable shared library (whether it loads is asked later)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BadInput(f"--vllm-ops-library {path}: no such file")
    if not p.is_file():
        raise BadInput(f"--vllm-ops-library {path}: not a file")
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise BadInput(f"--vllm-ops-library {path}: cannot read it ({exc.strerror or exc})") from None
    if head not in LIBRARY_MAGIC:
        raise BadInput(f"--vllm-ops-library {path}: not a shared library "
                       "(expected a _moe_C*.so built from vLLM's csrc)")


def _has_op(ops: Any, name: str) -> bool:
    try:
        getattr(ops, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def library_kernels(path: str) -> Kernels:
    """Load a ``_moe_C*.so`` into this process: its ops appear as ``torch.ops._moe_C``."""
    resolved = str(Path(path).expanduser().resolve())
    try:
        torch.ops.load_library(resolved)
    except OSError as exc:
        # torch says only "Could not load this library"; the dlopen error is the cause.
        raise Unavailable(f"cannot load {path}: {' '.join(str(exc.__cause__ or exc).split())}") from None
    if not _has_op(torch.ops._moe_C, "moe_permute"):
        raise Unavailable(f"{path} {NOT_VLLM}")
    return Kernels(torch.ops._moe_C, f"library {resolved} (sha256 {file_sha256(resolved)[:16]})")


def _vllm_version(vllm: Any) -> str:
    return str(getattr(vllm, "__version__", "(version unknown)"))


def installed_kernels() -> Kernels:
    """The installed vLLM's ``_moe_C*`` extension modules, imported as vLLM itself imports them."""
    if importlib.util.find_spec("vllm") is None:
        raise Unavailable("vLLM is not installed (--vllm-ops-library PATH times a kernel library alone)")
    import vllm

    names = sorted(m.name for m in pkgutil.iter_modules(vllm.__path__) if m.name.startswith("_moe_C"))
    errors = []
    for name in names:
        try:
            importlib.import_module(f"vllm.{name}")
        except Exception as exc:
            errors.append(f"vllm.{name}: {_one_line(exc)}")
    if not _has_op(torch.ops._moe_C, "moe_permute"):
        why = "; ".join(errors) or f"no _moe_C extension registers moe_permute in {vllm.__path__[0]}"
        raise Unavailable(f"vLLM {_vllm_version(vllm)} is installed but its kernels are not loadable: {why}")
    return Kernels(torch.ops._moe_C, f"vLLM {_vllm_version(vllm)} ({', '.join(names)})")


def _vllm_fp8_quantize() -> Callable | None:
    """vLLM's ``_fp8_quantize`` if importable with the parameters the binding passes."""
    try:
        fn = importlib.import_module(UTILS_MODULE)._fp8_quantize
        params = tuple(inspect.signature(fn).parameters)[:3]
    except Exception:
        return None
    return fn if params == ("A", "A_scale", "per_act_token") else None


def installed_python() -> PythonApi:
    module = importlib.import_module(API_MODULE)
    vllm = sys.modules["vllm"]
    return PythonApi(module, _vllm_fp8_quantize(), f"vLLM {_vllm_version(vllm)} {API_MODULE}")


def file_python(path: str) -> PythonApi:
    """A copy of ``moe_permute_unpermute.py`` loaded from a file, under a private module name."""
    p = Path(path).expanduser().resolve()
    name = "moebench_vllm_file_" + hashlib.sha1(str(p).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise Unavailable(f"{MODULE_ENV}={path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise Unavailable(f"cannot import {MODULE_ENV}={path}: {_one_line(exc)}") from None
    return PythonApi(module, None, f"file {p}")


def _no_python(reason: str) -> Callable[[], PythonApi]:
    def load() -> PythonApi:
        raise Unavailable(reason)
    return load


def default_source(ops_library: str | None = None, module_path: str | None = None) -> Source:
    """The source the CLI uses: see the module docstring."""
    kernels = functools.partial(library_kernels, ops_library) if ops_library else installed_kernels
    if module_path:
        python: Callable[[], PythonApi] = functools.partial(file_python, module_path)
    elif ops_library:
        python = _no_python(f"--vllm-ops-library is given: the API paths run over it only with "
                            f"{MODULE_ENV}=<a moe_permute_unpermute.py> (an installed vLLM would "
                            "load its own kernels)")
    else:
        python = installed_python
    return Source(kernels, python)


# --- eras ------------------------------------------------------------------------------------------

def _schema_text(schema: Any) -> str:
    """A registered or parsed schema without namespace and alias-set names, e.g.
    ``moe_unpermute(Tensor permuted_hidden_states, ..., Tensor! hidden_states) -> ()``."""
    def arg(a: Any) -> str:
        write = "!" if a.alias_info is not None and a.alias_info.is_write else ""
        return f"{a.type}{write} {a.name}".strip()
    name = schema.name.split("::")[-1]
    return f"{name}({', '.join(map(arg, schema.arguments))}) -> ({', '.join(map(arg, schema.returns))})"


@functools.cache
def _parsed(schema: str) -> str:
    return _schema_text(torch._C.parse_schema(schema))


def _registered(ops: Any, name: str) -> str | None:
    if not _has_op(ops, name):
        return None
    return _schema_text(getattr(ops, name).default._schema)


@dataclass(frozen=True)
class OpsEra:
    """One generation of the ``_moe_C`` permute/unpermute op schemas (verbatim from the wheels)."""

    name: str
    releases: str
    permute: tuple[str, ...]  # accepted spellings
    unpermute: str
    kmajor: bool  # the caller passes k-major token_expert_indices; the map comes back k-major
    align: bool  # takes align_block_size and writes m_indices
    writes_permuted_idx: bool

    def matches(self, ops: Any) -> bool:
        return (_registered(ops, "moe_permute") in {_parsed(s) for s in self.permute}
                and _registered(ops, "moe_unpermute") == _parsed(self.unpermute))


_UNPERMUTE_B = ("moe_unpermute(Tensor permuted_hidden_states, Tensor topk_weights,Tensor inv_permuted_idx, "
                "Tensor? expert_first_token_offset, int topk, Tensor! hidden_states)->()")
OPS_ERAS = (
    OpsEra("A", "0.9.0–0.10.0", (
        "moe_permute(Tensor input, Tensor topk_weight, Tensor! topk_ids,Tensor token_expert_indicies, "
        "Tensor? expert_map, int n_expert,int n_local_expert,int topk, int? align_block_size,Tensor! "
        "permuted_input, Tensor! expert_first_token_offset, Tensor! src_row_id2dst_row_id_map, "
        "Tensor! m_indices)->()",
        "moe_permute(Tensor input, Tensor topk_weight, Tensor! topk_ids,Tensor token_expert_indices, "
        "Tensor? expert_map, int n_expert,int n_local_expert,int topk, int? align_block_size,Tensor! "
        "permuted_input, Tensor! expert_first_token_offset, Tensor! src_row_id2dst_row_id_map, "
        "Tensor! m_indices)->()"),
        "moe_unpermute(Tensor permuted_hidden_states, Tensor topk_weights,Tensor topk_ids,Tensor "
        "src_row_id2dst_row_id_map, Tensor expert_first_token_offset, int n_expert, int "
        "n_local_expert,int topk, Tensor! hidden_states)->()",
        kmajor=True, align=True, writes_permuted_idx=False),
    OpsEra("B", "0.10.1–0.15.1", (
        "moe_permute(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? expert_map, "
        "int n_expert,int n_local_expert,int topk, int? align_block_size,Tensor! permuted_input, "
        "Tensor! expert_first_token_offset, Tensor! inv_permuted_idx, Tensor! permuted_idx, "
        "Tensor! m_indices)->()",),
        _UNPERMUTE_B, kmajor=False, align=True, writes_permuted_idx=True),
    OpsEra("C", "0.16.0 on", (
        "moe_permute(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? expert_map, "
        "int n_expert,int n_local_expert,int topk, Tensor! permuted_input, Tensor! "
        "expert_first_token_offset, Tensor! inv_permuted_idx, Tensor! permuted_idx)->()",),
        _UNPERMUTE_B, kmajor=False, align=False, writes_permuted_idx=True),
)
WITH_SCRATCH_SCHEMA = (
    "moe_permute_with_scratch(Tensor input, Tensor topk_ids,Tensor token_expert_indices, Tensor? "
    "expert_map, int n_expert,int n_local_expert,int topk, Tensor! permuted_input, Tensor! "
    "expert_first_token_offset, Tensor! inv_permuted_idx, Tensor! permuted_idx, Tensor! "
    "sort_workspace, Tensor! permuted_experts_id, Tensor! sorted_row_idx, Tensor! "
    "topk_ids_for_sort)->()")


def detect_ops_era(kernels: Kernels) -> OpsEra:
    for era in OPS_ERAS:
        if era.matches(kernels.ops):
            return era
    found = "; ".join(_registered(kernels.ops, n) or f"no {n}" for n in ("moe_permute", "moe_unpermute"))
    known = ", ".join(f"{e.name} ({e.releases})" for e in OPS_ERAS)
    raise Unavailable(f"unknown _moe_C kernel era in {kernels.origin}: {found} (known: {known})")


_PERMUTE_A = ("hidden_states", "topk_weights", "topk_ids", "token_expert_indices", "topk", "n_expert",
              "n_local_expert", "expert_map", "align_block_size", "fill_invalid_expert")
_UNPERMUTE_A = ("permuted_hidden_states", "topk_weights", "topk_ids", "src_row_id2dst_row_id_map",
                "expert_first_token_offset", "topk", "n_expert", "n_local_expert")
_PERMUTE_B = ("hidden_states", "a1q_scale", "topk_ids", "n_expert", "n_local_expert", "expert_map",
              "align_block_size", "fill_invalid_expert")
_PERMUTE_C = ("hidden_states", "a1q_scale", "topk_ids", "n_expert", "n_local_expert", "expert_map",
              "permuted_hidden_states")
_UNPERMUTE = ("out", "permuted_hidden_states", "topk_weights", "inv_permuted_idx", "expert_first_token_offset")
SCRATCH_V1 = ("max_num_tokens", "topk", "num_experts", "num_local_experts", "device", "hidden_size", "hidden_dtype")
SCRATCH_V2 = ("num_experts", "num_local_experts", "device")
STANDARD_PERMUTE = ("curr_hidden_states", "a1q_scale", "curr_topk_ids", "global_num_experts", "expert_map", "block_m")
STANDARD_UNPERMUTE = ("out", "curr_hidden", "inv_perm", "topk_weight", "apply_router_weight_on_input")


@dataclass(frozen=True)
class ApiEra:
    """One generation of vLLM's Python ``moe_permute``/``moe_unpermute`` (and scratch class)."""

    name: str
    releases: str
    permute: tuple[str, ...]
    unpermute: tuple[str, ...]
    scratch: tuple[str, ...] | None  # MoEPermuteScratch's constructor parameters
    ops: OpsEra  # the kernels this Python calls
    passes_scale: bool  # a per-tensor a1q_scale goes through untouched (0.10.1 gathers it: carry it)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.releases})"


_OPS = {e.name: e for e in OPS_ERAS}
API_ERAS = (
    ApiEra("A", "0.9.0–0.10.0", _PERMUTE_A, _UNPERMUTE_A, None, _OPS["A"], passes_scale=False),
    ApiEra("B", "0.10.1", _PERMUTE_B, _UNPERMUTE, None, _OPS["B"], passes_scale=False),
    ApiEra("B'", "0.10.2–0.15.1", _PERMUTE_B + ("permuted_hidden_states",), _UNPERMUTE, None, _OPS["B"],
           passes_scale=True),
    ApiEra("C", "0.16–0.22", _PERMUTE_C, _UNPERMUTE, None, _OPS["C"], passes_scale=True),
    ApiEra("D", "0.23–0.31", _PERMUTE_C + ("scratch",), _UNPERMUTE, SCRATCH_V1, _OPS["C"], passes_scale=True),
    ApiEra("F", "0.32 on", _PERMUTE_C + ("scratch",), _UNPERMUTE, SCRATCH_V2, _OPS["C"], passes_scale=True),
)


def _params(module: Any, name: str) -> tuple[str, ...] | None:
    obj = getattr(module, name, None)
    if obj is None:
        return None
    try:
        return tuple(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def _describe(name: str, params: tuple[str, ...] | None) -> str:
    return f"no {name}" if params is None else f"{name}({', '.join(params)})"


def detect_api_era(python: PythonApi) -> ApiEra:
    m = python.module
    found = (_params(m, "moe_permute"), _params(m, "moe_unpermute"), _params(m, "MoEPermuteScratch"))
    for era in API_ERAS:
        if found == (era.permute, era.unpermute, era.scratch):
            return era
    seen = "; ".join(_describe(n, p) for n, p in zip(("moe_permute", "moe_unpermute", "MoEPermuteScratch"), found))
    known = ", ".join(e.label for e in API_ERAS)
    raise Unavailable(f"unknown vLLM Python API era in {python.origin}: {seen} (known: {known})")


# --- implementations -------------------------------------------------------------------------------

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


# --- runs ------------------------------------------------------------------------------------------

def _kmajor_indices(t: int, k: int, device: torch.device) -> torch.Tensor:
    """Era A's token_expert_indices as fused_topk makes them: element [t, j] = j*T + t."""
    return torch.arange(t * k, dtype=torch.int32, device=device).view(k, t).t().contiguous()


def _rowmajor_inverse(src2dst: torch.Tensor, t: int, k: int) -> torch.Tensor:
    """Era A's map is read k-major (entry j*T+t is pair (t, j)); the layouts want t*k+j."""
    return src2dst.reshape(k, t).t().reshape(-1)


def _quantizer(inputs: MoEInputs, vllm_quantize: Callable | None) -> Callable[[], tuple[torch.Tensor, torch.Tensor | None]]:
    """What the timed permute calls first: fp8_w8a8 quantizes per tensor, else the input as is."""
    h = inputs.hidden
    if inputs.dtype_mode != "fp8_w8a8":
        return lambda: (h, None)
    if vllm_quantize is not None:
        return lambda: vllm_quantize(h, None, False)
    q = torch.empty(h.shape, dtype=fp8_dtype(), device=h.device)
    scale = torch.empty(1, dtype=torch.float32, device=h.device)

    def quantize() -> tuple[torch.Tensor, torch.Tensor]:
        quantize_fp8_per_tensor(h, q, scale)
        return q, scale
    return quantize


class _VllmRun(Run):
    """Shared by the vLLM runs: the eager first permute, the unpermute input and output."""

    def __init__(self, inputs: MoEInputs) -> None:
        self.inputs = inputs
        self.t, self.k = inputs.topk_ids.shape
        self.fp8 = inputs.dtype_mode == "fp8_w8a8"
        self._result: torch.Tensor | None = None

    def _first_permute(self) -> None:
        """The gate reads what this wrote; an era broken as shipped fails here, in prepare."""
        self.permute()
        self._rows_in = gemm_output_standin(self.layout(), self.inputs.hidden.dtype)

    def unpermute_input(self) -> torch.Tensor:
        return self._rows_in

    def unpermute_output(self) -> torch.Tensor:
        assert self._result is not None, "unpermute has not run"
        return self._result

    def close(self) -> None:
        self.__dict__.clear()


class _StandardRun(_VllmRun):
    def __init__(self, binding: Binding, inputs: MoEInputs) -> None:
        super().__init__(inputs)
        m = binding.python.module
        self._moe_permute, self._reduce = m._moe_permute, m._moe_unpermute_and_reduce
        self._quantize = _quantizer(inputs, binding.python.fp8_quantize)
        self._result = torch.empty_like(inputs.hidden)
        self._first_permute()
        # unpermute reads this permute's inverse map, kept apart so its timing stands alone
        self._reduce_args = dict(out=self._result, curr_hidden=self._rows_in, inv_perm=self._out[0][4].clone(),
                                 topk_weight=inputs.topk_weights, apply_router_weight_on_input=False)

    def permute(self) -> None:
        x, scale = self._quantize()
        inp = self.inputs
        # a1q_scale=None: _moe_permute gathers any scale by token, which a per-tensor [1] scale
        # cannot survive; the binding carries it.
        self._out = (self._moe_permute(curr_hidden_states=x, a1q_scale=None, curr_topk_ids=inp.topk_ids,
                                       global_num_experts=inp.num_experts, expert_map=inp.expert_map,
                                       block_m=STANDARD_BLOCK_M), scale)

    def unpermute(self) -> None:
        self._reduce(**self._reduce_args)

    def layout(self) -> Layout:
        (permuted, _, sorted_ids, row_experts, inv), scale = self._out
        # expert_ids come back one per row (repeat_interleave'd); the layout keeps one per block.
        return StandardLayout(permuted=permuted, scale=scale, sorted_token_ids=sorted_ids,
                              expert_ids=row_experts[::STANDARD_BLOCK_M], inv_perm=inv, block_m=STANDARD_BLOCK_M)


def _make_scratch(cls: Any, scratch_params: tuple[str, ...], inputs: MoEInputs) -> Any:
    t, k = inputs.topk_ids.shape
    dev = inputs.hidden.device
    if scratch_params == SCRATCH_V1:
        # no hidden_size: the permuted buffer is passed explicitly, as vLLM's cutlass MoE does
        return cls(max_num_tokens=t, topk=k, num_experts=inputs.num_experts,
                   num_local_experts=inputs.n_local_experts, device=dev)
    scratch = cls(num_experts=inputs.num_experts, num_local_experts=inputs.n_local_experts, device=dev)
    scratch.reserve(t * k)  # grows (reallocates) only here, before any CUDA graph capture
    return scratch


class _ApiCustomRun(_VllmRun):
    def __init__(self, binding: Binding, inputs: MoEInputs, scratch: bool) -> None:
        super().__init__(inputs)
        era = self.era = binding.api_era
        m = binding.python.module
        self._moe_permute, self._moe_unpermute = m.moe_permute, m.moe_unpermute
        self._quantize = _quantizer(inputs, binding.python.fp8_quantize)
        t, k, dev = self.t, self.k, inputs.hidden.device
        self.align = FP8_ALIGN_BLOCK if self.fp8 and era.ops.align else None
        emap = inputs.expert_map
        self._ids_work = torch.empty_like(inputs.topk_ids) if era.ops.kmajor and emap is not None else None
        common = dict(n_expert=inputs.num_experts, n_local_expert=inputs.n_local_experts, expert_map=emap)
        if era.ops.kmajor:
            self._kwargs = dict(common, topk_weights=inputs.topk_weights, topk=k,
                                token_expert_indices=_kmajor_indices(t, k, dev), align_block_size=self.align)
        else:
            self._kwargs = dict(common, topk_ids=inputs.topk_ids)
            if era.ops.align:
                self._kwargs["align_block_size"] = self.align
            if scratch:
                row_dtype = fp8_dtype() if self.fp8 else inputs.hidden.dtype
                self._kwargs.update(
                    permuted_hidden_states=torch.empty(t * k, inputs.hidden.shape[1], dtype=row_dtype, device=dev),
                    scratch=_make_scratch(m.MoEPermuteScratch, era.scratch, inputs))
        self._first_permute()
        # unpermute reads copies of this permute's maps, so its timing does not depend on permute's
        res = self._out[0]
        if era.ops.kmajor:
            ids = inputs.topk_ids if self._ids_work is None else self._ids_work
            self._unpermute_kwargs = dict(
                permuted_hidden_states=self._rows_in, topk_weights=inputs.topk_weights, topk_ids=ids.clone(),
                src_row_id2dst_row_id_map=res[2].clone(), expert_first_token_offset=res[1].clone(), topk=k,
                n_expert=inputs.num_experts, n_local_expert=inputs.n_local_experts)
        else:
            self._result = torch.empty_like(inputs.hidden)
            self._unpermute_kwargs = dict(
                out=self._result, permuted_hidden_states=self._rows_in, topk_weights=inputs.topk_weights,
                inv_permuted_idx=res[3].clone(), expert_first_token_offset=res[2].clone())

    def permute(self) -> None:
        x, scale = self._quantize()
        if self.era.ops.kmajor:
            ids = self.inputs.topk_ids
            if self._ids_work is not None:  # era A rewrites the ids it is given when EP is on
                ids = self._ids_work.copy_(ids)
            self._out = (self._moe_permute(hidden_states=x, topk_ids=ids, **self._kwargs), scale)
        else:
            passed = scale if self.era.passes_scale else None
            self._out = (self._moe_permute(hidden_states=x, a1q_scale=passed, **self._kwargs), scale)

    def unpermute(self) -> None:
        if self.era.ops.kmajor:
            self._result = self._moe_unpermute(**self._unpermute_kwargs)
        else:
            self._moe_unpermute(**self._unpermute_kwargs)

    def layout(self) -> Layout:
        res, scale = self._out
        if self.era.ops.kmajor:
            permuted, offsets, src2dst, m_indices = res
            inv, permuted_idx = _rowmajor_inverse(src2dst, self.t, self.k), None
        else:
            permuted, returned_scale, offsets, inv, fifth = res
            if self.era.passes_scale:
                scale = returned_scale
            # the fifth output is m_indices where the era aligns, else permuted_idx
            permuted_idx, m_indices = (None, fifth) if self.era.ops.align else (fifth, None)
        return CustomLayout(permuted=permuted, scale=scale, expert_first_token_offset=offsets,
                            inv_permuted_idx=inv.reshape(-1), permuted_idx=permuted_idx,
                            m_indices=m_indices, align_block_size=self.align)


class _OpsRun(_VllmRun):
    def __init__(self, binding: Binding, inputs: MoEInputs) -> None:
        super().__init__(inputs)
        era = self.era = binding.ops_era
        ops = binding.kernels.ops
        self._op_permute, self._op_unpermute = ops.moe_permute, ops.moe_unpermute
        t, k, dev = self.t, self.k, inputs.hidden.device
        n, h = t * k, inputs.hidden.shape[1]
        e, n_local, emap = inputs.num_experts, inputs.n_local_experts, inputs.expert_map
        self.align = FP8_ALIGN_BLOCK if self.fp8 and era.align else None
        # rows as vLLM's Python sizes them: with align, room for every global expert's padding
        rows = n if self.align is None else round_up(n + e * (self.align - 1), self.align)
        x, self.scale = _quantizer(inputs, None)()  # kernel time only: fp8 quantized once, here
        self.permuted = torch.empty(rows, h, dtype=x.dtype, device=dev)
        self.offsets = torch.empty(n_local + 1, dtype=torch.int64, device=dev)
        self.inv = torch.empty(t, k, dtype=torch.int32, device=dev)
        # prefilled once as the Python API prefills them per call: the kernels write only used rows
        self.permuted_idx = torch.full((rows,), n, dtype=torch.int32, device=dev) if era.writes_permuted_idx else None
        self.m_indices = torch.full((rows,), -1, dtype=torch.int32, device=dev) if era.align else None
        self._ids_work = torch.empty_like(inputs.topk_ids) if era.kmajor and emap is not None else None
        ids = inputs.topk_ids if self._ids_work is None else self._ids_work
        self._result = torch.empty_like(inputs.hidden)
        if era.kmajor:
            self._permute_args = (x, inputs.topk_weights, ids, _kmajor_indices(t, k, dev), emap, e, n_local, k,
                                  self.align, self.permuted, self.offsets, self.inv, self.m_indices)
        else:
            tei = torch.arange(n, dtype=torch.int32, device=dev).view(t, k)
            self._permute_args = ((x, ids, tei, emap, e, n_local, k)
                                  + ((self.align,) if era.align else ())
                                  + (self.permuted, self.offsets, self.inv, self.permuted_idx)
                                  + ((self.m_indices,) if era.align else ()))
        self._first_permute()
        if era.kmajor:
            self._unpermute_args = (self._rows_in, inputs.topk_weights, ids, self.inv, self.offsets, e, n_local, k,
                                    self._result)
        else:
            self._unpermute_args = (self._rows_in, inputs.topk_weights, self.inv, self.offsets, k, self._result)

    def permute(self) -> None:
        if self._ids_work is not None:  # era A rewrites topk_ids in place when EP is on
            self._ids_work.copy_(self.inputs.topk_ids)
        self._op_permute(*self._permute_args)

    def unpermute(self) -> None:
        self._op_unpermute(*self._unpermute_args)

    def layout(self) -> Layout:
        inv = _rowmajor_inverse(self.inv, self.t, self.k) if self.era.kmajor else self.inv.reshape(-1)
        return CustomLayout(permuted=self.permuted, scale=self.scale, expert_first_token_offset=self.offsets,
                            inv_permuted_idx=inv, permuted_idx=self.permuted_idx, m_indices=self.m_indices,
                            align_block_size=self.align)
