"""The numbers behind the three verdicts (ablate.stats): equivalence tests, one Holm family
over both hypotheses of every effect, zero spread, and the error budget of each look."""
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


def test_one_family_holds_both_hypotheses_of_every_effect():
    verdicts, a_diff, a_equiv = stats.decide([0.001, 0.5, 0.3], [0.5, 0.001, 0.2], [0.04, 0.001, -0.01])
    assert verdicts == [stats.HELPS, stats.EQUIVALENT, stats.INCONCLUSIVE]
    # six hypotheses of three effects, at most one true per effect (Shaffer): the multipliers
    # are min(3, 6 - r + 1) = 3, 3, 3, 3, 2, 1 (Holm's would be 6, 5, 4, 3, 2, 1), running maximum
    assert a_diff[0] == pytest.approx(0.003) and a_equiv[1] == pytest.approx(0.003)
    assert a_equiv[2] == pytest.approx(0.6) and a_diff[2] == pytest.approx(0.9)
    assert a_diff[1] == pytest.approx(1.0) and a_equiv[0] == pytest.approx(1.0)
    assert stats.decide([0.001], [np.nan], [-0.2])[0] == [stats.HURTS]  # an untestable hypothesis is not counted
    # a p just over α / m is not a verdict: 3 effects, α = 0.05 -> 0.0167 per hypothesis at the first step
    assert stats.decide([0.017, 0.9, 0.9], [0.9, 0.9, 0.9], [1, 1, 1])[0][0] == stats.INCONCLUSIVE
    assert stats.decide([0.016, 0.9, 0.9], [0.9, 0.9, 0.9], [1, 1, 1])[0][0] == stats.HELPS


def test_the_looks_spend_at_most_alpha_and_obrien_fleming_matches_its_table():
    # STATISTICS.md: at fractions 0.3/0.5/0.75/1 O'Brien-Fleming spends about 0.0004/0.006/0.024/0.05
    assert [round(stats.spent(t, shape="obf"), 4) for t in (0.3, 0.5, 0.75, 1)] == [0.0003, 0.0056, 0.0236, 0.05]
    looks = [3, 5, 7, 10]
    shares = [stats.look_alpha(n, looks[:i], 10) for i, n in enumerate(looks)]
    assert sum(shares) == pytest.approx(0.05) and all(s > 0 for s in shares)
    with pytest.raises(ValueError):
        stats.look_alpha(5, [5], 10)


def test_no_effect_anywhere_gives_a_false_verdict_in_at_most_five_percent_of_families():
    """Six null effects with independent normal seed noise, looks at 3, 5, 7 and 10 seeds,
    stopping once all are decided: any verdict word is false here, and the family's rate of
    one or more stays within the budget (2,000 simulated families)."""
    rng = np.random.default_rng(24)
    looks, false = [3, 5, 7, 10], 0
    for _ in range(2000):
        diffs = rng.normal(0.0, 1.0, size=(6, 10))
        for i, n in enumerate(looks):
            a = stats.look_alpha(n, looks[:i], 10)
            p_diff = [stats.paired_t_p(d[:n]) for d in diffs]
            p_equiv = [stats.tost_p(d[:n], 0.25) for d in diffs]
            verdicts, _, _ = stats.decide(p_diff, p_equiv, diffs[:, :n].mean(axis=1), alpha=a)
            if any(v in (stats.HELPS, stats.HURTS) for v in verdicts):
                false += 1
                break
            if all(v != stats.INCONCLUSIVE for v in verdicts):
                break
    assert false / 2000 <= 0.05
