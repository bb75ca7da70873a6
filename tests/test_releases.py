"""``moebench releases``: a release history recorded by real asv from stand-in vLLM wheels whose
kernel libraries are real shared libraries (``standins.kernel_wheel``), on a CPU.

Three releases: 0.40.0 at the base speed, 0.40.1 with ``moe_permute`` slower by SLOW_S per call,
0.40.2 whose library cannot load. They are recorded out of order (0.40.1 last), so the stand-in
repository is rebuilt with a commit inserted and 0.40.2's results must be re-filed, not lost.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from moebench import cli, releases
from moebench.kernelwheel import KernelDir
from standins.kernel_wheel import MISSING_SYMBOL, build_library, kernel_wheel

pytestmark = pytest.mark.slow

SLOW_S = 0.05  # large against what a loaded 2-core machine does to two medians measured apart
GRID = {"MOEBENCH_MODELS": "Qwen/Qwen3-30B-A3B", "MOEBENCH_DTYPES": "auto", "MOEBENCH_IMPLS": "vllm-ops",
        "MOEBENCH_BATCH_SIZES": "1", "MOEBENCH_L2": "warm", "MOEBENCH_ROUNDS": "3", "MOEBENCH_REPLAYS": "5",
        "MOEBENCH_RAY": "off"}


def _permute(history: Path, commit: str) -> float:
    """asv's median of ``moe.WarmL2.track_permute`` (the grid's one point) at a stand-in commit."""
    (path,) = (history / "results" / "cpu").glob(f"{commit[:8]}-*.json")
    data = json.loads(path.read_text())
    assert data["commit_hash"] == commit
    return dict(zip(data["result_columns"], data["results"]["moe.WarmL2.track_permute"]))["result"][0]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(root))
    for k, v in GRID.items():
        mp.setenv(k, v)
    libs = {"0.40.0": build_library(root / "base.so"),
            "0.40.1": build_library(root / "slow.so", slow_permute_s=SLOW_S),
            "0.40.2": build_library(root / "broken.so", loadable=False)}
    wheels = {v: kernel_wheel(root / "wheels", v, f"{i + 1:x}" * 40, lib) for i, (v, lib) in enumerate(libs.items())}
    history, work = root / "history", root / "work"
    common = ["--history", str(history), "--work", str(work), "--cache", str(root / "cache"), "--machine", "cpu"]
    first = releases.main(["record", str(wheels["0.40.2"]), str(wheels["0.40.0"]), *common, "--no-publish"])
    before = {r["version"]: r["standin_commit"] for r in json.loads((history / "releases.json").read_text())["releases"]}
    last = releases.main(["record", str(wheels["0.40.1"]), *common])
    yield root, history, work, before, (first, last)
    mp.undo()


def test_releases_are_commits_in_release_order_tagged_and_timed_with_their_own_library(recorded):
    root, history, work, before, codes = recorded
    assert codes == (0, 0)
    manifest = json.loads((history / "releases.json").read_text())["releases"]
    assert [r["version"] for r in manifest] == ["0.40.0", "0.40.1", "0.40.2"]
    log = subprocess.run(["git", "-C", str(work / "project"), "log", "--format=%H %s%n%b", "main"],
                         capture_output=True, text=True, check=True).stdout
    for r in manifest:
        assert f"{r['standin_commit']} vLLM {r['version']}" in log
        assert f"vllm-project/vllm@{r['commit']}" in log and r["library_sha256"] in log
    tags = subprocess.run(["git", "-C", str(work / "project"), "tag"], capture_output=True, text=True).stdout.split()
    assert tags == ["v0.40.0", "v0.40.1", "v0.40.2"]
    by = {r["version"]: r for r in manifest}
    base, slow = _permute(history, by["0.40.0"]["standin_commit"]), _permute(history, by["0.40.1"]["standin_commit"])
    assert 0.5 * SLOW_S < slow - base < 2 * SLOW_S
    assert by["0.40.0"]["loads"] is True and by["0.40.0"]["device"].startswith("cpu")


def test_a_library_that_cannot_load_is_kept_with_its_reason_and_its_points_are_na(recorded):
    _, history, _, _, _ = recorded
    broken = next(r for r in json.loads((history / "releases.json").read_text())["releases"] if r["version"] == "0.40.2")
    assert broken["loads"] is False and f"undefined symbol: {MISSING_SYMBOL}" in broken["reason"]
    assert math.isnan(_permute(history, broken["standin_commit"]))


def test_a_release_recorded_in_between_refiles_the_later_results(recorded):
    _, history, _, before, _ = recorded
    after = {r["version"]: r["standin_commit"] for r in json.loads((history / "releases.json").read_text())["releases"]}
    assert after["0.40.0"] == before["0.40.0"]  # nothing before the inserted release moves
    assert after["0.40.2"] != before["0.40.2"]  # its parent changed
    files = sorted(p.name[:8] for p in (history / "results" / "cpu").glob("*.json") if p.name != "machine.json")
    assert files == sorted(h[:8] for h in after.values())


def test_publish_rebuilds_the_same_history_anywhere(recorded, tmp_path):
    _, history, work, _, _ = recorded
    assert (history / "html" / "index.html").is_file() and (history / "html" / "asv.html").is_file()
    assert releases.main(["publish", "--history", str(history), "--work", str(tmp_path / "elsewhere")]) == 0
    head = lambda w: subprocess.run(["git", "-C", str(w / "project"), "rev-parse", "HEAD"],  # noqa: E731
                                    capture_output=True, text=True).stdout
    assert head(tmp_path / "elsewhere") == head(work)
    graphs = list((history / "html" / "graphs").rglob("*.json"))
    assert graphs


def test_bad_inputs_are_named(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert cli.main(["releases", "record", str(tmp_path / "notes.txt"), "--history", str(tmp_path / "h")]) == 2
    assert "neither a vLLM wheel nor a kernel directory" in capsys.readouterr().err
    (tmp_path / "fake.whl").write_text("not a zip")
    assert cli.main(["releases", "extract", str(tmp_path / "fake.whl"), "--out", str(tmp_path / "k")]) == 2
    assert "not a readable wheel" in capsys.readouterr().err
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "releases.json").write_text("{")
    assert cli.main(["releases", "publish", "--history", str(tmp_path / "h")]) == 2
    assert "releases.json: malformed" in capsys.readouterr().err
    assert cli.main(["releases", "publish", "--history", str(tmp_path / "empty")]) == 2
    assert "no releases recorded" in capsys.readouterr().err


def test_extract_names_each_kernel_directory_by_its_release(tmp_path):
    wheel = kernel_wheel(tmp_path / "w", "0.41.0", "c" * 40, build_library(tmp_path / "k.so"))
    assert releases.main(["extract", str(wheel), "--out", str(tmp_path / "kernels")]) == 0
    kdir = KernelDir.load(tmp_path / "kernels" / "0.41.0")
    assert (kdir.version, kdir.commit, kdir.library, kdir.module) == ("0.41.0", "c" * 9, "_moe_C.abi3.so",
                                                                       "moe_permute_unpermute.py")
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == ["0.41.0"]  # nothing half-written left
