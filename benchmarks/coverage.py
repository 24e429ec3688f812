"""Do ablate's 95% intervals cover the true effect 95% of the time? Simulated studies with a
known effect, the old percentile bootstrap beside the Student-t interval ablate uses now.

    python benchmarks/coverage.py [--studies 2000] [--seed 0]

Each simulated study has n seeds. Seed s shifts every cell by a shared offset (as a seed's
initialisation and data order do), and each run adds its own noise: normal, or skewed
(a centred exponential: skewness 2, a long right tail). Estimands, as the report computes them:
  paired difference: mean over seeds of (on − off), true value DELTA;
  main effect: a 2^3 factorial, per-seed contrast of the 8 cells, true value DELTA;
  cell mean: the mean of one cell over seeds, true value BASE (shown for reference: a
             one-sample interval of skewed data, no pairing to symmetrise it).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ablate.stats import LEVEL, t_bounds  # noqa: E402

BASE, DELTA = 0.30, 0.04  # a cell's true mIoU, a toggle's true effect
SEED_SD, RUN_SD = 0.02, 0.02  # seed offset shared by a seed's cells; per-run noise
NS = (3, 5, 10)
NOISES = ("normal", "skewed")
ESTIMANDS = ("paired difference", "main effect", "cell mean")
BOOT_RESAMPLES = 1000


def noise(rng: np.random.Generator, shape, kind: str) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.0, RUN_SD, shape)
    return RUN_SD * (rng.exponential(1.0, shape) - 1.0)  # mean 0, sd RUN_SD, skewness 2


def per_seed_values(rng: np.random.Generator, *, estimand: str, kind: str, n: int, studies: int) -> tuple[np.ndarray, float]:
    """studies × n per-seed values of the estimand, and its true value."""
    offset = rng.normal(0.0, SEED_SD, (studies, n, 1))
    if estimand == "cell mean":
        return (BASE + offset + noise(rng, (studies, n, 1), kind))[..., 0], BASE
    if estimand == "paired difference":
        on = np.array([0.0, 1.0])
    else:
        levels = np.array(list(itertools.product((0.0, 1.0), repeat=3)))
        on = levels[:, 0]  # the first toggle carries the effect; the others do nothing
    cells = BASE + DELTA * on + offset + noise(rng, (studies, n, len(on)), kind)
    contrast = (2 * on - 1) * 2 / len(on)  # on − off averaged over the other toggles
    return cells @ contrast, DELTA


def bootstrap_bounds(values: np.ndarray, *, rng: np.random.Generator, resamples: int = BOOT_RESAMPLES,
                     level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The method ablate used before: a percentile bootstrap of the mean over seeds."""
    studies, n = values.shape
    lo, hi = np.empty(studies), np.empty(studies)
    for start in range(0, studies, 200):  # chunks keep memory at ~200 × resamples × n floats
        v = values[start:start + 200]
        idx = rng.integers(0, n, size=(len(v), resamples, n))
        means = np.take_along_axis(v[:, None, :].repeat(resamples, 1), idx, axis=2).mean(axis=2)
        lo[start:start + 200], hi[start:start + 200] = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return lo, hi


def coverage(values: np.ndarray, truth: float, bounds) -> float:
    lo, hi = bounds
    return float(np.mean((lo <= truth) & (truth <= hi)))


def table(*, studies: int = 2000, seed: int = 0, old: bool = True, estimands=ESTIMANDS) -> list[dict]:
    """One row per (estimand, noise, n): coverage of the t interval (and of the old bootstrap)."""
    rng = np.random.default_rng(seed)
    rows = []
    for estimand, kind, n in itertools.product(estimands, NOISES, NS):
        values, truth = per_seed_values(rng, estimand=estimand, kind=kind, n=n, studies=studies)
        row = {"estimand": estimand, "noise": kind, "n": n, "studies": studies,
               "t": coverage(values, truth, t_bounds(values))}
        if old:
            row["bootstrap"] = coverage(values, truth, bootstrap_bounds(values, rng=rng))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=2000, help="simulated studies per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    se = np.sqrt(0.95 * 0.05 / args.studies)
    print(f"coverage of nominal {LEVEL:.0%} intervals, {args.studies} simulated studies per row "
          f"(Monte-Carlo s.e. {se:.1%}); true effect {DELTA}, seed sd {SEED_SD}, run sd {RUN_SD}")
    print(f"{'estimand':<18} {'noise':<7} {'n':>3}  {'old: bootstrap':>14}  {'new: Student t':>14}")
    for r in table(studies=args.studies, seed=args.seed):
        print(f"{r['estimand']:<18} {r['noise']:<7} {r['n']:>3}  {r['bootstrap']:>14.1%}  {r['t']:>14.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
