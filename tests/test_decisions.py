"""The numbers behind the three verdicts (ablate.stats): the equivalence test, zero spread,
and the error spent by the looks (the family and its thresholds: test_analysis.py,
test_sequential.py)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sp

from ablate import stats


def test_tost_p_is_the_larger_one_sided_p_hand_computed():
    d = np.array([0.004, -0.002, 0.001, 0.003])
    se = d.std(ddof=1) / 2
    want = max(sp.t.sf((d.mean() + 0.01) / se, 3), sp.t.cdf((d.mean() - 0.01) / se, 3))
    assert stats.tost_p(d, 0.01) == pytest.approx(want)
    # below α exactly when the (1 − 2α) t interval lies inside ±δ
    lo, hi = stats.t_interval(d, level=0.90)
    assert (stats.tost_p(d, 0.01) < 0.05) == (-0.01 < lo and hi < 0.01) == True  # noqa: E712
    assert stats.tost_p(d, 0.002) > 0.05  # the same data cannot show equivalence within ±0.002


@pytest.mark.parametrize("diffs", [[0.0, 0.0, 0.0], [0.02, 0.02, 0.02], [0.5]])
def test_zero_spread_or_one_seed_gets_no_test(diffs):
    assert np.isnan(stats.tost_p(diffs, 0.01))
    assert stats.zero_spread(diffs) == (len(diffs) > 1)


def test_spending_reaches_alpha_at_the_maximum_and_obrien_fleming_matches_its_table():
    # STATISTICS.md: at fractions 0.3/0.5/0.75/1 O'Brien-Fleming spends about 0.0004/0.006/0.024/0.05
    assert [round(stats.spent(t, shape="obf"), 4) for t in (0.3, 0.5, 0.75, 1)] == [0.0003, 0.0056, 0.0236, 0.05]
    spent = [stats.spent(n / 10) for n in (0, 3, 5, 7, 10)]
    assert spent[0] == 0 and spent[-1] == pytest.approx(0.05) and all(np.diff(spent) > 0)


