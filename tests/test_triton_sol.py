"""triton-sol without a GPU: its kernels under Triton's interpreter (``triton_interpreted.py``, in a
child process: the interpreter is chosen for a whole process when Triton is first imported, so it
cannot be switched on next to the other tests of a pytest-xdist worker), its kernels compiled for
Hopper (rows move as 16-byte vectors), ``unavailable``'s reasons, and the package without Triton.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from moebench.impls import triton_sol
from moebench.impls.triton_sol import TritonSol


def _have_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["triton"] is None
        return False


HAVE_TRITON = _have_triton()
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
NO_TRITON = "triton is not installed (the test extra brings it)"

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason=NO_TRITON)
INTERPRETED = Path(__file__).with_name("triton_interpreted.py")
KERNEL_TESTS = 54 + 12 + 4 + 1 + 4 + 3  # what the child must pass, so a silently skipped test fails


@needs_triton
@pytest.mark.skipif(INTERPRETER, reason="this process is the interpreter child")
def test_kernels_under_the_interpreter():
    # a fresh pytest: none of this worker's xdist identity, the interpreter on from the first import
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env["TRITON_INTERPRET"] = "1"
    # the interpreter is slow: two worker processes where pytest-xdist is installed (the test extra)
    workers = ["-n", "2"] if importlib.util.find_spec("xdist") else []
    done = subprocess.run([sys.executable, "-m", "pytest", str(INTERPRETED), "-q", "-p", "no:cacheprovider", *workers],
                          cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=280)
    tail = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"kernel tests failed under the interpreter:\n{tail}"
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) == KERNEL_TESTS, f"expected {KERNEL_TESTS} kernel tests to pass:\n{tail}"


def _compile_for_hopper(fn, sig: dict, consts: dict, aligned: tuple[str, ...]):
    """Compile ``fn`` for sm_90 on this (GPU-less) machine with the wheel's ptxas; ``aligned``
    arguments are 16-divisible, as Triton specializes them at launch for real shapes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn=fn, signature={**sig, **{c: "constexpr" for c in consts}}, constexprs=consts, attrs=attrs)
    from moebench.impls.triton_sol import LAUNCH_OPTIONS

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Triton 3.9's warning that its FP-fusion default flips
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, **LAUNCH_OPTIONS})


@needs_triton
@pytest.mark.skipif(INTERPRETER, reason="compiles for a GPU: not under the interpreter")
def test_kernels_compile_for_hopper_with_16_byte_vectors():
    """The interpreter never lowers the kernels; this does (fp8, EP, both routing paths), and checks
    the property the bandwidth rests on: rows move as 16-byte vectors."""
    from moebench.impls import triton_kernels as kern

    counts = dict(ids_ptr="*i32", emap_ptr="*i32", n_slots="i32", n_local="i32")
    route = _compile_for_hopper(kern.route_kernel, {
        **counts, "counters_ptr": "*i32", "packed_ptr": "*i32", "start_ptr": "*i32", "count_ptr": "*i32",
        "efto_ptr": "*i64", "x_ptr": "*bf16", "scale_ptr": "*fp32", "n_route": "i32", "numel": "i32", "n_amax": "i32"},
        dict(HAS_EMAP=True, ALIGN=128, NB=512, LOG_NB=9, BS=128, SUB=16, GATHER=kern.HAS_GATHER, FP8=True,
             AMAX_BLOCK=4096, AMAX_ITERS=4), ("x_ptr",))
    assert "atom.global" in route.asm["ptx"]
    rows = dict(x_ptr="*bf16", packed_ptr="*i32", start_ptr="*i32", count_ptr="*i32", scale_ptr="*fp32",
                inv_ptr="*i32", pidx_ptr="*i32", midx_ptr="*i32", efto_ptr="*i64", n_tokens="i32", hidden="i32",
                n_rows="i32", **counts)
    for fp8, fused in ((True, False), (False, True)):
        scatter = _compile_for_hopper(kern.scatter_kernel, {**rows, "out_ptr": "*u8" if fp8 else "*bf16"},
                                      dict(K=8, TOK=4, BH=2048 if fp8 else 1024, NB=256, LOG_NB=8, ROUTE=fused,
                                           HAS_EMAP=True, SP=32, HB=1024, GATHER=kern.HAS_GATHER, FP8=fp8,
                                           SOFT_FP8=False, HAS_M=fp8, ALIGN=128 if fp8 else 1, FILL=True, EG=16,
                                           RC=2048), ("x_ptr", "out_ptr", "hidden"))
        ptx = scatter.asm["ptx"]
        assert ptx.count("ld.global.v4") >= 4 and ptx.count("st.global.v4") >= 32, "rows not moved as 16-byte vectors"
        assert ("cvt.rn.satfinite.e4m3x2" in ptx and "div.rn.f32" in ptx) == fp8
    unpermute = _compile_for_hopper(kern.unpermute_kernel, dict(
        rows_ptr="*bf16", inv_ptr="*i32", w_ptr="*fp32", out_ptr="*bf16", n_tokens="i32", hidden="i32"),
        dict(K=8, TOK=1, BH=1024), ("rows_ptr", "out_ptr", "hidden"))
    assert unpermute.asm["ptx"].count("ld.global.v4") == 8
    assert "fma.rn.f32" in unpermute.asm["ptx"]  # the weighted sum fused, as measured


def test_unavailable_names_the_reason(monkeypatch):
    impl = TritonSol(kernels=object())  # a stand-in module: nothing is launched here
    cuda = torch.device("cuda")
    assert "Triton kernels need a CUDA device" in impl.unavailable("auto", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "sees none" in impl.unavailable("fp8_w8a8", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the checks below need no GPU
    assert "unknown dtype mode" in impl.unavailable("int4", cuda)
    assert impl.unavailable("auto", cuda) is None
    assert impl.unavailable("int8_w8a16", cuda) is None

    monkeypatch.setattr(triton_sol, "unsupported_reason", lambda mode, device: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    why = impl.unavailable("fp8_w8a8", cuda)
    assert "compute capability >= 8.9" in why and "8.0" in why
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert impl.unavailable("fp8_w8a8", cuda) is None

    def no_triton():
        raise ImportError("No module named 'triton'")
    monkeypatch.setattr(triton_sol, "_import_kernels", no_triton)
    assert "triton is not installed" in TritonSol().unavailable("auto", cuda)


def test_package_imports_without_triton():
    """Triton is imported only when a run is prepared; without it the implementation says why."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from moebench.impls.triton_sol import TritonSol\n"
            "torch.cuda.is_available = lambda: True\n"
            "why = TritonSol().unavailable('auto', torch.device('cuda'))\n"
            "assert 'triton is not installed' in why, why\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
