"""Grid tables: runs.csv and summary.csv (exports of the stored trials), study.json, and the
checkpoints `--keep-checkpoints` keeps."""
from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablate import _io, store
from ablate.config import TOGGLES
from ablate.grid.definition import GridStudy, KIND, RUNS, trial_label
from ablate.grid.claims import GridStorage, _setup, cell_states, failure_reason
from ablate.grid.run import run_flags


# --------------------------------------------------------------------------- tables
RUN_COLUMNS = ("cell_id", "run_id", "label", "model", "model_args", "toggles", *TOGGLES, "factors", "seed", "status",
               "attempts",
               "trial_number", "did_not_learn", "best_is_last", "early_stopped", "flags", "val_miou", "val_pixel_acc",
               "val_mean_acc", "val_mdice", "val_loss", "test_miou", "test_pixel_acc", "test_mean_acc", "test_mdice",
               "test_loss", "best_epoch", "stopped_epoch", "max_epochs", "seconds", "images_per_second", "precision",
               "failure_reason", "run_dir", "design")
SUMMARY_METRICS = ("val_miou", "test_miou", "val_pixel_acc", "test_pixel_acc")


def runs_table(cells: list[dict], trials: list[FrozenTrial], *, results_dir: Path | None = None,
               study_name: str | None = None):
    """One row per cell: its identity, status and the metrics of the trial that speaks for it
    (from the trial's user attrs; a run record on disk fills in what the storage lacks)."""
    import pandas as pd

    from ablate import record as records

    states = cell_states(cells, trials)
    rows = []
    for cell in cells:
        state = states[cell["cell_id"]]
        row = {k: cell.get(k) for k in ("cell_id", "run_id", "model", "toggles", *TOGGLES, "seed")}
        row["label"] = trial_label(cell["model"], cell["toggles"], cell["seed"], cell.get("factors"))
        row["model_args"] = json.dumps(cell.get("model_args") or {}, sort_keys=True)
        # factor levels ({"loss": "dice"}, JSON) and the design with every factor's levels, when the study has them
        row["factors"] = json.dumps(cell["factors"]) if cell.get("factors") else None
        row["design"] = json.dumps(cell["design"]) if cell.get("design") else None
        row.update(status=state.status, attempts=state.attempts)
        t = state.trial
        if t is not None:
            attrs = dict(t.user_attrs)
            run_json = (store.study_dir(results_dir, study_name) / attrs.get("run_dir", f"{RUNS}/{cell['cell_id']}")
                        if results_dir else None)
            if state.status == "completed" and attrs.get("val_miou") is None and run_json and (run_json / records.RECORD_FILE).is_file():
                record = records.read(run_json)
                attrs.update(records.summary(record))
                attrs.update(run_flags(record, attrs))
            row["trial_number"] = t.number
            for key in RUN_COLUMNS:
                if key not in row and key in attrs:
                    row[key] = attrs[key]
            if t.state == TrialState.FAIL:
                row["failure_reason"] = failure_reason(t)
            if state.status == "running":
                row["failure_reason"] = None
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def summary_table(runs, bar: dict | None = None):
    """Per model x toggle setting, over seeds: n, mean and std of val/test mIoU and pixel acc,
    and the flags: `did_not_learn` (the mean val pixel acc or mIoU at or below the
    all-majority prediction's `bar`; empty when the bar is unknown), how many seeds did not
    learn, were still improving at their last epoch, or stopped early."""
    import pandas as pd

    from ablate import stats

    done = runs[runs["status"] == "completed"].copy()
    done["factors"] = done["factors"].fillna("") if "factors" in done else ""  # cells differing in a factor stay apart
    keys = ["model", "model_args", "toggles", *TOGGLES, "factors"]
    counts = ["n_did_not_learn", "n_best_is_last", "n_early_stopped"]
    columns = keys + ["n"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")] + ["did_not_learn", *counts]
    if done.empty:
        return pd.DataFrame(columns=columns)
    for m in SUMMARY_METRICS:
        done[m] = pd.to_numeric(done[m], errors="coerce")
    for flag, count in zip(("did_not_learn", "best_is_last", "early_stopped"), counts):
        done[count] = done[flag].astype(str).str.lower().isin(("true", "1", "1.0")) if flag in done else False
    grouped = done.groupby(keys, sort=False)
    out = grouped.size().rename("n").to_frame()
    for m in SUMMARY_METRICS:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1)
    for count in counts:
        out[count] = grouped[count].sum().astype(int)
    out["did_not_learn"] = [stats.did_not_learn(a, m, bar) for a, m in zip(out["val_pixel_acc_mean"], out["val_miou_mean"])]
    return out.reset_index()[columns]


def write_tables(gs: GridStorage, results_dir: Path) -> tuple[Path, Path]:
    """Rebuild runs.csv and summary.csv from the storage (atomically); name the objective
    for the dashboard on the way."""
    from ablate import stats

    attrs = gs.study_attrs() or {}
    runs = runs_table(attrs.get("cells") or [], gs.trials(), results_dir=results_dir, study_name=gs.study_name)
    folder = store.study_dir(results_dir, gs.study_name)
    name_objective(gs)
    bar = stats.majority_bar(attrs.get("dataset") or _study_json(folder).get("dataset"))
    return (_io.write_csv(folder / "runs.csv", runs),
            _io.write_csv(folder / "summary.csv", summary_table(runs, bar)))


def prune_checkpoints(gs: GridStorage, artifacts: store.Artifacts, keep: str) -> list[str]:
    """--keep-checkpoints best: once the grid is done, remove from `artifacts` the checkpoint of
    every completed trial except those the report's gallery (and `ablate predict`) needs: per
    architecture, the best seed of its best cell (`analysis.gallery_keys`). A finished trial's
    artifact list cannot change, so each removal is marked (`store.prune_trial_checkpoints`).
    Returns the ids removed now."""
    from ablate import analysis

    if keep != "best":
        return []
    with gs.lock():
        attrs, trials = gs.study_attrs() or {}, gs.trials()
        cells = attrs.get("cells") or []
        states = cell_states(cells, trials)
        wanted = {states[k].trial.number for k in analysis.gallery_keys(runs_table(cells, trials)) if k in states}
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
    holds (`study_meta` rebuilds it from the storage anywhere)."""
    meta = study_meta(study.name, url, {**attrs, "setup": _setup(study), "dataset": dataset_summary, "command": command})
    meta["artifacts"] = artifacts
    return _io.write_json(store.study_dir(results_dir, study.name) / "study.json", meta)




def study_meta(name: str, url: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """study.json's content from the study's user attrs (`GridStorage.prepare`)."""
    setup = attrs.get("setup") or {}
    return {
        "kind": KIND, "study_name": name, "description": attrs.get("description", ""),
        "storage": store.mask_url(url), "grid": attrs.get("grid"), "grid_hash": attrs.get("grid_hash"),
        "cells": len(attrs.get("cells") or []), "models": setup.get("models"), "model_args": setup.get("model_args"),
        "toggles": setup.get("toggles"), "seeds": attrs.get("seeds"), "train": setup.get("train"),
        "max_retries": setup.get("max_retries"), "workers": setup.get("workers"), "command": attrs.get("command"),
        "dataset": attrs.get("dataset"), "tables": {"runs": "runs.csv", "summary": "summary.csv"},
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }




