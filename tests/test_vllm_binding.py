"""The vLLM binding against every API era, on the CPU.

The stand-ins (tests/standins/vllm_eras.py) copy each release's signatures and op schemas and
compute real outputs, so these tests run the binding's calls, its layout conversion and the core
correctness gate (through ``runpoint.run_point``, exactly as a sweep does) for every era, fp8 and
expert parallelism included. Where the digest's copies of the real release files exist
(/work/vllm-src), the real ``moe_permute_unpermute.py`` of all 13 releases runs too, over stand-in
kernels registered as ``_moe_C`` in a subprocess. Bad input and unloadable kernels are checked
with real files where this machine has them.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import small_inputs
from moebench import cli
from moebench.errors import BadInput
from moebench.gpustate import Nvml
from moebench.impls import implementations
from moebench.impls.base import StandardLayout
from moebench.impls.reference import ReferenceCustom, ReferenceStandard
from moebench.impls.vllm import (
    PythonApi,
    Source,
    Unavailable,
    _rowmajor_inverse,
    default_source,
    detect_api_era,
    detect_ops_era,
    installed_kernels,
    vllm_implementations,
)
from moebench.kernelwheel import check_library_path
from moebench.results import FAILED, OK, SKIPPED, Point
from moebench.roofline import Ceiling
from moebench.routing import ExpertParallel
from moebench.runpoint import run_point
from moebench.timing import TimerConfig
from standins import vllm_eras as standins

ROOT = Path(__file__).resolve().parents[1]
VLLM_SRC = Path(os.environ.get("MOEBENCH_VLLM_SRC", "/work/vllm-src"))
REAL_033_LIBRARY = ROOT / ".vllm-ops/0.33.0/_moe_C_stable_libtorch.abi3.so"
CPU = torch.device("cpu")
TIMER = TimerConfig(calls_per_graph=1, replays=1, rounds=1, max_seconds=0.0, min_replays=1)
CEILING = Ceiling("cpu", 1e10, "cpu-copy")
# E=16, k=4, H=64 bf16: 128-byte rows (fp8: 64), as the kernels' 16-byte vectors need.
E, K, H, T = 16, 4, 64, 37
EP = ExpertParallel(size=4, rank=1)


def impls_of(source: Source) -> dict:
    return {i.name: i for i in vllm_implementations(source=source)}


def point(impl: str, mode: str = "auto", ep: ExpertParallel = ExpertParallel(), t: int = T) -> Point:
    return Point(model="standin", num_experts=E, topk=K, hidden_size=H, act_dtype="bfloat16", dtype_mode=mode,
                 impl=impl, num_tokens=t, ep_size=ep.size, ep_rank=ep.rank)


def inputs(mode: str = "auto", ep: ExpertParallel = ExpertParallel(), t: int = T):
    return small_inputs(t=t, e=E, k=K, h=H, dtype=torch.bfloat16, mode=mode, ep=ep)


def expected_status(era: str, impl: str) -> tuple[str, str]:
    """What a sweep must record per era: (status, a piece of the reason)."""
    if impl == "vllm-standard":
        if era not in ("A", "B", "B'"):
            return SKIPPED, "standard path was removed in vLLM 0.16"
    if impl == "vllm-custom-scratch" and era not in ("D", "F"):
        return SKIPPED, "takes no scratch"
    return OK, ""


# --- every era through the sweep's own point runner -----------------------------------------------

@pytest.mark.parametrize("ep", [ExpertParallel(), EP], ids=["no-ep", "ep4"])
@pytest.mark.parametrize("mode", ["auto", "fp8_w8a8"])
@pytest.mark.parametrize("impl", ["vllm-standard", "vllm-custom", "vllm-custom-scratch", "vllm-ops"])
@pytest.mark.parametrize("release", list(standins.ERAS))
def test_every_era_passes_the_gate_or_says_why_not(release, impl, mode, ep):
    r = run_point(point(impl, mode, ep), impls_of(standins.source(release))[impl], CPU, TIMER, CEILING, Nvml())
    if release == "0.9.0" and impl == "vllm-standard":
        # broken as shipped: the failure is recorded with its reason, at prepare
        assert (r.status, r.ops) == (FAILED, ())
        assert "'Tensor' object has no attribute 'sizze'" in r.reason
        return
    status, why = expected_status(standins.ERAS[release], impl)
    assert r.status == status, r.reason
    assert why in (r.reason or "")
    if status == OK:
        assert [op.op for op in r.ops] == ["permute", "unpermute"]
        assert all(len(op.samples_us) == 1 for op in r.ops)


def test_0_9_0_standard_path_fails_in_prepare():
    with pytest.raises(AttributeError, match="sizze"):
        impls_of(standins.source("0.9.0"))["vllm-standard"].prepare(inputs())


@pytest.mark.parametrize("release", list(standins.ERAS))
def test_detects_each_release_era(release):
    src = standins.source(release)
    era = detect_api_era(src.python())
    assert era.name == standins.ERAS[release]
    assert detect_ops_era(src.kernels()).name == standins.OPS_ERAS[era.name]
    info = impls_of(src)["vllm-custom"].binding_info(CPU)
    assert info["api_era"].startswith(era.name + " (") and info["ops_era"].startswith(era.ops.name + " (")


@pytest.mark.parametrize("release", ["0.10.0", "0.10.1", "0.22.1", "0.33.0"])
@pytest.mark.parametrize("impl", ["vllm-custom", "vllm-ops"])
def test_outputs_match_the_reference_row_for_row(release, impl):
    """Beyond the gate: every local slot's row and the unpermuted tokens equal the oracle's."""
    inp = inputs(ep=EP)
    run, ref = impls_of(standins.source(release))[impl].prepare(inp), ReferenceCustom().prepare(inp)
    lay, ref_lay = run.layout(), ref.layout()
    local = inp.local_ids() >= 0
    assert torch.equal(lay.expert_first_token_offset, ref_lay.expert_first_token_offset)
    rows = lay.permuted[lay.inv_permuted_idx.long()[local]]
    assert torch.equal(rows, ref_lay.permuted[ref_lay.inv_permuted_idx[local]])
    run.unpermute(), ref.unpermute()
    torch.testing.assert_close(run.unpermute_output(), ref.unpermute_output(), rtol=1.6e-2, atol=1e-2)


def test_standard_layout_has_one_expert_per_block():
    inp = inputs(ep=EP)
    lay = impls_of(standins.source("0.15.1"))["vllm-standard"].prepare(inp).layout()
    ref = ReferenceStandard().prepare(inp).layout()
    assert isinstance(lay, StandardLayout) and lay.block_m == 128
    used = ref.expert_ids.numel()
    assert torch.equal(lay.expert_ids[:used], ref.expert_ids)  # same blocks, local id or -1


# --- what the binding passes, era by era ---------------------------------------------------------

def spied(release: str, with_vllm_quantizer: bool = True):
    """The stand-in ``release`` with its API functions recording the keyword arguments they get."""
    src = standins.source(release, with_vllm_quantizer)
    py = src.python()
    calls: list[tuple[str, dict]] = []
    module = types.ModuleType("spied")
    module.__dict__.update(vars(py.module))

    def record(name, fn):
        @functools.wraps(fn)  # keeps the signature the binding inspects
        def wrapper(*args, **kwargs):
            assert not args, f"{name} called positionally"
            calls.append((name, kwargs))
            return fn(**kwargs)
        return wrapper

    for name in ("moe_permute", "moe_unpermute", "_moe_permute"):
        if hasattr(py.module, name):
            setattr(module, name, record(name, getattr(py.module, name)))
    def quantize(*args):
        calls.append(("_fp8_quantize", {}))
        return py.fp8_quantize(*args)
    return Source(src.kernels, lambda: PythonApi(module, quantize if py.fp8_quantize else None, py.origin)), calls


def permute_calls(calls, name="moe_permute"):
    return [kw for n, kw in calls if n == name]


@pytest.mark.parametrize("release,scale_passed,align", [
    ("0.10.0", None, 128),  # era A: no a1q_scale parameter
    ("0.10.1", False, 128),  # gathers any scale by token: carried by the binding
    ("0.15.1", True, 128),
    ("0.22.1", True, None),
    ("0.24.0", True, None),
    ("0.33.0", True, None),
])
def test_fp8_scale_and_alignment_per_era(release, scale_passed, align):
    src, calls = spied(release)
    run = impls_of(src)["vllm-custom"].prepare(inputs("fp8_w8a8"))
    kw = permute_calls(calls)[0]
    if scale_passed is None:
        assert "a1q_scale" not in kw
    elif scale_passed:
        assert kw["a1q_scale"].shape == (1,)
    else:
        assert kw["a1q_scale"] is None
    assert kw.get("align_block_size") == align
    lay = run.layout()
    assert lay.align_block_size == align and lay.scale.shape == (1,)
    assert lay.permuted.dtype == torch.float8_e4m3fn
    # vLLM's quantizer runs inside every timed permute
    n = sum(1 for name, _ in calls if name == "_fp8_quantize")
    run.permute(), run.permute()
    assert sum(1 for name, _ in calls if name == "_fp8_quantize") == n + 2


def test_fp8_without_vllms_quantizer_uses_the_core_one():
    src, calls = spied("0.22.1", with_vllm_quantizer=False)
    impl = impls_of(src)["vllm-custom"]
    inp = inputs("fp8_w8a8")
    lay = impl.prepare(inp).layout()
    assert not any(name == "_fp8_quantize" for name, _ in calls)
    assert float(lay.scale) == pytest.approx(float(inp.hidden.float().abs().max()) / 448, rel=1e-6)
    assert impl.binding_info(CPU)["fp8_quantizer"] == "moebench quant.quantize_fp8_per_tensor"


@pytest.mark.parametrize("release", ["0.10.0", "0.10.1", "0.22.1", "0.33.0"])
def test_expert_parallel_passes_map_and_local_count(release):
    src, calls = spied(release)
    inp = inputs(ep=EP)
    impls_of(src)["vllm-custom"].prepare(inp)
    kw = permute_calls(calls)[0]
    assert kw["expert_map"] is inp.expert_map and kw["n_local_expert"] == 4 and kw["n_expert"] == E


def test_standard_path_gets_block_m_map_and_no_scale():
    src, calls = spied("0.15.1")
    inp = inputs("fp8_w8a8", ep=EP)
    lay = impls_of(src)["vllm-standard"].prepare(inp).layout()
    kw = permute_calls(calls, "_moe_permute")[0]
    assert kw["block_m"] == 128 and kw["a1q_scale"] is None and kw["expert_map"] is inp.expert_map
    assert lay.scale.shape == (1,)  # carried by the binding


def test_era_a_ids_survive_repeated_permutes_with_expert_parallelism():
    inp = inputs(ep=EP)
    ids = inp.topk_ids.clone()
    for impl in ("vllm-custom", "vllm-ops"):
        run = impls_of(standins.source("0.10.0"))[impl].prepare(inp)
        run.permute(), run.permute()
        assert torch.equal(inp.topk_ids, ids)
    # ... which matters: the era-A kernel rewrites the ids it is given, and a second call on them fails
    ops = standins.namespace("0.10.0")
    tei = torch.arange(T * K, dtype=torch.int32).view(K, T).t().contiguous()
    work = ids.clone()
    args = lambda: (inp.hidden, inp.topk_weights, work, tei, inp.expert_map, E, 4, K, None,
                    torch.empty(T * K, H, dtype=torch.bfloat16), torch.empty(5, dtype=torch.int64),
                    torch.empty(T, K, dtype=torch.int32), torch.full((T * K,), -1, dtype=torch.int32))
    ops.moe_permute(*args())
    assert not torch.equal(work, ids)
    with pytest.raises(IndexError):
        ops.moe_permute(*args())


def test_era_a_map_is_converted_from_k_major():
    # T=2, k=3: entry j*T + t holds the row of pair (t, j)
    src2dst = torch.tensor([[10, 11, 12], [13, 14, 15]], dtype=torch.int32)  # flat: 10..15
    # pair (t, j) -> flat j*2 + t; row-major order (0,0),(0,1),(0,2),(1,0),(1,1),(1,2) -> 0,2,4,1,3,5
    assert _rowmajor_inverse(src2dst, 2, 3).tolist() == [10, 12, 14, 11, 13, 15]


@pytest.mark.parametrize("release", ["0.24.0", "0.33.0"])
def test_scratch_is_reused_without_growth(release):
    src, calls = spied(release)
    run = impls_of(src)["vllm-custom-scratch"].prepare(inputs())
    run.permute(), run.permute()
    kws = permute_calls(calls)
    scratch, buf = kws[0]["scratch"], kws[0]["permuted_hidden_states"]
    assert buf.shape == (T * K, H)
    assert all(kw["scratch"] is scratch and kw["permuted_hidden_states"] is buf for kw in kws)
    assert scratch.max_expanded_rows == T * K  # era F: reserved in prepare, before any capture
    workspace = scratch.sort_workspace.data_ptr()
    run.permute()
    assert scratch.sort_workspace.data_ptr() == workspace


def test_custom_without_scratch_lets_the_api_allocate():
    src, calls = spied("0.33.0")
    impls_of(src)["vllm-custom"].prepare(inputs())
    kw = permute_calls(calls)[0]
    assert "scratch" not in kw and "permuted_hidden_states" not in kw


# --- unknown eras, mismatches, devices -------------------------------------------------------------

def test_unknown_api_era_is_unavailable_with_the_signature_found():
    impls = impls_of(standins.future_source())
    for name in ("vllm-custom", "vllm-custom-scratch"):
        why = impls[name].unavailable("auto", CPU)
        assert why.startswith("unknown vLLM Python API era in stand-in future vLLM")
        assert ("moe_permute(hidden_states, a1q_scale, topk_ids, n_expert, n_local_expert, expert_map, "
                "permuted_hidden_states, scratch, routing_mode)") in why
        assert "no MoEPermuteScratch" in why


def test_unknown_kernel_era_is_unavailable_with_the_schema_found():
    why = impls_of(standins.future_source())["vllm-ops"].unavailable("auto", CPU)
    assert why.startswith("unknown _moe_C kernel era in stand-in future _moe_C")
    assert "int topk, Optional[int] routing_mode, Tensor! permuted_input" in why


def test_python_and_kernels_of_different_eras_are_unavailable():
    mixed = Source(standins.source("0.10.1").kernels, standins.source("0.22.1").python)
    why = impls_of(mixed)["vllm-custom"].unavailable("auto", CPU)
    assert why.startswith("the Python API (stand-in vLLM 0.22.1) is era C (0.16–0.22) and calls era-C "
                          "kernels, but stand-in _moe_C of vLLM 0.10.1 registers moe_permute(")
    assert "Optional[int] align_block_size" in why


def test_kernels_without_a_kernel_for_the_device_are_unavailable():
    impls = impls_of(standins.cuda_only_source())
    for name in ("vllm-custom", "vllm-custom-scratch", "vllm-ops"):
        assert impls[name].unavailable("auto", CPU) == (
            "moebench_standin_cuda_only::moe_permute has no kernel for cpu devices (stand-in CUDA-only _moe_C)")


def test_a_build_that_says_unsupported_is_unavailable():
    why = impls_of(standins.unsupported_source())["vllm-ops"].unavailable("auto", CPU)
    assert why == "moe_permute_unpermute_supported() is False for stand-in unsupported _moe_C"


def test_dtype_problems_come_first():
    assert "unknown dtype mode" in impls_of(standins.source("0.33.0"))["vllm-ops"].unavailable("int4", CPU)


def test_cli_falls_back_to_custom_with_a_note_where_the_standard_path_is_gone():
    args = argparse.Namespace(impl=None, use_customized_permute=False, dtype="auto")
    registry = {"reference-standard": ReferenceStandard(), **impls_of(standins.source("0.22.1"))}
    names, notes = cli._select_impls(args, registry, CPU)
    assert names == ("reference-standard", "vllm-custom")
    assert notes == ["vllm-standard is unavailable (stand-in vLLM 0.22.1 has no _moe_permute/"
                     "_moe_unpermute_and_reduce (the standard path was removed in vLLM 0.16; time "
                     "vllm-custom)); timing vllm-custom instead"]
    registry = {"reference-standard": ReferenceStandard(), **impls_of(standins.source("0.15.1"))}
    assert cli._select_impls(args, registry, CPU) == (("reference-standard", "vllm-standard"), [])


# --- the gate and vLLM's untouched rows -------------------------------------------------------------

def test_gate_still_checks_unpermute_when_untouched_rows_hold_nan(monkeypatch):
    monkeypatch.setattr(standins, "POISON", float("nan"))
    inp = inputs(ep=EP)
    run = impls_of(standins.source("0.22.1"))["vllm-ops"].prepare(inp)
    run.unpermute()
    out = run.unpermute_output().clone()
    out[0] += 5.0
    from moebench.check import check_unpermute
    assert check_unpermute(inp, run.layout(), run.unpermute_input(), out) is not None


# --- kernel libraries and installed vLLM that cannot load --------------------------------------------

def test_check_library_path_rejects_what_cannot_be_a_library(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        check_library_path(str(tmp_path / "missing.so"))
    with pytest.raises(BadInput, match="not a file"):
        check_library_path(str(tmp_path))
    (tmp_path / "notes.so").write_text("not a library\n")
    with pytest.raises(BadInput, match="not a shared library"):
        check_library_path(str(tmp_path / "notes.so"))
    check_library_path(str(Path(torch.__file__).parent / "lib" / "libc10.so"))  # an ELF: accepted


def test_a_library_without_moe_kernels_is_unavailable():
    lib = str(Path(torch.__file__).parent / "lib" / "libc10.so")
    why = impls_of(default_source(lib))["vllm-ops"].unavailable("auto", CPU)
    assert why == f"{lib} registers no _moe_C::moe_permute"


def moebench(*args, env=None):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "moebench", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=120)


@pytest.mark.parametrize("argv,needle", [
    (["impls", "--vllm-ops-library", "/nonexistent/_moe_C.so"], "no such file"),
    (["--vllm-ops-library", "README.md", "--batch-size", "1"], "not a shared library"),
    (["--vllm-ops-library", "/usr/lib/x86_64-linux-gnu/libz.so.1", "--batch-size", "1"],
     "is not a vLLM kernel library: /usr/lib/x86_64-linux-gnu/libz.so.1 registers no _moe_C::moe_permute"),
])
def test_cli_rejects_a_bad_library_path(argv, needle):
    p = moebench(*argv)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("moebench: error: --vllm-ops-library") and needle in p.stderr


def test_cli_rejects_a_missing_module_file():
    p = moebench("impls", env={"MOEBENCH_VLLM_MODULE": "/nonexistent/moe_permute_unpermute.py"})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "MOEBENCH_VLLM_MODULE=/nonexistent/moe_permute_unpermute.py: no such file" in p.stderr


needs_real_library = pytest.mark.skipif(not REAL_033_LIBRARY.exists(), reason="vLLM 0.33.0's library is not here")


@needs_real_library
def test_real_033_library_is_unavailable_without_cuda_not_a_crash():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the library may load")
    impls = impls_of(default_source(str(REAL_033_LIBRARY)))
    for name in ("vllm-ops", "vllm-custom", "vllm-standard"):
        why = impls[name].unavailable("auto", CPU)
        assert why.startswith(f"cannot load {REAL_033_LIBRARY}: ") and "cannot open shared object file" in why


@needs_real_library
def test_cli_lists_the_real_library_as_unavailable():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the library may load")
    p = moebench("impls", "--vllm-ops-library", REAL_033_LIBRARY)
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("vllm-ops "))
    assert "unavailable: cannot load" in line and "cannot open shared object file" in line


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A directory put first on sys.path; every vllm module imported from it is forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
        del sys.modules[name]


@pytest.mark.parametrize("real", [False, pytest.param(True, marks=needs_real_library)], ids=["standin", "real-so"])
def test_installed_vllm_whose_kernels_cannot_load_is_unavailable(fake_site, real):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    standins.write_vllm_without_kernels(fake_site, REAL_033_LIBRARY if real else None)
    with pytest.raises(Unavailable) as exc:
        installed_kernels()
    name = "_moe_C_stable_libtorch" if real else "_moe_C"
    assert str(exc.value).startswith(
        f"vLLM 0.33.0+standin is installed but its kernels are not loadable: vllm.{name}: ImportError: ")
    assert "cannot open shared object file" in str(exc.value)
    impls = impls_of(default_source())
    assert {impls[n].unavailable("auto", CPU) for n in impls} == {str(exc.value)}


def test_importing_moebench_imports_no_vllm(tmp_path):
    """Even with a vLLM on the path, nothing imports it until an implementation is asked."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise SystemExit('vllm was imported')\n")
    code = ("import sys, moebench, moebench.cli, moebench.runpoint; from moebench.impls import implementations; "
            "implementations(); assert 'vllm' not in sys.modules; print('ok')")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{tmp_path}"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.stdout.strip() == "ok", p.stderr


