"""The overview page's arithmetic (tests/test_dashboard_browser.py drives the page itself)."""

from __future__ import annotations

import pytest

from moebench import overview
from moebench.overview import Row


def test_change_against_the_previous_commit_a_tag_or_the_window_start():
    history = [("a", 1.0), ("b", 1.1), ("c", 1.0), ("d", 1.2)]
    assert overview._change(history, None, 1) == pytest.approx(0.2)
    assert overview._change(history, "b", 10) == pytest.approx(1.2 / 1.1 - 1)
    assert overview._change(history, None, 10) == pytest.approx(0.2)  # window longer than the history
    assert overview._change(history, "zz", 2) == pytest.approx(1.2 / 1.1 - 1)  # tag not measured: window
    assert overview._change(history[:1], None, 1) is None


def test_worst_change_keeps_its_sign():
    assert overview._worst([0.01, -0.08, 0.05, None]) == -0.08
    assert overview._worst([None]) is None


def test_previous_tag_is_the_newest_one_before_the_newest_commit():
    meta = {"revision_to_hash": {"1": "h1", "2": "h2", "3": "h3"}, "tags": {"v1": 1, "v2": 2, "v3": 3}}
    assert overview._previous_tag(meta) == ("v2", "h2")
    assert overview._previous_tag({"revision_to_hash": {"1": "h1"}, "tags": {}}) == (None, None)


def test_render_orders_regressed_rows_first_and_marks_them():
    calm = Row("m", "s.WarmL2.track_permute", "WarmL2", "permute", (("model", "'a'"),),
               values={1: [("c1", 1e-6), ("c2", 1.3e-6)]}, urls={1: "asv.html#x"})
    hot = Row("m", "s.WarmL2.track_permute", "WarmL2", "permute", (("model", "'b'"),),
              values={1: [("c1", 1e-6), ("c2", 1.06e-6)]}, regressed={1}, urls={1: "asv.html#y"},
              floor_pct={1: 42.0})
    page = overview.render([calm, hot], (1,), 10, None, None, "t")
    assert page.index("<td>b</td>") < page.index("<td>a</td>")  # open regression first
    assert page.count('class="regressed"') == 1 and "42%" in page and "+30.0%" in page and "+6.0%" in page
    assert 'href="asv.html#y"' in page and "vs 10 commits back" in page
