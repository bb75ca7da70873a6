"""GPU must-show of ``moebench alerts``: silent on run-to-run noise, loud on a ~5 % slowdown.

    bash scripts/gpu_alerts.sh            # on the device: installs asv, then runs this script

Everything on one GPU in one call, with the real suite (``benchmarks/moe.py``) run by real asv:

1. The slowed kernel. The "regressing commit" is a copy of vLLM 0.24.0's
   ``moe_permute_unpermute.py`` whose ``moe_unpermute`` makes one extra in-place pass (x * 1, so
   the values and the correctness gate are unchanged) over the first rows of its output after the
   kernel: the kind of regression a careless edit of vLLM's Python makes. It exists only here.
   The rows per output shape are calibrated from three in-process measurements of ``vllm-custom``
   unpermute (the release's file, 1 extra row, every row: a fixed cost plus a cost per row) so
   that the slowdown is about ``--target`` (default 6 %: an alert needs the ratio's interval to
   reach 1.05), then the slowed file is measured once more.
2. The history. A stand-in project repository (``moebench.asvlocal``) gets ``--runs`` commits
   (default 5) that all record the unchanged release: the same code, measured by that many fresh
   ``asv run --record-samples`` processes. Then one commit records the slowed copy. The suite is
   restricted by ``MOEBENCH_*`` to the calibrated models and token counts, dtype auto, warm L2,
   and ``vllm-custom`` (the slowed path) next to two controls that share nothing slowed:
   ``vllm-ops`` (the same kernels, called directly) and ``reference-custom`` (torch).
3. ``moebench alerts`` (the CLI, as the nightly runs it) three times: after the same-code runs,
   examining commits 2..runs (must exit 0); after the slowed run, its newest commit (must exit 1
   and name only ``vllm-custom`` unpermute series); ``--since`` commit 1 over all (only the last).
4. The spread of the same-code runs per series: (max - min) / min of the run medians, and asv's
   99 % interval of each run's median.

Writes ``OUT/alerts-gpu.tgz`` (asv results, published html, alert reports, calibration, logs) and
``OUT/summary.json``; prints the summary. Exit 0 when all three alert runs came out as expected.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from gpu_vllm import MODULE_FILE, find_library  # this folder is on sys.path when a script runs

from moebench import asvlocal
from moebench.alerts import Html, Interval, load_series, ordered
from moebench.gpustate import Nvml
from moebench.impls.vllm import MODULE_ENV, vllm_implementations
from moebench.models import resolve
from moebench.roofline import ceiling
from moebench.sweep import SweepSpec, run_point
from moebench.timing import TimerConfig

SLOWED_IMPL = "vllm-custom"
CONTROLS = ("vllm-ops", "reference-custom")
CALL = "    torch.ops._moe_C.moe_unpermute("
EXTRA_PASS = '''\
    # moebench alerts demo only: one extra pass over the first rows of the output (x * 1).
    _rows = _MOEBENCH_EXTRA_PASS_ROWS.get(tuple(out.shape), 0)
    if _rows:
        out[:_rows].mul_(1)
'''


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--release", type=Path, default=Path(".vllm-ops/0.24.0"),
                   help="folder with the release's _moe_C*.so and moe_permute_unpermute.py")
    p.add_argument("--models", nargs="+", default=["mistralai/Mixtral-8x7B-Instruct-v0.1",
                                                   "deepseek-ai/DeepSeek-V3"])
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--runs", type=int, default=5, help="same-code asv runs before the slowed one")
    p.add_argument("--target", type=float, default=0.06, help="slowdown to calibrate for")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    return p.parse_args(argv)


def slowed_module(text: str, rows: dict[tuple[int, int], int]) -> str:
    """The release's file with ``EXTRA_PASS`` after the kernel call of ``moe_unpermute``."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("def moe_unpermute("))
    call = next(i for i in range(start, len(lines)) if lines[i].startswith(CALL))
    end = next(i for i in range(call, len(lines)) if lines[i].rstrip() == "    )")
    table = {f"{k[0]}, {k[1]}": v for k, v in rows.items()}
    body = "".join(lines[:end + 1]) + EXTRA_PASS + "".join(lines[end + 1:])
    return body + "\n_MOEBENCH_EXTRA_PASS_ROWS = {" + ", ".join(f"({k}): {v}" for k, v in table.items()) + "}\n"


