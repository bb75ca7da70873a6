"""``moebench bisect`` with real asv over a stand-in project (tests/asvproject.py).

Seventeen commits; the nightly measured only commits 0 and 16; one series (`step8`) got 8 %
slower at commit 9, another (`noise`) never changed. The nightly's own steps run here as the
workflow runs them: `moebench alerts --json`, then `moebench bisect` over its report, which
measures the middle commits with asv, only the regressed series, until one commit is left.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from asvproject import BENCHMARK, build_history
from moebench import alerts, asvresults, bisection, cli

pytestmark = pytest.mark.slow

N, STEP_AT = 17, 9
STEP = f"{BENCHMARK}('step8')"
NOISE = f"{BENCHMARK}('noise')"


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    means = [{"step8": 1e-3 * (1.08 if i >= STEP_AT else 1.0), "noise": 1e-3} for i in range(N)]
    return build_history(tmp_path_factory.mktemp("bisect"), means, noise=0.005, samples=5, measured=[0, N - 1],
                         publish=False)


@pytest.fixture
def nightly(history, tmp_path, monkeypatch):
    """The alert the nightly would raise after measuring commit 16, as JSON."""
    monkeypatch.setenv("HOME", str(history.home))  # asv's machine file of the history
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "alerts.json"
    assert alerts.main([str(history.results), "--json", str(report), "--markdown", str(tmp_path / "a.md")]) == 1
    return report


def bisect(history, tmp_path, *extra) -> dict:
    out = tmp_path / "bisect.json"
    code = cli.main(["bisect", str(history.results), "--state", str(tmp_path / "state.json"), "--config",
                     str(history.conf), "--machine", history.machine, "--json", str(out),
                     "--markdown", str(tmp_path / "bisect.md"), "--scratch", str(tmp_path / "scratch"), *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_the_nightlys_alert_names_only_the_measured_range(nightly, history):
    (r,) = json.loads(nightly.read_text())["regressions"]
    assert (r["entry"], r["before_commits"], r["commit"]) == (STEP, [history.commits[0]], history.commits[-1])


def test_bisect_names_commit_9_after_measuring_at_most_6(nightly, history, tmp_path):
    report = bisect(history, tmp_path, "--alerts", str(nightly), "--max-commits", "6")
    (b,) = report["bisections"]
    assert b["status"] == "found" and b["culprit"] == history.commits[STEP_AT]
    assert b["culprit_subject"] == f"commit {STEP_AT}"
    # 16 commits after the good end: 8 (good), 12, 10, 9 (bad) — four measurements
    assert b["measured"] == [history.commits[i] for i in (8, 12, 10, 9)]
    assert report["commits_measured"] == 4
    (issue,) = report["issues"]
    # the same title as the alert's issue: the workflow comments on it
    assert issue["title"] == f"Performance regression: {BENCHMARK} on {history.machine}"
    body = issue["body"]
    c9 = history.commits[STEP_AT]
    assert f"culprit [`{c9[:8]}`](https://example.invalid/standin/commit/{c9})" in body
    assert f"commit {STEP_AT}**" in body and "4 commit(s) measured" in body
    assert "before (" in body and "after (" in body  # values with their 99 % intervals
    assert len(re.findall(r"\d \[[\d.]+, [\d.]+\] (?:ms|µs)", body)) >= 2
    # only the regressed series was measured: the scratch results hold nothing else
    scratch = [s.entry for s in asvresults.load_series(tmp_path / "scratch" / "results", None)]
    assert scratch == [STEP]


def test_an_unfinished_bisection_resumes_from_its_state(nightly, history, tmp_path):
    first = bisect(history, tmp_path, "--alerts", str(nightly), "--max-commits", "2")
    (b,) = first["bisections"]
    assert b["status"] == "running" and first["issues"] == [] and first["commits_measured"] == 2
    assert "still running" in (tmp_path / "bisect.md").read_text()
    state = json.loads((tmp_path / "state.json").read_text())
    assert len(state["bisections"]) == 1
    second = bisect(history, tmp_path, "--max-commits", "6")  # the next night: no new alert
    (b,) = second["bisections"]
    assert b["status"] == "found" and b["culprit"] == history.commits[STEP_AT]
    assert len(b["measured"]) == 4 and second["commits_measured"] == 2
    assert bisect(history, tmp_path)["bisections"] == []  # finished: nothing more to do


def test_a_noise_only_range_names_no_culprit(nightly, history, tmp_path):
    report = json.loads(nightly.read_text())
    (r,) = report["regressions"]
    fake = {**r, "entry": NOISE, "params": {"kernel": "'noise'"}}  # as if `noise` had alerted
    report["regressions"] = [fake]
    forged = tmp_path / "noise-alert.json"
    forged.write_text(json.dumps(report))
    out = bisect(history, tmp_path, "--alerts", str(forged), "--max-commits", "6")
    (b,) = out["bisections"]
    assert b["status"] == "inconclusive" and b["culprit"] is None
    assert "neither a slowdown" in b["reason"] and len(b["measured"]) == 1
    md = (tmp_path / "bisect.md").read_text()
    assert "inconclusive" in md and "values seen:" in md and history.commits[8][:8] in md
    assert out["issues"][0]["body"].count("culprit") == 0


def test_an_alert_between_adjacent_commits_is_its_own_culprit(nightly, history, tmp_path):
    """A release history (or a nightly that measured every commit) leaves nothing to bisect: the
    alert already names the commit, and the report says so instead of "none to run"."""
    report = json.loads(nightly.read_text())
    (r,) = report["regressions"]
    report["regressions"] = [{**r, "before_commits": [history.commits[STEP_AT - 1]], "commit": history.commits[STEP_AT]}]
    forged = tmp_path / "adjacent.json"
    forged.write_text(json.dumps(report))
    out = bisect(history, tmp_path, "--alerts", str(forged))
    assert out["bisections"] == [] and out["commits_measured"] == 0 and out["issues"] == []
    assert out["named_by_alerts"] == [{"culprit": history.commits[STEP_AT], "culprit_subject": f"commit {STEP_AT}",
                                       "entries": [STEP]}]
    assert f"{history.commits[STEP_AT][:8]}`](https://example.invalid/standin/commit/" in (tmp_path / "bisect.md").read_text()


def test_suite_env_narrows_moebenchs_own_suite_to_one_point():
    params = {"model": "'mistralai/Mixtral-8x7B-Instruct-v0.1'", "dtype": "'auto'", "impl": "'vllm-ops'",
              "tokens": "256"}
    assert bisection.suite_env("moe.ColdL2.track_unpermute", params) == {
        "MOEBENCH_MODELS": "mistralai/Mixtral-8x7B-Instruct-v0.1", "MOEBENCH_DTYPES": "auto",
        "MOEBENCH_IMPLS": "vllm-ops", "MOEBENCH_BATCH_SIZES": "256", "MOEBENCH_L2": "cold", "MOEBENCH_COLD_MODELS": "",
        "MOEBENCH_RAY": "off"}
    assert bisection.suite_env(BENCHMARK, {"kernel": "'x'"}) == {}


def test_bad_input_is_named(history, tmp_path, capsys):
    bad = tmp_path / "state.json"
    bad.write_text("{")
    assert cli.main(["bisect", str(history.results), "--state", str(bad), "--config", str(history.conf),
                     "--machine", history.machine]) == 2
    assert "bisection state" in capsys.readouterr().err
    assert cli.main(["bisect", str(history.results), "--state", str(tmp_path / "s.json"), "--config",
                     str(tmp_path / "nope.json"), "--machine", history.machine]) == 2
    assert "no such file" in capsys.readouterr().err


def test_git_history_of_the_stand_in_is_what_the_test_assumes(history):
    subjects = subprocess.run(["git", "-C", str(history.repo), "log", "--format=%s", "main"],
                              capture_output=True, text=True, check=True).stdout.split("\n")
    assert subjects[0] == f"commit {N - 1}" and len([s for s in subjects if s]) == N


def test_the_nightlys_own_scripts_file_an_issue_naming_commit_9(history, tmp_path):
    """scripts/nightly_alerts.sh (alerts + bisect) and scripts/file_issues.py, as nightly.yml
    runs them, over the history the nightly left: the issue names commit 9."""
    from test_workflows import ROOT, STANDIN_GH

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gh").write_text(f"#!{sys.executable}\n{STANDIN_GH}")
    (bindir / "gh").chmod(0o755)
    new = tmp_path / "new-commits.txt"
    new.write_text(history.commits[-1][:8] + "\n")
    out = tmp_path / "github-output"
    env = {**os.environ, "HOME": str(history.home), "MACHINE": history.machine, "NEW_COMMITS": str(new),
           "RESULTS": str(history.results), "CONFIG": str(history.conf), "STATE": str(tmp_path / "bisect" / "state.json"),
           "MAX_COMMITS": "6", "MOEBENCH": str(Path(sys.executable).with_name("moebench")),
           "OUT_DIR": str(tmp_path), "GITHUB_OUTPUT": str(out),
           "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "GH_STATE": str(tmp_path / "gh.json")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "nightly_alerts.sh")], env=env, capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_text().split() == ["regressions=true", "bisected=true", "culprits=true"]
    for report in ("alerts.json", "bisect.json"):
        filed = subprocess.run([sys.executable, str(ROOT / "scripts" / "file_issues.py"), str(tmp_path / report)],
                               env=env, capture_output=True, text=True)
        assert filed.returncode == 0, filed.stderr
    (issue,) = json.loads((tmp_path / "gh.json").read_text())["issues"]
    assert issue["title"] == f"Performance regression: {BENCHMARK} on {history.machine}"
    assert history.commits[0][:8] in issue["body"] and history.commits[-1][:8] in issue["body"]  # the range
    (culprit,) = issue["comments"]
    c9 = history.commits[STEP_AT]
    assert f"culprit [`{c9[:8]}`]" in culprit and f"commit {STEP_AT}**" in culprit
    assert "4 commit(s) measured" in culprit
    # the next night, nothing new and nothing running: no alert, no bisection, no issue
    new.write_text("")
    out.write_text("")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "nightly_alerts.sh")], env=env, capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0 and out.read_text().split() == ["regressions=false", "bisected=false",
                                                                 "culprits=false"]
