"""The grid page says each thing once and in words that cannot be misread (issue 24): the
seed count beside the seed ids, one banner for runs without a test metric, why a fractional
design has no paired comparisons, and the cells that did not learn once above the effects.
A hand-built 2^(5-1) study analysed and drawn by the real code."""
from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pandas as pd

from ablate import analysis, design, results
from ablate.report.grid_page import grid_study
from ablate.report.html import Page

FIVE = {"scheduler": [False, True], "augment": [False, True], "weighted_loss": [False, True],
        "optimizer": ["adamw", "sgd"], "loss": ["ce", "focal"]}
TOGGLE_NAMES = ("scheduler", "augment", "weighted_loss")
BAR_60 = {"split_class_frequency": {"val": [0.6, 0.3, 0.1]}}  # did not learn: val pixel acc <= 0.6 or mIoU <= 0.2


def _table(seeds) -> pd.DataFrame:
    """The 2^(5-1) design of FIVE (no reference cell) × seeds, as the grid's runs.csv holds it."""
    rows = []
    for seed, run in itertools.product(seeds, design.fractional_factorial(list(FIVE)).settings()):
        st = {k: FIVE[k][int(on)] for k, on in run.items()}
        y = 0.3 + 0.01 * seed + 0.05 * st["augment"]
        rows.append({"cell_id": f"c{seed}-{''.join(str(int(on)) for on in run.values())}", "model": "unet",
                     "model_args": "{}", "seed": seed, **{t: st[t] for t in TOGGLE_NAMES},
                     "factors": json.dumps({"optimizer": st["optimizer"], "loss": st["loss"]}),
                     "design": json.dumps({"kind": "fractional", "levels": FIVE}), "status": "completed",
                     "val_miou": y - 0.01, "test_miou": y, "val_pixel_acc": 0.9, "test_pixel_acc": 0.9,
                     "seconds": 6.0, "images_per_second": 100.0})
    return pd.DataFrame(rows)


def _page(tmp_path, table: pd.DataFrame, dataset: dict | None = None) -> tuple[analysis.GridAnalysis, str]:
    seeds = sorted(table["seed"].unique().tolist())
    study = results.Study(name="s", folder=tmp_path, kind="grid", table=table, meta={
        "seeds": seeds, "cells": len(table), "workers": 1, "command": ["grid", "--study-name", "s"],
        "dataset": dataset or {}})
    a = analysis.analyse_grid(study, analysis.finished_runs(study))
    return a, grid_study(Page(), study, a, analysis.Gallery(class_names=[]))


def _section(html: str, suffix: str) -> str:
    return re.search(rf'<section id="s-s-{suffix}">(.*?)</section>', html, re.S).group(1)


def test_the_grid_table_counts_the_seeds_and_names_them_apart(tmp_path):
    _, html = _page(tmp_path, _table(seeds=(0,)))
    table = _section(html, "table")
    headers = re.findall(r"<th>(.*?)</th>", table)
    assert headers[:3] == ["cell", "n", "seed ids"]
    first = re.search(r"<tbody><tr>(.*?)</tr>", table).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", first)[1:3] == ["1", "0"]  # one seed, whose id is 0


def test_runs_without_a_test_metric_get_one_banner_with_the_command(tmp_path):
    table = _table(seeds=(0, 1, 2))
    table.loc[(table["seed"] == 2) & (table["cell_id"] == "c2-11001"), "test_miou"] = np.nan
    a, html = _page(tmp_path, table)
    assert a.incomplete[["cell", "seed", "metric"]].to_dict("records") == [
        {"cell": "unet · scheduler+augment optimizer=adamw loss=focal", "seed": 2, "metric": "test_miou"}]
    banners = re.findall(r'<p class="banner">([^<]*completed run[^<]*(?:<code>.*?</code>[^<]*)?)</p>', html)
    assert len(banners) == 1  # said once on the page (the Findings panel may repeat it in its own words)
    assert banners[0].startswith(
        "1 completed run has no value of a metric that the other runs of its architecture have, so every effect on "
        "that metric leaves out its seed: unet · scheduler+augment optimizer=adamw loss=focal seed 2 (test mIoU). A "
        "finished run is not scored again; a seed more in every cell gives the effects their n back: "
        "<code>ablate grid --study-name s --seeds ")
    assert "</code> adds 16 runs" in banners[0]  # one seed more in each of the 16 cells


def test_a_fractional_design_says_where_the_comparisons_would_be_why_there_are_none(tmp_path):
    _, html = _page(tmp_path, _table(seeds=(0, 1, 2)))
    assert ("No paired comparisons: this fractional design has no reference cell (every factor at its first "
            "level); the effects below are estimated from the design&#x27;s contrasts.") in _section(html, "table")


def test_every_effect_names_the_cells_that_did_not_learn_once(tmp_path):
    table = _table(seeds=(0, 1, 2)).assign(val_pixel_acc=0.5)  # every cell predicts the majority class
    a, html = _page(tmp_path, table, dataset=BAR_60)
    cells = a.effects["unlearned"].iloc[0].split(", ")
    assert len(cells) == 16  # every cell of the design enters every effect
    effects = _section(html, "effects")
    listed = effects[effects.index("<h4>Every effect</h4>"):]
    once = re.findall(r'<p class="note">Cells of unet that did not learn, so none of its effects gets a verdict: '
                      r'([^<]*)\.</p>', listed)
    assert len(once) == 1 and once[0].split(", ") == [c.removeprefix("unet · ") for c in cells]
    sentences = re.findall(r"<li[^>]*>(.*?)</li>", listed)
    assert len(sentences) == len(a.effects[a.effects["metric"] == a.metric])  # no effect left out
    assert not any("unet · " in s for s in sentences)  # no sentence repeats a cell name


def test_one_seed_that_did_not_learn_is_flagged_in_the_findings_and_the_grid_table(tmp_path):
    table = _table(seeds=(0, 1, 2))
    table.loc[table["cell_id"] == "c2-11001", "val_pixel_acc"] = 0.5  # seed 2 of one cell; its mean clears 0.6
    a, html = _page(tmp_path, table, dataset=BAR_60)
    cell = "scheduler+augment optimizer=adamw loss=focal"
    assert f"<li class='flag'>Some seeds did not learn: {cell} (1/3)</li>" in _section(html, "findings")
    assert f"<td data-v=\"1 of 3 seeds did not learn (seed 2)\">1 of 3 seeds did not learn (seed 2)</td>" in \
        _section(html, "table")
    assert a.effects.loc[a.effects["kind"] == "main", "verdict"].eq("did not learn").all()


def test_the_test_column_names_one_threshold_or_both():
    """At a look of sequential seeds, a decided effect cites its one threshold; an inconclusive
    one cites both (difference and equivalence), so says 'thresholds'."""
    from ablate.analysis.verdicts import test_text

    row = {"threshold": 0.0041, "threshold_equiv": 0.0046, "level": 0.05 / 3, "p_value": 0.09, "p_equiv": 0.9,
           "verdict": "inconclusive"}
    assert test_text(row) == "p = 0.09 > 0.0041 and equivalence p = 0.9 > 0.0046, this look's thresholds, level α/3"
    assert test_text({**row, "verdict": "hurts", "p_value": 0.003}) == "p = 0.003 ≤ 0.0041, this look's threshold, level α/3"
