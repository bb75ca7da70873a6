"""asv's per-commit install step: vLLM's prebuilt wheel for exactly the requested commit.

Two modes, chosen by ``$MOEBENCH_VLLM_INSTALL`` (``--mode``):
- ``kernels`` (default, the nightly's): only the wheel's kernel library and the customized
  path's module are taken out of the cached wheel (``moebench.kernelwheel``) and timed in the
  runner's own torch, so a step between commits can come from the kernels only; a library that
  does not load into that torch leaves the commit's points n/a, with the reason;
- ``wheel``: the whole wheel is installed with the torch it pins, and moebench editable beside
  it: every path vLLM's Python has (the standard path, the customized one of every release).

Where the wheels are (root ``https://wheels.vllm.ai``, or ``$MOEBENCH_WHEEL_INDEX``: a mirror URL
or a local directory laid out the same way):
- ``<root>/<sha>/vllm/`` is a PEP 503 page listing the commit's wheels (vLLM's per-commit index
  since Dec 2025; other CUDA variants under ``<root>/<sha>/<variant>/vllm/``, chosen with
  ``$MOEBENCH_WHEEL_VARIANT``);
- before that, ``<root>/<sha>/`` held one ``vllm-1.0.0.dev-cp38-abi3-manylinux1_x86_64.whl``;
- some commits have no wheel at all: that commit fails to install, with the URLs tried.
The wheel is installed by its URL with pip (its dependencies, torch included, come from pip's
usual index: ``PIP_INDEX_URL`` for a mirror), never by ``pip install vllm --extra-index-url``,
which lets pip pick a newer release from PyPI instead.

Which commit got installed is then read from the installed files, never trusted from the URL
(a missing wheel or an old precompiled fallback silently brings another commit's kernels). vLLM's
wheels carry a setuptools-scm ``vllm/_version.py``: from 0.10.1 on it holds
``__commit_id__ = 'g<short sha>'``, and dev builds (every per-commit wheel) have ``+g<short sha>``
in ``__version__``, as in ``0.11.2.dev278+gdbc3d9991``. Release wheels of 0.9.0 and 0.10.0 carry
no sha at all: such a wheel is accepted only where the project checkout has the tag
``v<version>`` on the requested commit. Anything else fails the commit loudly, and the wrong
vLLM is uninstalled so no benchmark can run against it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import platform
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

from .errors import BadInput

DEFAULT_INDEX = "https://wheels.vllm.ai"
INDEX_ENV = "MOEBENCH_WHEEL_INDEX"
VARIANT_ENV = "MOEBENCH_WHEEL_VARIANT"
LEGACY_WHEEL = "vllm-1.0.0.dev-cp38-abi3-manylinux1_x86_64.whl"
MODE_ENV = "MOEBENCH_VLLM_INSTALL"
MODES = ("kernels", "wheel")  # the first is the default
RUNNER_PYTHON = ".venv/bin/python"  # relative to the checkout (asv runs the step there): make venv's
MIN_SHA_CHARS = 7
TIMEOUT_S = 60


class WheelError(Exception):
    """The commit cannot be installed as itself: no wheel, or a wheel of another commit."""


@dataclass(frozen=True)
class InstalledVllm:
    version: str
    commit: str | None  # lowercase hex prefix of the commit, None if the files carry none
    source: str  # where ``commit`` was read


def index_root(env=os.environ) -> str:
    """The index root as a URL without trailing slash; a plain path becomes a file: URL."""
    root = env.get(INDEX_ENV, "").strip() or DEFAULT_INDEX
    if urlsplit(root).scheme not in ("http", "https", "file"):
        root = Path(root).expanduser().resolve().as_uri()
    return root.rstrip("/")


def local_path(url: str) -> Path | None:
    """The file a file: URL names (a local index), None for any other URL."""
    return Path(url2pathname(urlsplit(url).path)) if urlsplit(url).scheme == "file" else None


def _read(url: str) -> str | None:
    """The page's text, or None where it does not exist (S3 answers 403 for a missing key)."""
    if (path := local_path(url)) is not None:
        path = path / "index.html" if url.endswith("/") else path
        return path.read_text() if path.is_file() else None
    resp = open_url(url, url)
    if resp is None:
        return None
    with resp:
        return resp.read().decode("utf-8", "replace")