class Calibration:
    """Median ``vllm-custom`` unpermute time per (model, T) for a given module file."""

    def __init__(self, library: str, models: list[str], tokens: list[int], work: Path) -> None:
        self.library, self.work = library, work
        self.device = torch.device("cuda")
        self.ceiling, self.nvml = ceiling(self.device), Nvml()
        self.timer = TimerConfig(calls_per_graph=10, replays=100, l2="warm")
        self.points = [p for m in models
                       for p in SweepSpec(shape=resolve(m), dtype_modes=("auto",), impls=(SLOWED_IMPL,),
                                          batch_sizes=tuple(tokens), l2="warm").points()]

    def shape(self, point) -> tuple[int, int]:
        return (point.num_tokens, point.hidden_size)

    def medians(self, module_text: str, tag: str) -> dict[tuple[int, int], float]:
        path = self.work / f"moe_permute_unpermute.{tag}.py"
        path.write_text(module_text)
        impl = next(i for i in vllm_implementations(self.library, module_path=str(path)) if i.name == SLOWED_IMPL)
        out = {}
        for p in self.points:
            r = run_point(p, impl, self.device, self.timer, self.ceiling, self.nvml)
            if r.status != "ok":
                raise SystemExit(f"calibration {tag}: {p.key} {r.status}: {r.reason}")
            out[self.shape(p)] = r.op("unpermute").median_us
        return out


def calibrate(cal: Calibration, release_text: str, target: float) -> tuple[dict, list[dict]]:
    shapes = [cal.shape(p) for p in cal.points]
    base = cal.medians(release_text, "release")
    one = cal.medians(slowed_module(release_text, {s: 1 for s in shapes}), "one-row")
    full = cal.medians(slowed_module(release_text, {s: s[0] for s in shapes}), "all-rows")
    rows = {}
    for s in shapes:
        fixed, per_row = one[s] - base[s], (full[s] - one[s]) / max(s[0] - 1, 1)
        want = (target * base[s] - fixed) / per_row if per_row > 0 else 1
        rows[s] = int(min(max(round(want) + 1, 1), s[0]))
    check = cal.medians(slowed_module(release_text, rows), "calibrated")
    table = [{"tokens": s[0], "hidden": s[1], "release_us": base[s], "one_row_us": one[s],
              "all_rows_us": full[s], "rows": rows[s], "slowed_us": check[s],
              "slowdown": check[s] / base[s] - 1} for s in shapes]
    return rows, table


