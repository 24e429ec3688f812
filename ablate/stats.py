"""Analysis stage, the numbers only: intervals over seeds, the paired test, the equivalence
test, the probability of improvement, the "did not learn" bar, and the group-sequential
thresholds of sequential seeds. Plain numpy/scipy on arrays; the
DataFrame side is `ablate.analysis`. The rules these implement are in STATISTICS.md.

Why Student t and the paired t-test: over 2-10 seeds a percentile bootstrap of the mean is
far too narrow (its nominal 95% covers the true mean in ~74% of studies at n=3, see
benchmarks/coverage.py); the t interval is exact for normal noise and close for the symmetric
noise of paired differences. The p-value comes from the same t statistic, so "the interval
excludes 0" and "p < 0.05" agree before multiple-comparison correction. The exact sign-flip
test was not kept: with n paired seeds its smallest p is 2/2^n (0.25 at n=3), so no effect
could ever pass a 5% level split over a family below 7 seeds, whatever its size.
"""
from __future__ import annotations

import functools

import numpy as np

LEVEL = 0.95
MIN_VERDICT_N = 3  # paired seeds needed before a verdict word (STATISTICS.md)
ALPHA = 0.05  # family-wise error rate of the verdicts, per architecture and metric
DEFAULT_MIN_EFFECT = 0.01  # δ in mIoU: one point, the smallest gain segmentation papers report (docs/statistics.md)
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


# --------------------------------------------------------------------------- decisions
# Three verdicts per effect (STATISTICS.md): a difference ("helps" / "hurts": the paired
# t-test rejects a zero mean), an equivalence ("no effect larger than δ": two one-sided
# t-tests reject |mean| ≥ δ) or "inconclusive". The main effects of one architecture and
# metric form ONE family, each at ALPHA / m (its two hypotheses cannot both be true), so the
# chance of any false verdict word for that architecture and metric is at most ALPHA
# (`decisions.look`); over looks each test is group-sequential (`gs_boundaries`).
HELPS, HURTS, EQUIVALENT, INCONCLUSIVE = "helps", "hurts", "no effect larger than δ", "inconclusive"


def zero_spread(diffs) -> bool:
    """Whether the paired differences (n >= 2) are all equal: the seed did not vary training,
    so they are not replicates and carry no verdict (a p-value of 0 would be a symptom)."""
    d = _clean(diffs)
    return len(d) >= 2 and bool(np.ptp(d) == 0)


def tost_p(diffs, delta: float) -> float:
    """p of the two one-sided t-tests of |mean(diffs)| >= delta (equivalence within ±delta):
    the larger of the two one-sided p-values. It is below α exactly when the (1 − 2α) t
    interval lies inside [−delta, delta]. NaN for n < 2, zero spread or delta <= 0."""
    d = _clean(diffs)
    if len(d) < 2 or zero_spread(d) or not delta > 0:
        return float("nan")
    se = d.std(ddof=1) / np.sqrt(len(d))
    t = _student_t()
    below = t.sf((d.mean() + delta) / se, len(d) - 1)  # H0: mean <= -delta
    above = t.cdf((d.mean() - delta) / se, len(d) - 1)  # H0: mean >= +delta
    return float(max(below, above))


def spent(fraction: float, *, alpha: float = ALPHA, shape: str = "pocock") -> float:
    """Lan-DeMets alpha spending: the share of `alpha` spent by information fraction
    `fraction` (n / n_max seeds). "pocock": alpha·ln(1 + (e − 1)·t); "obf" (O'Brien-Fleming):
    2 − 2Φ(z_{1−α/2} / √t)."""
    t = min(max(float(fraction), 0.0), 1.0)
    if t == 0:
        return 0.0
    if shape == "pocock":
        return alpha * float(np.log1p((np.e - 1) * t))
    if shape == "obf":
        from scipy.stats import norm

        return float(2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / np.sqrt(t)))
    raise ValueError(f"unknown spending shape {shape!r}")


def seeds_to_decide(estimate: float, sd: float, *, delta: float, alpha: float, power: float = 0.8) -> int | None:
    """About how many paired seeds would likely decide an effect whose estimate and seed-to-seed
    SD stay as they are: the fewer of the n that give the difference test (two-sided, level
    `alpha`) or the equivalence test (|estimate| < delta) `power`, by the normal approximation
    n = ((z_{1−α/2} + z_power) · sd / |estimate|)² (for equivalence z_{1−α} and delta − |estimate|).
    None when neither is within 1,000 seeds or the spread is unknown."""
    from scipy.stats import norm

    if not (np.isfinite(estimate) and np.isfinite(sd) and sd > 0):
        return None
    z_power = norm.ppf(power)
    candidates = []
    if estimate != 0:
        candidates.append(((norm.ppf(1 - alpha / 2) + z_power) * sd / abs(estimate)) ** 2)
    if abs(estimate) < delta:
        candidates.append(((norm.ppf(1 - alpha) + z_power) * sd / (delta - abs(estimate))) ** 2)
    n = min(candidates, default=np.inf)
    return int(np.ceil(max(n, MIN_VERDICT_N))) if n <= 1000 else None


# --------------------------------------------------------------------------- group-sequential boundaries
GS_PATHS = 200_000  # simulated null studies behind each boundary (their error: about ±3% of the level)


def gs_boundaries(looks: tuple[int, ...], n_max: int, level: float, *, sided: int = 2,
                  shape: str = "pocock") -> tuple[float, ...]:
    """Nominal p thresholds of a group-sequential t-test at the looks taken so far (`looks`:
    cumulative seeds, increasing), with `level` spent over information n / n_max by the
    Lan-DeMets `shape` (`spent`): the chance that the test rejects at some look when its null
    holds is `spent(n_k / n_max) · level` by look k, exactly (up to simulation error), not a
    Bonferroni sum. The t statistic of cumulative normal seeds is pivotal, so the thresholds
    are found once by simulating standard normal seeds (fixed generator seed): look k's
    threshold rejects the share `spent(t_k) − spent(t_{k−1})` of all paths among those no
    earlier look rejected (the first look's is its budget exactly). `sided` 2: the two-sided difference test; 1: each one-sided test of
    an equivalence (TOST: at the equivalence margin its one-sided t is central)."""
    return _gs_boundaries(tuple(int(n) for n in looks), int(n_max), round(float(level), 12), int(sided), shape)


@functools.lru_cache(maxsize=256)
def _gs_boundaries(looks: tuple[int, ...], n_max: int, level: float, sided: int, shape: str) -> tuple[float, ...]:
    if list(looks) != sorted(set(looks)) or looks[0] < 2:
        raise ValueError(f"looks must increase from 2 seeds, got {looks}")
    rng = np.random.default_rng(20241207)
    z = rng.standard_normal((GS_PATHS, max(looks)), dtype=np.float32).astype(float)
    sums, squares = np.cumsum(z, axis=1), np.cumsum(z * z, axis=1)
    crossed = np.zeros(GS_PATHS, dtype=bool)
    spent_before, out = 0.0, []
    t = _student_t()
    for n in looks:
        mean = sums[:, n - 1] / n
        sd = np.sqrt(np.maximum(squares[:, n - 1] - n * mean * mean, 1e-300) / (n - 1))
        stat = mean / (sd / np.sqrt(n))
        p = 2 * t.sf(np.abs(stat), n - 1) if sided == 2 else t.sf(stat, n - 1)
        budget = spent(n / n_max, alpha=level, shape=shape)
        k = int(round((budget - spent_before) * GS_PATHS))
        if not out:  # the first look: p is uniform under the null, the threshold is the budget itself
            threshold = budget
        else:
            alive = np.sort(p[~crossed])
            threshold = float(alive[k - 1]) if k >= 1 else 0.0
        out.append(threshold)
        crossed |= p <= threshold
        spent_before = budget
    return tuple(out)