def open_url(url: str, request: str | urllib.request.Request):
    """urlopen, but None where the resource does not exist (404, or S3's 403 for a missing key);
    any other failure is a WheelError naming the URL."""
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 404):
            return None
        raise WheelError(f"{url}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise WheelError(f"cannot reach {url}: {exc.reason}") from None


def _exists(url: str) -> bool:
    if (path := local_path(url)) is not None:
        return path.is_file()
    resp = open_url(url, urllib.request.Request(url, method="HEAD"))
    if resp is None:
        return False
    resp.close()
    return True


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def wheel_links(html: str, page_url: str) -> list[str]:
    """Absolute URLs of the ``.whl`` links of a PEP 503 page, in page order (fragments dropped)."""
    parser = _Links()
    parser.feed(html)
    urls = [urljoin(page_url, href.split("#", 1)[0]) for href in parser.hrefs]
    return [u for u in urls if u.endswith(".whl")]


def wheel_filename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def compatible(filename: str, machine: str = platform.machine(),
               python: tuple[int, int] = sys.version_info[:2]) -> bool:
    """Whether a vLLM wheel installs here: ``packaging``'s tags for this CPython (its own ABI,
    the stable ABI of older ones, pure Python) on this system's manylinux/glibc levels, with the
    CPU architecture ``machine`` (another one only to ask about another machine)."""
    try:
        from packaging import tags
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    except ImportError:  # asv's new environment, before anything is installed: pip's own copy
        from pip._vendor.packaging import tags
        from pip._vendor.packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        name, _, _, wheel_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    arch = platform.machine()
    platforms = [p[: -len(arch)] + machine for p in tags.platform_tags() if p.endswith(arch)]
    supported = {*tags.cpython_tags(python, platforms=platforms), *tags.compatible_tags(python, platforms=platforms)}
    return name == "vllm" and bool(wheel_tags & supported)


def find_wheel(root: str, sha: str, variant: str | None = None,
               machine: str = platform.machine()) -> str:
    """URL of the commit's wheel for this machine; ``WheelError`` (with what was tried) if none."""
    base = f"{root}/{sha}/" + (f"{variant}/" if variant else "")
    page = base + "vllm/"
    html = _read(page)
    if html is not None:
        links = [u for u in wheel_links(html, page) if compatible(wheel_filename(u), machine)]
        if not links:
            raise WheelError(f"{page} lists no vLLM wheel for {machine} / CPython "
                             f"{platform.python_version()}")
        own = [u for u in links if f"g{sha[:MIN_SHA_CHARS]}" in wheel_filename(u)]
        return (own or links)[0]
    legacy = base + LEGACY_WHEEL
    if machine == "x86_64" and _exists(legacy):
        return legacy
    raise WheelError(f"no prebuilt vLLM wheel for commit {sha}: neither {page} nor {legacy} exists")


def _assigned_strings(source: str) -> dict[str, str | None]:
    """Module-level ``NAME = 'text'`` / ``NAME = None`` assignments (chained ones too)."""
    found: dict[str, str | None] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, (str, type(None))):
                found.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return found


def sha_in_version(version: str) -> str | None:
    """The ``g<hex>`` part of a setuptools-scm local version label, e.g. ``+gdbc3d9991.cu130``."""
    local = version.partition("+")[2]
    for part in local.split("."):
        if re.fullmatch(rf"g[0-9a-f]{{{MIN_SHA_CHARS},40}}", part):
            return part[1:]
    return None


def identity(version_source: str | None, dist_version: str, where: str) -> InstalledVllm:
    """Which vLLM build a ``vllm/_version.py`` text (None where there is none) and the
    distribution's version say this is; ``where`` names the files in messages."""
    values = _assigned_strings(version_source) if version_source is not None else {}
    scm_version = values.get("__version__") or values.get("version") or dist_version
    commit_id = values.get("__commit_id__") or values.get("commit_id")
    if commit_id and re.fullmatch(rf"g?[0-9a-f]{{{MIN_SHA_CHARS},40}}", commit_id):
        return InstalledVllm(scm_version, commit_id.removeprefix("g"), f"__commit_id__ of {where} vllm/_version.py")
    for version, src in ((scm_version, f"{where} vllm/_version.py"), (dist_version, f"{where} metadata")):
        if (sha := sha_in_version(version)) is not None:
            return InstalledVllm(scm_version, sha, f"version {version} in {src}")
    return InstalledVllm(scm_version, None, f"no commit in {where} vllm/_version.py or metadata")


def installed_vllm() -> InstalledVllm | None:
    """The vLLM installed for this interpreter, read from its files (vLLM is not imported)."""
    importlib.invalidate_caches()
    try:
        dist = metadata.distribution("vllm")
    except metadata.PackageNotFoundError:
        return None
    version_file = Path(str(dist.locate_file("vllm/_version.py")))
    return identity(version_file.read_text() if version_file.is_file() else None, dist.version, "the installed")