def test_registry_holds_the_vllm_implementations():
    assert [n for n in implementations() if n.startswith("vllm")] == [
        "vllm-standard", "vllm-custom", "vllm-custom-scratch", "vllm-ops"]


# --- the real vLLM, where installed -----------------------------------------------------------------

def test_real_vllm_api_is_era_f():
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from moebench.impls.vllm import API_MODULE, SCRATCH_V2, installed_python
    api = installed_python()
    assert api.module.__name__ == API_MODULE
    era = detect_api_era(api)
    assert era.name == "F" and era.scratch == SCRATCH_V2
    assert tuple(inspect.signature(api.module.moe_unpermute).parameters) == era.unpermute
    assert hasattr(api.module.MoEPermuteScratch, "reserve")


# --- the real release files, over stand-in kernels ----------------------------------------------------

REAL_RELEASES = {"0.9.0": "A", "0.10.0": "A", "0.10.1": "B", "0.10.2": "B'", "0.15.1": "B'", "0.16.0": "C",
                 "0.22.1": "C", "0.23.0": "D", "0.24.0": "D", "0.26.0": "D", "0.31.0": "D", "0.32.0": "F",
                 "0.33.0": "F"}
MODULE_PATH = "vllm/model_executor/layers/fused_moe/moe_permute_unpermute.py"
needs_vllm_src = pytest.mark.skipif(not (VLLM_SRC / "sostrings").is_dir(), reason=f"{VLLM_SRC} is not here")

