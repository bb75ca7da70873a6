"""Where vLLM's pieces come from: its kernel library (a file, or the installed vLLM's) and
its Python API (a file, or the installed vLLM's), loaded on first use and never at import.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import describe
from ...kernelwheel import file_sha256

MODULE_ENV = "MOEBENCH_VLLM_MODULE"
NOT_VLLM = "registers no _moe_C::moe_permute"  # a library that loads but is not vLLM's kernels
API_MODULE = "vllm.model_executor.layers.fused_moe.moe_permute_unpermute"
UTILS_MODULE = "vllm.model_executor.layers.fused_moe.utils"


class Unavailable(Exception):
    """Why a piece of vLLM cannot be used here; the text becomes the implementation's reason."""


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
                self._loaded[part] = Unavailable(describe(exc, 400))
        got = self._loaded[part]
        if isinstance(got, Unavailable):
            raise got
        return got

    def kernels(self) -> Kernels:
        return self._get("kernels")

    def python(self) -> PythonApi:
        self.kernels()
        return self._get("python")


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
            errors.append(f"vllm.{name}: {describe(exc, 400)}")
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
        raise Unavailable(f"cannot import {MODULE_ENV}={path}: {describe(exc, 400)}") from None
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