def _tags_at(checkout: Path, sha: str) -> list[str]:
    proc = subprocess.run(["git", "-C", str(checkout), "tag", "--points-at", sha],
                          capture_output=True, text=True)
    return proc.stdout.split() if proc.returncode == 0 else []


def verify(installed: InstalledVllm | None, sha: str, checkout: Path | None = None) -> str:
    """How ``installed`` is known to be commit ``sha``; ``WheelError`` if it is not, or if
    nothing in it says which commit it is."""
    if installed is None:
        raise WheelError("pip reported success but no vllm distribution is installed")
    if installed.commit is not None:
        if sha.lower().startswith(installed.commit):
            return f"commit {installed.commit} ({installed.source})"
        raise WheelError(f"installed vLLM {installed.version} is commit {installed.commit} "
                         f"({installed.source}), not the requested {sha}")
    tag = f"v{installed.version}"
    if checkout is not None and tag in _tags_at(checkout, sha):
        return f"release {installed.version}: tag {tag} points at {sha}"
    raise WheelError(f"installed vLLM {installed.version} names no commit ({installed.source}) and "
                     f"no tag {tag} points at {sha}" + ("" if checkout else " (no --checkout given)")
                     + ": cannot tell which kernels were installed")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"], check=True)


def install(sha: str, root: str, variant: str | None = None, checkout: Path | None = None) -> str:
    """Install commit ``sha``'s wheel into this interpreter's environment and verify it."""
    url = find_wheel(root, sha, variant)
    print(f"asv_install: vLLM {sha[:12]}: {url}", flush=True)
    _pip("uninstall", "-y", "-q", "vllm")
    try:
        _pip("install", "--progress-bar", "off", url)
    except subprocess.CalledProcessError as exc:
        raise WheelError(f"pip install {url} failed (exit {exc.returncode})") from None
    try:
        how = verify(installed_vllm(), sha, checkout)
    except WheelError:
        _pip("uninstall", "-y", "-q", "vllm")
        raise
    print(f"asv_install: verified {how}", flush=True)
    return how


def main(argv: Sequence[str] | None = None) -> int:
    from . import kernelwheel

    p = argparse.ArgumentParser(prog="asv_install", description=__doc__.splitlines()[0])
    p.add_argument("--commit", required=True, help="full hash of the vLLM commit")
    p.add_argument("--checkout", type=Path, help="vLLM checkout at that commit (asv's {build_dir}): "
                                                  "release tags for wheels that carry no commit")
    p.add_argument("--variant", default=os.environ.get(VARIANT_ENV) or None,
                   help=f"index variant such as cu130 (default ${VARIANT_ENV}, else the default build)")
    p.add_argument("--mode", choices=MODES, default=os.environ.get(MODE_ENV, "").strip() or MODES[0],
                   help=f"kernels: only the commit's kernel library, timed in the runner's torch; wheel: "
                        f"the whole wheel with the torch it pins (default ${MODE_ENV}, else kernels)")
    p.add_argument("--torch-python", default=os.environ.get(kernelwheel.TORCH_PYTHON_ENV) or RUNNER_PYTHON,
                   help=f"kernel mode: the interpreter whose torch times the kernels "
                        f"(default ${kernelwheel.TORCH_PYTHON_ENV}, else {RUNNER_PYTHON})")
    p.add_argument("--editable-moebench", action="store_true",
                   help="wheel mode: then install this moebench checkout editable (kernel mode "
                        "imports it from the checkout anyway)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[0-9a-fA-F]{40}", args.commit):
        print(f"asv_install: error: --commit must be a full 40-hex hash, got {args.commit!r}",
              file=sys.stderr)
        return 2
    sha = args.commit.lower()
    try:
        if args.mode == "kernels":
            kernelwheel.install_kernels(sha, index_root(), args.variant, args.checkout,
                                        args.torch_python, kernelwheel.cache_dir(),
                                        Path(os.environ.get(kernelwheel.LEDGER_ENV) or kernelwheel.LEDGER))
        else:
            install(sha, index_root(), args.variant, args.checkout)
            if args.editable_moebench:
                _pip("install", "--progress-bar", "off", "--editable", str(kernelwheel.SRC.parent))
    except (WheelError, BadInput) as exc:
        print(f"asv_install: error: {exc}", file=sys.stderr)
        return 1
    return 0