# Runs in a subprocess: `_moe_C` is defined once per process, here as a stand-in with the schemas of
# the given releases (identical for all of them), and each release's real file runs over it.
REAL_FILE_RUN = """
import inspect, json, sys, torch
from standins import vllm_eras as standins
args = json.loads(sys.argv[1])
standins.register([s for s in open(args["schemas"]).read().splitlines() if s.strip()], "_moe_C")
from moebench.gpustate import Nvml
from moebench.impls.vllm import Kernels, Source, file_python, vllm_implementations
from moebench.results import Point
from moebench.roofline import Ceiling
from moebench.runpoint import run_point
from moebench.timing import TimerConfig
timer = TimerConfig(calls_per_graph=1, replays=1, rounds=1, max_seconds=0.0, min_replays=1)
results = {}
for release in args["releases"]:
    standins.install_vllm_package(release)
    path = f"{args['root']}/{release}/{args['module_path']}"
    source = Source(lambda: Kernels(torch.ops._moe_C, "stand-in _moe_C"), lambda: file_python(path))
    impls = vllm_implementations(source=source)
    module = source.python().module
    out = results[release] = {"info": impls[1].binding_info(torch.device("cpu")), "points": [],
        "signatures": {n: list(inspect.signature(getattr(module, n)).parameters) for n in args["signed"] if hasattr(module, n)}}
    for impl in impls:
        for mode, ep in (("auto", (1, 0)), ("fp8_w8a8", (4, 1))):
            p = Point(model="m", num_experts=16, topk=4, hidden_size=64, act_dtype="bfloat16", dtype_mode=mode,
                      impl=impl.name, num_tokens=37, ep_size=ep[0], ep_rank=ep[1])
            r = run_point(p, impl, torch.device("cpu"), timer, Ceiling("cpu", 1e10, "cpu-copy"), Nvml())
            out["points"].append([impl.name, mode, ep[0], r.status, r.reason])
print(json.dumps(results))
"""
SIGNED = ("moe_permute", "moe_unpermute", "MoEPermuteScratch", "_moe_permute", "_moe_unpermute_and_reduce")


