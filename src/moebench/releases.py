"""``moebench releases``: a history of vLLM releases' kernels, without a vLLM clone.

    moebench releases extract WHEEL... --out DIR      kernel directories DIR/<version>/
    moebench releases record WHEEL_OR_DIR... [--history docs/releases] [grid options]
    moebench releases publish [--history docs/releases]

asv files results under commits of a git repository and draws them in the branch's order. vLLM's
repository is not needed for a release history: each release becomes one commit of a local
*stand-in repository* rebuilt from the history's manifest (``releases.json``), in release order,
dated when the release was built, tagged ``v<version>`` (asv shows tags), with the release's own
vLLM commit id and library hash in its message. The repository is derived data: its commits are
deterministic (fixed names and dates), so rebuilding it anywhere gives the same hashes; when a
release is recorded between two others the later hashes change, and their result files are
re-filed under the new ones, never dropped.

``record`` times each release's kernel library (``moebench.kernelwheel``) in this interpreter's
torch with the asv suite (``asv run --environment existing``), ``vllm-ops`` from the library and
the customized path from the release's ``moe_permute_unpermute.py`` where it runs without vLLM
installed. A library that does not load into this torch is kept in the manifest with the reason,
and its points are n/a. The manifest is written after every release, so an interrupted run keeps
what it measured. ``publish`` rebuilds the dashboard (``html/`` under the history) offline from
the committed files alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Mapping, Sequence

from . import asvlocal
from .errors import BadInput
from .files import atomic_write
from .kernelwheel import KernelDir, extract, probe

DEFAULT_HISTORY = asvlocal.REPO_ROOT / "docs" / "releases"
MANIFEST = "releases.json"
DEFAULT_GRID = {
    "MOEBENCH_MODELS": "mistralai/Mixtral-8x7B-Instruct-v0.1,Qwen/Qwen3-30B-A3B,deepseek-ai/DeepSeek-V3",
    "MOEBENCH_DTYPES": "auto,fp8_w8a8",
    "MOEBENCH_IMPLS": "vllm-ops,vllm-custom",
    "MOEBENCH_L2": "warm",
}


def _version_key(version: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version)
    except InvalidVersion:
        raise BadInput(f"release version {version!r} is not a version number") from None


class History:
    """A release history folder: ``releases.json``, asv's ``results/`` and the published ``html/``;
    its stand-in repository and asv config under ``work``."""

    def __init__(self, folder: Path, work: Path | None = None) -> None:
        self.folder = folder.resolve()
        self.work = (work or asvlocal.REPO_ROOT / ".asv" / "releases").resolve()
        self.results = self.folder / "results"
        self.html = self.folder / "html"
        path = self.folder / MANIFEST
        try:
            self.releases: list[dict] = json.loads(path.read_text())["releases"] if path.is_file() else []
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"{path}: malformed ({exc})") from None

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.releases.sort(key=lambda r: _version_key(r["version"]))
        text = json.dumps({"releases": self.releases}, indent=1) + "\n"
        atomic_write(self.folder / MANIFEST, lambda f: f.write(text))

    def add(self, kdir: KernelDir) -> dict:
        entry = {k: v for k, v in asdict(kdir).items() if k != "path"}
        self.releases = [r for r in self.releases if r["version"] != kdir.version] + [entry]
        self.save()
        return entry

    def repository(self) -> dict[str, str]:
        """Rebuild the stand-in repository from the manifest; version -> commit hash. Result
        files of releases whose hash changed are re-filed under the new hash."""
        repo = self.work / "project"
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
        env = {**os.environ, **asvlocal.GIT_IDENTITY}
        asvlocal.git(repo, "init", "-q", "-b", "main", env=env)
        hashes = {}
        for r in sorted(self.releases, key=lambda r: _version_key(r["version"])):
            (repo / "RELEASE").write_text(json.dumps({k: r.get(k) for k in ("version", "commit", "wheel",
                                                                           "library", "library_sha256")}, indent=1))
            asvlocal.git(repo, "add", "RELEASE", env=env)
            dated = {**env, "GIT_AUTHOR_DATE": r["built"], "GIT_COMMITTER_DATE": r["built"]}
            message = (f"vLLM {r['version']}\n\nvllm-project/vllm@{r.get('commit') or 'unknown'} "
                       f"({r['identity']}); {r['library']} sha256 {r['library_sha256']}")
            asvlocal.git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", message, env=dated)
            asvlocal.git(repo, "tag", f"v{r['version']}", env=env)
            hashes[r["version"]] = asvlocal.git(repo, "rev-parse", "HEAD", env=env)
        self._refile({r["standin_commit"]: hashes[r["version"]] for r in self.releases
                      if r.get("standin_commit") and r["standin_commit"] != hashes[r["version"]]})
        for r in self.releases:
            r["standin_commit"] = hashes[r["version"]]
        self.save()
        return hashes

    def _refile(self, moved: Mapping[str, str]) -> None:
        if not moved:
            return
        for path in sorted(self.results.glob("*/*.json")):
            if path.name in ("machine.json", "benchmarks.json"):
                continue
            data = json.loads(path.read_text())
            new = moved.get(data.get("commit_hash", ""))
            if new is None:
                continue
            data["commit_hash"] = new
            target = path.with_name(new[:8] + path.name[8:])
            target.write_text(json.dumps(data))
            if target != path:
                path.unlink()

    def config(self) -> Path:
        return asvlocal.write_config(self.work, self.work / "project", self.html, results=self.results,
                                     project="vLLM releases: MoE permute/unpermute kernels")


def extract_release(wheel: Path, folder: Path) -> KernelDir:
    """The wheel's kernels in ``folder/<version>`` (replaced whole; the version is read from the
    wheel, so they are extracted beside it first)."""
    kdir = extract(wheel, folder / f".{wheel.name}")
    named = folder / kdir.version
    if named.exists():
        shutil.rmtree(named)
    os.replace(kdir.path, named)
    return replace(kdir, path=named.resolve())


def kernel_dirs(paths: Sequence[Path], cache: Path) -> list[KernelDir]:
    """Each path a wheel (extracted into ``cache``) or a kernel directory."""
    found = []
    for path in paths:
        if path.is_dir():
            found.append(KernelDir.load(path))
        elif path.suffix == ".whl" and path.is_file():
            found.append(extract_release(path, cache))
        else:
            raise BadInput(f"{path}: neither a vLLM wheel nor a kernel directory")
    versions = [k.version for k in found]
    if dup := sorted({v for v in versions if versions.count(v) > 1}):
        raise BadInput(f"release {', '.join(dup)} given twice")
    return found


def _device() -> dict[str, str]:
    import torch

    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                "cuda": str(torch.version.cuda)}
    return {"device": f"cpu ({platform.processor() or platform.machine()})", "torch": torch.__version__}


def record(history: History, kdirs: Sequence[KernelDir], machine: str, env: Mapping[str, str]) -> int:
    """Time each release with the asv suite and keep it in the history; asv's exit code (0 if
    every release ran)."""
    device = _device()
    entries = [history.add(k) for k in kdirs]
    hashes = history.repository()
    conf = history.config()
    if asvlocal.asv(["machine", "--yes", "--machine", machine], conf, env).returncode != 0:
        raise BadInput(f"asv machine --machine {machine} failed")
    worst = 0
    for i, (kdir, entry) in enumerate(zip(kdirs, entries), 1):
        kdir = probe(kdir)
        entry.update(loads=kdir.loads, reason=kdir.reason, **device, machine=machine)
        history.save()
        state = "loads" if kdir.loads else f"does NOT load, its points are n/a: {kdir.reason}"
        print(f"moebench releases: [{i}/{len(kdirs)}] vLLM {kdir.version} ({kdir.library}) {state}", flush=True)
        run_env = {**env, "MOEBENCH_VLLM_OPS_LIBRARY": str(kdir.library_path),
                   "MOEBENCH_VLLM_MODULE": str(kdir.module_path or "")}
        rc = asvlocal.run_commit(conf, hashes[kdir.version], machine=machine, env=run_env).returncode
        entry["asv_exit"] = rc
        history.save()
        worst = worst or rc
    return worst


def publish(history: History) -> int:
    history.repository()
    conf = history.config()
    rc = asvlocal.publish(conf, history.html).returncode
    print(f"moebench releases: {len(history.releases)} releases; dashboard {history.html / 'index.html'}",
          flush=True)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="moebench releases", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="take the kernels out of vLLM wheels into kernel directories")
    ex.add_argument("wheels", nargs="+", type=Path)
    ex.add_argument("--out", type=Path, required=True, help="folder for one kernel directory per release")
    rec = sub.add_parser("record", help="time releases' kernels and add them to the history")
    rec.add_argument("paths", nargs="+", type=Path, metavar="WHEEL_OR_DIR")
    rec.add_argument("--machine", default=platform.node() or "localhost", help="asv machine name")
    rec.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "moebench" / "kernels",
                     help="where wheels are extracted (default ~/.cache/moebench/kernels)")
    rec.add_argument("--no-publish", action="store_true", help="record only")
    pub = sub.add_parser("publish", help="rebuild the history's dashboard from its committed files")
    for q in (rec, pub):
        q.add_argument("--history", type=Path, default=DEFAULT_HISTORY,
                       help="history folder (default docs/releases)")
        q.add_argument("--work", type=Path, help="stand-in repository and asv config (default .asv/releases)")
    args = p.parse_args(argv)
    if args.command == "extract":
        for wheel in args.wheels:
            kdir = extract_release(wheel, args.out)
            print(f"{kdir.path}: vLLM {kdir.version}, commit {kdir.commit or 'unknown'}, {kdir.library}"
                  + (f" + {kdir.module}" if kdir.module else ""))
        return 0
    history = History(args.history, args.work)
    if args.command == "publish":
        if not history.releases:
            raise BadInput(f"{args.history / MANIFEST}: no releases recorded")
        return publish(history)
    env = {**DEFAULT_GRID, **os.environ}
    rc = record(history, kernel_dirs(args.paths, args.cache), args.machine, env)
    if not args.no_publish:
        rc = publish(history) or rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
