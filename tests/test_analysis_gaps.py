"""What the analysis must say instead of staying silent (issue 24): a completed run without a
test metric, one seed of a cell that did not learn, a fractional design without the reference
cell. Hand-built run tables whose answers are known in advance."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from ablate import analysis, design

TOGGLE_NAMES = ("scheduler", "augment", "weighted_loss")
NOISE = {0: 0.013, 1: -0.021, 2: 0.004, 3: 0.017, 4: -0.009}


def _row(seed: int, setting: dict, y: float, **extra) -> dict:
    toggles = {t: bool(setting.get(t, False)) for t in TOGGLE_NAMES}
    factors = {k: v for k, v in setting.items() if k not in TOGGLE_NAMES}
    return {"cell_id": f"unet-{seed}-{json.dumps(setting, sort_keys=True)}", "model": "unet", "model_args": "{}",
            "seed": seed, **toggles, "factors": json.dumps(factors), "status": "completed", "val_miou": y - 0.01,
            "test_miou": y, "val_pixel_acc": 0.9, "test_pixel_acc": 0.9, "seconds": 10.0,
            "images_per_second": 100.0, **extra}


def _toggle_runs(seeds=(0, 1, 2)) -> pd.DataFrame:
    """unet, scheduler × augment (full factorial) × seeds; augment adds 0.05 to test mIoU."""
    rows = [_row(s, {"scheduler": a, "augment": b}, 0.3 + NOISE[s] + 0.05 * b)
            for s, (a, b) in itertools.product(seeds, itertools.product((False, True), repeat=2))]
    return analysis.with_cells(pd.DataFrame(rows))


# --------------------------------------------------------------------------- a run without a test metric
def test_a_completed_run_without_a_test_metric_is_named_with_its_cell_seed_and_cost():
    runs = _toggle_runs()
    lost = (runs["cell"] == "unet · augment") & (runs["seed"] == 2)
    runs.loc[lost, "test_miou"] = np.nan
    # The symptom: one run costs every effect on test mIoU its seed, val keeps all three.
    effects = analysis.factorial_effects(runs)
    assert set(effects.loc[effects["metric"] == "test_miou", "n"]) == {2}
    assert set(effects.loc[effects["metric"] == "val_miou", "n"]) == {3}

    rows = analysis.incomplete_metrics(runs)
    assert rows[["arch", "metric", "cell", "seed", "key"]].to_dict("records") == [
        {"arch": "unet", "metric": "test_miou", "cell": "unet · augment", "seed": 2,
         "key": runs.loc[lost, "key"].iloc[0]}]
    assert rows["why"].iloc[0] == ("no test mIoU, which 11 of the 12 unet runs have: every unet effect on "
                                   "test mIoU leaves out seed 2")
    assert analysis.incomplete_metrics(_toggle_runs()).empty  # nothing missing, nothing said
    no_test = _toggle_runs().assign(test_miou=np.nan)  # a dataset without a test split: nothing is missing
    assert analysis.incomplete_metrics(no_test).empty
    # Adding one seed to every cell gives every effect three common seeds again.
    assert analysis.seeds_to_restore(runs, rows) == 4


def test_the_incomplete_runs_banner_names_each_run_and_the_command():
    runs = _toggle_runs()
    runs.loc[(runs["cell"] == "unet · augment") & (runs["seed"] == 2), "test_miou"] = np.nan
    runs.loc[(runs["cell"] == "unet · scheduler") & (runs["seed"] == 2), "test_miou"] = np.nan
    rows = analysis.incomplete_metrics(runs)
    repair = {"text": "`ablate grid --study-name s --seeds 4` adds 4 runs, about 1 min"}
    text = analysis.incomplete_metrics_note(rows, repair)
    assert text == ("2 completed runs have no value of a metric that the other runs of their architecture have, "
                    "so every effect on that metric leaves out their seed: unet · augment seed 2 (test mIoU), "
                    "unet · scheduler seed 2 (test mIoU). A finished run is not scored again; a seed more in every "
                    "cell gives the effects their n back: `ablate grid --study-name s --seeds 4` adds 4 runs, about 1 min.")
    assert analysis.incomplete_metrics_note(rows.iloc[:0], repair) is None


# --------------------------------------------------------------------------- one seed that did not learn
def test_one_seed_that_did_not_learn_flags_its_cell_and_takes_the_verdicts():
    runs = _toggle_runs(seeds=range(5))
    bar = {"pixel_acc": 0.66, "miou": 0.2}
    # seed 2 of the scheduler cell predicts the majority class everywhere; the cell's mean clears the bar
    runs.loc[(runs["cell"] == "unet · scheduler") & (runs["seed"] == 2), "val_pixel_acc"] = 0.66
    flagged = analysis.with_flags(runs, bar)
    assert not flagged["cell_did_not_learn"].any()  # the mean (0.9·4 + 0.66)/5 clears 0.66
    flags = analysis.cell_flags(flagged).set_index("cell")
    assert flags.loc["unet · scheduler", "flags"] == "1 of 5 seeds did not learn (seed 2)"
    assert flags.loc["unet · scheduler", "n_did_not_learn"] == 1
    assert flags.loc["unet · augment", "flags"] == ""
    effects = analysis.factorial_effects(flagged, metrics=("test_miou",))
    augment = effects[effects["effect"] == "augment"].iloc[0]
    assert augment["verdict"] == "did not learn"  # the scheduler cell enters every effect
    assert augment["unlearned"] == "unet · scheduler (seed 2)"
    comps = analysis.paired_comparisons(flagged, metrics=("test_miou",)).set_index("cell")
    assert comps.loc["unet · scheduler", "unlearned"] == "unet · scheduler (seed 2)"
    assert comps.loc["unet · augment", "unlearned"] == ""


# --------------------------------------------------------------------------- fractional without the reference cell
FIVE = {"scheduler": [False, True], "augment": [False, True], "weighted_loss": [False, True],
        "optimizer": ["adamw", "sgd"], "loss": ["ce", "focal"]}


def _fractional_runs(seeds=(0, 1, 2)) -> pd.DataFrame:
    """The 2^(5-1) design of FIVE (E = ABCD: its 16 cells leave out every-factor-at-the-first-level);
    augment adds 0.05."""
    d = design.fractional_factorial(list(FIVE))
    rows = []
    for seed, run in itertools.product(seeds, d.settings()):
        setting = {k: FIVE[k][int(on)] for k, on in run.items()}
        rows.append(_row(seed, setting, 0.3 + NOISE[seed] + 0.05 * setting["augment"],
                         design=json.dumps({"kind": "fractional", "levels": FIVE})))
    return analysis.with_cells(pd.DataFrame(rows))


def test_a_fractional_design_names_the_four_factor_aliases_of_its_main_effects():
    effects = analysis.factorial_effects(_fractional_runs(), metrics=("test_miou",)).set_index("effect")
    assert effects.loc["scheduler", "aliases"] == "augment×weighted_loss×optimizer×loss"
    assert effects.loc["loss = focal vs ce", "aliases"] == "scheduler×augment×weighted_loss×optimizer"
    assert effects.loc["augment", "estimate"] == pytest.approx(0.05)
    assert effects.loc["scheduler × augment", "aliases"] == "weighted_loss×optimizer×loss"  # as before


def test_a_fractional_design_without_the_reference_cell_says_why_there_are_no_comparisons():
    runs = _fractional_runs()
    assert analysis.paired_comparisons(runs).empty
    assert analysis.comparisons_note(runs) == (
        "No paired comparisons: this fractional design has no reference cell (every factor at its first level); "
        "the effects below are estimated from the design's contrasts.")
    assert analysis.comparisons_note(_toggle_runs()) is None  # a full design has its reference cell
