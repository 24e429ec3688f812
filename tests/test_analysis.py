"""Analysis on hand-built run tables whose answers are known in advance."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from ablate import analysis, results, stats
from ablate.errors import AblateError


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
    assert aug["excludes_zero"] and aug["n_seeds"] == aug["n"] == 3
    assert aug["verdict"] == "helps" and aug["p_holm"] == 0.0 and aug["p_improve"] == 1.0
    assert aug["sentence"] == ("unet: augmentation raises test mIoU: +0.100 [+0.100, +0.100]; n=3, Holm p < 0.001, "
                               "P(improve) = 1.00")


def test_no_effect_toggle_interval_contains_zero():
    # scheduler's effect is pure per-seed noise with mean ~0.
    flip = {0: 0.02, 1: -0.03, 2: 0.01, 3: -0.015, 4: 0.01}
    effects = analysis.factorial_effects(
        _runs(lambda m, s, scheduler, augment: 0.3 + 0.1 * augment + flip[s] * scheduler, seeds=range(5)))
    sched = _effect(effects, "scheduler")
    assert sched["ci_low"] < 0 < sched["ci_high"]
    assert not sched["excludes_zero"]
    assert sched["verdict"] == "no clear effect" and "no clear effect" in sched["sentence"]
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
    runs = _runs(lambda m, s, scheduler, augment: 0.3 + NOISE[s] + 0.05 * augment, seeds=(0, 1, 2, 3))
    # seed 3 is missing from the baseline cell: it must not be used in any pair.
    runs = runs[~((runs["seed"] == 3) & ~runs["scheduler"] & ~runs["augment"])]
    comp = analysis.paired_comparisons(runs, metrics=("test_miou",))
    assert set(comp["baseline"]) == {"unet · no toggles"}
    row = comp[comp["cell"] == "unet · augment"].iloc[0]
    assert row["n_pairs"] == 3 and row["seeds"] == "0 1 2"
    assert row["mean_diff"] == pytest.approx(0.05)
    assert row["p_value"] == 0.0 and row["excludes_zero"]  # a constant nonzero difference
    assert row["p_method"] == "paired t-test, two-sided" and row["p_improve"] == 1.0


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
    assert weighted["ci_low"] > 0 and weighted["p_holm"] < 0.05
    assert sched["verdict"] == "no clear effect" and sched["ci_low"] < 0 < sched["ci_high"]
    # Holm over the family {scheduler, weighted_loss, scheduler × weighted_loss}: the smallest
    # p is multiplied by 3.
    assert weighted["p_holm"] == pytest.approx(min(1.0, 3 * weighted["p_value"]))
    assert set(effects["family"]) == {analysis.FAMILY["effect"]}
    comps = analysis.paired_comparisons(runs, metrics=("test_miou",)).set_index("cell")
    assert comps.loc["unet · weighted_loss", "verdict"] == "helps"
    assert comps.loc["unet · scheduler", "verdict"] == "no clear effect"
    assert comps.loc["unet · weighted_loss", "p_improve"] == 1.0


def test_two_seeds_say_not_enough_seeds():
    effects = analysis.factorial_effects(_planted((0, 1)), metrics=("test_miou",))
    weighted = _effect(effects, "weighted_loss")
    assert weighted["n"] == 2 and weighted["estimate"] == pytest.approx(0.047)
    assert weighted["verdict"] == "not enough seeds"
    assert "not enough seeds (n=2, 3 needed)" in weighted["sentence"]


def test_interval_excluding_zero_is_not_enough_after_holm():
    # Three effects with p = 0.01, 0.02, 0.04: Holm gives 0.03, 0.04, 0.04 — and with p 0.04
    # on the two others, none of the 0.02 / 0.04 pair survives when the first is 0.03.
    assert stats.holm([0.01, 0.04, 0.02]).tolist() == pytest.approx([0.03, 0.04, 0.04])
    assert stats.holm([0.04, 0.03, np.nan]).tolist()[:2] == pytest.approx([0.06, 0.06])
    row = {"n": 5, "estimate": 0.02, "excludes_zero": True, "p_holm": 0.06, "kind": "main", "unlearned": ""}
    assert analysis.verdict_word(row) == "no clear effect"
    assert analysis.verdict_word({**row, "p_holm": 0.049}) == "helps"
    assert analysis.verdict_word({**row, "p_holm": 0.049, "unlearned": "unet · no toggles"}) == "did not learn"
    assert analysis.verdict_word({**row, "p_holm": 0.049, "estimate": -0.02, "kind": "interaction"}) == "negative interaction"


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
    assert set(effects["verdict"]) == {"did not learn"}  # every cell enters every factorial effect
    comps = analysis.paired_comparisons(flagged, metrics=("test_miou",)).set_index("cell")
    assert comps.loc["unet · weighted_loss", "verdict"] == "helps"  # neither of its two cells is flagged
    assert comps.loc["unet · scheduler", "verdict"] == "did not learn"
    # Unknown bar: nothing is flagged, and nothing is claimed about it.
    assert analysis.with_flags(runs, None)["did_not_learn"].isna().all()


# --------------------------------------------------------------------------- the seeds advice
def test_more_seeds_command_and_estimate(tmp_path):
    runs = _planted((0, 1))  # 4 cells × 2 seeds, 10 s or so per run
    study = results.Study(name="s", folder=tmp_path, kind="grid", table=runs, meta={
        "seeds": [0, 1], "cells": 8, "workers": 2,
        "command": ["grid", "--study", "studies/x y.toml", "--seeds", "2", "--epochs", "4"]})
    advice = analysis.more_seeds(study, runs)
    assert advice["command"] == "ablate grid --study 'studies/x y.toml' --epochs 4 --seeds 3"
    assert advice["new_runs"] == 4
    assert advice["minutes"] == pytest.approx(4 * runs["seconds"].mean() / 2 / 60)
    assert advice["text"].endswith("adds 4 runs, about 1 min")
    # seeds 4 and 7: `--seeds 3` would give 0, 1, 2; the seeds to ask for are listed instead.
    odd = runs.assign(seed=runs["seed"].map({0: 4, 1: 7}))
    study.meta.update(seeds=[4, 7], command=["grid", "--study-name", "s"])
    assert analysis.more_seeds(study, odd)["command"] == "ablate grid --study-name s --seeds 4,7,0"
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


def _factor_runs(value, *, seeds=(0, 1, 2), design="full") -> pd.DataFrame:
    """A full factorial of loss (4 levels) × optimizer (2) × seeds, as the grid's runs.csv holds
    it (factor levels and the design as JSON); value(seed, loss, optimizer) gives test mIoU."""
    levels = {"loss": LOSS_LEVELS, "optimizer": ["adamw", "sgd"]}
    rows = []
    for seed, loss, opt in itertools.product(seeds, LOSS_LEVELS, levels["optimizer"]):
        y = value(seed, loss, opt)
        rows.append({"cell_id": f"{seed}-{loss}-{opt}", "model": "unet", "model_args": "{}", "seed": seed,
                     "scheduler": False, "augment": False, "weighted_loss": False,
                     "factors": json.dumps({"loss": loss, "optimizer": opt}),
                     "design": json.dumps({"kind": design, "levels": levels}), "status": "completed",
                     "val_miou": y - 0.01, "test_miou": y, "val_pixel_acc": 0.9, "test_pixel_acc": 0.9,
                     "seconds": 10.0, "images_per_second": 100.0})
    return analysis.with_cells(pd.DataFrame(rows))


def test_each_level_is_compared_with_the_reference_averaged_over_the_other_factor():
    # dice adds 0.06 with adamw and 0.02 with sgd: main effect 0.04, interaction (0.02 − 0.06)/2 = −0.02.
    # focal's effect is per-seed noise around 0; ce+dice adds nothing at all.
    flip = {0: 0.02, 1: -0.03, 2: 0.01, 3: -0.015, 4: 0.01}
    runs = _factor_runs(lambda s, loss, opt: 0.3 + NOISE[s] + (loss == "dice") * (0.06 if opt == "adamw" else 0.02)
                        + (loss == "focal") * flip[s], seeds=range(5))
    effects = analysis.factorial_effects(runs, metrics=("test_miou",))
    assert list(effects["effect"]) == [
        "loss = dice vs ce", "loss = focal vs ce", "loss = ce+dice vs ce", "optimizer = sgd vs adamw",
        "loss = dice vs ce × optimizer = sgd vs adamw", "loss = focal vs ce × optimizer = sgd vs adamw",
        "loss = ce+dice vs ce × optimizer = sgd vs adamw"]
    dice = _effect(effects, "loss = dice vs ce")
    assert dice["estimate"] == pytest.approx(0.04) and dice["verdict"] == "helps" and dice["kind"] == "main"
    assert dice["sentence"].startswith("unet: loss = dice vs ce raises test mIoU: +0.040")
    focal = _effect(effects, "loss = focal vs ce")
    assert focal["ci_low"] < 0 < focal["ci_high"] and focal["verdict"] == "no clear effect"
    # sgd: mean over losses of (sgd − adamw) = (0.02 − 0.06) / 4 = −0.01 exactly, on every seed
    assert _effect(effects, "optimizer = sgd vs adamw")["estimate"] == pytest.approx(-0.01)
    inter = _effect(effects, "loss = dice vs ce × optimizer = sgd vs adamw")
    assert inter["kind"] == "interaction" and inter["estimate"] == pytest.approx(-0.02)
    assert inter["verdict"] == "negative interaction"
    assert _effect(effects, "loss = ce+dice vs ce")["verdict"] == "no clear effect"
    assert set(effects["family"]) == {analysis.FAMILY["effect"]}


def test_a_null_factor_gets_no_clear_effect_and_comparisons_use_the_reference_cell():
    runs = _factor_runs(lambda s, loss, opt: 0.3 + NOISE[s] + 0.01 * ((s + len(loss)) % 3 - 1))
    effects = analysis.factorial_effects(runs, metrics=("test_miou",))
    assert set(effects["verdict"]) == {"no clear effect"}
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
