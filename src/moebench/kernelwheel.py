"""vLLM's permute/unpermute kernels on their own: the ``_moe_C`` library and the Python module of
the customized path, taken out of a vLLM wheel into a *kernel directory*, timed in this machine's
own torch.

Why: installing a commit's whole wheel brings the torch, CUDA runtime and Python that commit pins,
so a step in a graph could come from any of them, and each install costs minutes and gigabytes.
The kernels live in one library (``vllm/_moe_C.abi3.so`` before 0.24, then
``vllm/_moe_C_stable_libtorch.abi3.so``, 38-50 MB) plus ``moe_permute_unpermute.py`` (which imports
only torch up to 0.30). Taken alone and loaded into one fixed torch, every commit differs from the
next by its kernels only.

A kernel directory holds the library, the module (where the wheel has it) and ``kernels.json``:
the release, the commit its files name (read from the wheel's ``vllm/_version.py`` and metadata,
exactly as ``moebench.wheels`` reads an installed vLLM), the wheel and the library's sha256, and,
once probed, whether the library loads into this torch and why not. A library that does not load
is recorded with its reason and its points are n/a; nothing else is ever substituted for it.

Used by asv's install step in kernel-library mode (``moebench.wheels``; the directory then lives
at ``<environment prefix>/moebench-kernels`` and the suite finds it there) and by the release
history (``moebench.releases``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from .errors import BadInput
from .wheels import InstalledVllm, identity

MANIFEST = "kernels.json"
ENV_DIR = "moebench-kernels"  # under an asv environment's prefix
# The library that registers moe_permute, newest layout first (a wheel ships one of them).
LIBRARY_NAMES = ("_moe_C_stable_libtorch.abi3.so", "_moe_C.abi3.so")
MODULE_NAME = "moe_permute_unpermute.py"
MODULE_MEMBER = f"vllm/model_executor/layers/fused_moe/{MODULE_NAME}"
VERSION_MEMBER = "vllm/_version.py"

# ELF, then Mach-O (32/64-bit, both byte orders, universal): what a loadable extension starts with.
LIBRARY_MAGIC = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                 b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")


def check_library_path(path: str) -> None:
    """BadInput unless ``path`` is a readable shared library (whether it loads is asked later)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BadInput(f"--vllm-ops-library {path}: no such file")
    if not p.is_file():
        raise BadInput(f"--vllm-ops-library {path}: not a file")
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise BadInput(f"--vllm-ops-library {path}: cannot read it ({exc.strerror or exc})") from None
    if head not in LIBRARY_MAGIC:
        raise BadInput(f"--vllm-ops-library {path}: not a shared library "
                       "(expected a _moe_C*.so built from vLLM's csrc)")


@dataclass(frozen=True)
class KernelDir:
    """A directory of one vLLM build's kernels (see the module docstring)."""

    path: Path
    version: str
    commit: str | None  # hex prefix the files name, None where they name none
    identity: str  # where ``commit`` was read
    library: str  # file name inside ``path``
    library_sha256: str
    module: str | None  # moe_permute_unpermute.py inside ``path``, None if the wheel has none
    wheel: str  # the wheel's file name
    built: str  # ISO time of the wheel's vllm/_version.py entry: when the release was built
    loads: bool | None = None  # None until probed
    reason: str | None = None  # why the library does not load
    torch: str | None = None  # the torch it was probed in

    @property
    def library_path(self) -> Path:
        return self.path / self.library

    @property
    def module_path(self) -> Path | None:
        return self.path / self.module if self.module else None

    def installed(self) -> InstalledVllm:
        return InstalledVllm(self.version, self.commit, self.identity)

    def save(self) -> "KernelDir":
        fields = {k: v for k, v in asdict(self).items() if k != "path"}
        (self.path / MANIFEST).write_text(json.dumps(fields, indent=1) + "\n")
        return self

    @classmethod
    def load(cls, path: Path) -> "KernelDir":
        """BadInput unless ``path`` is a kernel directory with all its files."""
        manifest = Path(path) / MANIFEST
        try:
            fields = json.loads(manifest.read_text())
            kdir = cls(path=Path(path).resolve(), **fields)
        except FileNotFoundError:
            raise BadInput(f"{path}: not a kernel directory (no {MANIFEST}; extract one from a "
                           "vLLM wheel)") from None
        except (ValueError, TypeError) as exc:
            raise BadInput(f"{manifest}: malformed ({exc})") from None
        for f in (kdir.library_path, kdir.module_path):
            if f is not None and not f.is_file():
                raise BadInput(f"{path}: {f.name} named in {MANIFEST} is missing")
        return kdir


