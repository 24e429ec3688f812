"""Sequential seeds (`ablate grid --seeds auto`): the plan, the group-sequential thresholds, the
stage logic on runs whose answers are known, and grids that add seeds only where an effect is
undecided, record each look once in the storage, and say so in `ablate status` and the report."""
from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from ablate import analysis, stats, store
from ablate import grid as grids
from ablate.seedplan import SeedPlan
from ablate.cli import main
from ablate.errors import AblateError
from ablate.grid import stages
from ablate.grid.study import parse_seeds
from conftest import storage_url
from faults.sitecustomize import _plant
from test_cli_grid import TINY, _env, _executions, _two_grids_at_once

NOISE_SD = 0.01


# --------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("value, seeds, plan", [
    ("auto", tuple(range(10)), (3, 10)), ("AUTO:4-12", tuple(range(12)), (4, 12)),
    ({"min": 3, "max": 5}, (0, 1, 2, 3, 4), (3, 5)), (3, (0, 1, 2), None), ("0,5,7", (0, 5, 7), None)])
def test_seeds_parse_to_fixed_seeds_or_a_sequential_plan(value, seeds, plan):
    got_seeds, got_plan = parse_seeds(value, "--seeds")
    assert got_seeds == seeds
    assert (None if got_plan is None else (got_plan.min, got_plan.max)) == plan


@pytest.mark.parametrize("value", ["auto:5-3", "auto:2-6", "auto:3", "automatic", {"min": 3, "most": 9}])
def test_a_bad_sequential_plan_is_one_line(value):
    with pytest.raises(AblateError, match=r"^--seeds: expected min >= 3|^--seeds: expected a count"):
        parse_seeds(value, "--seeds")


def test_looks_grow_by_half_up_to_the_maximum():
    assert SeedPlan(3, 10).schedule() == [3, 5, 8, 10]
    assert SeedPlan(3, 4).schedule() == [3, 4]
    assert SeedPlan(5, 5).schedule() == [5]


# --------------------------------------------------------------------------- thresholds
@pytest.mark.parametrize("sided", [1, 2])
def test_group_sequential_thresholds_spend_the_level_as_promised(sided):
    """An independent simulation (another generator) of null t-tests at looks 3, 5, 8, 10:
    the share rejected by each look is Pocock's spending of the level, and the thresholds are
    larger than a Bonferroni split of the same spending (they use the looks' correlation)."""
    looks, level = (3, 5, 8, 10), 0.05 / 3
    thresholds = stats.gs_boundaries(looks, 10, level, sided=sided)
    assert thresholds[0] == pytest.approx(stats.spent(0.3, alpha=level), rel=0.02)
    z = np.random.default_rng(7).standard_normal((100_000, 10))
    crossed = np.zeros(len(z), dtype=bool)
    from scipy import stats as sp

    for n, c in zip(looks, thresholds):
        t = z[:, :n].mean(1) / (z[:, :n].std(1, ddof=1) / np.sqrt(n))
        p = 2 * sp.t.sf(np.abs(t), n - 1) if sided == 2 else sp.t.sf(t, n - 1)
        crossed |= p <= c
        assert crossed.mean() == pytest.approx(stats.spent(n / 10, alpha=level), rel=0.12)
    spent = [stats.spent(n / 10, alpha=level) for n in (0, *looks)]
    bonferroni = np.diff(spent)  # each look at its own share: valid whatever the correlation, and stricter
    assert all(c > b for c, b in zip(thresholds[1:], bonferroni[1:]))


def test_a_stopped_architecture_keeps_every_seed_it_opened_when_a_cell_failed_for_good():
    """Stage 5 opened seeds 0-4; one cell failed for good, so the look counts 4 complete seeds
    and the architecture stops. Its opened seeds stay 0-4 (seed 4's runs ran and are reported),
    and the tables list every cell with a trial even without the record's `opened`."""
    from optuna.trial import create_trial

    from ablate import results
    from ablate.seedplan import open_seeds

    plan, seeds = SeedPlan(3, 10), list(range(10))
    record = {"looks": [{"n": 3}, {"n": 4}], "target": None, "opened": 5}
    assert open_seeds(seeds, record, plan) == [0, 1, 2, 3, 4]
    assert open_seeds(seeds, {**record, "opened": None}, plan) == [0, 1, 2, 3]  # a record from before `opened`
    cells = [{"cell_id": f"c{s}", "model": "unet", "seed": s} for s in seeds]
    attrs = {"cells": cells, "decisions": {"sequential": plan.to_dict()},
             "stages": {"unet": {**record, "opened": None}}}
    ran = [create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={"cell_id": "c4"})]
    assert [c["seed"] for c in results.study_cells(attrs, ran)] == [0, 1, 2, 3, 4]
    assert [c["seed"] for c in results.study_cells(attrs, [])] == [0, 1, 2, 3]