@pytest.fixture(scope="module")
def real_file_runs():
    """release -> what its real file did (or the subprocess's error): one subprocess per distinct
    set of op schemas, run in parallel."""
    groups: dict[str, list[str]] = {}
    for release in REAL_RELEASES:
        groups.setdefault((VLLM_SRC / "sostrings" / f"{release}.schemas.txt").read_text(), []).append(release)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}

    def run(releases):
        args = {"root": str(VLLM_SRC), "module_path": MODULE_PATH, "signed": SIGNED, "releases": releases,
                "schemas": str(VLLM_SRC / "sostrings" / f"{releases[0]}.schemas.txt")}
        p = subprocess.run([sys.executable, "-c", REAL_FILE_RUN, json.dumps(args)], capture_output=True,
                           text=True, env=env, timeout=240)
        return json.loads(p.stdout) if p.returncode == 0 else dict.fromkeys(releases, p.stderr[-3000:])

    with ThreadPoolExecutor(max_workers=2) as pool:
        return {k: v for done in pool.map(run, groups.values()) for k, v in done.items()}


@needs_vllm_src
@pytest.mark.parametrize("release", list(REAL_RELEASES))
def test_real_release_file_runs_through_the_gate(real_file_runs, release):
    got = real_file_runs[release]
    assert isinstance(got, dict), got
    era = REAL_RELEASES[release]
    assert got["info"]["api_era"].startswith(era + " (")
    assert len(got["points"]) == 8
    for impl, mode, ep, status, reason in got["points"]:
        if release == "0.9.0" and impl == "vllm-standard":
            assert status == FAILED and "sizze" in reason
            continue
        want, why = expected_status(era, impl)
        assert (status, why in (reason or "")) == (want, True), (impl, mode, ep, reason)


@needs_vllm_src
@pytest.mark.parametrize("release", list(standins.ERAS))
def test_standins_copy_the_real_signatures(real_file_runs, release):
    got = real_file_runs[release]
    assert isinstance(got, dict), got
    module = standins.source(release).python().module
    mine = {n: list(inspect.signature(getattr(module, n)).parameters) for n in got["signatures"]}
    assert mine == got["signatures"]
    assert not set(vars(module)) & {"moe_permute", "_moe_permute", "MoEPermuteScratch"} - set(got["signatures"])


@needs_vllm_src
@pytest.mark.parametrize("release", list(standins.SCHEMAS))
def test_standin_schemas_are_verbatim(release):
    real = set((VLLM_SRC / "sostrings" / f"{release}.schemas.txt").read_text().splitlines())
    assert set(standins.SCHEMAS[release]) <= real