def _member(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    try:
        return zf.getinfo(name)
    except KeyError:
        return None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract(wheel: Path, dest: Path) -> KernelDir:
    """Take the kernels of a vLLM wheel into ``dest`` (replaced whole, never left half written).
    BadInput for a file that is not a vLLM wheel or has no ``_moe_C`` library."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BadInput(f"{wheel}: not a readable wheel ({exc})") from None
    with zf:
        metadata = [n for n in zf.namelist() if n.startswith("vllm-") and n.endswith(".dist-info/METADATA")]
        if not metadata:
            raise BadInput(f"{wheel}: not a vLLM wheel (no vllm-*.dist-info/METADATA)")
        dist_version = next((line.split(":", 1)[1].strip() for line in
                             zf.read(metadata[0]).decode("utf-8", "replace").splitlines()
                             if line.startswith("Version:")), "")
        version_info = _member(zf, VERSION_MEMBER)
        who = identity(zf.read(version_info).decode() if version_info else None, dist_version,
                       "the wheel's")
        library = next((n for n in LIBRARY_NAMES if _member(zf, f"vllm/{n}")), None)
        if library is None:
            raise BadInput(f"{wheel}: vLLM {who.version} ships no {' or '.join(LIBRARY_NAMES)}")
        module = _member(zf, MODULE_MEMBER)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        wanted = {library: f"vllm/{library}", **({MODULE_NAME: MODULE_MEMBER} if module else {})}
        try:
            for name, member in wanted.items():
                with zf.open(member) as src, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            stamp = (version_info or zf.getinfo(f"vllm/{library}")).date_time
            kdir = KernelDir(path=dest.resolve(), version=who.version, commit=who.commit, identity=who.source,
                             library=library, library_sha256=file_sha256(tmp / library),
                             module=MODULE_NAME if module else None, wheel=Path(wheel).name,
                             built=datetime(*stamp, tzinfo=timezone.utc).isoformat())
            replace(kdir, path=tmp).save()
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return kdir


def probe(kdir: KernelDir, python: str = sys.executable) -> KernelDir:
    """Whether the library loads into ``python``'s torch, asked in a fresh process (a library
    that crashes or poisons the process must not take this one with it); saved in the manifest."""
    code = ("import json, sys, torch\n"
            "from moebench.impls.vllm import Unavailable, library_kernels\n"
            "try:\n    library_kernels(sys.argv[1]); why = None\n"
            "except Unavailable as exc:\n    why = str(exc)\n"
            "print(json.dumps({'torch': torch.__version__, 'reason': why}))\n")
    proc = subprocess.run([python, "-c", code, str(kdir.library_path)], capture_output=True, text=True)
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        answer = {"torch": None, "reason": f"loading it ended the process (exit {proc.returncode}): {tail}"}
    return replace(kdir, loads=answer["reason"] is None, reason=answer["reason"], torch=answer["torch"]).save()


def installed(prefix: str = sys.prefix) -> KernelDir | None:
    """The kernel directory of this environment (kernel-library mode), or None."""
    path = Path(prefix) / ENV_DIR
    return KernelDir.load(path) if (path / MANIFEST).is_file() else None


# --- asv's install step in kernel-library mode ----------------------------------------------------

TORCH_PYTHON_ENV = "MOEBENCH_TORCH_PYTHON"
CACHE_ENV = "MOEBENCH_WHEEL_CACHE"
# One JSON line per commit set up: which library, and whether and why not it loads. asv keeps no
# text with its results (a library that does not load is only "n/a" there), so the reason is kept
# here, beside the results and committed with them; not a .json file, which asv would take for one.
LEDGER_ENV = "MOEBENCH_KERNEL_LEDGER"
LEDGER = "results/kernel-libraries.jsonl"  # relative to the checkout, where asv runs the step
BRIDGE = "moebench-runner.pth"
SRC = Path(__file__).resolve().parents[1]  # the directory holding this moebench package


def cache_dir(env=os.environ) -> Path:
    return Path(env.get(CACHE_ENV) or Path.home() / ".cache" / "moebench" / "wheels").expanduser()


def fetch(url: str, sha: str, cache: Path) -> Path:
    """The wheel at ``url`` as a local file: a file: URL as it is, anything else downloaded once
    into ``cache/<sha>/`` (written whole or not at all)."""
    import urllib.request

    from .wheels import WheelError, local_path, open_url, wheel_filename

    if (local := local_path(url)) is not None:
        return local
    path = cache / sha / wheel_filename(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    resp = open_url(url, urllib.request.Request(url))
    if resp is None:
        raise WheelError(f"{url}: not found")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with resp, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def bridge_runner_torch(torch_python: str) -> str:
    """Make this environment import the runner's own torch (and moebench's other dependencies)
    from ``torch_python``'s site-packages, and moebench from this source tree, through a ``.pth``
    file: nothing is installed, so every commit is timed in the same torch. Returns that torch's
    version; WheelError if ``torch_python`` has no torch or another Python version."""
    import sysconfig

    from .wheels import WheelError

    code = ("import json, pathlib, sys, torch; print(json.dumps({'python': list(sys.version_info[:2]), "
            "'torch': torch.__version__, 'site': str(pathlib.Path(torch.__file__).resolve().parents[1])}))")
    try:
        proc = subprocess.run([torch_python, "-c", code], capture_output=True, text=True)
    except OSError as exc:
        raise WheelError(f"{TORCH_PYTHON_ENV}={torch_python}: cannot run it ({exc.strerror or exc})") from None
    if proc.returncode != 0:
        raise WheelError(f"{TORCH_PYTHON_ENV}={torch_python}: cannot import torch "
                         f"({' '.join(proc.stderr.split())[-200:]})")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if tuple(found["python"]) != sys.version_info[:2]:
        raise WheelError(f"{TORCH_PYTHON_ENV}={torch_python} is Python {'.'.join(map(str, found['python']))}, "
                         f"this environment {sys.version_info[0]}.{sys.version_info[1]}: set asv.conf.json's "
                         "pythons to the runner's version")
    Path(sysconfig.get_paths()["purelib"], BRIDGE).write_text(f"{SRC}\n{found['site']}\n")
    return found["torch"]


def install_kernels(sha: str, root: str, variant: str | None, checkout: Path | None,
                    torch_python: str, cache: Path, ledger: Path, prefix: str = sys.prefix) -> KernelDir:
    """Kernel-library mode: the commit's wheel (cached), verified to be that commit, its kernels
    extracted to ``<prefix>/moebench-kernels``, probed in the runner's torch, and the verdict
    appended to ``ledger``."""
    from .wheels import find_wheel, verify

    dest = Path(prefix) / ENV_DIR
    shutil.rmtree(dest, ignore_errors=True)  # never time the previous commit's kernels
    url = find_wheel(root, sha, variant)
    print(f"asv_install: vLLM {sha[:12]}: {url}", flush=True)
    torch = bridge_runner_torch(torch_python)
    wheel = fetch(url, sha, cache)
    kdir = extract(wheel, dest)
    try:
        how = verify(kdir.installed(), sha, checkout)
    except Exception:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    kdir = probe(kdir)
    entry = {**{k: v for k, v in asdict(kdir).items() if k != "path"}, "commit": sha, "verified": how,
             "python": sys.executable, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with ledger.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    state = "loads" if kdir.loads else f"does NOT load (its points are n/a): {kdir.reason}"
    print(f"asv_install: verified {how}; kernels {kdir.library} (sha256 {kdir.library_sha256[:16]}) "
          f"in torch {torch}: {state}", flush=True)
    return kdir
