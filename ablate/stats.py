"""Analysis stage, the numbers only: intervals over seeds, the paired test, Holm's correction,
the probability of improvement and the "did not learn" bar. Plain numpy/scipy on arrays; the
DataFrame side is `ablate.analysis`. The rules these implement are in STATISTICS.md.

Why Student t and the paired t-test: over 2-10 seeds a percentile bootstrap of the mean is
far too narrow (its nominal 95% covers the true mean in ~74% of studies at n=3, see
benchmarks/coverage.py); the t interval is exact for normal noise and close for the symmetric
noise of paired differences. The p-value comes from the same t statistic, so "the interval
excludes 0" and "p < 0.05" agree before multiple-comparison correction. The exact sign-flip
test was not kept: with n paired seeds its smallest p is 2/2^n (0.25 at n=3), so no effect
could ever pass a Holm-corrected 5% level below 7 seeds, whatever its size.
"""
from __future__ import annotations

import numpy as np

LEVEL = 0.95
MIN_VERDICT_N = 3  # paired seeds needed before a verdict word (STATISTICS.md)
ALPHA = 0.05  # family-wise error rate of the Holm-corrected verdicts
CI_METHOD = "Student t over seeds (n-1 df)"
P_METHOD = "paired t-test, two-sided"
# A run that predicts the majority class everywhere scores exactly the bar; float rounding
# between the confusion matrix and the class frequencies must not lift it above.
BAR_TOLERANCE = 1e-6


def _student_t():
    """scipy's t distribution, imported when first needed: scipy.stats takes a second and a
    half to import, which a grid worker (it needs only the learning bar) never pays."""
    from scipy import stats

    return stats.t


def t_bounds(values: np.ndarray, *, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval of the mean along the last axis (no NaNs; n >= 2):
    mean ± t_{n-1, (1+level)/2} · s / √n. Vectorised so the coverage test can run thousands
    of simulated studies in one call."""
    v = np.asarray(values, dtype=float)
    n = v.shape[-1]
    mean = v.mean(axis=-1)
    half = _student_t().ppf((1 + level) / 2, n - 1) * v.std(axis=-1, ddof=1) / np.sqrt(n)
    return mean - half, mean + half


def t_interval(values, *, level: float = LEVEL) -> tuple[float, float] | None:
    """The t interval of the mean of the non-NaN values; None for n < 2."""
    v = _clean(values)
    if len(v) < 2:
        return None
    lo, hi = t_bounds(v, level=level)
    return float(lo), float(hi)


def paired_t_p(diffs) -> float:
    """Two-sided p of the one-sample t-test of mean(diffs) = 0. NaN for n < 2; with zero
    spread, 0 when the differences are a nonzero constant and 1 when all are 0."""
    d = _clean(diffs)
    if len(d) < 2:
        return float("nan")
    if np.ptp(d) == 0:  # (std may be 1e-17 rather than 0 for equal values)
        return 1.0 if d[0] == 0 else 0.0
    sd = d.std(ddof=1)
    t = d.mean() / (sd / np.sqrt(len(d)))
    return float(2 * _student_t().sf(abs(t), len(d) - 1))


def p_improve(diffs) -> float:
    """P(on > off) over paired seeds: the share of seeds whose difference is positive, ties
    (difference exactly 0) counting one half. NaN without pairs."""
    d = _clean(diffs)
    if not len(d):
        return float("nan")
    return float((np.sum(d > 0) + 0.5 * np.sum(d == 0)) / len(d))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaNs are not part of the family
    and stay NaN): sort ascending, p_(i) · (m − i + 1), running maximum, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adjusted, 1.0)
    return out


def majority_bar(dataset: dict | None, split: str = "val") -> dict | None:
    """What predicting the majority class everywhere scores on `split`: its pixel accuracy is
    the majority share of non-void pixels; its mIoU is that share / the number of classes
    present (the majority class's IoU is its share, every other present class scores 0,
    absent classes are NaN and skipped). None when the dataset summary predates
    `split_class_frequency` (the report then says "bar unknown")."""
    freq = ((dataset or {}).get("split_class_frequency") or {}).get(split)
    if not freq:
        return None
    f = np.array([np.nan if x is None else x for x in freq], dtype=float)
    present = int(np.sum(f > 0))
    if not present:
        return None
    share = float(np.nanmax(f))
    return {"pixel_acc": share, "miou": share / present, "classes_present": present, "split": split}


def did_not_learn(pixel_acc, miou, bar: dict | None) -> bool | None:
    """At or below the all-majority prediction on either measure; None when the bar or both
    values are unknown."""
    if bar is None:
        return None
    checks = [(v, bar[k]) for v, k in ((pixel_acc, "pixel_acc"), (miou, "miou"))
              if v is not None and np.isfinite(v)]
    if not checks:
        return None
    return any(v <= b + BAR_TOLERANCE for v, b in checks)


def _clean(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[~np.isnan(v)]
