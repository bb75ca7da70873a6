"""`moebench alerts` over histories that real asv measured (tests/asvproject.py's stand-in).

One 14-commit history carries three scenarios as values of the benchmark's `kernel` parameter:
- steps:    +20 % at commit 4, a further +5 % at commit 9 (both must be reported, there);
- noise:    constant mean; per-run offsets N(0, 0.5 %) plus 1.5 % sample noise (no alert ever);
- improves: -20 % at commit 6 (no alert).
And one history a GPU recorded: issue 5's H100 run C (docs/data/alerts/), real suite, real asv.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from moebench import alerts, asvresults, cli

from asvproject import BENCHMARK, build_history, subset_results

pytestmark = pytest.mark.slow

N_COMMITS = 14
STEP_20, STEP_5, IMPROVES_AT = 4, 9, 6
STEPS = f"{BENCHMARK}('steps')"
NOISE = f"{BENCHMARK}('noise')"
IMPROVES = f"{BENCHMARK}('improves')"
VLLM_COMMIT_URL = "https://github.com/vllm-project/vllm/commit/"


def scenario_means() -> list[dict[str, float]]:
    rng = random.Random(1)
    return [{"steps": 1e-3 * (1.20 if i >= STEP_20 else 1.0) * (1.05 if i >= STEP_5 else 1.0),
             "noise": 1e-3 * (1 + rng.gauss(0, 0.005)),
             "improves": 1e-3 * (0.8 if i >= IMPROVES_AT else 1.0)} for i in range(N_COMMITS)]


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    return build_history(tmp_path_factory.mktemp("asv"), scenario_means())


@pytest.fixture(autouse=True)
def _away_from_the_projects_asv_conf(tmp_path, monkeypatch):
    # `moebench alerts` reads ./asv.conf.json by default: these tests name theirs, or none.
    monkeypatch.chdir(tmp_path)


def run_alerts(args, tmp_path, capsys) -> tuple[int, dict, str]:
    out = tmp_path / "alerts.json"
    code = alerts.main([*map(str, args), "--json", str(out)])
    return code, json.loads(out.read_text()), capsys.readouterr().out


def test_reports_the_20_and_the_5_percent_step_at_their_commits(history, tmp_path, capsys):
    code, report, _ = run_alerts([history.results, "--html-dir", history.html, "--config", history.conf,
                                  "--since", history.commits[0]], tmp_path, capsys)
    assert code == 1
    found = [(r["entry"], r["commit"], r["before_commits"][-1]) for r in report["regressions"]]
    assert found == [(STEPS, history.commits[STEP_20], history.commits[STEP_20 - 1]),
                     (STEPS, history.commits[STEP_5], history.commits[STEP_5 - 1])]
    big, small = report["regressions"]
    assert 1.17 < big["ratio"] < 1.23 and 1.03 < small["ratio"] < 1.07
    for r in (big, small):
        lo, hi = r["ratio_interval"]
        assert 1 < lo < r["ratio"] < hi and hi >= 1.05
        assert r["p_value"] < report["settings"]["alpha_per_test"]
        assert r["before"]["lo"] <= r["before"]["median"] <= r["before"]["hi"]
        assert r["asv_step_detection"]["agrees"] is True  # asv's own step detection saw it too
    # after the 20 % step the baseline restarts at the new level: 5 commits of it before commit 9
    assert small["before_commits"] == list(history.commits[STEP_20:STEP_5])
    assert report["checked"]["comparisons"] == 3 * (N_COMMITS - 1)


def test_pure_noise_history_and_improvement_never_alert(history, tmp_path, capsys):
    _, report, _ = run_alerts([history.results, "--html-dir", history.html,
                                  "--since", history.commits[0]], tmp_path, capsys)
    alerted = {r["entry"] for r in report["regressions"]}
    assert NOISE not in alerted and IMPROVES not in alerted
    assert [(r["entry"], r["commit"]) for r in report["improvements"]] == [
        (IMPROVES, history.commits[IMPROVES_AT])]
    assert report["improvements"][0]["ratio"] < 0.85


@pytest.mark.parametrize("html", [False, True], ids=["commit-date-order", "asv-branch-order"])
def test_nightly_alerts_only_the_commit_that_just_regressed(history, tmp_path, capsys, html):
    """Replays the nightly: after each measured commit, the default run examines the newest one."""
    for n in range(1, N_COMMITS + 1):
        results = subset_results(history, n, tmp_path / f"results-{n}")
        extra = ["--html-dir", history.html] if html else []
        code, report, _ = run_alerts([results, *extra], tmp_path, capsys)
        newest = history.commits[n - 1]
        expect = [(STEPS, newest)] if n - 1 in (STEP_20, STEP_5) else []
        assert [(r["entry"], r["commit"]) for r in report["regressions"]] == expect, n
        assert code == (1 if expect else 0)
        assert report["checked"]["commits"] == [newest]


def test_commits_file_examines_exactly_the_listed_commits(history, tmp_path, capsys):
    listed = tmp_path / "new.txt"
    listed.write_text(f"{history.commits[STEP_5][:8]}\n{history.commits[STEP_5 + 1][:8]}\n")
    code, report, _ = run_alerts([history.results, "--commits", listed], tmp_path, capsys)
    assert code == 1
    assert [r["commit"] for r in report["regressions"]] == [history.commits[STEP_5]]
    assert sorted(report["checked"]["commits"]) == sorted(history.commits[STEP_5:STEP_5 + 2])


def test_markdown_names_range_links_dashboard_and_bisect_command(history, tmp_path, capsys):
    before, after = history.commits[STEP_20 - 1], history.commits[STEP_20]
    code, report, md = run_alerts([history.results, "--since", before, "--commit-url", VLLM_COMMIT_URL,
                                   "--dashboard-url", "https://example.github.io/moebench"], tmp_path, capsys)
    block = md.split("####")[1]
    assert f"`{BENCHMARK}` (kernel='steps') on `standin-cpu`" in block
    assert re.search(r"\*\*1\.0\d\d \[\d\.\d+, \d\.\d+\] ms → 1\.[12]\d\d \[\d\.\d+, \d\.\d+\] ms\*\*", block)
    assert f"[`{before[:8]}`]({VLLM_COMMIT_URL}{before})..[`{after[:8]}`]({VLLM_COMMIT_URL}{after})" in block
    assert f"https://github.com/vllm-project/vllm/compare/{before}...{after}" in block
    assert (f"https://example.github.io/moebench/#{BENCHMARK}?machine=standin-cpu&p-kernel=%27steps%27"
            f"&commits={before}-{after}") in block
    assert f"`asv find --machine standin-cpu {before[:8]}..{after[:8]} '{BENCHMARK}'`" in block
    (issue,) = report["issues"]
    assert issue["title"] == f"Performance regression: {BENCHMARK} on standin-cpu"
    assert issue["labels"] == ["perf-regression"]
    assert after[:8] in issue["body"] and history.commits[STEP_5][:8] in issue["body"]


def test_per_benchmark_threshold_overrides(history, tmp_path, capsys):
    base = [history.results, "--since", history.commits[0]]
    code, report, _ = run_alerts([*base, "--threshold-for", r".*\('steps'\)=0.1"], tmp_path, capsys)
    assert [r["commit"] for r in report["regressions"]] == [history.commits[STEP_20]]
    assert report["regressions"][0]["threshold"] == 0.1
    # asv.conf.json's regressions_thresholds (what asv publish uses) applies too
    conf = json.loads(history.conf.read_text())
    conf["regressions_thresholds"] = {"suite\\.Kernel": 0.3}
    (tmp_path / "asv.conf.json").write_text(json.dumps(conf))
    code, report, _ = run_alerts([*base, "--config", tmp_path / "asv.conf.json"], tmp_path, capsys)
    assert code == 0 and report["regressions"] == []


def _error(args, capsys) -> str:
    assert cli.main(["alerts", *map(str, args)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("moebench: error: ")
    return err


def test_missing_or_corrupt_results_are_named(history, tmp_path, capsys):
    assert "no asv results directory" in _error([tmp_path / "nope"], capsys)
    results = subset_results(history, N_COMMITS, tmp_path / "results")
    victim = sorted((results / history.machine).glob(f"{history.commits[3][:8]}-*.json"))[0]
    victim.write_text(victim.read_text()[:200])
    assert str(victim) in _error([results], capsys)
    victim.write_text(json.dumps({"version": 2, "commit_hash": history.commits[3]}))
    assert str(victim) in _error([results], capsys)
    # a row of the wrong structure: asv reads it as another benchmark version, which alerts would
    # skip as history that restarted; it is damage, and named
    victim.unlink()
    other = sorted((results / history.machine).glob(f"{history.commits[4][:8]}-*.json"))[0]
    data = json.loads(other.read_text())
    data["results"] = {k: "garbage" for k in data["results"]}
    other.write_text(json.dumps(data))
    assert f"corrupt asv results file {other}: ValueError: {BENCHMARK}: a row that is not asv's" in _error([results], capsys)
    other.unlink()
    (results / "benchmarks.json").unlink()
    assert str(results / "benchmarks.json") in _error([results], capsys)
    assert "no results for machine gpu-x" in _error([history.results, "--machine", "gpu-x"], capsys)
    assert "--since deadbeef: no commit" in _error([history.results, "--since", "deadbeef"], capsys)


def test_results_without_samples_are_not_passed_off_as_checked(tmp_path, capsys):
    bare = build_history(tmp_path, [{"k": 1e-3}, {"k": 2e-3}], publish=False, record_samples=False)
    assert "no stored samples" in _error([bare.results], capsys)


def test_cli_exit_codes_through_the_console_script(history, tmp_path):
    exe = Path(sys.executable).with_name("moebench")
    reg = subprocess.run([str(exe), "alerts", str(history.results), "--since", history.commits[0]],
                         capture_output=True, text=True)
    assert reg.returncode == 1 and "## 2 performance regressions" in reg.stdout
    calm = subprocess.run([str(exe), "alerts", str(history.results)], capture_output=True, text=True)
    assert calm.returncode == 0 and "## No performance regressions" in calm.stdout


def test_t_test_on_rounds():
    from scipy.stats import ttest_ind

    rng = random.Random(3)
    x = [rng.gauss(1.06, 0.005) for _ in range(5)]
    y = [rng.gauss(1.0, 0.005) for _ in range(25)]
    p = alerts.t_test_greater(x, y)
    assert p == pytest.approx(ttest_ind([math.log(v) for v in x], [math.log(v) for v in y],
                                        alternative="greater").pvalue)
    # five rounds against 25 reach p far below what a Bonferroni-corrected nightly needs (a
    # rank test cannot go below 1 / C(30, 5) = 7e-6), and the other direction is not significant
    assert p < 1e-12 and alerts.t_test_greater(y, x) > 0.99
    assert alerts.t_test_greater([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert alerts.t_test_greater([2.0, 2.0], [1.0, 1.0]) == 0.0


def _measurement(commit: str, mean: float, noise: float, n: int, seed: int) -> asvresults.Measurement:
    rng = random.Random(seed)
    return asvresults.Measurement(commit, 0, tuple(rng.gauss(mean, noise * mean) for _ in range(n)))


@pytest.mark.parametrize("mean_after, noise, n, alerted", [
    (1.05, 0.015, 25, True),    # the 5 % step the nightly must catch
    (1.03, 0.001, 100, False),  # certain but small: a run-to-run offset of a tight GPU kernel
    (1.10, 0.05, 3, False),     # large but uncertain: three samples cannot tell
    (0.80, 0.015, 25, False),   # an improvement
])
def test_rule_alerts_on_certain_slowdowns_that_reach_the_threshold(mean_after, noise, n, alerted):
    base = [_measurement(f"b{i}", 1.0, noise, n, i) for i in range(5)]
    change = alerts.compare(base, _measurement("new", mean_after, noise, n, 99), 0.05, 1e-3)
    assert (change is not None and change.direction == alerts.SLOWER) == alerted


def test_rule_floor_stops_a_small_median_shift_with_a_skewed_interval():
    """Bimodal samples (boost clock on and off): the median moved 2 %, its interval's upper end
    lies in the slow mode. Significant, interval above 1 and reaching 5 %: only the floor
    (estimate >= 1 + threshold / 2) keeps it from alerting."""
    base = [_measurement(f"b{i}", 1.0, 0.001, 40, i) for i in range(5)]
    rng = random.Random(7)
    after = asvresults.Measurement("new", 0, tuple([rng.gauss(1.02, 0.001) for _ in range(22)]
                                               + [rng.gauss(1.3, 0.01) for _ in range(18)]))
    before, now = alerts.Interval.of([x for m in base for x in m.samples]), alerts.Interval.of(after.samples)
    assert now.lo / before.hi > 1 and now.hi / before.lo > 1.05 and now.median / before.median < 1.025
    assert alerts.t_test_greater(after.samples, [x for m in base for x in m.samples]) < 1e-6
    assert alerts.compare(base, after, 0.05, 1e-3) is None


def test_rule_catches_an_exact_5_percent_step_every_time_and_noise_never():
    """Over 40 seeded draws: a point-estimate rule (ratio > 1.05) would catch about half."""
    def draw(seed: int, step: float) -> alerts.Change | None:
        base = [_measurement(f"b{i}", 1.0, 0.015, 25, 1000 * seed + i) for i in range(5)]
        return alerts.compare(base, _measurement("new", step, 0.015, 25, 1000 * seed + 99), 0.05, 1e-3)

    caught = [draw(seed, 1.05) for seed in range(40)]
    assert all(c is not None and c.direction == alerts.SLOWER for c in caught)
    assert 10 < sum(c.ratio > 1.05 for c in caught) < 30
    assert not [seed for seed in range(40) if draw(seed, 1.0) is not None]


def test_markdown_intervals_keep_a_tenth_of_a_percent_visible():
    # asv's human_value (3 digits) would print 18.8 [18.8, 18.8]: a 5 % alert whose interval
    # cannot be read. Four digits on the median's scale; other units as they are.
    assert alerts.interval_text(alerts.Interval(18.81e-6, 18.79e-6, 18.83e-6, 100), "seconds") == \
        "18.81 [18.79, 18.83] µs"
    assert alerts.interval_text(alerts.Interval(1.1099, 1.1093, 1.1106, 100), "x floor") == \
        "1.110 [1.109, 1.111] x floor"
    assert alerts.report._value(2.5e-3, "seconds") == "2.500 ms"


RECORDED = Path(__file__).resolve().parents[1] / "docs" / "data" / "alerts"


def test_recorded_h100_history_silent_on_same_code_and_names_only_the_slowed_kernel(tmp_path, capsys):
    """Real asv results of issue 5's GPU run C (H100, recipe 2; docs/measurements.md): five
    same-code runs of the suite in fresh processes, then a commit whose vllm-custom unpermute does
    one extra pass (+5.3 to +8.2 %). Ordered by commit date (no html dir)."""
    with tarfile.open(RECORDED / "h100-run-C-asv-results.tar.gz") as tar:
        tar.extractall(tmp_path / "all", filter="data")
    results = tmp_path / "all" / "results"
    series = asvresults.load_series(results, None)
    commits = sorted({m.commit: m.date_ms for s in series for m in s.measurements}.items(), key=lambda c: c[1])
    commits = [c for c, _ in commits]
    assert len(series) == 48 and len(commits) == 6

    same = tmp_path / "same" / "results"
    shutil.copytree(results, same, ignore=lambda d, names: [n for n in names if n[:8] == commits[-1][:8]])
    code, report, _ = run_alerts([same, "--since", commits[0]], tmp_path, capsys)
    assert (code, report["regressions"], report["checked"]["comparisons"]) == (0, [], 4 * 48)

    code, report, _ = run_alerts([results, "--since", commits[0]], tmp_path, capsys)
    assert code == 1 and report["checked"]["comparisons"] == 5 * 48
    found = {(r["entry"].split("(")[0], r["params"]["model"], r["params"]["tokens"], r["params"]["impl"], r["commit"])
             for r in report["regressions"]}
    assert found == {(f"moe.WarmL2.{track}", model, tokens, "'vllm-custom'", commits[-1])  # asv's reprs
                     for track in ("track_unpermute", "track_unpermute_vs_floor")
                     for model in ("'mistralai/Mixtral-8x7B-Instruct-v0.1'", "'deepseek-ai/DeepSeek-V3'")
                     for tokens in ("2048", "4096")}
    assert all(1.05 <= r["ratio_interval"][1] and r["ratio"] < 1.09 for r in report["regressions"])


# ---------------------------------------------------------------- rounds (timer recipe 3)

ROUND_COMMITS, STEP6_AT = 12, 8
WANDER = f"{BENCHMARK}('wander')"
STEP6 = f"{BENCHMARK}('step6')"


@pytest.fixture(scope="module")
def rounds_history(tmp_path_factory):
    """Five rounds per commit, as the suite stores them. ``wander``: every round lands on one of
    two levels 10 % apart (tight inside each), so each run's median flips between the levels;
    ``step6``: +6 % at commit 8, rounds within 0.5 % of each other."""
    means = [{"wander": [1e-3, 1.1e-3], "step6": 1e-3 * (1.06 if i >= STEP6_AT else 1.0)}
             for i in range(ROUND_COMMITS)]
    return build_history(tmp_path_factory.mktemp("rounds"), means, noise=0.005, samples=5)


def test_rounds_wandering_between_two_levels_never_alert_and_a_6_percent_step_does(rounds_history, tmp_path, capsys):
    h = rounds_history
    medians = [float(np.median(m.samples)) for s in asvresults.load_series(h.results, None) if s.entry == WANDER
               for m in s.measurements]
    assert max(medians) / min(medians) > 1.05  # the runs' own values do wander between the levels
    code, report, _ = run_alerts([h.results, "--html-dir", h.html, "--since", h.commits[0]], tmp_path, capsys)
    assert code == 1
    assert [(r["entry"], r["commit"]) for r in report["regressions"]] == [(STEP6, h.commits[STEP6_AT])]
    assert report["improvements"] == []
    (r,) = report["regressions"]
    assert 1.05 < r["ratio"] < 1.07 and r["after"]["n"] == 5


def test_nightly_over_wandering_rounds_alerts_only_at_the_step(rounds_history, tmp_path, capsys):
    h = rounds_history
    for n in range(2, ROUND_COMMITS + 1):
        code, report, _ = run_alerts([subset_results(h, n, tmp_path / f"r{n}")], tmp_path, capsys)
        expect = [(STEP6, h.commits[n - 1])] if n - 1 == STEP6_AT else []
        assert [(r["entry"], r["commit"]) for r in report["regressions"]] == expect, n


def test_a_level_the_baseline_runs_wandered_through_is_not_a_change():
    """Tight rounds, but the runs before sat at 1.00 and 1.04: a run at 1.04 is within them."""
    rng = random.Random(5)
    base = [asvresults.Measurement(f"b{i}", 0, tuple(rng.gauss(level, 0.001) for _ in range(5)))
            for i, level in enumerate([1.0, 1.0, 1.04, 1.0, 1.0])]
    cand = asvresults.Measurement("new", 0, tuple(rng.gauss(1.04, 0.001) for _ in range(5)))
    assert alerts.compare(base, cand, 0.03, 1e-3) is None
    assert alerts.compare([m for m in base if m.commit != "b2"], cand, 0.03, 1e-3).direction == alerts.SLOWER


def _series(impl: str, step_at: int | None, machine: str = "h200", n: int = 12) -> asvresults.Series:
    params = (("model", "'m'"), ("dtype", "'auto'"), ("impl", repr(impl)), ("tokens", "1"))
    rng = random.Random(f"{impl}{step_at}")
    ms = tuple(asvresults.Measurement(f"c{i:02d}", 1_000 * i, tuple(
        rng.gauss(1e-5 * (1.2 if step_at is not None and i >= step_at else 1.0), 1e-8) for _ in range(5)))
        for i in range(n))
    return asvresults.Series(machine, "env", "moe.WarmL2.track_permute", 0, params, "seconds", ms)


def test_a_regression_says_what_its_control_did_at_the_same_commit():
    """triton-sol (moebench's own code) beside vllm-ops of the same shape: slower at the same
    commit too -> likely the machine; flat -> the commit's. A control's own step is reported
    without a control, and a vLLM series without a measured control gets none."""
    def run(*series):
        report = alerts.analyse(list(series), html=None, examine=lambda h: {m.commit for m in h}, threshold=0.05,
                                overrides={}, alpha=0.01, window=5)
        return {(alerts.report._impl(f.series), f.series.machine): f for f in report.regressions}

    machine = run(_series("vllm-ops", 8), _series("triton-sol", 8))
    ctl = machine[("vllm-ops", "h200")].control
    assert ctl["impl"] == "triton-sol" and ctl["slower"] and ctl["ratio"] == pytest.approx(1.2, rel=0.01)
    assert machine[("triton-sol", "h200")].control is None
    assert "likely the machine, not this commit" in alerts.finding_markdown(machine[("vllm-ops", "h200")],
                                                                             alerts.Links(None, None))
    commit = run(_series("vllm-ops", 8), _series("triton-sol", None), _series("vllm-ops", 8, machine="other"))
    ctl = commit[("vllm-ops", "h200")].control
    assert ctl["impl"] == "triton-sol" and not ctl["slower"] and ctl["ratio"] == pytest.approx(1.0, abs=0.01)
    assert commit[("vllm-ops", "other")].control is None  # no control measured on that machine
    as_json = alerts.as_json(alerts.Report(list(commit.values()), [], [], [], 1, {}, [], []), alerts.Links(None, None))
    assert as_json["regressions"][0]["control"]["slower"] is False