def alerts(args: list[str], log: Path) -> dict:
    """``moebench alerts`` as the nightly runs it; its exit code and JSON report."""
    report = log.with_suffix(".json")
    proc = subprocess.run([sys.executable, "-m", "moebench", "alerts", *args, "--json", str(report),
                           "--markdown", str(log.with_suffix(".md"))], capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    data = json.loads(report.read_text()) if report.is_file() else {}
    return {"args": args, "exit": proc.returncode, "stderr": proc.stderr.strip()[-2000:],
            "comparisons": data.get("checked", {}).get("comparisons"),
            "regressions": [{"entry": r["entry"], "commit": r["commit"][:8], "ratio": r["ratio"],
                             "ratio_interval": r["ratio_interval"], "p_value": r["p_value"],
                             "asv_step": bool(r.get("asv_step_detection"))}
                            for r in data.get("regressions", [])],
            "improvements": len(data.get("improvements", [])),
            "asv_step_detection_only": len(data.get("asv_step_detection_only", []))}


def spread(results: Path, html: Path, machine: str, same: list[str], slowed: str) -> list[dict]:
    """Per series: the same-code runs' medians, their spread, asv's CI, and the slowed run's ratio."""
    rows = []
    order = Html.load(html)
    for s in load_series(results, [machine]):
        by_commit = {m.commit: m for m in ordered(s, order)}
        runs = [Interval.of(by_commit[c].samples) for c in same if c in by_commit]
        if not runs:
            continue
        medians = [r.median for r in runs]
        row = {"entry": s.entry, "unit": s.unit, "runs": len(runs), "medians": medians,
               "spread": max(medians) / min(medians) - 1,
               "ci99_half_width_max": max((r.hi - r.lo) / 2 / r.median for r in runs)}
        if slowed in by_commit:
            pooled = np.median([x for c in same if c in by_commit for x in by_commit[c].samples])
            row["slowed_ratio"] = Interval.of(by_commit[slowed].samples).median / pooled
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    args = parse(argv)
    started = time.perf_counter()
    library = str(find_library(args.release).resolve())
    release_text = (args.release / MODULE_FILE).read_text()
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "alerts-gpu"
    root.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    summary: dict = {"device": device, "torch": torch.__version__, "release": str(args.release),
                     "library": library, "models": args.models, "tokens": args.tokens, "runs": args.runs,
                     "target": args.target}
    print(f"{device}, torch {torch.__version__}", flush=True)

    rows, summary["calibration"] = calibrate(Calibration(library, args.models, args.tokens, root),
                                             release_text, args.target)
    for c in summary["calibration"]:
        print(f"calibrated T={c['tokens']} H={c['hidden']}: {c['rows']} extra rows, "
              f"{c['release_us']:.2f} -> {c['slowed_us']:.2f} us ({c['slowdown']:+.1%})", flush=True)
    modules = {"release": root / "release" / "moe_permute_unpermute.py",
               "slowed": root / "slowed" / "moe_permute_unpermute.py"}
    texts = {"release": release_text, "slowed": slowed_module(release_text, rows)}
    for name, text in texts.items():
        modules[name].parent.mkdir(exist_ok=True)
        modules[name].write_text(text)

    work, machine = root / "asv", "demo-" + "".join(ch if ch.isalnum() else "-" for ch in device)
    repo, html = work / "project", work / "html"
    conf = asvlocal.write_config(work, repo, html)
    env = {**os.environ, "MOEBENCH_MODELS": ",".join(args.models), "MOEBENCH_DTYPES": "auto",
           "MOEBENCH_IMPLS": ",".join((SLOWED_IMPL, *CONTROLS)),
           "MOEBENCH_BATCH_SIZES": ",".join(map(str, args.tokens)), "MOEBENCH_L2": "warm",
           "MOEBENCH_VLLM_OPS_LIBRARY": library, "MOEBENCH_RAY": "off"}
    if asvlocal.asv(["machine", "--yes", "--machine", machine], conf, env, capture=True).returncode:
        raise SystemExit("asv machine failed")
    commits, walls = [], []
    for k in range(1, args.runs + 2):
        which = "release" if k <= args.runs else "slowed"
        state = (asvlocal.environment_state() + f"{MODULE_ENV}: {which} "
                 f"(sha256 {hashlib.sha256(texts[which].encode()).hexdigest()[:16]})\nrun {k}\n")
        commit = asvlocal.commit_state(repo, state)
        t0 = time.perf_counter()
        proc = asvlocal.run_commit(conf, commit, machine=machine, env={**env, MODULE_ENV: str(modules[which])},
                                   capture=True)
        walls.append(time.perf_counter() - t0)
        (root / f"run{k}.log").write_text(proc.stdout + proc.stderr)
        print(f"asv run {k} ({which}) commit {commit[:8]}: rc {proc.returncode}, {walls[-1]:.1f} s", flush=True)
        if proc.returncode:
            raise SystemExit(f"asv run {k} failed: see run{k}.log\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        commits.append(commit)
        if k == args.runs:
            asvlocal.publish(conf, html, env, capture=True)
            noise = alerts([str(work / "results"), "--html-dir", str(html), "--config", str(conf),
                            "--since", commits[0][:12]], root / "alerts-same")
    asvlocal.publish(conf, html, env, capture=True)
    common = [str(work / "results"), "--html-dir", str(html), "--config", str(conf)]
    newest = alerts(common, root / "alerts-newest")
    since = alerts(common + ["--since", commits[0][:12]], root / "alerts-since-first")

    slowed = commits[-1]
    flagged = {r["entry"] for r in newest["regressions"]}
    summary.update({
        "commits": commits, "asv_run_wall_s": walls, "machine": machine,
        "alerts_same_code": noise, "alerts_newest": newest, "alerts_since_first": since,
        "spread": spread(work / "results", html, machine, commits[:-1], slowed),
        "expected": {
            "same_code_exit_0": noise["exit"] == 0 and not noise["regressions"],
            "newest_exit_1": newest["exit"] == 1,
            "only_slowed_series": bool(flagged) and all(f"'{SLOWED_IMPL}'" in e and ".track_unpermute" in e
                                                        for e in flagged),
            "since_first_only_last_commit": since["exit"] == 1 and {r["commit"] for r in since["regressions"]}
            == {slowed[:8]}},
        "wall_s": time.perf_counter() - started,
    })
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    with tarfile.open(args.out / "alerts-gpu.tgz", "w:gz") as tar:
        tar.add(root, arcname="alerts-gpu", filter=lambda ti: None if "/asv/env" in ti.name else ti)
    print(json.dumps({k: summary[k] for k in ("expected", "asv_run_wall_s", "wall_s")}, indent=1))
    for name in ("alerts_same_code", "alerts_newest", "alerts_since_first"):
        a = summary[name]
        print(f"{name}: exit {a['exit']}, {a['comparisons']} comparisons, {len(a['regressions'])} regressions")
        for r in a["regressions"]:
            print(f"  {r['commit']} {r['entry']}: ratio {r['ratio']:.4f} {r['ratio_interval']}")
    worst = sorted(summary["spread"], key=lambda r: -r["spread"])[:5]
    for r in worst:
        print(f"spread {r['spread']:.2%} ci99/2 {r['ci99_half_width_max']:.2%} {r['entry']}")
    return 0 if all(summary["expected"].values()) else 1


if __name__ == "__main__":
    print(platform.node(), flush=True)
    sys.exit(main(sys.argv[1:]))
