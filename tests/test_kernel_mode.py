"""Kernel-library mode end to end: real asv, a virtualenv environment, the project's own
``install_command`` and suite, over a stand-in vLLM project of four commits whose wheels (in a
local per-commit index) carry stand-in kernel libraries (``standins.kernel_wheel``):

1. a library at the base speed;
2. the same kernels with ``moe_permute`` slower by SLOW_S per call;
3. a library that cannot load into this torch (an undefined symbol);
4. a wheel built from commit 1, served in commit 4's folder.

Each commit must be timed with its own library (2 is slower than 1 by about SLOW_S, through both
``vllm-ops`` and the customized path over the wheel's own module), 3 must be n/a with the loader's
reason, 4 must be rejected before anything is timed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moebench import asvlocal
from moebench.kernelwheel import ENV_DIR, MANIFEST
from standins.kernel_wheel import MISSING_SYMBOL, build_library, kernel_wheel
from test_wheels import MACHINE, publish

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(asvlocal.platform.machine() != MACHINE, reason="stand-in wheels are x86_64")]

SLOW_S = 0.05  # large against what a loaded 2-core machine does to two medians measured apart
ASV_MACHINE = "standin-cpu"


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True,
                          text=True).stdout.strip()


def _project(repo: Path, n: int) -> list[str]:
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    for i in range(n):
        (repo / "kernels.cu").write_text(f"// state {i}\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"commit {i}", "--date", f"2026-01-0{i + 1}T00:00:00")
    return _git(repo, "rev-list", "--reverse", "main").split()


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    root = tmp_path_factory.mktemp("kernel-mode")
    shas = _project(root / "vllm", 4)
    index, libs = root / "index", root / "libs"
    libs.mkdir()
    base = build_library(libs / "base.so")
    made = [(shas[0], shas[0], base), (shas[1], shas[1], build_library(libs / "slow.so", slow_permute_s=SLOW_S)),
            (shas[2], shas[2], build_library(libs / "broken.so", loadable=False)), (shas[3], shas[0], base)]
    for i, (sha, carries, lib) in enumerate(made):
        publish(index, sha, kernel_wheel(index / sha, f"0.40.{i}.dev1+g{carries[:9]}", carries, lib))
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    conf = asvlocal.write_config(root / "work", root / "vllm", root / "html", environment_type="virtualenv",
                                 pythons=[python], matrix={"req": {"pip+asv_runner": "0.3.2"}})
    env = {**os.environ, "HOME": str(root), "MOEBENCH_WHEEL_INDEX": str(index),
           "MOEBENCH_WHEEL_CACHE": str(root / "cache"), "MOEBENCH_TORCH_PYTHON": sys.executable,
           "MOEBENCH_KERNEL_LEDGER": str(root / "ledger.jsonl"),
           "MOEBENCH_MODELS": "Qwen/Qwen3-30B-A3B", "MOEBENCH_DTYPES": "auto",
           "MOEBENCH_IMPLS": "vllm-ops,vllm-custom", "MOEBENCH_BATCH_SIZES": "1,4", "MOEBENCH_L2": "warm",
           "MOEBENCH_ROUNDS": "3", "MOEBENCH_REPLAYS": "5", "MOEBENCH_RAY": "off", "PYTHONPATH": "",
           # one torch thread: on a CPU shared with the other test worker, torch's thread pool
           # waiting at its barriers once turned a 0.2 ms unpermute into 36 ms
           "OMP_NUM_THREADS": "1"}
    env.pop("MOEBENCH_VLLM_INSTALL", None)  # the default mode is under test
    assert asvlocal.asv(["machine", "--yes", "--machine", ASV_MACHINE], conf, env).returncode == 0
    (root / "hashes.txt").write_text("\n".join(shas) + "\n")
    run = asvlocal.asv(["run", f"HASHFILE:{root / 'hashes.txt'}", "--machine", ASV_MACHINE, "--record-samples",
                        "--show-stderr"], conf, env, capture=True)
    results = Path(json.loads(conf.read_text())["results_dir"]) / ASV_MACHINE
    return shas, run, results, root


def _result(results: Path, sha: str) -> dict | None:
    files = list(results.glob(f"{sha[:8]}-*.json"))
    return json.loads(files[0].read_text()) if files else None


def _medians(result: dict, track: str) -> dict[tuple[str, str], float | None]:
    """(impl, tokens) -> asv's median for ``WarmL2.<track>``."""
    import itertools

    name = f"moe.WarmL2.{track}"
    columns = result["result_columns"]
    entry = dict(zip(columns, result["results"][name]))
    params = entry["params"]
    return {(impl, tokens): value for (_, _, impl, tokens), value in
            zip(itertools.product(*params), entry["result"])}


def test_each_commit_is_timed_with_its_own_kernel_library(history):
    shas, run, results, root = history
    log = run.stdout + run.stderr
    first, second = _result(results, shas[0]), _result(results, shas[1])
    assert first and second, log[-4000:]
    for impl in ("'vllm-ops'", "'vllm-custom'"):
        for tokens in ("1", "4"):
            base, slow = _medians(first, "track_permute")[(impl, tokens)], _medians(second, "track_permute")[(impl, tokens)]
            assert base is not None and slow is not None, log[-4000:]
            # The second commit's library sleeps SLOW_S per permute: its own library was timed.
            assert 0.5 * SLOW_S < slow - base < 2 * SLOW_S, (impl, tokens, base, slow)
            # ... and only its permute: unpermute moved by far less than the sleep (a loaded
            # CPU moves both commits' numbers, so compare with the first commit's, not a constant).
            unpermute = [_medians(r, "track_unpermute")[(impl, tokens)] for r in (first, second)]
            assert None not in unpermute and abs(unpermute[1] - unpermute[0]) < SLOW_S / 2, unpermute
    ledger = [json.loads(line) for line in (root / "ledger.jsonl").read_text().splitlines()]
    assert [(e["commit"], e["loads"]) for e in ledger] == [(shas[0], True), (shas[1], True), (shas[2], False)]
    assert ledger[1]["version"] == f"0.40.1.dev1+g{shas[1][:9]}" and ledger[1]["library"] == "_moe_C.abi3.so"
    assert ledger[0]["library_sha256"] != ledger[1]["library_sha256"]


def test_a_library_that_cannot_load_is_na_with_its_reason(history):
    shas, run, results, root = history
    broken = _result(results, shas[2])
    assert broken is not None, (run.stdout + run.stderr)[-4000:]
    # n/a (asv's NaN: skipped), not failed (null): the commit is fine, this torch cannot load it.
    values = _medians(broken, "track_permute").values()
    assert values and all(v is not None and math.isnan(v) for v in values)
    entry = [json.loads(line) for line in (root / "ledger.jsonl").read_text().splitlines()][-1]
    assert entry["commit"] == shas[2] and entry["loads"] is False
    assert entry["reason"].startswith("cannot load ") and f"undefined symbol: {MISSING_SYMBOL}" in entry["reason"]


def test_a_wheel_of_another_commit_is_rejected(history):
    shas, run, results, root = history
    log = run.stdout + run.stderr
    assert f"is commit {shas[0][:9]} (__commit_id__ of the wheel's vllm/_version.py), not the requested {shas[3]}" in log
    rejected = _result(results, shas[3])
    assert rejected is None or not any(v is not None for r in rejected["results"].values() for v in (r[0] or []))
    # Nothing of the rejected wheel is left for a benchmark to find.
    envs = list((root / "work" / "env").iterdir())
    assert envs and not any((e / ENV_DIR / MANIFEST).exists() for e in envs)
