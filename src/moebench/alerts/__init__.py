"""``moebench alerts``: regression alerts over asv results that catch 5 % and never cry wolf.

What it compares. A *series* is one benchmark parameter combination on one machine and asv
environment, ordered by asv's branch order (``html/index.json`` from ``asv publish``) or, without
an html dir, by commit date. The suite stores one sample per independent *round* (its own
buffers and CUDA graph; ``moebench.stats``): the replays of one graph agree far more closely than
two rounds do, so only rounds are treated as replicates. Each commit's rounds are compared with
a *baseline*: the pooled rounds of up to ``window`` commits before it, but never from before the
last detected change, so after a step the new level is the baseline and the step is reported
once, at the commit where it happened.

When a slowdown counts. All of:
- significant: a one-sided t-test on the log round values (``t_test_greater``: why not a rank
  test) gives p < alpha / m, where m is the number of (series, commit) comparisons this run
  examines (Bonferroni: a long history of pure noise has family-wise false alarm probability
  below alpha);
- certain: the ratio of medians' interval (from asv's own 99 % median intervals,
  ``asv_runner.statistics.compute_stats``: after.lo / before.hi .. after.hi / before.lo) lies
  above 1;
- beyond the runs: the candidate's interval lies above every baseline commit's own value (the
  median of its rounds), so a level the runs have wandered through never alerts;
- as large as the threshold: that interval reaches 1 + threshold (default 5 %, overrides by
  regex over asv's entry name as in asv.conf.json's ``regressions_thresholds``, largest match
  wins), and the ratio of medians itself is at least 1 + threshold / 2. Judging the threshold
  with the measurement's own uncertainty is deliberate: a point-estimate rule would catch an
  exact 5 % step only half of the time; the floor keeps a slowdown estimated at a few percent
  from alerting on wide intervals.
Improvements are detected the same way (they reset the baseline) but never alert.

Which commits alert. Only examined commits: by default the newest commit of each series;
``--since REV`` every commit after REV; ``--commits FILE`` the listed ones (the nightly passes the
commits it just measured). Detection starts ``LOOKBACK`` baselines before the first examined
commit, so a step just before it is found there and has become the baseline (one nightly run or
one ``--since`` run over the same results give the same alerts), while the cost stays bounded as
the history grows.

asv's own step detection (``regressions.json`` from ``asv publish``, when ``--html-dir`` is given)
is read as a second opinion: each alert says whether asv saw a step there, and steps asv reports
at examined commits that the sample test did not confirm are listed, without alerting.

Controls. Each alert of a vLLM series says what the control series of the same benchmark, shape,
dtype, batch size and machine did at that commit (``axes.CONTROL_IMPLS``: triton-sol, then the torch
references; moebench's own code, which no vLLM commit changes): its median over its baseline's,
and whether it stepped slower too — then the machine moved (clocks, driver, a neighbour), not the
commit. The alert stands either way; the note is for whoever triages it.

Output: markdown (stdout or ``--markdown``) and JSON (``--json``), including one issue title/body
per benchmark and machine for the workflow that files issues. Exit 1 when there are regressions,
0 when none, 2 on bad input (a missing or corrupt results file is named, never skipped).
"""

from .cli import emit, main, read_config, write_text
from .detect import (DASHBOARD_ENV, DEFAULT_ALPHA, DEFAULT_THRESHOLD, DEFAULT_WINDOW, FASTER, ISSUE_LABEL, LOOKBACK,
                     SLOWER, Change, Html, Interval, compare, detect, order_key, ordered, t_test_greater, threshold_for)
from .report import (Finding, Links, Report, analyse, as_json, asv_steps, finding_markdown, graph_url, interval_text,
                     issues, markdown)

__all__ = ["DASHBOARD_ENV", "DEFAULT_ALPHA", "DEFAULT_THRESHOLD", "DEFAULT_WINDOW", "FASTER", "ISSUE_LABEL", "LOOKBACK",
           "SLOWER", "Change", "Finding", "Html", "Interval", "Links", "Report", "analyse", "as_json", "asv_steps",
           "compare", "detect", "emit", "finding_markdown", "graph_url", "interval_text", "issues", "main", "markdown",
           "order_key", "ordered", "read_config", "t_test_greater", "threshold_for", "write_text"]
