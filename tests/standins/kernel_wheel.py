"""Stand-in vLLM wheels that carry a kernel library, for the kernel-library mode on a CPU.

A real ``_moe_C*.so`` holds CUDA kernels only. The stand-in is a real shared library too, built
here with the C compiler in well under a second: a load-time constructor runs Python that defines
``torch.ops._moe_C`` with the stand-in CPU kernels of ``vllm_eras`` (0.22.1's op schemas), so
``torch.ops.load_library`` and everything after it run as with vLLM's file. Variants:
``slow_permute_s`` makes ``moe_permute`` slower per call (a commit that regressed the kernel), and
``loadable=False`` references a symbol no process defines, so loading fails the way a library
built against another torch does ("undefined symbol").

The wheel also carries a ``moe_permute_unpermute.py`` whose functions are 0.22.1's customized path
over ``torch.ops._moe_C``, and ``vllm/_version.py`` naming the commit it was built from.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sysconfig
import zipfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
RELEASE = "0.22.1"
MISSING_SYMBOL = "moebench_symbol_of_another_torch"

_REGISTER = """\
import sys
sys.path.insert(0, {tests!r})
from standins import vllm_eras
vllm_eras.register(vllm_eras.SCHEMAS[{release!r}], "_moe_C", slow_permute_s={slow!r})
"""

_C = """\
#include <Python.h>
static const char CODE[] = {code};
__attribute__((constructor)) static void moebench_standin_load(void) {{
    if (!Py_IsInitialized()) return;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyRun_SimpleString(CODE);
    PyGILState_Release(gil);
}}
{missing}
"""

MODULE = """\
# Stand-in of vLLM {release}'s moe_permute_unpermute.py: its customized path over torch.ops._moe_C.
import sys

import torch

sys.path.insert(0, {tests!r})
from standins import vllm_eras

globals().update(vllm_eras.api_functions({release!r}, torch.ops._moe_C))
"""

VERSION_PY = "__version__ = version = {version!r}\n__commit_id__ = commit_id = {commit!r}\n"


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def build_library(path: Path, *, slow_permute_s: float = 0.0, loadable: bool = True) -> Path:
    code = _REGISTER.format(tests=str(TESTS), release=RELEASE, slow=slow_permute_s)
    missing = "" if loadable else f"extern void {MISSING_SYMBOL}(void);\nvoid moebench_use(void) {{ {MISSING_SYMBOL}(); }}"
    source = path.with_suffix(".c")
    source.write_text(_C.format(code=_c_string(code), missing=missing))
    subprocess.run(["cc", "-shared", "-fPIC", "-O0", f"-I{sysconfig.get_paths()['include']}", "-o", str(path),
                    str(source)], check=True)
    return path


def kernel_wheel(folder: Path, version: str, commit: str, library: Path) -> Path:
    """A vLLM wheel (only what kernel-library mode reads) whose files say it is ``commit``."""
    files = {
        "vllm/__init__.py": b"",
        "vllm/_version.py": VERSION_PY.format(version=version, commit=f"g{commit[:9]}").encode(),
        "vllm/_moe_C.abi3.so": library.read_bytes(),
        "vllm/model_executor/layers/fused_moe/moe_permute_unpermute.py":
            MODULE.format(release=RELEASE, tests=str(TESTS)).encode(),
        f"vllm-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n".encode(),
        f"vllm-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp38-abi3-manylinux_2_28_x86_64\n",
    }
    record = [f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for name, data in files.items()]
    files[f"vllm-{version}.dist-info/RECORD"] = ("\n".join(record) + f"\nvllm-{version}.dist-info/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vllm-{version}-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path
