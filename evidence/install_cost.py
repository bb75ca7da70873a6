"""What does setting up one vLLM commit cost in each install mode of asv's install step?

    python evidence/install_cost.py WHEEL --out docs/data/install-cost [--full]

For one vLLM wheel already on disk (a cached wheel, as the nightly has after its first night):
- kernel-library mode: the step itself (``scripts/asv_install.py --mode kernels``) against a
  local per-commit index holding that wheel, in a fresh virtualenv bridged to this interpreter's
  torch: find, verify, extract the kernel library and module, probe whether it loads. Repeated
  ``--repeat`` times (each starts from an empty kernel directory);
- with ``--full``, wheel mode: ``pip install WHEEL`` into a fresh virtualenv with its
  dependencies (the torch it pins, CUDA libraries, ...) from pip's index, timed once with pip's
  cache as this machine has it; the disk it takes is measured too.
Writes ``OUT/install-cost.json`` and prints both.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from moebench.kernelwheel import extract  # noqa: E402


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "virtualenv", "-q", str(path)], check=True)
    return path / "bin" / "python"


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def kernel_mode(wheel: Path, work: Path, repeat: int) -> dict:
    kdir = extract(wheel, work / "peek")  # only to learn which commit the wheel names
    sha = (kdir.commit or "0").ljust(40, "0")
    page = work / "index" / sha / "vllm"
    page.mkdir(parents=True)
    (work / "index" / sha / wheel.name).symlink_to(wheel.resolve())
    (page / "index.html").write_text(f'<a href="../{wheel.name}">{wheel.name}</a>\n')
    python = _venv(work / "env")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "MOEBENCH_WHEEL_INDEX": str(work / "index"),
           "MOEBENCH_KERNEL_LEDGER": str(work / "ledger.jsonl"), "MOEBENCH_TORCH_PYTHON": sys.executable}
    seconds, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run([str(python), str(ROOT / "scripts" / "asv_install.py"), "--mode", "kernels",
                               "--commit", sha], env=env, capture_output=True, text=True, cwd=work)
        seconds.append(time.perf_counter() - t0)
        out = proc.stdout + proc.stderr
        if proc.returncode not in (0, 1):
            raise SystemExit(out)
    ledger = [json.loads(line) for line in (work / "ledger.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "last_output": out.strip().splitlines(), "ledger": ledger[-1],
            "kernel_dir_bytes": _du(work / "env" / "moebench-kernels")}


def wheel_mode(wheel: Path, work: Path) -> dict:
    python = _venv(work / "full")
    t0 = time.perf_counter()
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--progress-bar", "off", str(wheel)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:],
            "environment_bytes": _du(work / "full")}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--full", action="store_true", help="also time wheel mode (downloads its dependencies)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="install-cost-"))
    try:
        report = {"wheel": args.wheel.name, "wheel_bytes": args.wheel.stat().st_size, "host": platform.node(),
                  "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                  "kernels": kernel_mode(args.wheel, work, args.repeat)}
        print(f"kernel-library mode: {', '.join(f'{s:.1f}' for s in report['kernels']['seconds'])} s per commit "
              f"({report['kernels']['kernel_dir_bytes'] / 2**20:.0f} MiB kept)")
        if args.full:
            w = report["full_install"] = wheel_mode(args.wheel, work)
            print(f"wheel mode: {w['seconds']:.0f} s (exit {w['returncode']}), "
                  f"{w['environment_bytes'] / 2**30:.1f} GiB environment")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "install-cost.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
