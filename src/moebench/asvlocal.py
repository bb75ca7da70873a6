"""Run the asv suite offline against this Python environment and publish the dashboard.

asv files every result under a commit of the tracked project's git repository and orders the
dashboard by that repository's branch. The project is vLLM on GitHub, which an offline machine (CI,
``make dashboard``, an air-gapped runner) cannot clone, and this environment's vLLM (if any) is no
checkout. So, under a work directory (default ``.asv/local``):

- ``project/`` is a local *stand-in project repository*: each commit records one state of this
  environment (Python, torch, vLLM version and commit, moebench version); a run in an unchanged
  environment adds no commit and re-measures that one. The dashboard's history is therefore the
  history of this environment's states, not of vLLM commits: links go nowhere (``#``).
- ``asv.conf.json`` is the project's config with ``repo`` pointed at that repository, results in
  ``results/`` under the work directory, the published site in ``html/``.
- ``asv run --environment existing:<this python> --set-commit-hash <commit> --record-samples``
  runs the suite in this interpreter (nothing installed, no network), launched as configured
  (forkserver); ``asv publish`` writes the site, and ``moebench.dashboard`` makes it load its
  JavaScript from ``html/vendor/`` instead of public CDNs, so it opens offline too.

``python -m moebench.asvlocal`` does all of it (``make dashboard``); the tests use the same
functions for a stand-in history of several commits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

from .errors import BadInput

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = "ENVIRONMENT"
# Who commits to a stand-in repository (here and in moebench.releases): fixed, so commits are
# reproducible and a machine without a git identity can make them.
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "moebench", "GIT_AUTHOR_EMAIL": "moebench@localhost",
                "GIT_COMMITTER_NAME": "moebench", "GIT_COMMITTER_EMAIL": "moebench@localhost"}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_state() -> str:
    """What the stand-in commit stands for: the versions that decide the numbers."""
    from .wheels import installed_vllm

    vllm = installed_vllm()
    lines = [f"python {platform.python_version()} ({sys.executable})", f"torch {_version('torch')}",
             "vllm " + (f"{vllm.version} (commit {vllm.commit or 'unknown'})" if vllm else "not installed"),
             f"moebench {_version('moebench')}"]
    return "\n".join(lines) + "\n"


def git(repo: Path, *args: str, env: Mapping[str, str]) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], env=dict(env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise BadInput(f"git {' '.join(args)} in {repo} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def commit_state(repo: Path, state: str, env: Mapping[str, str] = os.environ) -> str:
    """Commit ``state`` (non-empty text) to the stand-in repository, created on first use, unless
    HEAD already records it; return HEAD's full hash."""
    env = {**GIT_IDENTITY, **env}
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main", env=env)
    path = repo / STATE_FILE
    if not path.is_file() or path.read_text() != state or not git(repo, "rev-list", "-n1", "--all", env=env):
        path.write_text(state)
        git(repo, "add", STATE_FILE, env=env)
        git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", state, env=env)
    return git(repo, "rev-parse", "HEAD", env=env)


def write_config(work: Path, repo: Path, html: Path, project_conf: Path = REPO_ROOT / "asv.conf.json",
                 results: Path | None = None, **overrides) -> Path:
    """The project's asv config, pointed at the stand-in repository; paths absolute (the install
    commands still run in the project's folder); ``overrides`` replace any other key."""
    from asv import util

    conf = util.load_json(str(project_conf), js_comments=True)
    home = str(project_conf.parent.resolve())
    for key in ("install_command", "uninstall_command", "build_command"):
        conf[key] = [c.replace("{conf_dir}", home) for c in conf.get(key, [])]
    conf.update({
        "project": "moebench (this environment)",
        "repo": str(repo.resolve()),
        "branches": ["main"],
        "show_commit_url": "#",
        "benchmark_dir": str((project_conf.parent / conf.get("benchmark_dir", "benchmarks")).resolve()),
        "results_dir": str((results or work / "results").resolve()),
        "env_dir": str((work / "env").resolve()),
        "html_dir": str(html.resolve()),
        **overrides,
    })
    work.mkdir(parents=True, exist_ok=True)
    path = work / "asv.conf.json"
    path.write_text(json.dumps(conf, indent=2) + "\n")
    return path


def asv(args: Sequence[str], conf: Path, env: Mapping[str, str] = os.environ,
        capture: bool = False) -> subprocess.CompletedProcess:
    """``python -m asv ARGS --config CONF`` with this interpreter; never raises for its exit code."""
    return subprocess.run([sys.executable, "-m", "asv", *args, "--config", str(conf)], env=dict(env),
                          capture_output=capture, text=True)


def run_commit(conf: Path, commit: str, *, machine: str, env: Mapping[str, str] = os.environ,
               launch_method: str | None = None, bench: str | None = None,
               capture: bool = False) -> subprocess.CompletedProcess:
    """Run the suite in this interpreter and file the results under ``commit``."""
    args = ["run", "--environment", f"existing:{sys.executable}", "--set-commit-hash", commit,
            "--machine", machine, "--record-samples", "--show-stderr"]
    if launch_method:
        args += ["--launch-method", launch_method]
    if bench:
        args += ["--bench", bench]
    return asv(args, conf, env, capture)


def publish(conf: Path, html: Path, env: Mapping[str, str] = os.environ,
            capture: bool = False) -> subprocess.CompletedProcess:
    """``asv publish``, then the overview landing page (``moebench.overview``, which also makes the
    published pages load their libraries offline)."""
    proc = asv(["publish"], conf, env, capture)
    if proc.returncode == 0:
        from .overview import build

        results = Path(json.loads(conf.read_text())["results_dir"])
        build(results, html)
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moebench.asvlocal", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO_ROOT / ".asv" / "local",
                   help="stand-in repository, derived config and results (default .asv/local)")
    p.add_argument("--html", type=Path, default=REPO_ROOT / "html", help="published site (default html/)")
    p.add_argument("--machine", default=platform.node() or "localhost", help="asv machine name")
    p.add_argument("--launch-method", choices=("forkserver", "spawn"),
                   help="override asv.conf.json's launch_method")
    p.add_argument("--bench", help="asv --bench regex (default: the whole suite)")
    p.add_argument("--no-publish", action="store_true", help="run only")
    args = p.parse_args(argv)
    try:
        commit = commit_state(args.work / "project", environment_state())
        conf = write_config(args.work, args.work / "project", args.html)
    except BadInput as exc:
        print(f"moebench.asvlocal: error: {exc}", file=sys.stderr)
        return 2
    print(f"moebench.asvlocal: stand-in commit {commit[:8]} = this environment; config {conf}", flush=True)
    if asv(["machine", "--yes", "--machine", args.machine], conf).returncode != 0:
        return 2
    rc = run_commit(conf, commit, machine=args.machine, launch_method=args.launch_method,
                    bench=args.bench).returncode
    if not args.no_publish:
        published = publish(conf, args.html).returncode
        print(f"moebench.asvlocal: dashboard in {args.html} (asv preview --config {conf})", flush=True)
        rc = rc or published
    return rc


if __name__ == "__main__":
    sys.exit(main())
