"""`moebench plot-history` on a history measured by real asv (the stand-in project of asvproject).

The commits set the means, so every plotted median is known up to the stand-in's 1.5% noise, and
each commit's place on the x axis is its commit-date order.
"""

from __future__ import annotations

import json
import shutil

import pytest

from asvproject import build_history
from moebench import cli
from moebench.errors import BadInput
from moebench.history import load_history

pytestmark = pytest.mark.slow  # every test reads a history that real asv measured

MEANS = [{"permute": 20e-6, "unpermute": 30e-6, "fp8": 12e-6},
         {"permute": 21e-6, "unpermute": 30e-6, "fp8": 12e-6},
         {"permute": 26e-6, "unpermute": 31e-6, "fp8": 13e-6},
         {"permute": 26e-6, "unpermute": 29e-6, "fp8": 12e-6}]


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    return build_history(tmp_path_factory.mktemp("history"), MEANS, publish=False)


def test_one_line_per_open_parameter_with_every_commit(history):
    h = load_history(history.results, history.benchmark)
    assert h.commits == history.commits  # commit-date order = the order they were made
    assert h.machine == history.machine and h.unit == "seconds" and h.band == "IQR"
    assert [line.label for line in h.lines] == [f"kernel={k}" for k in MEANS[0]]
    assert h.fixed == () and h.omitted == 0
    for line in h.lines:
        kernel = line.label.removeprefix("kernel=")
        assert line.x == (0, 1, 2, 3) and line.commits == history.commits
        assert line.median == pytest.approx([m[kernel] for m in MEANS], rel=0.03)
        assert all(lo < med < hi for lo, med, hi in zip(line.low, line.median, line.high))


def test_param_fixes_a_line_and_the_cap_says_what_it_left_out(history):
    h = load_history(history.results, history.benchmark, ["kernel=unpermute"])
    assert [line.label for line in h.lines] == [history.benchmark] and h.fixed == ("kernel=unpermute",)
    assert h.lines[0].median == pytest.approx([m["unpermute"] for m in MEANS], rel=0.03)
    # asv's repr spelling of the value is accepted too
    assert load_history(history.results, history.benchmark, ["kernel='unpermute'"]) == h
    capped = load_history(history.results, history.benchmark, max_lines=2)
    assert [line.label for line in capped.lines] == ["kernel=permute", "kernel=unpermute"]
    assert capped.omitted == 1


def test_cli_writes_the_png(history, tmp_path, capsys):
    out = tmp_path / "sub" / "history.png"
    assert cli.main(["plot-history", "--results", str(history.results), "--benchmark",
                     history.benchmark, "--out", str(out), "--max-lines", "2"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = capsys.readouterr().out
    assert f"wrote {out}: 2 line(s), 8 point(s) over 4 commit(s)" in stdout
    assert "1 more parameter combination(s) not drawn" in stdout


def test_older_benchmark_version_is_dropped_like_asv_publish_does(history, tmp_path):
    results = shutil.copytree(history.results, tmp_path / "results")
    meta = json.loads((results / "benchmarks.json").read_text())
    meta[history.benchmark]["version"] = "2"  # the suite changed the benchmark since these runs
    (results / "benchmarks.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput, match="no measured results of suite.Kernel.track_time"):
        load_history(results, history.benchmark)


def _second_machine(history, tmp_path):
    results = shutil.copytree(history.results, tmp_path / "results")
    shutil.copytree(results / history.machine, results / "gpu-box")
    return results


@pytest.mark.parametrize("args, message", [
    (["--results", "{tmp}/none"], "--results {tmp}/none: no such directory"),
    (["--results", "{tmp}"], "{tmp}/benchmarks.json not found: --results must be asv's results_dir"),
    (["--benchmark", "Kernel.track"], "no benchmark 'Kernel.track' in {results}/benchmarks.json "
                                      "(1 benchmarks); close matches: suite.Kernel.track_time"),
    (["--param", "kernel"], "--param 'kernel': expected NAME=VALUE"),
    (["--param", "dtype=fp8"], "--param dtype: suite.Kernel.track_time has parameters kernel"),
    (["--param", "kernel=fp16"], "--param kernel=fp16: values are permute, unpermute, fp8"),
    (["--machine", "standin"], "no results for machine 'standin' in {results} (machines: standin-cpu); "
                               "close matches: standin-cpu"),
    (["--two-machines"], "{results} holds several machines: gpu-box, standin-cpu; pick one with --machine"),
    (["--out", "{tmp}"], "cannot write --out {tmp}"),
])
def test_bad_input_exits_2_with_one_line(history, tmp_path, capsys, args, message):
    results = str(history.results)
    if args == ["--two-machines"]:
        results, args = str(_second_machine(history, tmp_path)), []
    given = {"--results": results, "--benchmark": history.benchmark, "--out": str(tmp_path / "h.png")}
    for flag, value in zip(args[::2], args[1::2]):
        given[flag] = value.format(tmp=tmp_path)
    argv = ["plot-history"] + [x for kv in given.items() for x in kv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moebench: error: " + message.format(tmp=tmp_path, results=results))
    assert err.count("\n") == 1
    assert not (tmp_path / "h.png").exists()


def test_a_truncated_commit_file_is_named_not_dropped(history, tmp_path, capsys):
    results = shutil.copytree(history.results, tmp_path / "results")
    victim = sorted(p for p in (results / history.machine).glob("*.json") if p.name != "machine.json")[1]
    victim.write_text(victim.read_text()[:150])
    assert cli.main(["plot-history", "--results", str(results), "--benchmark", history.benchmark,
                     "--out", str(tmp_path / "h.png")]) == 2
    assert f"corrupt asv results file {victim}" in capsys.readouterr().err
    assert not (tmp_path / "h.png").exists()


def test_out_suffix_decides_the_format(history, tmp_path, capsys):
    for name, head in (("h.svg", b"<?xml"), ("h.pdf", b"%PDF")):
        assert cli.main(["plot-history", "--results", str(history.results), "--benchmark", history.benchmark,
                         "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes().startswith(head)
    assert cli.main(["plot-history", "--results", str(history.results), "--benchmark", history.benchmark,
                     "--out", str(tmp_path / "h.docx")]) == 2
    assert "cannot write a .docx image" in capsys.readouterr().err