# --------------------------------------------------------------------------- stage logic
def _runs(effects: dict[str, float], n_seeds: int, noise: float = NOISE_SD, seed: int = 0) -> pd.DataFrame:
    """A 2^2 toggle grid of one architecture: test mIoU 0.5 + planted main effects + run noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, (w, a) in itertools.product(range(n_seeds), itertools.product((False, True), repeat=2)):
        y = 0.5 + effects.get("weighted_loss", 0) * w + effects.get("augment", 0) * a + rng.normal(0, noise)
        rows.append({"cell_id": f"{s}{w}{a}", "model": "unet", "model_args": "{}", "seed": s, "scheduler": False,
                     "augment": a, "weighted_loss": w, "status": "completed", "val_miou": y, "test_miou": y,
                     "val_pixel_acc": 0.99, "seconds": 1.0})
    return analysis.with_cells(pd.DataFrame(rows))


def _look_through(runs: pd.DataFrame, plan: SeedPlan, delta: float = 0.01) -> list:
    looks, target = [], plan.min
    while target is not None:
        looks.append(stages.take_look(runs[runs["seed"] < target], "test_miou", plan, looks, delta=delta))
        target = stages.next_target(looks, plan)
    return looks


def test_large_effects_are_decided_at_the_first_look_and_stop_the_architecture():
    looks = _look_through(_runs({"weighted_loss": 0.2, "augment": -0.15}, 10), SeedPlan(3, 10))
    assert [lk.n for lk in looks] == [3]
    assert looks[0].verdicts == {"weighted_loss": stats.HELPS, "augment": stats.HURTS}
    assert looks[0].level == pytest.approx(0.025)  # two main effects: α/2 each
    assert looks[0].threshold == pytest.approx(stats.gs_boundaries((3,), 10, 0.025)[0])


def test_an_undecided_effect_adds_seeds_until_the_maximum_and_a_decision_stands():
    looks = _look_through(_runs({"weighted_loss": 0.2, "augment": 0.0}, 10, noise=0.02), SeedPlan(3, 10))
    assert [lk.n for lk in looks] == [3, 5, 8, 10]
    decisions = analysis.first_decisions(looks)
    assert decisions["weighted_loss"][0] == stats.HELPS and decisions["weighted_loss"][1].n == 3
    assert decisions["augment"][0] == stats.INCONCLUSIVE  # per-seed SD 0.02 vs δ 0.01: no equivalence at 10 seeds
    status = analysis.sequential.status({"looks": [lk.to_dict() for lk in looks], "target": None}, SeedPlan(3, 10))
    assert status == "undecided at the maximum (10 seeds)"


def test_a_null_effect_within_a_wide_delta_is_decided_equivalent():
    looks = _look_through(_runs({"weighted_loss": 0.2}, 10, noise=0.002), SeedPlan(3, 10), delta=0.05)
    decisions = analysis.first_decisions(looks)
    assert decisions["augment"][0] == stats.EQUIVALENT
    assert decisions["augment"][1].p_equiv["augment"] <= decisions["augment"][1].threshold_equiv
    assert looks[-1].n < 10  # every effect decided before the maximum: no more seeds


def test_the_report_takes_verdicts_from_the_recorded_looks_not_from_the_final_data():
    """A verdict given at 3 seeds stands, with the p of that look, while its interval is over every seed."""
    runs = _runs({"weighted_loss": 0.2, "augment": 0.0}, 10, noise=0.02)
    looks = _look_through(runs, SeedPlan(3, 10))
    effects = analysis.factorial_effects(runs, metrics=("test_miou",), looks={"unet": looks},
                                         decision_metric="test_miou")
    w = effects[effects["effect"] == "weighted_loss"].iloc[0]
    assert w["verdict"] == stats.HELPS and w["decided_at"] == 3 and w["n"] == 10
    assert w["p_value"] == pytest.approx(looks[0].p_diff["weighted_loss"])
    assert "decided at n=3 seeds (now n=10)" in w["sentence"] and "this look's threshold" in w["sentence"]
    inter = effects[effects["kind"] == "interaction"].iloc[0]
    assert inter["verdict"] == "estimate only"


# --------------------------------------------------------------------------- grids
@pytest.fixture
def planted(monkeypatch):
    """Cells train for real (tiny), then their mIoU is replaced by planted effects + noise."""
    import ablate.engine

    real = ablate.engine.fit_safely

    def plant(spec):
        def fit(config, *args, **kwargs):
            record = real(config, *args, **kwargs)
            if record.get("status") == "completed":
                _plant(record, config, spec)
            return record

        monkeypatch.setattr(ablate.engine, "fit_safely", fit)

    return plant


def _stages(url: str, name: str) -> dict:
    gs = grids.GridStorage(url, name)
    return gs.study_attrs()["stages"]


def test_a_grid_with_every_effect_decided_at_three_seeds_runs_three(tmp_path, cache_dir, planted):
    planted("weighted_loss:0.2,augment:0.3")
    results = tmp_path / "results"
    args = [*TINY, "--toggles", "weighted_loss,augment", "--seeds", "auto:3-4", "--study-name", "seq",
            "--results-dir", str(results), "--cache-dir", str(cache_dir)]
    result = CliRunner().invoke(main, ["grid", *args])
    assert result.exit_code == 0, result.output
    url = store.default_storage(results, "seq")
    trials = grids.GridStorage(url, "seq").trials()
    assert sorted(Counter(t.user_attrs["seed"] for t in trials).items()) == [(0, 4), (1, 4), (2, 4)]
    record = _stages(url, "seq")["unet"]
    assert [lk["n"] for lk in record["looks"]] == [3] and record["target"] is None
    assert record["looks"][0]["verdicts"] == {"weighted_loss": "helps", "augment": "helps"}
    assert "stage: unet: decided at 3 seeds; 12 runs (a fixed design at 4 seeds: 16)" in result.output
    status = CliRunner().invoke(main, ["status", "--study-name", "seq", "--results-dir", str(results)])
    assert "unet: decided at 3 seeds; 12 runs (a fixed design at 4 seeds: 16)" in status.output
    # the 4th seed's cells were never needed: runs.csv does not list them as pending
    runs = pd.read_csv(results / "seq" / "runs.csv")
    assert len(runs) == 12 and set(runs["status"]) == {"completed"} and set(runs["seed"]) == {0, 1, 2}
    # a rerun agrees: no new look, no new cell
    again = CliRunner().invoke(main, ["grid", *args])
    assert again.exit_code == 0 and len(grids.GridStorage(url, "seq").trials()) == 12
    # the study cannot change its plan or turn into fixed seeds once it has looked
    other = CliRunner().invoke(main, ["grid", *[a if a != "auto:3-4" else "auto:3-6" for a in args]])
    assert other.exit_code == 2 and "was run with --seeds auto:3-4 --min-effect 0.01" in other.output


def test_an_undecided_effect_gets_more_seeds_and_the_report_says_where_it_stands(tmp_path, cache_dir, planted):
    planted("weighted_loss:0.2")
    results = tmp_path / "results"
    args = [*TINY[:-3], "--toggles", "weighted_loss,augment", "--seeds", "auto:3-4", "--study-name", "seq",
            "--results-dir", str(results), "--cache-dir", str(cache_dir), "--workers", "1"]
    result = CliRunner().invoke(main, ["grid", *args])
    assert result.exit_code == 0, result.output
    url = store.default_storage(results, "seq")
    record = _stages(url, "seq")["unet"]
    assert [lk["n"] for lk in record["looks"]] == [3, 4] and record["target"] is None
    assert record["looks"][0]["verdicts"]["weighted_loss"] == "helps"
    trials = grids.GridStorage(url, "seq").trials()
    assert len(trials) == 16 and all(t.state == TrialState.COMPLETE for t in trials)
    html = (results / "seq" / "report.html").read_text()
    assert ("<h4>unet <span class='stage'>— undecided at the maximum (4 seeds); 16 runs (a fixed design at 4 seeds: "
            "16)</span>") in html
    effects = pd.read_csv(results / "seq" / "effects.csv")
    w = effects[(effects["effect"] == "weighted_loss") & (effects["metric"] == "test_miou")].iloc[0]
    assert w["verdict"] == "helps" and w["decided_at"] == 3 and w["n"] == 4
    aug = effects[(effects["effect"] == "augment") & (effects["metric"] == "test_miou")].iloc[0]
    assert aug["verdict"] == "inconclusive" and aug["seeds_to_decide"] > 4
    val = effects[(effects["metric"] == "val_miou") & (effects["kind"] == "main")]
    assert set(val["verdict"]) == {"estimate only"}  # only the decision metric's looks were taken


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_grids_of_two_workers_take_each_look_once_and_run_each_cell_once(kind, tmp_path, cache_dir, request):
    """Two `ablate grid --seeds auto:3-4 --workers 2` on one fresh storage: every cell of both
    stages runs once, each look is recorded once, both commands exit 0."""
    results, log = tmp_path / "results", tmp_path / "executions.log"
    url = storage_url(kind, tmp_path, request)
    args = [*TINY[:-2], "--toggles", "weighted_loss,augment", "--seeds", "auto:3-4", "--study-name", "seq2",
            "--results-dir", str(results), "--cache-dir", str(cache_dir), "--storage", url, "--workers", "2"]
    env = _env(FAULT_LOG=str(log), FAULT_MIOU="weighted_loss:0.2")
    _two_grids_at_once(args, env, timeout=600)
    executions = _executions(log)
    assert len(executions) == 16 and len({cell for cell, _ in executions}) == 16, executions
    record = _stages(url, "seq2")["unet"]
    assert [lk["n"] for lk in record["looks"]] == [3, 4]
    assert json.dumps(record["looks"][0]["verdicts"], sort_keys=True) == '{"augment": "inconclusive", "weighted_loss": "helps"}'
