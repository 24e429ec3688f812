"""Grid tables: runs.csv and summary.csv refreshed from the storage while a grid runs,
study.json, and the checkpoints `--keep-checkpoints` keeps. The tables are read by
`ablate.results`, summarised by `ablate.analysis` and written by `results.write_tables`."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna

from ablate import _io, results, store
from ablate.grid.claims import GridStorage, _setup
from ablate.grid.definition import GridStudy
from ablate.results import RUN_COLUMNS, runs_table  # noqa: F401  (grid.runs_table, as before the read side)


def write_tables(gs: GridStorage, results_dir: Path) -> tuple[Path, Path]:
    """Rebuild runs.csv and summary.csv from the storage (atomically); name the objective
    for the dashboard on the way."""
    from ablate import analysis, stats  # pandas: only the grid's parent process writes tables

    attrs = gs.study_attrs() or {}
    folder = store.study_dir(results_dir, gs.study_name)
    trials = gs.trials()
    runs = runs_table(results.study_cells(attrs, trials), trials, folder=folder)
    name_objective(gs)
    bar = stats.majority_bar(attrs.get("dataset") or _study_json(folder).get("dataset"))
    runs_csv, summary_csv = results.write_tables(folder, {"runs": runs, "summary": analysis.summary_table(runs, bar)})
    return runs_csv, summary_csv


def prune_checkpoints(gs: GridStorage, artifacts: store.Artifacts, keep: str) -> list[str]:
    """--keep-checkpoints best: once the grid is done, remove from `artifacts` the checkpoint of
    every completed trial except those the report's gallery (and `ablate predict`) needs: per
    architecture, the best seed of its best cell (`results.best_grid_runs`, the one best-run
    rule). A finished trial's artifact list cannot change, so each removal is marked
    (`store.prune_trial_checkpoints`). Returns the ids removed now."""
    if keep != "best":
        return []
    with gs.lock():
        attrs, trials = gs.study_attrs() or {}, gs.trials()
        wanted = {int(run.order) for run in results.best_grid_runs(results.study_cells(attrs, trials), trials)}
        return store.prune_trial_checkpoints(gs.storage, gs.study_id(), trials, artifacts, keep=wanted)


OBJECTIVE_NAME = "val mIoU"


def name_objective(gs: GridStorage) -> None:
    """The dashboard says 'val mIoU', not 'Objective 0' (Study.set_metric_names, once)."""
    if gs.study_id() is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(study_name=gs.study_name, storage=gs.storage)
        if study.metric_names != [OBJECTIVE_NAME]:
            study.set_metric_names([OBJECTIVE_NAME])


def _study_json(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "study.json").read_text())
    except (OSError, ValueError):
        return {}  # tables are rebuilt without the bar; the report names a broken study.json


def write_study_json(results_dir: Path, study: GridStudy, url: str, attrs: dict[str, Any], dataset_summary: dict,
                     command: list[str] | None = None, artifacts: str | None = None) -> Path:
    """The study's description for the report: what it holds (`attrs` from `prepare`: every
    seed run so far), where it is stored, and the `ablate` arguments that ran it (so the
    report can print the exact command that adds seeds). A local export of what the storage
    holds (`results.grid_meta` rebuilds it from the storage anywhere)."""
    meta = results.grid_meta(study.name, url, {**attrs, "setup": _setup(study), "dataset": dataset_summary,
                                               "command": command})
    meta["artifacts"] = artifacts
    return _io.write_json(store.study_dir(results_dir, study.name) / "study.json", meta)
