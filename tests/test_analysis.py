"""Analysis on hand-built run tables whose answers are known in advance."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from scipy import stats as sps

from ablate import analysis, results, stats
from ablate.analysis import verdicts
from ablate.errors import AblateError

# Per-(cell, seed) measurement noise, SD ≈ 0.006: a fixed table read cyclically and centred per cell over the
# study's seeds, so a planted effect's estimate is exactly the planted value while the per-seed effects vary.
# (A seed offset shared by every cell, like NOISE below, cancels in every paired effect: alone it gives
# effects that are the same on every seed, which are not replicates and carry no verdict.)
OFFSETS = (0.004, -0.007, 0.009, -0.002, 0.006, -0.009, 0.001, 0.008, -0.005, 0.003, -0.006, 0.007, -0.003)


def _jitter(cell: int, seed_index: int, n_seeds: int) -> float:
    raw = [OFFSETS[(5 * cell + 3 * s) % len(OFFSETS)] for s in range(n_seeds)]
    return raw[seed_index] - sum(raw) / n_seeds


def _runs(value, *, models=("unet",), toggles=("scheduler", "augment"), seeds=(0, 1, 2), noise=False,
          noise_toggles=None) -> pd.DataFrame:
    """A full factorial of `toggles` × seeds; value(model, seed, **toggles) gives test mIoU
    (val mIoU is the same minus 0.01). `noise`: add `_jitter` of the cell (numbered by the bits of
    `noise_toggles`, default all toggles, the first one lowest) and seed."""
    rows = []
    seeds = list(seeds)
    keyed = list(noise_toggles or toggles)
    for model, seed, levels in itertools.product(models, seeds, itertools.product((False, True), repeat=len(toggles))):
        on = dict(zip(toggles, levels))
        y = value(model, seed, **on)
        if noise:
            y += _jitter(sum(int(on[t]) << i for i, t in enumerate(keyed)), seeds.index(seed), len(seeds))
        rows.append({"cell_id": f"{model}-{seed}-{levels}", "model": model, "model_args": "{}", "seed": seed,
                     "scheduler": False, "augment": False, "weighted_loss": False, **on, "status": "completed",
                     "val_miou": y - 0.01, "test_miou": y, "val_pixel_acc": 0.9, "test_pixel_acc": 0.9,
                     "seconds": 10.0 + 5 * on.get("augment", False), "images_per_second": 100.0})
    return analysis.with_cells(pd.DataFrame(rows))


NOISE = {0: 0.013, 1: -0.021, 2: 0.004, 3: 0.017, 4: -0.009}


def _effect(effects: pd.DataFrame, name: str, metric: str = "test_miou", arch: str = "unet") -> dict:
    row = effects[(effects["effect"] == name) & (effects["metric"] == metric) & (effects["arch"] == arch)]
    assert len(row) == 1, effects[["arch", "effect", "metric"]]
    return row.iloc[0].to_dict()


def _by_seed(runs: pd.DataFrame, metric: str = "test_miou") -> pd.DataFrame:
    """seeds × cells of `metric`, straight from the runs (the expected values are computed here, not by ablate)."""
    return runs.pivot_table(index="seed", columns="cell", values=metric)


def _direct_main(runs: pd.DataFrame, toggle: str) -> np.ndarray:
    """Per-seed main effect of a toggle computed directly: mean over cells with it on − mean over cells with it off."""
    y = _by_seed(runs)
    on = sorted(set(runs.loc[runs[toggle], "cell"]))
    off = sorted(set(runs.loc[~runs[toggle], "cell"]))
    return (y[on].mean(axis=1) - y[off].mean(axis=1)).to_numpy()


def _t95(values) -> tuple[float, float]:
    """The textbook 95% Student-t interval of a mean."""
    v = np.asarray(values, dtype=float)
    half = sps.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return v.mean() - half, v.mean() + half


def test_seeds_that_do_not_vary_get_no_p_and_no_verdict():
    # augment adds exactly +0.1 to every seed; seeds differ by an offset shared by all cells: every seed gives
    # the same effect, so the seeds are not replicates (a p of 0 would be a symptom, not evidence).
    runs = _runs(lambda m, s, scheduler, augment: 0.3 + NOISE[s] + 0.1 * augment)
    effects = analysis.factorial_effects(runs)
    aug = _effect(effects, "augment")
    assert aug["estimate"] == pytest.approx(0.1)
    assert aug["ci_low"] == pytest.approx(0.1) and aug["ci_high"] == pytest.approx(0.1)
    assert aug["zero_spread"] and not aug["excludes_zero"] and aug["n_seeds"] == aug["n"] == 3
    assert aug["verdict"] == "seeds do not vary" and aug["p_improve"] == 1.0
    for col in ("p_value", "p_equiv", "seeds_to_decide"):
        assert np.isnan(aug[col]), col
    assert aug["sentence"] == ("unet: augmentation: every seed gave the same effect on test mIoU (+0.100): the seed "
                               "does not vary training, so the seeds are not replicates; no verdict")
    assert not any(w in aug["sentence"] for w in ("raises", "helps", "inconclusive", "p ="))
    # the scheduler does nothing on any seed: the same, not "no effect"
    sched = _effect(effects, "scheduler")
    assert sched["verdict"] == "seeds do not vary" and sched["estimate"] == 0 and np.isnan(sched["p_value"])
    # the comparisons with the reference cell say so too, with no p
    comp = analysis.paired_comparisons(runs, metrics=("test_miou",)).set_index("cell")
    assert comp.loc["unet · augment", "mean_diff"] == pytest.approx(0.1)
    assert comp.loc["unet · augment", "verdict"] == "seeds do not vary"
    assert np.isnan(comp.loc["unet · augment", "p_value"]) and not comp.loc["unet · augment", "excludes_zero"]


def test_planted_main_effect_with_seed_noise_helps():
    # augment adds +0.1 and each (cell, seed) its own small noise: the per-seed effects vary around +0.1.
    runs = _runs(lambda m, s, scheduler, augment: 0.3 + NOISE[s] + 0.1 * augment, noise=True)
    effects = analysis.factorial_effects(runs, metrics=("test_miou",))
    aug = _effect(effects, "augment")
    per_seed = _direct_main(runs, "augment")
    assert np.ptp(per_seed) > 0.005  # the seeds vary
    assert aug["estimate"] == pytest.approx(0.1) and per_seed.mean() == pytest.approx(0.1)
    lo, hi = _t95(per_seed)
    assert (aug["ci_low"], aug["ci_high"]) == pytest.approx((lo, hi))
    assert aug["sd"] == pytest.approx(per_seed.std(ddof=1))
    assert aug["p_value"] == pytest.approx(sps.ttest_1samp(per_seed, 0).pvalue)
    assert not aug["zero_spread"] and aug["excludes_zero"] and aug["p_improve"] == 1.0
    # one family of 2 main effects: each effect's two tests at α/2 = 0.025 (one look: the threshold is the level)
    assert aug["family_size"] == 2 and aug["level"] == pytest.approx(0.025) and aug["threshold"] == pytest.approx(0.025)
    assert aug["threshold_equiv"] == pytest.approx(0.025) and aug["p_value"] <= 0.025
    assert aug["verdict"] == "helps" and aug["decided_at"] == 3
    assert aug["min_effect"] == stats.DEFAULT_MIN_EFFECT and np.isnan(aug["seeds_to_decide"])
    assert aug["sentence"] == (f"unet: augmentation raises test mIoU, averaged over the other factors: +0.100 "
                               f"[95% CI {lo:+.3f}, {hi:+.3f}]; n=3 seeds (p = {aug['p_value']:.2g} ≤ 0.025, α/2)")
    assert _effect(effects, "scheduler")["verdict"] == "inconclusive"


def test_no_effect_toggle_interval_contains_zero():
    # scheduler's effect is per-seed noise with mean -0.001: too noisy to call either way at 5 seeds.
    flip = {0: 0.02, 1: -0.03, 2: 0.01, 3: -0.015, 4: 0.01}
    effects = analysis.factorial_effects(
        _runs(lambda m, s, scheduler, augment: 0.3 + 0.1 * augment + flip[s] * scheduler, seeds=range(5), noise=True))
    sched = _effect(effects, "scheduler")
    assert sched["estimate"] == pytest.approx(-0.001)
    assert sched["ci_low"] < 0 < sched["ci_high"]
    assert not sched["excludes_zero"]
    assert sched["verdict"] == "inconclusive" and "inconclusive" in sched["sentence"]
    assert sched["p_value"] > sched["threshold"] == pytest.approx(0.025)
    assert sched["p_equiv"] > sched["threshold_equiv"] == pytest.approx(0.025)
    # the seeds that would likely decide it: equivalence within δ = 0.01 at α / 2 (two main effects) and 80% power,
    # n = ((z_{1−α/2} + z_0.8) · sd / (δ − |estimate|))²  (the difference test would need far more)
    z = sps.norm.ppf(1 - 0.05 / 2) + sps.norm.ppf(0.8)
    need = int(np.ceil((z * sched["sd"] / (0.01 - 0.001)) ** 2))
    assert sched["seeds_to_decide"] == need and need > 5
    assert f"about {need} seeds would likely decide it" in sched["sentence"]
    aug = _effect(effects, "augment")
    assert aug["excludes_zero"] and aug["verdict"] == "helps"


def test_a_null_effect_with_small_noise_is_no_effect_larger_than_delta():
    # scheduler adds +0.002 (a negligible effect) with per-(cell, seed) noise; 5 seeds, δ = 0.02
    runs = _runs(lambda m, s, scheduler, augment: 0.3 + NOISE[s] + 0.002 * scheduler + 0.1 * augment,
                 seeds=range(5), noise=True)
    effects = analysis.factorial_effects(runs, metrics=("test_miou",), min_effect=0.02)
    sched = _effect(effects, "scheduler")
    per_seed = _direct_main(runs, "scheduler")
    lo, hi = _t95(per_seed)
    assert sched["estimate"] == pytest.approx(0.002) and (sched["ci_low"], sched["ci_high"]) == pytest.approx((lo, hi))
    assert -0.02 < lo < 0 < hi < 0.02  # the 95% interval holds 0 and lies inside ±δ
    assert sched["verdict"] == "no effect larger than δ" and sched["min_effect"] == 0.02
    # equivalence rejected at α/2, the difference not
    assert sched["threshold_equiv"] == pytest.approx(0.025)
    assert sched["p_equiv"] <= sched["threshold_equiv"] < sched["p_value"]
    # TOST: the larger one-sided p, here the test of mean ≥ +δ
    se = per_seed.std(ddof=1) / np.sqrt(5)
    assert sched["p_equiv"] == pytest.approx(sps.t.cdf((per_seed.mean() - 0.02) / se, 4)) and sched["p_equiv"] < 0.001
    assert sched["sentence"] == (f"unet: cosine scheduler changes test mIoU by less than δ = 0.02, averaged over the "
                                 f"other factors: +0.002 [95% CI {lo:+.3f}, {hi:+.3f}]; n=5 seeds (equivalence p "
                                 f"= {sched['p_equiv']:.2g} ≤ 0.025, α/2)")
    assert _effect(effects, "augment")["verdict"] == "helps"
    # the same data with a δ the interval does not fit inside: inconclusive, not "no effect"
    strict = _effect(analysis.factorial_effects(runs, metrics=("test_miou",), min_effect=0.005), "scheduler")
    assert hi > 0.005 and strict["verdict"] == "inconclusive" and strict["p_equiv"] > 0.025


def test_interaction_is_recovered():
    # y = 0.1·A + 0.05·B + 0.2·A·B (0/1 coding): A's effect is 0.1 with B off and 0.3 with B
    # on, so main A = 0.2, main B = 0.05 + 0.1 = 0.15, interaction = (0.3 − 0.1)/2 = 0.1.
    runs = _runs(lambda m, s, scheduler, augment: 0.2 + NOISE[s] + 0.1 * scheduler + 0.05 * augment
                 + 0.2 * scheduler * augment, noise=True)
    effects = analysis.factorial_effects(runs)
    assert _effect(effects, "scheduler")["estimate"] == pytest.approx(0.2)
    assert _effect(effects, "augment")["estimate"] == pytest.approx(0.15)
    inter = _effect(effects, "scheduler × augment")
    assert inter["kind"] == "interaction"
    assert inter["estimate"] == pytest.approx(0.1)
    y = _by_seed(runs)
    direct = 0.5 * ((y["unet · scheduler+augment"] - y["unet · augment"]) - (y["unet · scheduler"] - y["unet · no toggles"]))
    assert inter["per_seed"] == " ".join(f"{d:+.4f}" for d in direct)
    assert (inter["ci_low"], inter["ci_high"]) == pytest.approx(_t95(direct))
    assert inter["excludes_zero"]


def test_a_large_interaction_is_described_not_judged():
    # a planted synergy of +0.4 on the (on, on) cell: interaction +0.2, far from 0, yet described only
    runs = _runs(lambda m, s, scheduler, augment: 0.2 + NOISE[s] + 0.4 * scheduler * augment, noise=True)
    effects = analysis.factorial_effects(runs, metrics=("test_miou",))
    inter = _effect(effects, "scheduler × augment")
    assert inter["estimate"] == pytest.approx(0.2) and inter["excludes_zero"] and inter["p_value"] < 0.01
    assert inter["verdict"] == "estimate only"
    assert np.isnan(inter["level"]) and np.isnan(inter["threshold"]) and np.isnan(inter["decided_at"])
    sentence = inter["sentence"]
    assert sentence.startswith("unet: cosine scheduler × augmentation interaction on test mIoU: +0.200 [95% CI ")
    assert sentence.count("interaction") == 1 and sentence.endswith("n=3 seeds; described only (no verdict)")
    assert not any(w in sentence for w in ("raises", "lowers", "helps", "hurts", "inconclusive", "positive"))
    # the interaction is not part of the family: two main effects, each at α/2, not α/3
    mains = effects[(effects["kind"] == "main") & (effects["metric"] == "test_miou")]
    assert set(mains["family_size"]) == {2} and mains["level"].tolist() == pytest.approx([0.025, 0.025])


def test_three_toggles_give_three_mains_and_three_interactions():
    effects = analysis.factorial_effects(
        _runs(lambda m, s, scheduler, augment, weighted_loss: 0.3 + 0.05 * weighted_loss,
              toggles=("scheduler", "augment", "weighted_loss"), seeds=(0,)), metrics=("test_miou",))
    assert sorted(effects["kind"]) == ["interaction"] * 3 + ["main"] * 3
    assert _effect(effects, "weighted_loss")["estimate"] == pytest.approx(0.05)


def test_one_seed_has_no_interval():
    runs = _runs(lambda m, s, scheduler, augment: 0.3 + 0.1 * augment, seeds=(7,))
    aug = _effect(analysis.factorial_effects(runs), "augment")
    assert aug["estimate"] == pytest.approx(0.1)
    assert np.isnan(aug["ci_low"]) and np.isnan(aug["ci_high"])
    assert aug["ci_method"] == analysis.NO_INTERVAL and not aug["excludes_zero"]
    assert aug["verdict"] == "not enough seeds" and np.isnan(aug["p_value"]) and aug["p_method"] == "–"
    stats = analysis.cell_stats(runs)
    assert (stats["ci_method"] == analysis.NO_INTERVAL).all() and stats["ci_low"].isna().all()


def test_cell_stats_mean_std_and_ci():
    runs = _runs(lambda m, s, scheduler, augment: [0.2, 0.4, 0.6][s])
    row = analysis.cell_stats(runs).query("metric == 'test_miou'").iloc[0]
    assert (row["n"], row["mean"], row["std"]) == (3, pytest.approx(0.4), pytest.approx(0.2))
    # Student t: 0.4 ± t(0.975, 2) · 0.2 / √3 = 0.4 ± 0.4968 (wider than the values' range,
    # as three seeds warrant; a percentile bootstrap would stay inside [0.2, 0.6]).
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.4 - 0.49683, 0.4 + 0.49683), abs=1e-5)
    assert row["ci_method"] == "Student t over seeds (n-1 df)"


def test_incomplete_design_is_reported_not_guessed():
    runs = _runs(lambda m, s, scheduler, augment: 0.3)
    runs = runs[~(runs["scheduler"] & runs["augment"])]
    effects = analysis.factorial_effects(runs)
    assert effects["estimate"].isna().all()
    assert "incomplete design" in effects["ci_method"].iloc[0]
    assert (effects["verdict"] == "no estimate").all()


def test_paired_comparisons_pair_by_common_seeds():
    runs = _runs(lambda m, s, scheduler, augment: 0.3 + NOISE[s] + 0.05 * augment, seeds=(0, 1, 2, 3), noise=True)
    # seed 3 is missing from the baseline cell: it must not be used in any pair.
    runs = runs[~((runs["seed"] == 3) & ~runs["scheduler"] & ~runs["augment"])]
    comp = analysis.paired_comparisons(runs, metrics=("test_miou",))
    assert set(comp["baseline"]) == {"unet · no toggles"}
    row = comp[comp["cell"] == "unet · augment"].iloc[0]
    assert row["n_pairs"] == 3 and row["seeds"] == "0 1 2"
    y = _by_seed(runs)
    diffs = (y["unet · augment"] - y["unet · no toggles"]).loc[[0, 1, 2]].to_numpy()  # seed by seed
    assert row["diffs"] == " ".join(f"{d:+.4f}" for d in diffs)
    assert row["mean_diff"] == pytest.approx(diffs.mean()) and diffs.mean() == pytest.approx(0.05, abs=0.01)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(_t95(diffs))
    assert row["p_value"] == pytest.approx(sps.ttest_1samp(diffs, 0).pvalue) and row["excludes_zero"]  # unadjusted
    assert row["p_method"] == "paired t-test, two-sided" and row["p_improve"] == 1.0
    # described, not judged: no verdict word
    assert row["verdict"] == "estimate only" and not row["zero_spread"]
    assert row["sentence"] == (f"unet · augment vs no toggles: test mIoU {diffs.mean():+.3f} [95% CI {row['ci_low']:+.3f}, "
                               f"{row['ci_high']:+.3f}], n=3 paired seeds, P(improve) = 1.00")


def test_compare_architectures_ranks_with_ties():
    level = {"a": 0.50, "b": 0.49, "c": 0.30}
    spread = {0: -0.02, 1: 0.0, 2: 0.02}
    runs = _runs(lambda m, s, scheduler, augment: level[m] + spread[s] + 0.05 * augment, models=("a", "b", "c"))
    ranked = analysis.compare_architectures(runs)
    assert list(ranked["arch"]) == ["a", "b", "c"]
    assert list(ranked["rank"]) == [1, 1, 3]  # a and b overlap; both are clearly above c
    assert set(ranked["best_cell"]) == {"a · augment", "b · augment", "c · augment"}
    assert ranked.iloc[0]["tied_with"] == "b" and ranked.iloc[2]["tied_with"] == ""


def test_expected_max_hand_computed():
    # sorted v = 0.1, 0.2, 0.3, N = 3, n = 2: weights (1/3)² = 1/9, (2/3)² − (1/3)² = 3/9,
    # 1 − (2/3)² = 5/9 → E = (0.1·1 + 0.2·3 + 0.3·5)/9 = 2.2/9.
    curve = analysis.expected_max([0.3, 0.1, 0.2])
    assert list(curve["n"]) == [1, 2, 3]
    assert curve["expected_max"].tolist() == pytest.approx([0.2, 2.2 / 9, (0.1 * 1 + 0.2 * 7 + 0.3 * 19) / 27])
    assert curve["std"].iloc[0] == pytest.approx(np.std([0.1, 0.2, 0.3]))
    assert analysis.expected_max([0.5, 0.5], n_max=4)["expected_max"].tolist() == pytest.approx([0.5] * 4)


def test_best_so_far_ignores_pruned_trials():
    trials = pd.DataFrame({"number": [0, 1, 2, 3], "state": ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"],
                           "val_miou": [0.2, 0.9, 0.1, 0.4]})
    curve = analysis.best_so_far(trials)
    assert curve["best_so_far"].tolist() == [0.2, 0.2, 0.2, 0.4]


def test_pareto_front_on_toy_table():
    cost = [10, 20, 30, 15, 40]
    quality = [0.5, 0.7, 0.6, 0.5, 0.8]
    # 30 s / 0.6 is beaten by 20 s / 0.7; 15 s / 0.5 is beaten by 10 s / 0.5 (same quality, cheaper).
    assert analysis.pareto_front(cost, quality).tolist() == [True, True, False, False, True]
    table = analysis.cost_table(_runs(lambda m, s, scheduler, augment: 0.3 - 0.1 * augment))
    assert table.set_index("cell")["pareto"].to_dict() == {
        "unet · no toggles": True, "unet · scheduler": True, "unet · augment": False, "unet · scheduler+augment": False}


def test_arch_label_separates_model_args():
    runs = _runs(lambda m, s, scheduler, augment: 0.3, seeds=(0,))
    wide = runs.assign(model_args='{"base_channels": 32}', cell_id=runs["cell_id"] + "w")
    both = analysis.with_cells(pd.concat([runs, wide]))
    assert set(both["arch"]) == {"unet", 'unet {"base_channels": 32}'}


# --------------------------------------------------------------------------- verdict discipline
PLANT = {0: 0.012, 1: -0.018, 2: 0.006, 3: 0.015, 4: -0.009}  # per-seed wobble of the planted effect
NULL = {0: 0.011, 1: -0.02, 2: 0.004, 3: -0.008, 4: 0.016}  # mean 0.0006: a null effect


def _planted(seeds):
    """weighted_loss adds +0.05 (± a per-seed wobble); scheduler adds only noise."""
    return _runs(lambda m, s, scheduler, weighted_loss: 0.3 + NOISE[s] + (0.05 + PLANT[s]) * weighted_loss
                 + NULL[s] * scheduler, toggles=("scheduler", "weighted_loss"), seeds=seeds)


def test_planted_effect_helps_null_effect_is_not_claimed():
    runs = _planted(range(5))
    effects = analysis.factorial_effects(runs, metrics=("test_miou",))
    weighted, sched = _effect(effects, "weighted_loss"), _effect(effects, "scheduler")
    assert weighted["verdict"] == "helps" and weighted["estimate"] == pytest.approx(0.0512)
    per_seed = np.array([0.05 + PLANT[s] for s in range(5)])
    assert (weighted["ci_low"], weighted["ci_high"]) == pytest.approx(_t95(per_seed))
    p = sps.ttest_1samp(per_seed, 0).pvalue
    assert weighted["ci_low"] > 0 and weighted["p_value"] == pytest.approx(p) and 0.001 < p <= 0.025
    assert sched["verdict"] == "inconclusive" and sched["ci_low"] < 0 < sched["ci_high"]
    assert sched["p_value"] > 0.025 and sched["p_equiv"] > 0.025  # neither hypothesis rejected
    # One family of the two main effects (difference and equivalence each; the interaction is
    # described only): each effect's tests at α/2 = 0.025, not α/3.
    assert weighted["family_size"] == sched["family_size"] == 2
    assert weighted["threshold"] == sched["threshold"] == pytest.approx(0.025)
    assert weighted["sentence"] == (
        f"unet: weighted loss raises test mIoU, averaged over the other factors: +0.051 [95% CI "
        f"{weighted['ci_low']:+.3f}, {weighted['ci_high']:+.3f}]; n=5 seeds (p = {p:.2g} ≤ 0.025, α/2)")
    assert _effect(effects, "scheduler × weighted_loss")["verdict"] == "estimate only"
    assert set(effects["family"]) == {analysis.FAMILY["effect"]}
    comps = analysis.paired_comparisons(runs, metrics=("test_miou",)).set_index("cell")
    assert set(comps["verdict"]) == {"estimate only"}  # comparisons are described, never judged
    assert comps.loc["unet · weighted_loss", "p_value"] == pytest.approx(weighted["p_value"])  # raw, unadjusted
    assert comps.loc["unet · weighted_loss", "p_improve"] == 1.0
    assert "helps" not in " ".join(comps["sentence"]) and "raises" not in " ".join(comps["sentence"])


def test_two_seeds_say_not_enough_seeds():
    effects = analysis.factorial_effects(_planted((0, 1)), metrics=("test_miou",))
    weighted = _effect(effects, "weighted_loss")
    assert weighted["n"] == 2 and weighted["estimate"] == pytest.approx(0.047)
    assert weighted["verdict"] == "not enough seeds" and "p =" not in weighted["sentence"]
    assert "not enough seeds for a verdict (n=2, 3 needed)" in weighted["sentence"]


def test_interval_excluding_zero_is_not_enough_in_a_family():
    # Two main effects whose intervals both exclude 0 (raw p 0.03 and 0.04): in their family each is
    # tested at α/2 = 0.025, so neither is decided.
    row = {"n": 5, "estimate": 0.02, "excludes_zero": True, "kind": "main", "unlearned": "", "zero_spread": False}
    rows = [{**row, "effect": "a", "p_value": 0.03, "p_equiv": 0.5}, {**row, "effect": "b", "p_value": 0.04, "p_equiv": 0.6}]
    lk = analysis.look(rows, delta=0.01)
    assert lk.verdicts == {"a": "inconclusive", "b": "inconclusive"}
    assert lk.level == lk.threshold == lk.threshold_equiv == pytest.approx(0.025)
    assert lk.p_diff == pytest.approx({"a": 0.03, "b": 0.04}) and lk.n == 5
    # a stronger first effect (0.01) helps, a negative one hurts; the other stays open
    assert analysis.look([{**rows[0], "p_value": 0.01}, rows[1]], delta=0.01).verdicts == {
        "a": "helps", "b": "inconclusive"}
    assert analysis.look([{**rows[0], "p_value": 0.01, "estimate": -0.02}, rows[1]], delta=0.01).verdicts["a"] == "hurts"
    # equivalence decides only where the difference does not
    assert analysis.look([{**rows[0], "p_equiv": 0.02}, rows[1]], delta=0.01).verdicts["a"] == "no effect larger than δ"
    assert analysis.look([{**rows[0], "p_value": 0.01, "p_equiv": 0.02}], delta=0.01).verdicts["a"] == "helps"
    # a row that cannot be judged keeps its reason and is not tested
    for change, reason in (({"unlearned": "unet · no toggles"}, "did not learn"), ({"n": 2}, "not enough seeds"),
                           ({"zero_spread": True}, "seeds do not vary"), ({"estimate": np.nan}, "no estimate")):
        lk = analysis.look([{**rows[0], **change}, {**rows[1], "p_value": 0.02}], delta=0.01)
        assert lk.verdicts == {"a": reason, "b": "helps"} and lk.p_diff == pytest.approx({"b": 0.02}), reason
    # alone, b's p 0.04 is decided at α; at the second look of a sequential study (3 then 5 of at most
    # 10 seeds) its threshold is a share of α, and the same p is not enough
    assert analysis.look(rows[1:], delta=0.01).verdicts == {"b": "helps"}
    seq = analysis.look(rows[1:], delta=0.01, looks=(3, 5), n_max=10)
    assert seq.level == 0.05 and seq.threshold < 0.04 and seq.verdicts == {"b": "inconclusive"}


def test_more_main_effects_in_one_family_only_lower_each_level():
    # Hand example: an effect with p 0.02 is decided among 2 main effects (α/2 = 0.025) but not among
    # 3 (α/3 = 0.0167), with the same data.
    row = {"n": 5, "estimate": 0.02, "kind": "main", "unlearned": "", "zero_spread": False, "p_equiv": 0.9}
    a, b, c = ({**row, "effect": e, "p_value": p} for e, p in (("a", 0.02), ("b", 0.5), ("c", 0.6)))
    two, three = analysis.look([a, b], delta=0.01), analysis.look([a, b, c], delta=0.01)
    assert two.level == pytest.approx(0.05 / 2) and three.level == pytest.approx(0.05 / 3)
    assert two.verdicts["a"] == "helps" and three.verdicts["a"] == "inconclusive"
    # The same scheduler and augment data, with and without a third toggle (weighted_loss adds only its own
    # per-seed noise, which cancels in the other two effects): their per-seed effects and raw p are identical,
    # but the family grows from 2 to 3 main effects, so each is tested at α/3 instead of α/2.
    wl = {0: 0.006, 1: -0.011, 2: 0.004}

    def value(m, s, scheduler, augment, weighted_loss=False):
        return 0.3 + NOISE[s] + 0.1 * augment + 0.004 * scheduler + wl[s] * weighted_loss

    two = analysis.factorial_effects(_runs(value, noise=True), metrics=("test_miou",))
    three = analysis.factorial_effects(_runs(value, toggles=("scheduler", "augment", "weighted_loss"), noise=True,
                                             noise_toggles=("scheduler", "augment")), metrics=("test_miou",))
    for name in ("scheduler", "augment"):
        a, b = _effect(two, name), _effect(three, name)
        assert a["per_seed"] == b["per_seed"] and a["p_value"] == pytest.approx(b["p_value"])
        assert a["p_equiv"] == pytest.approx(b["p_equiv"])
        assert a["family_size"] == 2 and a["threshold"] == pytest.approx(0.05 / 2)
        assert b["family_size"] == 3 and b["threshold"] == pytest.approx(0.05 / 3)
        # a verdict in the larger family is one in the smaller (never the other way round)
        assert b["verdict"] == "inconclusive" or b["verdict"] == a["verdict"]
    assert _effect(two, "augment")["verdict"] == _effect(three, "augment")["verdict"] == "helps"
    assert _effect(three, "weighted_loss")["per_seed"] == " ".join(f"{wl[s]:+.4f}" for s in range(3))


def test_p_is_printed_on_the_right_side_of_its_threshold():
    # A verdict is decided when p ≤ its threshold; the printed p must sit on the same side. 0.0504 at 0.05
    # rounds to 0.05 at two digits, which would read as decided: it needs a third.
    assert analysis.p_text(0.0504, 0.05) == "= 0.0504"
    assert analysis.p_text(0.0166, 0.05 / 3) == "= 0.0166"  # 0.017 would be above α/3 = 0.01667
    assert analysis.p_text(0.012, 0.05) == "= 0.012" and analysis.p_text(0.0004, 0.05) == "< 0.001"
    assert analysis.p_text(0.0004, 0.0001) == "= 0.0004"  # "< 0.001" would not say which side of 0.0001
    assert analysis.p_text(np.nan, 0.05) == "–"
    for t in (0.05, 0.025, 0.05 / 3, 0.0125, 0.01, 0.05 / 7):
        for p in (t, *(t * (1 + sign * 10.0 ** -k) for sign in (-1, 1) for k in range(1, 6))):
            printed = analysis.p_text(p, t)
            assert printed.startswith("= ") and (float(printed[2:]) <= t) == (p <= t), (p, t, printed)
    # in a sentence: a planted effect decided at p = 0.0166 ≤ α/3 (three main effects)
    row = {"arch": "unet", "metric": "test_miou", "factors": "augment", "kind": "main", "design": "full", "others": 2,
           "estimate": 0.02, "ci_low": 0.001, "ci_high": 0.039, "n": 5, "verdict": "helps", "p_value": 0.0166,
           "p_equiv": 0.9, "level": 0.05 / 3, "threshold": 0.05 / 3, "threshold_equiv": 0.05 / 3, "decided_at": 5}
    sentence = verdicts.effect_sentence(row)
    assert sentence == ("unet: augmentation raises test mIoU, averaged over the other factors: +0.020 "
                        "[95% CI +0.001, +0.039]; n=5 seeds (p = 0.0166 ≤ 0.0167, α/3)")
    assert "p = 0.017" not in sentence
    equiv = verdicts.effect_sentence({**row, "verdict": "no effect larger than δ", "estimate": 0.001, "ci_low": -0.004,
                                      "ci_high": 0.006, "p_value": 0.6, "p_equiv": 0.0166, "min_effect": 0.01})
    assert equiv.endswith("(equivalence p = 0.0166 ≤ 0.0167, α/3)") and "δ = 0.01" in equiv


def test_numbers_never_round_to_the_wrong_side_of_zero():
    assert verdicts.fmt(-0.0004) == "-0.0004"
    assert verdicts.fmt(0.00004) == "+0.00004" and any(ch in "123456789" for ch in verdicts.fmt(0.00004))
    assert verdicts.fmt(0.0) == "0.000" and verdicts.fmt(0.0123) == "+0.012" and verdicts.fmt(-0.05) == "-0.050"
    assert verdicts.fmt(np.nan) == "–"
    assert analysis.fmt(0.00049) == "+0.0005"  # 0.0005 at four digits, not +0.000
    assert analysis.interval_text(0.02, -0.0004, 0.0404) == "+0.020 [95% CI -0.0004, +0.040]"
    assert analysis.interval_text(0.1, np.nan, np.nan) == "+0.100"  # no interval, no label
    assert analysis.interval_text(np.nan, np.nan, np.nan) == "–"


def test_paired_t_p_and_p_improve_hand_computed():
    # d = 1, 2, 3, 6: mean 3, s = √(14/3), t = 3 / (s/2) = 2.7775; two-sided p with 3 df = 0.0691.
    assert stats.paired_t_p([1, 2, 3, 6]) == pytest.approx(0.06906, abs=1e-4)
    assert stats.p_improve([0.1, -0.2, 0.0, 0.3]) == pytest.approx(2.5 / 4)  # the tie counts half
    assert np.isnan(stats.paired_t_p([0.1]))


# --------------------------------------------------------------------------- did not learn
def test_majority_bar_hand_computed():
    # val: background 0.659, rock 0.241, sand 0.1, one class absent → acc 0.659, mIoU 0.659/3.
    bar = stats.majority_bar({"split_class_frequency": {"val": [0.659, 0.241, 0.1, 0.0]}})
    assert bar["pixel_acc"] == pytest.approx(0.659) and bar["miou"] == pytest.approx(0.659 / 3)
    assert stats.majority_bar({"class_frequency": [0.5, 0.5]}) is None  # old study: unknown


def test_cells_below_the_bar_are_flagged_and_get_no_verdict():
    runs = _planted(range(5))
    bar = {"pixel_acc": 0.66, "miou": 0.2}
    # the scheduler-only cell predicts background everywhere in every seed
    runs.loc[runs["cell"] == "unet · scheduler", "val_pixel_acc"] = 0.66
    runs.loc[runs["cell"] == "unet · scheduler", "best_is_last"] = True
    flagged = analysis.with_flags(runs, bar)
    assert flagged.groupby("cell")["cell_did_not_learn"].first().to_dict() == {
        "unet · no toggles": False, "unet · scheduler": True, "unet · weighted_loss": False,
        "unet · scheduler+weighted_loss": False}
    flags = analysis.cell_flags(flagged).set_index("cell")
    assert flags.loc["unet · scheduler", "flags"] == "did not learn; still improving: budget-limited (5/5 seeds)"
    assert flags.loc["unet · weighted_loss", "flags"] == ""
    effects = analysis.factorial_effects(flagged, metrics=("test_miou",))
    mains = effects[effects["kind"] == "main"]
    assert set(mains["verdict"]) == {"did not learn"}  # every cell enters every factorial effect
    assert (mains["unlearned"] == "unet · scheduler").all() and mains["seeds_to_decide"].isna().all()
    assert "no verdict, cells that did not learn (unet · scheduler)" in _effect(effects, "weighted_loss")["sentence"]
    assert set(effects.loc[effects["kind"] == "interaction", "verdict"]) == {"estimate only"}
    comps = analysis.paired_comparisons(flagged, metrics=("test_miou",)).set_index("cell")
    assert set(comps["verdict"]) == {"estimate only"}  # comparisons are described, never judged
    assert comps.loc["unet · weighted_loss", "unlearned"] == ""  # neither of its two cells is flagged
    assert comps.loc["unet · scheduler", "unlearned"] == "unet · scheduler"
    # Unknown bar: nothing is flagged, and nothing is claimed about it.
    assert analysis.with_flags(runs, None)["did_not_learn"].isna().all()


# --------------------------------------------------------------------------- the seeds advice
def test_more_seeds_command_and_estimate(tmp_path):
    runs = _planted((0, 1))  # 4 cells × 2 seeds, 10 s or so per run
    study = results.Study(name="s", folder=tmp_path, kind="grid", table=runs, meta={
        "seeds": [0, 1], "cells": 8, "workers": 2,
        "command": ["grid", "--study", "studies/x y.toml", "--seeds", "2", "--epochs", "4"]})
    advice = analysis.more_seeds(study, runs)
    # seeds 0, 1: sequential seeds continue them (--seeds auto), the first stage to 3 seeds
    assert advice["command"] == "ablate grid --study 'studies/x y.toml' --epochs 4 --seeds auto"
    assert advice["new_runs"] == 4 and advice["n_min"] == 2 and advice["target"] == 3
    assert advice["minutes"] == pytest.approx(4 * runs["seconds"].mean() / 2 / 60)
    assert advice["text"] == ("`ablate grid --study 'studies/x y.toml' --epochs 4 --seeds auto` adds 4 runs, about 1 min "
                              "first; later stages add seeds (up to 10) only to architectures with an effect still "
                              "undecided")
    # seeds 4 and 7: `--seeds 3` would give 0, 1, 2; the seeds to ask for are listed instead.
    odd = runs.assign(seed=runs["seed"].map({0: 4, 1: 7}))
    study.meta.update(seeds=[4, 7], command=["grid", "--study-name", "s"])
    assert analysis.more_seeds(study, odd)["command"] == "ablate grid --study-name s --seeds 4,7,0"
    assert "later stages" not in analysis.more_seeds(study, odd)["text"]
    assert analysis.more_seeds(study, _planted(range(3))) is None


def test_corrupted_run_record_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "s"
    (folder / "runs" / "abc").mkdir(parents=True)
    (folder / "study.json").write_text('{"kind": "grid"}')
    (folder / "runs" / "abc" / "run.json").write_text('{"run_id": "abc", "conf')
    with pytest.raises(AblateError, match=r"runs/abc/run.json: corrupted run record"):
        results.open_study(tmp_path, "s")


def test_training_setup_says_per_architecture_how_runs_were_trained(tmp_path):
    def rec(model, *, patience, monitor="val_miou", weights=None, epochs=6, status="completed"):
        return {"status": status, "config": {"model": model, "epochs": epochs, "patience": patience},
                "early_stopping": {"monitor": monitor, "patience": patience, "min_delta": 0.0},
                "weights": weights, "metrics_resolution": "native"}

    study = results.Study(name="s", folder=tmp_path, kind="grid", meta={}, table=pd.DataFrame(), records={
        "a": rec("resnet18", patience=3, weights="imagenet (IMAGENET1K_V1, sha256 f37072fd)"),
        "b": rec("resnet18", patience=3, weights="none (random init)"),
        "c": rec("unet", patience=0),
        "d": rec("unet", patience=2, monitor="val_loss", status="failed"),  # failed runs say nothing
    })
    setup = analysis.training_setup(study).set_index("model")
    assert setup.loc["resnet18", "early_stopping"] == "on val mIoU, patience 3"
    assert setup.loc["resnet18", "weights"] == "imagenet (IMAGENET1K_V1, sha256 f37072fd); none (random init)"
    assert setup.loc["unet", "early_stopping"] == "off (every run trains its whole budget)"
    assert setup.loc["unet", "metrics"] == "native" and setup.loc["unet", "epochs"] == "6"


# --------------------------------------------------------------------------- factors with several levels
LOSS_LEVELS = ["ce", "dice", "focal", "ce+dice"]


def _factor_runs(value, *, seeds=(0, 1, 2), design="full", noise=False) -> pd.DataFrame:
    """A full factorial of loss (4 levels) × optimizer (2) × seeds, as the grid's runs.csv holds
    it (factor levels and the design as JSON); value(seed, loss, optimizer) gives test mIoU
    (`noise`: plus `_jitter` of the cell and seed)."""
    levels = {"loss": LOSS_LEVELS, "optimizer": ["adamw", "sgd"]}
    rows = []
    seeds = list(seeds)
    for seed, loss, opt in itertools.product(seeds, LOSS_LEVELS, levels["optimizer"]):
        y = value(seed, loss, opt)
        if noise:
            y += _jitter(2 * LOSS_LEVELS.index(loss) + levels["optimizer"].index(opt), seeds.index(seed), len(seeds))
        rows.append({"cell_id": f"{seed}-{loss}-{opt}", "model": "unet", "model_args": "{}", "seed": seed,
                     "scheduler": False, "augment": False, "weighted_loss": False,
                     "factors": json.dumps({"loss": loss, "optimizer": opt}),
                     "design": json.dumps({"kind": design, "levels": levels}), "status": "completed",
                     "val_miou": y - 0.01, "test_miou": y, "val_pixel_acc": 0.9, "test_pixel_acc": 0.9,
                     "seconds": 10.0, "images_per_second": 100.0})
    return analysis.with_cells(pd.DataFrame(rows))


def test_each_level_is_compared_with_the_reference_averaged_over_the_other_factor():
    # dice adds 0.06 with adamw and 0.02 with sgd: main effect 0.04, interaction (0.02 − 0.06)/2 = −0.02.
    # focal's effect is per-seed noise around -0.001 (SD 0.02); ce+dice adds nothing; every (cell, seed) has its
    # own small noise on top (SD ≈ 0.006).
    flip = {0: 0.02, 1: -0.03, 2: 0.01, 3: -0.015, 4: 0.01}
    runs = _factor_runs(lambda s, loss, opt: 0.3 + NOISE[s] + (loss == "dice") * (0.06 if opt == "adamw" else 0.02)
                        + (loss == "focal") * flip[s], seeds=range(5), noise=True)
    effects = analysis.factorial_effects(runs, metrics=("test_miou",))
    assert list(effects["effect"]) == [
        "loss = dice vs ce", "loss = focal vs ce", "loss = ce+dice vs ce", "optimizer = sgd vs adamw",
        "loss = dice vs ce × optimizer = sgd vs adamw", "loss = focal vs ce × optimizer = sgd vs adamw",
        "loss = ce+dice vs ce × optimizer = sgd vs adamw"]
    dice = _effect(effects, "loss = dice vs ce")
    assert dice["estimate"] == pytest.approx(0.04) and dice["verdict"] == "helps" and dice["kind"] == "main"
    y = _by_seed(runs)
    direct = np.mean([y[f"unet · loss=dice optimizer={o}"] - y[f"unet · loss=ce optimizer={o}"] for o in ("adamw", "sgd")],
                     axis=0)  # dice vs ce, averaged over the optimizers
    lo, hi = _t95(direct)
    assert (dice["ci_low"], dice["ci_high"]) == pytest.approx((lo, hi)) and lo > 0
    assert dice["sentence"].startswith(f"unet: loss = dice vs ce raises test mIoU, averaged over the other factors: "
                                       f"+0.040 [95% CI {lo:+.3f}, {hi:+.3f}]; n=5 seeds (p ")
    assert dice["sentence"].endswith(", α/4)")  # four main effects: each at α/4
    focal = _effect(effects, "loss = focal vs ce")
    assert focal["ci_low"] < 0 < focal["ci_high"] and focal["verdict"] == "inconclusive"
    assert focal["seeds_to_decide"] > 5 and f"about {int(focal['seeds_to_decide'])} seeds" in focal["sentence"]
    # sgd: mean over losses of (sgd − adamw) = (0.02 − 0.06) / 4 = −0.01, give or take the noise of each seed
    sgd = _effect(effects, "optimizer = sgd vs adamw")
    assert sgd["estimate"] == pytest.approx(-0.01) and sgd["ci_high"] < 0 and sgd["verdict"] == "hurts"
    assert "lowers test mIoU" in sgd["sentence"]
    inter = _effect(effects, "loss = dice vs ce × optimizer = sgd vs adamw")
    assert inter["kind"] == "interaction" and inter["estimate"] == pytest.approx(-0.02) and inter["ci_high"] < 0
    assert inter["verdict"] == "estimate only" and "described only (no verdict)" in inter["sentence"]
    # ce+dice adds nothing and the noise is small: its interval fits inside ±δ
    both = _effect(effects, "loss = ce+dice vs ce")
    assert both["verdict"] == "no effect larger than δ" and -0.01 < both["ci_low"] < 0 < both["ci_high"] < 0.01
    assert both["threshold_equiv"] == pytest.approx(0.05 / 4)
    assert both["p_equiv"] <= both["threshold_equiv"] < both["p_value"]
    # one family: the four main effects (three loss levels, one optimizer level), eight hypotheses
    assert set(effects.loc[effects["kind"] == "main", "family_size"]) == {4}
    assert set(effects["family"]) == {analysis.FAMILY["effect"]}


def test_a_null_factor_is_not_claimed_and_comparisons_use_the_reference_cell():
    # the losses shift each seed by ±0.01 in no consistent direction; the optimizer does nothing
    runs = _factor_runs(lambda s, loss, opt: 0.3 + NOISE[s] + 0.01 * ((s + len(loss)) % 3 - 1), noise=True)
    effects = analysis.factorial_effects(runs, metrics=("test_miou",))
    mains = effects[effects["kind"] == "main"].set_index("effect")
    assert not set(mains["verdict"]) & {"helps", "hurts"} and (mains["p_value"] > mains["threshold"]).all()
    assert mains["estimate"].abs().max() < 1e-9  # each level's shifts cancel over the seeds
    for level in ("dice", "focal", "ce+dice"):  # 3 seeds, intervals wider than ±δ: undecided
        assert mains.loc[f"loss = {level} vs ce", "verdict"] == "inconclusive"
    # the optimizer's effect is only the small noise: even 3 seeds fit it inside ±δ
    sgd = mains.loc["optimizer = sgd vs adamw"]
    assert sgd["verdict"] == "no effect larger than δ" and -0.01 < sgd["ci_low"] and sgd["ci_high"] < 0.01
    assert set(effects.loc[effects["kind"] == "interaction", "verdict"]) == {"estimate only"}
    comp = analysis.paired_comparisons(runs, metrics=("test_miou",))
    assert set(comp["baseline"]) == {"unet · loss=ce optimizer=adamw"} and len(comp) == 7
    assert "unet · loss=dice optimizer=sgd" in set(comp["cell"])


def test_one_seed_in_a_factor_design_says_not_enough_seeds():
    runs = _factor_runs(lambda s, loss, opt: 0.3 + 0.05 * (loss == "dice"), seeds=(0,))
    dice = _effect(analysis.factorial_effects(runs), "loss = dice vs ce")
    assert dice["estimate"] == pytest.approx(0.05) and dice["verdict"] == "not enough seeds"


def test_a_missing_level_cell_is_an_incomplete_design():
    runs = _factor_runs(lambda s, loss, opt: 0.3)
    runs = runs[~((runs["loss"] == "focal") & (runs["optimizer"] == "sgd"))]
    effects = analysis.factorial_effects(runs)
    assert effects["estimate"].isna().all() and "loss=focal optimizer=sgd" in effects["ci_method"].iloc[0]


def test_the_overview_gives_each_architectures_seeds_when_sequential_seeds_stopped_them_apart(tmp_path):
    """unet ran 5 seeds, baseline stopped at 3: the overview's seeds are 0-4, and it says per
    architecture how many each ran; with equal counts it says nothing more."""
    rows = [{"model": m, "seed": s, "status": "completed", "seconds": 1.0}
            for m, n in (("unet", 5), ("baseline", 3)) for s in range(n)]
    study = results.Study(name="s", folder=tmp_path, kind="grid", meta={}, table=pd.DataFrame(rows))
    ov = analysis.overview(study)
    assert ov["seeds"] == [0, 1, 2, 3, 4] and ov["seeds_per_model"] == {"baseline": 3, "unet": 5}
    even = results.Study(name="s", folder=tmp_path, kind="grid", meta={}, table=pd.DataFrame(rows[:5] + [
        {**r, "model": "baseline"} for r in rows[:5]]))
    assert analysis.overview(even)["seeds_per_model"] == {}
    from ablate.report.sections import per_model_seeds
    assert per_model_seeds(ov["seeds_per_model"]) == "; per architecture: baseline 3, unet 5"
