"""Same code, same number: the asv suite run many times on unchanged code, then two slowed commits.

    python evidence/same_code.py --release DIR --work /tmp/same-code --out docs/data/same-code

DIR holds one vLLM release's ``_moe_C*.so`` (timed as ``vllm-ops``) and its
``moe_permute_unpermute.py`` (the Python API, ``vllm-custom``). On one GPU, with real asv and the
real suite (``benchmarks/moe.py``), in fresh processes:

1. ``--runs`` commits of a stand-in project repository (``moebench.asvlocal``) that all measure
   the unchanged release: the models, dtype auto, every batch size, warm L2, implementations
   ``vllm-ops``, ``reference-custom`` and ``vllm-custom``.
2. One commit whose ``moe_permute`` is slowed at small batch sizes (``--small-tokens``), then one
   whose ``moe_unpermute`` is slowed at large ones (``--large-tokens``). The slowed copies of the
   release's Python file add one in-place pass (``x.mul_(1)``: values and the correctness gate are
   unchanged) over the op's output on ``k`` of every 10 calls, ``k`` calibrated per shape for a
   ``--target`` slowdown of ``vllm-custom`` from in-process measurements (the op alone, with the
   pass on every call). The other series of those commits are controls.
3. ``moebench alerts``: over the same-code runs (``--since`` the first: must report nothing),
   and over everything (each slowed series exactly at its commit, nothing else).
4. Per series, the spread of the same-code runs' values, (max - min) / min.

Resumable: everything lives in ``--work``; a run that is already recorded there is not repeated,
so the sequence can be split over several invocations (``--budget-s``; exit 3 = not finished). Writes
``OUT/summary.json`` (calibration, wall times, alerts, spreads) and ``OUT/results.tgz`` (asv
results and alert reports); prints the summary. Exit 0 when the alerts came out as expected.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from moebench import asvlocal  # noqa: E402
from moebench.asvresults import load_series  # noqa: E402
from moebench.impls.vllm import MODULE_ENV, vllm_implementations  # noqa: E402
from moebench.models import resolve  # noqa: E402
from moebench.roofline import ceiling  # noqa: E402
from moebench.axes import BATCH_SIZES  # noqa: E402
from moebench.grid import SweepSpec  # noqa: E402
from moebench.runpoint import DeviceRunner  # noqa: E402
from moebench.timing import TimerConfig  # noqa: E402

MODULE_FILE = "moe_permute_unpermute.py"
SLOWED_IMPL = "vllm-custom"
IMPLS = ("vllm-ops", "reference-custom", SLOWED_IMPL)
MODELS = ("mistralai/Mixtral-8x7B-Instruct-v0.1", "Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V3")
# Where the extra pass goes: right after each op's kernel call, on the op's output.
PERMUTE_ANCHOR = "    if a1q_scale is not None and a1q_scale.dim() > 1:"
PERMUTE_PASS = "    if _moebench_extra('permute', hidden_states.shape):\n        permuted_hidden_states.mul_(1)\n"
UNPERMUTE_CALL_END = "        out,\n    )\n"
UNPERMUTE_PASS = "    if _moebench_extra('unpermute', out.shape):\n        out.mul_(1)\n"
HELPER = '''

# moebench evidence only: an extra in-place pass on k of every 10 calls of a shape.
_MOEBENCH_EXTRA = {table}
_MOEBENCH_CALLS = {{}}


def _moebench_extra(op, shape):
    k = _MOEBENCH_EXTRA.get((op, int(shape[0]), int(shape[1])), 0)
    if not k:
        return False
    n = _MOEBENCH_CALLS[op] = _MOEBENCH_CALLS.get(op, 0) + 1
    return n % 10 < k
'''


def slowed_module(text: str, extra: dict[tuple[str, int, int], int]) -> str:
    """The release's file with the extra pass after both kernel calls (active where ``extra`` says)."""
    if PERMUTE_ANCHOR not in text or UNPERMUTE_CALL_END not in text:
        raise SystemExit(f"{MODULE_FILE}: not the layout this tool knows (0.22-era moe_permute/moe_unpermute)")
    text = text.replace(PERMUTE_ANCHOR, PERMUTE_PASS + PERMUTE_ANCHOR, 1)
    text = text.replace(UNPERMUTE_CALL_END, UNPERMUTE_CALL_END + UNPERMUTE_PASS, 1)
    return text + HELPER.format(table=repr(extra))


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--release", type=Path, required=True, help="folder with _moe_C*.so and " + MODULE_FILE)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--tokens", type=int, nargs="+", default=list(BATCH_SIZES))
    p.add_argument("--runs", type=int, default=10, help="same-code asv runs")
    p.add_argument("--small-tokens", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--large-tokens", type=int, nargs="+", default=[2048, 3072, 4096])
    p.add_argument("--target", type=float, default=0.06, help="slowdown to calibrate for")
    p.add_argument("--work", type=Path, default=Path("/tmp/same-code"))
    p.add_argument("--budget-s", type=float, help="start no asv run that would end after this many seconds "
                                                   "(judged by the last run's wall time); resume later")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    return p.parse_args(argv)


def _library(release: Path) -> str:
    found = sorted(release.glob("_moe_C*.so"))
    if len(found) != 1:
        raise SystemExit(f"{release}: expected one _moe_C*.so, found {len(found)}")
    return str(found[0].resolve())


def calibrate(args, library: str, text: str) -> tuple[dict, list[dict]]:
    """k per (op, T, H): ``target`` over (time with the pass on every call / time without - 1)."""
    device = torch.device("cuda")
    ceil = ceiling(device)
    timer = TimerConfig(calls_per_graph=10, replays=20, rounds=3)
    shapes = [("permute", t) for t in args.small_tokens] + [("unpermute", t) for t in args.large_tokens]

    def medians(extra: dict, tag: str) -> dict:
        path = args.work / f"calibrate-{tag}.py"
        path.write_text(slowed_module(text, extra))
        impl = next(i for i in vllm_implementations(library, module_path=str(path)) if i.name == SLOWED_IMPL)
        m = DeviceRunner(device, {SLOWED_IMPL: impl}, ceil)
        out = {}
        for model in args.models:
            shape = resolve(model)
            for op, t in shapes:
                (p,) = SweepSpec(shape=shape, dtype_modes=("auto",), impls=(SLOWED_IMPL,), batch_sizes=(t,)).points()
                r = m.run(p, timer)
                if r.status != "ok":
                    raise SystemExit(f"calibration {tag}: {p.key}: {r.reason}")
                out[(op, t, shape.hidden_size)] = r.op(op).median_us
        return out

    base = medians({}, "release")
    every = medians({key: 10 for key in base}, "every-call")
    ks = {key: int(np.clip(round(args.target * 10 * base[key] / max(every[key] - base[key], 1e-9)), 1, 10))
          for key in base}
    check = medians(ks, "calibrated")
    table = [{"op": op, "tokens": t, "hidden": h, "release_us": base[(op, t, h)], "every_call_us": every[(op, t, h)],
              "k_of_10": ks[(op, t, h)], "slowed_us": check[(op, t, h)],
              "slowdown": check[(op, t, h)] / base[(op, t, h)] - 1} for (op, t, h) in base]
    return ks, table


def alerts(args: list[str], log: Path) -> dict:
    """``moebench alerts`` as the nightly runs it: exit code and the JSON report's findings."""
    report = log.with_suffix(".json")
    proc = subprocess.run([sys.executable, "-m", "moebench", "alerts", *args, "--json", str(report),
                           "--markdown", str(log.with_suffix(".md"))], capture_output=True, text=True)
    data = json.loads(report.read_text()) if report.is_file() else {}
    return {"args": args, "exit": proc.returncode, "stderr": proc.stderr.strip()[-2000:],
            "comparisons": data.get("checked", {}).get("comparisons"),
            "regressions": [{"entry": r["entry"], "commit": r["commit"][:8], "ratio": r["ratio"],
                             "ratio_interval": r["ratio_interval"], "p_value": r["p_value"]}
                            for r in data.get("regressions", [])],
            "improvements": [{"entry": r["entry"], "commit": r["commit"][:8], "ratio": r["ratio"]}
                             for r in data.get("improvements", [])]}


def spreads(results: Path, same: list[str]) -> list[dict]:
    """Per series: each same-code run's value (the median of its rounds) and their spread."""
    rows = []
    for s in load_series(results, None):
        by_commit = {m.commit: m for m in s.measurements}
        values = [float(np.median(by_commit[c].samples)) for c in same if c in by_commit and by_commit[c].samples]
        if len(values) < 2:
            continue
        p = dict(s.params)
        rows.append({"entry": s.entry, "benchmark": s.benchmark, "model": p.get("model"), "impl": p.get("impl"),
                     "tokens": int(p.get("tokens", 0)), "values": values,
                     "spread": max(values) / min(values) - 1,
                     "round_spread_max": max((max(by_commit[c].samples) - min(by_commit[c].samples))
                                             / float(np.median(by_commit[c].samples)) for c in same if c in by_commit)})
    return rows


def main(argv: list[str]) -> int:
    args = parse(argv)
    started = time.perf_counter()
    library = _library(args.release)
    text = (args.release / MODULE_FILE).read_text()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    device = torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}", flush=True)
    if "calibration" not in state:
        ks, table = calibrate(args, library, text)
        state.update(calibration=table, ks=[[*k, v] for k, v in ks.items()], commits=[], walls=[])
        state_path.write_text(json.dumps(state, indent=1))
    for c in state["calibration"]:
        print(f"calibrated {c['op']} T={c['tokens']} H={c['hidden']}: {c['k_of_10']}/10 calls, "
              f"{c['release_us']:.2f} -> {c['slowed_us']:.2f} us ({c['slowdown']:+.1%})", flush=True)
    ks = {(op, t, h): k for op, t, h, k in state["ks"]}
    modules = {"release": text,
               "slowed-small": slowed_module(text, {key: k for key, k in ks.items() if key[0] == "permute"}),
               "slowed-large": slowed_module(text, {key: k for key, k in ks.items() if key[0] == "unpermute"})}
    for name, body in modules.items():
        (args.work / f"{name}.py").write_text(body)

    work, machine = args.work / "asv", "gpu-" + "".join(ch if ch.isalnum() else "-" for ch in device)
    repo, html = work / "project", work / "html"
    conf = asvlocal.write_config(work, repo, html)
    env = {**os.environ, "MOEBENCH_MODELS": ",".join(args.models), "MOEBENCH_DTYPES": "auto",
           "MOEBENCH_IMPLS": ",".join(IMPLS), "MOEBENCH_BATCH_SIZES": ",".join(map(str, args.tokens)),
           "MOEBENCH_L2": "warm", "MOEBENCH_VLLM_OPS_LIBRARY": library, "MOEBENCH_RAY": "off"}
    if asvlocal.asv(["machine", "--yes", "--machine", machine], conf, env, capture=True).returncode:
        raise SystemExit("asv machine failed")
    plan = ["release"] * args.runs + ["slowed-small", "slowed-large"]
    for k in range(len(state["commits"]), len(plan)):
        last = state["walls"][-1] if state["walls"] else 0.0
        if args.budget_s is not None and time.perf_counter() - started + 1.2 * last > args.budget_s:
            print(f"stopping after {k} runs: the budget is spent (resume with the same --work)")
            return 3
        which = plan[k]
        commit = asvlocal.commit_state(repo, asvlocal.environment_state() + f"{MODULE_ENV}: {which}\nrun {k + 1}\n")
        t0 = time.perf_counter()
        proc = asvlocal.run_commit(conf, commit, machine=machine,
                                   env={**env, MODULE_ENV: str(args.work / f"{which}.py")}, capture=True)
        wall = time.perf_counter() - t0
        (args.work / f"run{k + 1}.log").write_text(proc.stdout + proc.stderr)
        print(f"asv run {k + 1} ({which}) commit {commit[:8]}: rc {proc.returncode}, {wall:.1f} s", flush=True)
        if proc.returncode:
            raise SystemExit(f"asv run {k + 1} failed: see run{k + 1}.log\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        state["commits"].append(commit)
        state["walls"].append(wall)
        state_path.write_text(json.dumps(state, indent=1))

    commits = state["commits"]
    asvlocal.publish(conf, html, env, capture=True)
    results = work / "results"
    common = [str(results), "--html-dir", str(html), "--config", str(conf)]
    same_dir = args.work / "same-results"
    if not same_dir.exists():
        keep = {c[:8] for c in commits[:args.runs]}
        shutil.copytree(results, same_dir, ignore=lambda d, names: [
            n for n in names if n.endswith(".json") and n not in ("machine.json", "benchmarks.json")
            and Path(d) != results and n.split("-")[0] not in keep])
    summary = {"device": device, "torch": torch.__version__, "library": library, "models": args.models,
               "tokens": args.tokens, "impls": IMPLS, "runs": args.runs, "commits": commits,
               "plan": plan, "asv_run_wall_s": state["walls"], "calibration": state["calibration"],
               "alerts_same_code": alerts([str(same_dir), "--config", str(conf), "--since", commits[0][:12]],
                                          args.work / "alerts-same"),
               "alerts_all": alerts(common + ["--since", commits[0][:12]], args.work / "alerts-all"),
               "spread": spreads(results, commits[:args.runs])}
    slowed_small = {(("permute", t)) for t in args.small_tokens}
    slowed_large = {(("unpermute", t)) for t in args.large_tokens}
    expected = set()
    for r in summary["spread"]:
        op = "unpermute" if ".track_unpermute" in r["entry"] else "permute"
        if r["impl"] == f"'{SLOWED_IMPL}'":
            if (op, r["tokens"]) in slowed_small:
                expected.add((r["entry"], commits[args.runs][:8]))
            if (op, r["tokens"]) in slowed_large:
                expected.add((r["entry"], commits[args.runs + 1][:8]))
    found = {(r["entry"], r["commit"]) for r in summary["alerts_all"]["regressions"]}
    summary["expected"] = {
        "same_code_silent": summary["alerts_same_code"]["exit"] == 0
        and not summary["alerts_same_code"]["regressions"] and not summary["alerts_same_code"]["improvements"],
        "slowed_found_exactly": found == expected,
        "missed": sorted(expected - found), "extra": sorted(found - expected)}
    summary["wall_s"] = time.perf_counter() - started
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    with tarfile.open(args.out / "results.tgz", "w:gz") as tar:
        tar.add(results, arcname="results")
        for p in sorted(args.work.glob("alerts-*")):
            tar.add(p, arcname=p.name)
    for name in ("alerts_same_code", "alerts_all"):
        a = summary[name]
        print(f"{name}: exit {a['exit']}, {a['comparisons']} comparisons, {len(a['regressions'])} regressions, "
              f"{len(a['improvements'])} improvements {a['stderr'][-300:]}")
    print("expected:", json.dumps(summary["expected"]))
    times = [r for r in summary["spread"] if "vs_floor" not in r["entry"]]
    for r in sorted(times, key=lambda r: -r["spread"])[:12]:
        print(f"spread {r['spread']:.2%}  rounds<= {r['round_spread_max']:.2%}  {r['entry']}")
    return 0 if summary["expected"]["same_code_silent"] and summary["expected"]["slowed_found_exactly"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
