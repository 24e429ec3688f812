"""Sequential seeds through ablate's own analysis and stage logic: error rate, coverage after
stopping, power and runs against a fixed design.

    python benchmarks/sequential.py [--studies 500] [--seed 0] [--spending pocock|obf]

Each simulated study is one architecture of a grid: a full factorial of 2^3 toggles, or of
two toggles × a 3-level factor ("loss": ce, dice, focal). Seed s shifts every cell by a
shared offset, and each run adds its own normal noise. Effects are planted additively (no
interaction), in units of the noise SD of the per-seed main effect they enter (its contrast's
norm × the run noise), so "2 SD" means the same thing for every effect and design.

The stage logic is the grid's: `grid.stages.take_look` judges the architecture's main effects
as one family at each look (group-sequential thresholds, `stats.gs_boundaries`, Pocock spending, plan 3..10 seeds,
looks at 3, 5, 8, 10), `grid.stages.next_target` says whether to add seeds, and the reported
verdicts and 95% intervals come from `analysis.factorial_effects` with the recorded looks,
exactly as the report computes them.

Prints, per scenario:
  (a) false-verdict rate: studies where any main effect got a wrong verdict word over all
      looks (helps / hurts for a null effect, or the wrong sign; "no effect larger than δ" for
      an effect ≥ δ) — goal ≤ 5%;
  (b) coverage of the reported 95% intervals after stopping — goal 93–97%;
  (c) power (share of planted effects given their correct verdict) and mean runs, beside the
      fixed design with at least the same power (one look at α, same family): goal ≤ 60% of
      its runs.
  (d) the same looks, family, spending and stopping rule with the noise SD known (z-tests):
      the limit of any error term with many degrees of freedom (e.g. one pooled over every
      contrast of the architecture). What (c) costs the reported intervals, which estimate
      each effect's own seed-to-seed SD (n − 1 degrees of freedom: 2 at the first look).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ablate import analysis, stats  # noqa: E402
from ablate.seedplan import SeedPlan  # noqa: E402
from ablate.decisions import DECIDED, first_decisions  # noqa: E402
from ablate.grid.stages import next_target, take_look  # noqa: E402

BASE, SEED_SD, RUN_SD = 0.40, 0.02, 0.02
PLAN = SeedPlan(3, 10)  # `--spending` may replace its shape
DESIGNS = {"2^3 toggles": {"scheduler": [False, True], "augment": [False, True], "weighted_loss": [False, True]},
           "2x2x3 (3-level loss)": {"scheduler": [False, True], "augment": [False, True],
                                    "loss": ["ce", "dice", "focal"]}}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}; {os.cpu_count()} cores; numpy/pandas only (no training, bf16 irrelevant)"


class Design:
    """One design's cells, main-effect contrasts and the per-effect noise SD."""

    def __init__(self, levels: dict[str, list]):
        self.levels = levels
        self.settings, contrasts = analysis.design_contrasts("full", levels)
        self.mains = [c for c in contrasts if c["kind"] == "main"]
        self.effect_sd = {c["effect"]: RUN_SD * float(np.linalg.norm(c["weights"])) for c in self.mains}
        self.brief = {"kind": "full", "levels": {k: [str(x) if not isinstance(x, bool) else x for x in v]
                                                  for k, v in levels.items()}}

    def means(self, sizes: dict[str, float]) -> np.ndarray:
        """Cell means with each main effect planted at `sizes[effect]` (in its SD units)."""
        mu = np.full(len(self.settings), BASE)
        for c in self.mains:
            on = c["weights"] > 0
            mu = mu + on * sizes.get(c["effect"], 0.0) * self.effect_sd[c["effect"]]
        return mu

    def runs(self, values: np.ndarray) -> pd.DataFrame:
        """A grid runs table (seeds × cells of test mIoU) as `analysis.with_cells` expects."""
        rows = []
        for seed in range(values.shape[0]):
            for i, st in enumerate(self.settings):
                toggles = {t: bool(st.get(t, False)) for t in ("scheduler", "augment", "weighted_loss")}
                others = {k: str(v) for k, v in st.items() if k not in toggles}
                y = float(values[seed, i])
                rows.append({"cell_id": f"c{i}", "model": "unet", "model_args": "{}", "seed": seed, **toggles,
                             "factors": json.dumps(others) if others else None,
                             "design": json.dumps(self.brief), "status": "completed",
                             "val_miou": y, "test_miou": y, "val_pixel_acc": 0.9, "seconds": 1.0})
        return analysis.with_cells(pd.DataFrame(rows))


