"""Analysis stage, one study computed once: every table and figure's data the report draws
(`GridAnalysis`, `TuneAnalysis`) and the tables the study exports as CSV (`export_tables`)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ablate import stats
from ablate.analysis.cells import cell_flags, cell_stats, compare_architectures, cost_table, summary_table
from ablate.analysis.effects import (COMPARISON_COLUMNS, EFFECT_COLUMNS, comparisons_note, factorial_effects,
                                     paired_comparisons)
from ablate.analysis.findings import Findings, decision_inputs, findings, more_seeds
from ablate.analysis.records import class_iou_table, failures, learning_curves, overview, training_setup
from ablate.analysis.runs import (incomplete_metrics, incomplete_metrics_note, primary_metric, seeds_to_restore,
                                  trial_states)
from ablate.analysis.tuning import best_so_far, expected_max, param_importances
from ablate.results import Study

TOP_TRIALS = 15  # rows of the tune's best-trials table


@dataclass
class GridAnalysis:
    """What the report shows of a grid study (its gallery reads files: `report.gallery_for`)."""
    runs: pd.DataFrame  # `finished_runs`
    metric: str  # the primary metric: test mIoU where there is a test split, else val mIoU
    overview: dict
    setup: pd.DataFrame  # `training_setup`
    findings: Findings
    stats: pd.DataFrame  # `cell_stats`
    comparisons: pd.DataFrame
    effects: pd.DataFrame
    flags: pd.DataFrame  # `cell_flags`
    ranking: pd.DataFrame  # `compare_architectures`
    curves: pd.DataFrame  # `learning_curves`
    class_iou: pd.DataFrame
    cost: pd.DataFrame  # `cost_table`
    failures: pd.DataFrame
    incomplete: pd.DataFrame  # `incomplete_metrics`: completed runs without a metric the others have
    incomplete_note: str | None  # the banner for them, with the command that adds a seed (None: none)
    comparisons_note: str | None  # why there are no paired comparisons (no reference cell); None: there are


def analyse_grid(study: Study, runs: pd.DataFrame) -> GridAnalysis:
    """Every number the report shows of a grid study, from its completed `runs`
    (`finished_runs`); effects and comparisons are computed once and shared by the tables,
    the Findings panel and the figures."""
    effects, comparisons = study_effects(study, runs), paired_comparisons(runs)
    return GridAnalysis(
        runs=runs, metric=primary_metric(runs), overview=overview(study), setup=training_setup(study),
        findings=findings(study, runs, effects=effects, comparisons=comparisons), stats=cell_stats(runs),
        comparisons=comparisons, effects=effects, flags=cell_flags(runs), ranking=compare_architectures(runs),
        curves=learning_curves(study, runs), class_iou=class_iou_table(study, runs), cost=cost_table(runs),
        failures=failures(study), comparisons_note=comparisons_note(runs), **_incomplete(study, runs))


def _incomplete(study: Study, runs: pd.DataFrame) -> dict:
    """The runs without a metric the others have, and their banner with the command that adds
    the seeds they cost every effect (`more_seeds`)."""
    rows = incomplete_metrics(runs)
    repair = more_seeds(study, runs, target=seeds_to_restore(runs, rows)) if not rows.empty else None
    return {"incomplete": rows, "incomplete_note": incomplete_metrics_note(rows, repair)}


def study_effects(study: Study, runs: pd.DataFrame) -> pd.DataFrame:
    """The study's effects judged by its own decisions: its δ, and a sequential study's
    recorded looks (`decision_inputs`)."""
    delta, looks, metric = decision_inputs(study.meta)
    return factorial_effects(runs, min_effect=delta, looks=looks, decision_metric=metric)


@dataclass
class TuneAnalysis:
    """What the report shows of a tune study (the Optuna plots draw the study itself; the gallery
    reads files: `report.gallery_for`)."""
    runs: pd.DataFrame  # the COMPLETE trials (`finished_runs`)
    overview: dict
    setup: pd.DataFrame
    top: pd.DataFrame  # the best complete trials, best first
    params: list[str]  # the trials table's params_<name> columns
    history: pd.DataFrame  # `best_so_far`
    pruned: pd.DataFrame  # the PRUNED trials' rows
    expected: pd.DataFrame  # `expected_max` of the complete trials' values
    importances: pd.DataFrame | None  # None: the Optuna study is not reachable
    failures: pd.DataFrame


def analyse_tune(study: Study, runs: pd.DataFrame, optuna_study=None) -> TuneAnalysis:
    """Every number the report shows of a tune study; the importances need the Optuna study."""
    trials = study.table
    history = best_so_far(trials)
    top = (runs.assign(_v=pd.to_numeric(runs["val_miou"], errors="coerce")).sort_values("_v", ascending=False)
           .head(TOP_TRIALS) if not runs.empty else runs)
    return TuneAnalysis(
        runs=runs, overview=overview(study), setup=training_setup(study), top=top,
        params=[c for c in top.columns if c.startswith("params_")], history=history,
        pruned=trials[trial_states(trials) == "PRUNED"],
        expected=expected_max(history.loc[history["state"] == "COMPLETE", "value"]),
        importances=None if optuna_study is None else param_importances(optuna_study), failures=failures(study))


def export_tables(study: Study, runs: pd.DataFrame, *, effects: pd.DataFrame | None = None,
                  comparisons: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The CSV tables of a study (`results.write_tables`): effects and comparisons beside a
    grid's runs.csv; for a study read from its storage, runs.csv and summary.csv too, or a
    tune's trials.csv (exports, wherever the report runs). `effects` / `comparisons`: the
    study's, when the caller computed them."""
    if study.kind == "tune":
        return {"trials": study.table} if study.source == "storage" else {}
    tables = {}
    if study.source == "storage":
        tables.update(runs=study.table, summary=summary_table(study.table, stats.majority_bar(study.dataset)))
    if not runs.empty:
        tables["effects"] = (study_effects(study, runs) if effects is None else effects).reindex(columns=EFFECT_COLUMNS)
        tables["comparisons"] = (paired_comparisons(runs) if comparisons is None else comparisons
                                 ).reindex(columns=COMPARISON_COLUMNS)
    return tables
