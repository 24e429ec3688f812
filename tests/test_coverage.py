"""Coverage of the 95% intervals by simulation (STATISTICS.md): studies with a known effect,
normal and skewed noise, n = 3, 5, 10. The simulation is benchmarks/coverage.py's."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ablate import stats

SPEC = importlib.util.spec_from_file_location("coverage_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py")
coverage = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(coverage)
STUDIES = 4000  # Monte-Carlo s.e. of a 95% coverage: 0.34%, so 93-97% is a ~6 s.e. band


@pytest.fixture(scope="module")
def rows():
    return coverage.table(studies=STUDIES, seed=1, old=False, estimands=("paired difference", "main effect"))


def test_t_interval_covers_the_true_effect_93_to_97_percent(rows):
    assert len(rows) == 2 * 2 * 3  # estimands × noise shapes × n
    bad = [(r["estimand"], r["noise"], r["n"], r["t"]) for r in rows if not 0.93 <= r["t"] <= 0.97]
    assert not bad, bad


def test_old_bootstrap_is_caught_undercovering():
    # The check has teeth: the percentile bootstrap the report used before fails it at n = 3.
    rng = np.random.default_rng(2)
    values, truth = coverage.per_seed_values(rng, estimand="paired difference", kind="normal", n=3, studies=2000)
    assert coverage.coverage(values, truth, coverage.bootstrap_bounds(values, rng=rng)) < 0.85
    assert 0.93 <= coverage.coverage(values, truth, stats.t_bounds(values)) <= 0.97


def test_t_interval_hand_computed():
    # values 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.302653 → 2 ± 4.302653 / √3.
    lo, hi = stats.t_interval([1.0, 2.0, 3.0, np.nan])
    assert (lo, hi) == pytest.approx((2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5), abs=1e-6)
    assert stats.t_interval([5.0]) is None