def simulate(d: Design, sizes: dict[str, float], delta_sd: float, rng: np.random.Generator) -> dict:
    """One sequential study: its looks, then the verdicts and intervals the report shows."""
    values = d.means(sizes)[None, :] + rng.normal(0, SEED_SD, (PLAN.max, 1)) + rng.normal(0, RUN_SD, (PLAN.max, len(d.settings)))
    runs = d.runs(values)
    delta = delta_sd * np.mean(list(d.effect_sd.values()))
    looks, target = [], PLAN.min
    while target is not None:
        lk = take_look(runs[runs["seed"] < target], "test_miou", PLAN, looks, delta=delta)
        looks.append(lk)
        target = next_target(looks, PLAN)
    used = looks[-1].n
    final = analysis.factorial_effects(runs[runs["seed"] < used], metrics=("test_miou",), min_effect=delta,
                                       looks={"unet": looks}, decision_metric="test_miou")
    return {"final": final[final["kind"] == "main"], "runs": used * len(d.settings), "delta": delta}


def fixed(d: Design, sizes: dict[str, float], delta_sd: float, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """One fixed-design study at n seeds: one look at α (the report's verdicts without looks)."""
    values = d.means(sizes)[None, :] + rng.normal(0, SEED_SD, (n, 1)) + rng.normal(0, RUN_SD, (n, len(d.settings)))
    delta = delta_sd * np.mean(list(d.effect_sd.values()))
    e = analysis.factorial_effects(d.runs(values), metrics=("test_miou",), min_effect=delta)
    return e[e["kind"] == "main"]


def wrong(row: dict, truth: float, delta: float) -> bool:
    word = row["verdict"]
    if word == stats.HELPS:
        return truth <= 0
    if word == stats.HURTS:
        return truth >= 0
    if word == stats.EQUIVALENT:
        return abs(truth) >= delta
    return False


def correct(row: dict, truth: float, delta: float) -> bool:
    return row["verdict"] in DECIDED and not wrong(row, truth, delta)


def scenario(d: Design, sizes: dict[str, float], delta_sd: float, studies: int, rng) -> dict:
    false = covered = total = planted_ok = planted = 0
    runs = []
    for _ in range(studies):
        s = simulate(d, sizes, delta_sd, rng)
        runs.append(s["runs"])
        any_wrong = False
        for r in s["final"].to_dict("records"):
            truth = sizes.get(r["effect"], 0.0) * d.effect_sd[r["effect"]]
            any_wrong |= wrong(r, truth, s["delta"])
            covered += r["ci_low"] <= truth <= r["ci_high"]
            total += 1
            if sizes.get(r["effect"], 0.0):
                planted += 1
                planted_ok += correct(r, truth, s["delta"])
        false += any_wrong
    return {"false": false / studies, "coverage": covered / total, "power": planted_ok / planted if planted else np.nan,
            "runs": float(np.mean(runs))}


def fixed_power(d: Design, sizes: dict[str, float], delta_sd: float, n: int, studies: int, rng) -> float:
    ok = planted = 0
    for _ in range(studies):
        e = fixed(d, sizes, delta_sd, n, rng)
        delta = delta_sd * np.mean(list(d.effect_sd.values()))
        for r in e.to_dict("records"):
            if sizes.get(r["effect"], 0.0):
                planted += 1
                ok += correct(r, sizes[r["effect"]] * d.effect_sd[r["effect"]], delta)
    return ok / planted


def matching_fixed(d: Design, sizes, delta_sd, target: float, studies: int, rng) -> tuple[int | None, float]:
    """The fewest seeds of a fixed design whose power reaches `target` (up to 30; power grows
    with n, so a bisection)."""
    cache: dict[int, float] = {}

    def power(n: int) -> float:
        if n not in cache:
            cache[n] = fixed_power(d, sizes, delta_sd, n, studies, rng)
        return cache[n]

    low, high = 3, 30
    if power(high) < target:
        return None, power(high)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if power(mid) >= target else (mid + 1, high)
    return low, power(low)


POWER_CAP = 0.995  # (d) matches the fixed design's power up to this: past it, seeds buy nothing one can see


def known_variance(sizes: list[float], delta_sd: float, shape: str, paths: int, rng) -> dict:
    """(d): m main effects (per-seed SD 1, `sizes` in SDs), each tested at α/m by z-tests at
    the plan's looks with Lan-DeMets thresholds, both hypotheses (difference two-sided,
    equivalence within ±δ by two one-sided tests); stop when every effect is decided. Returns
    power, mean seeds and the fewest seeds (≥ the plan's minimum) of a fixed z design with at
    least that power (capped at POWER_CAP)."""
    from scipy.stats import norm

    looks, m = np.array(PLAN.schedule()), len(sizes)
    level = stats.ALPHA / m
    budget = np.array([stats.spent(n / PLAN.max, alpha=level, shape=shape) for n in looks])
    z_diff, z_equiv = _z_bounds(looks, np.diff(np.r_[0, budget]), 2, rng), _z_bounds(looks, np.diff(np.r_[0, budget]), 1, rng)
    mu = np.array(sizes)[None, :, None]
    steps = np.diff(np.r_[0, looks])
    sums = np.cumsum(rng.standard_normal((paths, m, len(looks))) * np.sqrt(steps) + mu * steps, axis=2)
    mean, se = sums / looks, 1 / np.sqrt(looks)
    right = (np.abs(mean) / se > z_diff) & (np.sign(mean) == np.sign(mu)) & (mu != 0)
    equiv = (delta_sd - np.abs(mean)) / se > z_equiv
    decided = (np.abs(mean) / se > z_diff) | equiv
    first = np.where(decided.any(2), decided.argmax(2), len(looks))
    stop = np.minimum(first.max(1), len(looks) - 1)
    first_right = np.take_along_axis(right, np.minimum(first, len(looks) - 1)[..., None], 2)[..., 0] & (first < len(looks))
    planted = np.array(sizes) != 0
    power = float(first_right[:, planted].mean()) if planted.any() else float("nan")
    seeds = float(looks[stop].mean())
    z_fixed = norm.ppf(1 - level / 2)
    k = min(abs(x) for x in sizes if x) if planted.any() else 0.0
    def fewest(target: float) -> int | None:
        return next((n for n in range(PLAN.min, 400) if norm.sf(z_fixed - k * np.sqrt(n)) >= target), None)

    return {"power": power, "seeds": seeds, "fixed": fewest(min(power, POWER_CAP)), "exact": fewest(power)}


def _z_bounds(looks: np.ndarray, shares: np.ndarray, sided: int, rng, paths: int = 400_000) -> np.ndarray:
    """Group-sequential z thresholds spending `shares` of the level at `looks` (known SD)."""
    steps = np.diff(np.r_[0, looks])
    z = np.cumsum(rng.standard_normal((paths, len(looks))) * np.sqrt(steps), axis=1) / np.sqrt(looks)
    z = np.abs(z) if sided == 2 else z
    alive, out = np.ones(paths, dtype=bool), []
    for k, share in enumerate(shares):
        col = np.sort(z[alive, k])[::-1]
        out.append(col[int(round(share * paths))])
        alive &= z[:, k] <= out[-1]
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=500, help="simulated studies per scenario")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spending", default="pocock", choices=("pocock", "obf"), help="Lan-DeMets shape")
    parser.add_argument("--part", default="all", choices=("all", "a", "bc", "d"), help="which tables to print")
    parser.add_argument("--delta-sd", type=float, default=1.5,
                        help="δ in units of the per-seed effect's noise SD (the scenarios' nulls can be shown "
                             "equivalent only when δ is a few SDs wide)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    global PLAN
    PLAN = SeedPlan(PLAN.min, PLAN.max, args.spending)
    print(machine())
    print(f"plan: {PLAN.text()}, {args.spending} spending; α = {stats.ALPHA}; δ = {args.delta_sd} effect SDs; "
          f"{args.studies} studies per scenario")
    start = time.perf_counter()
    print("\n(a) no effect anywhere: false-verdict rate per architecture (goal <= 5%), coverage (goal 93-97%)")
    for name, levels in DESIGNS.items() if args.part in ("all", "a") else ():
        d = Design(levels)
        r = scenario(d, {}, args.delta_sd, args.studies, rng)
        se = np.sqrt(r["false"] * (1 - r["false"]) / args.studies)
        print(f"  {name:<22} false verdicts {r['false']:.1%} (±{1.96 * se:.1%})  coverage {r['coverage']:.1%}  "
              f"mean runs {r['runs']:.0f} of {len(d.settings) * PLAN.max}")
    print("\n(b, c) planted effects, 2^3 toggles: power and runs vs the fixed design of the same power (goal <= 60%)")
    d = Design(DESIGNS["2^3 toggles"])
    names = [c["effect"] for c in d.mains]
    patterns = (("every main effect k SD", lambda k: {n: k for n in names}),
                ("one effect k SD, two null", lambda k: {names[0]: k}))
    for label, pattern in patterns if args.part in ("all", "bc") else ():
        print(f"  {label}:")
        for k in (1.0, 2.0, 3.0):
            sizes = pattern(k)
            r = scenario(d, sizes, args.delta_sd, args.studies, rng)
            n_fixed, p_fixed = matching_fixed(d, sizes, args.delta_sd, r["power"], args.studies, rng)
            fixed_runs = None if n_fixed is None else n_fixed * len(d.settings)
            ratio = "–" if fixed_runs is None else f"{r['runs'] / fixed_runs:.0%}"
            at_max = len(d.settings) * PLAN.max
            print(f"    k={k:.0f}: power {r['power']:.1%}, mean runs {r['runs']:.1f}; fixed design of that power "
                  f"{'> 30' if n_fixed is None else n_fixed} seeds ({fixed_runs or '–'} runs, power {p_fixed:.1%}): "
                  f"ratio {ratio}; vs the fixed design at the maximum ({at_max} runs): {r['runs'] / at_max:.0%}; "
                  f"false verdicts {r['false']:.1%}; coverage {r['coverage']:.1%}")
    print("\n(d) the same looks and stopping rule with the noise SD known (z-tests; the limit of an error term "
          "pooled over many degrees of freedom), 200,000 studies each:")
    for label, pattern in (("every main effect k SD", lambda k: [k, k, k]), ("one effect k SD, two null", lambda k: [k, 0, 0])):
        for k in (1.0, 2.0, 3.0) if args.part in ("all", "d") else ():
            r = known_variance(pattern(k), args.delta_sd, args.spending, 200_000, rng)
            ratio = "–" if r["fixed"] is None else f"{r['seeds'] / r['fixed']:.0%}"
            exact = "–" if r["exact"] is None else f"{r['exact']} seeds, ratio {r['seeds'] / r['exact']:.0%}"
            print(f"    {label}, k={k:.0f}: power {r['power']:.2%}, mean seeds {r['seeds']:.2f}; fixed z design of "
                  f"that power (at most {POWER_CAP:.1%}) {r['fixed'] or '> 400'} seeds: ratio {ratio} "
                  f"(of exactly that power: {exact})")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
