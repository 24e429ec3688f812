"""Analysis on hand-built run tables whose answers are known in advance."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from ablate import analysis


def _runs(value, *, models=("unet",), toggles=("scheduler", "augment"), seeds=(0, 1, 2)) -> pd.DataFrame:
    """A full factorial of `toggles` × seeds; value(model, seed, **toggles) gives test mIoU
    (val mIoU is the same minus 0.01)."""
    rows = []
    for model, seed, levels in itertools.product(models, seeds, itertools.product((False, True), repeat=len(toggles))):
        on = dict(zip(toggles, levels))
        y = value(model, seed, **on)
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


def test_constant_main_effect_has_tight_interval():
    # augment adds exactly +0.1 to every seed; seeds differ by an offset shared by all cells.
    effects = analysis.factorial_effects(_runs(lambda m, s, scheduler, augment: 0.3 + NOISE[s] + 0.1 * augment))
    aug = _effect(effects, "augment")
    assert aug["estimate"] == pytest.approx(0.1)
    assert aug["ci_low"] == pytest.approx(0.1) and aug["ci_high"] == pytest.approx(0.1)
    assert aug["excludes_zero"] and aug["n_seeds"] == 3
    assert aug["verdict"] == "augmentation raises test mIoU on unet by 0.100 [+0.100, +0.100], 3 seeds"


def test_no_effect_toggle_interval_contains_zero():
    # scheduler's effect is pure per-seed noise with mean ~0.
    flip = {0: 0.02, 1: -0.03, 2: 0.01, 3: -0.015, 4: 0.01}
    effects = analysis.factorial_effects(
        _runs(lambda m, s, scheduler, augment: 0.3 + 0.1 * augment + flip[s] * scheduler, seeds=range(5)))
    sched = _effect(effects, "scheduler")
    assert sched["ci_low"] < 0 < sched["ci_high"]
    assert not sched["excludes_zero"]
    assert "no clear effect" in sched["verdict"]
    assert _effect(effects, "augment")["excludes_zero"]


def test_interaction_is_recovered():
    # y = 0.1·A + 0.05·B + 0.2·A·B (0/1 coding): A's effect is 0.1 with B off and 0.3 with B
    # on, so main A = 0.2, main B = 0.05 + 0.1 = 0.15, interaction = (0.3 − 0.1)/2 = 0.1.
    effects = analysis.factorial_effects(
        _runs(lambda m, s, scheduler, augment: 0.2 + NOISE[s] + 0.1 * scheduler + 0.05 * augment
              + 0.2 * scheduler * augment))
    assert _effect(effects, "scheduler")["estimate"] == pytest.approx(0.2)
    assert _effect(effects, "augment")["estimate"] == pytest.approx(0.15)
    inter = _effect(effects, "scheduler × augment")
    assert inter["kind"] == "interaction"
    assert inter["estimate"] == pytest.approx(0.1)
    assert inter["excludes_zero"]


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
    assert aug["interval"] == analysis.NO_INTERVAL and not aug["excludes_zero"]
    assert "no verdict" in aug["verdict"]
    stats = analysis.cell_stats(runs)
    assert (stats["interval"] == analysis.NO_INTERVAL).all() and stats["ci_low"].isna().all()


def test_cell_stats_mean_std_and_ci():
    runs = _runs(lambda m, s, scheduler, augment: [0.2, 0.4, 0.6][s])
    row = analysis.cell_stats(runs).query("metric == 'test_miou'").iloc[0]
    assert (row["n"], row["mean"], row["std"]) == (3, pytest.approx(0.4), pytest.approx(0.2))
    # Bootstrap means of three values lie in [0.2, 0.6]; the 95% interval is strictly inside.
    assert 0.2 <= row["ci_low"] < 0.4 < row["ci_high"] <= 0.6
    again = analysis.cell_stats(runs).query("metric == 'test_miou'").iloc[0]
    assert (again["ci_low"], again["ci_high"]) == (row["ci_low"], row["ci_high"])  # seeded


def test_incomplete_design_is_reported_not_guessed():
    runs = _runs(lambda m, s, scheduler, augment: 0.3)
    runs = runs[~(runs["scheduler"] & runs["augment"])]
    effects = analysis.factorial_effects(runs)
    assert effects["estimate"].isna().all()
    assert "incomplete design" in effects["interval"].iloc[0]


def test_sign_flip_p_exact():
    # diffs +1, +2, +3: |mean| is 2; patterns reaching it are (+,+,+) and (−,−,−): p = 2/8.
    p, method = analysis.sign_flip_p([1.0, 2.0, 3.0])
    assert p == pytest.approx(0.25) and "8 patterns" in method
    # +1, −1, +3 (observed sum 3): the eight signed sums are ±3, ±5, ±3, ±1; six reach |3|.
    assert analysis.sign_flip_p([1.0, -1.0, 3.0])[0] == pytest.approx(6 / 8)
    assert analysis.sign_flip_p([0.0, 0.0])[0] == 1.0


def test_paired_comparisons_pair_by_common_seeds():
    runs = _runs(lambda m, s, scheduler, augment: 0.3 + NOISE[s] + 0.05 * augment, seeds=(0, 1, 2, 3))
    # seed 3 is missing from the baseline cell: it must not be used in any pair.
    runs = runs[~((runs["seed"] == 3) & ~runs["scheduler"] & ~runs["augment"])]
    comp = analysis.paired_comparisons(runs, metrics=("test_miou",))
    assert set(comp["baseline"]) == {"unet · no toggles"}
    row = comp[comp["cell"] == "unet · augment"].iloc[0]
    assert row["n_pairs"] == 3 and row["seeds"] == "0 1 2"
    assert row["mean_diff"] == pytest.approx(0.05)
    assert row["p_value"] == pytest.approx(0.25) and row["excludes_zero"]


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
