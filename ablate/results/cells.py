"""Results stage, a grid study's cells as its storage holds them: which trial speaks for each
cell (`cell_states`), the trials' labels and failure reasons, the runs table (runs.csv) and
study.json's content rebuilt from the study's attributes. The grid writes what these read."""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from ablate import store, workers
from ablate.config import TOGGLES
from ablate.seedplan import open_cells, plan_of

if TYPE_CHECKING:  # pandas is imported where a table is built: a grid worker never needs it
    import pandas as pd

GRID_KIND = "grid"  # the study attr `kind` of a grid study
RUNS = "runs"  # attempt folders: <study>/runs/<cell_id>/<trial number>/
RUN_COLUMNS = ("cell_id", "run_id", "label", "model", "model_args", "toggles", *TOGGLES, "factors", "seed", "status",
               "attempts",
               "trial_number", "did_not_learn", "best_is_last", "early_stopped", "flags", "val_miou", "val_pixel_acc",
               "val_mean_acc", "val_mdice", "val_loss", "test_miou", "test_pixel_acc", "test_mean_acc", "test_mdice",
               "test_loss", "best_epoch", "stopped_epoch", "max_epochs", "seconds", "images_per_second", "precision",
               "failure_reason", "run_dir", "design")


@dataclass(frozen=True)
class CellState:
    status: str  # completed | running | failed | retry | pending
    trial: FrozenTrial | None  # the trial that speaks for the cell (complete, running or latest)
    attempts: int  # trials so far
    failures: int  # failures charged to --max-retries (see charged_failures)

    @property
    def waiting(self) -> bool:
        """Whether a worker may claim the cell: never run, or failed with retries left."""
        return self.status in ("pending", "retry")


def cell_states(cells: list[dict], trials: list[FrozenTrial], max_retries: int | None = None) -> dict[str, CellState]:
    """Status of every cell from its trials; max_retries None: any genuine failure is 'failed'."""
    by_cell: dict[str, list[FrozenTrial]] = {c["cell_id"]: [] for c in cells}
    for t in trials:
        if t.user_attrs.get("cell_id") in by_cell:
            by_cell[t.user_attrs["cell_id"]].append(t)
    states = {}
    for cid, ts in by_cell.items():
        failures = charged_failures(ts)
        complete = [t for t in ts if t.state == TrialState.COMPLETE]
        running = [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if complete:
            status, trial = "completed", complete[0]
        elif running:
            status, trial = "running", running[0]
        elif failures:
            retry = max_retries is not None and len(failures) <= max_retries
            status, trial = ("retry" if retry else "failed"), ts[-1]
        else:
            status, trial = "pending", ts[-1] if ts else None
        states[cid] = CellState(status, trial, len(ts), len(failures))
    return states


def failure_reason(trial: FrozenTrial) -> str | None:
    if trial.state != TrialState.FAIL:
        return None
    return trial.user_attrs.get("failure_reason") or f"{workers.WORKER_LOST} (trial failed by the storage)"


def charged_failures(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The failed trials of one cell (in creation order) that count against --max-retries
    (`workers.is_charged`): genuine failures, and workers killed while their supervisor
    watched (OOM killer, segfault), so a cell that kills its own process stops. A loss nobody
    saw (the whole command or machine went down) and an interruption never count."""
    return [t for t in trials if t.state == TrialState.FAIL and workers.is_charged(failure_reason(t))]


def trial_label(model: str, toggles: str, seed: int, factors: dict[str, str] | None = None) -> str:
    """What the dashboard shows for a trial: 'unet · weighted_loss · s0', 'unet · loss=dice
    optimizer=sgd · s0' (toggles left out when none is on and other factors vary)."""
    setting = "no toggles" if toggles == "none" else toggles
    if factors:
        words = " ".join(f"{k}={v}" for k, v in factors.items())
        setting = words if toggles == "none" else f"{setting} {words}"
    return f"{model} · {setting} · s{seed}"


def runs_table(cells: list[dict], trials: list[FrozenTrial], *, folder: Path | None = None) -> pd.DataFrame:
    """One row per cell: its identity, status and the metrics of the trial that speaks for it
    (from the trial's user attrs; for a study from before the storage held them, the run
    record in its run folder under the study `folder` fills in what the storage lacks)."""
    import pandas as pd

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
        if state.trial is not None:
            _fill_from_trial(row, state, folder)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def _fill_from_trial(row: dict, state: CellState, folder: Path | None) -> None:
    """The runs-table columns a cell's speaking trial fills: its number, its summary attrs,
    and why it failed (nothing for a running one)."""
    from ablate import record as records

    t = state.trial
    attrs = dict(t.user_attrs)
    run_dir = folder / attrs.get("run_dir", f"{RUNS}/{row['cell_id']}") if folder is not None else None
    if (state.status == "completed" and attrs.get("val_miou") is None and run_dir is not None
            and (run_dir / records.RECORD_FILE).is_file()):
        record = records.read(run_dir)
        attrs.update(records.summary(record))
        attrs.update(records.run_flags(record, attrs))
    row["trial_number"] = t.number
    row.update({k: attrs[k] for k in RUN_COLUMNS if k not in row and k in attrs})
    if t.state == TrialState.FAIL:
        row["failure_reason"] = failure_reason(t)
    if state.status == "running":
        row["failure_reason"] = None


def cells_per_seed(cells: list[dict]) -> dict[str, int]:
    """Each model's cells per seed (those of the first seed) in a grid's stored cell list."""
    first = min((c["seed"] for c in cells), default=None)
    out: dict[str, int] = {}
    for c in cells:
        if c["seed"] == first:
            out[c["model"]] = out.get(c["model"], 0) + 1
    return out


def study_cells(attrs: dict[str, Any], trials: list[FrozenTrial]) -> list[dict]:
    """The cells (briefs) a grid study runs: every cell of a fixed design; in a sequential one
    (`--seeds auto`), each architecture's cells of the seeds its stages have opened, and any
    cell that has a trial; the others are not needed (yet), so no table lists them as pending."""
    cells = attrs.get("cells") or []
    wanted = {c["cell_id"] for c in open_cells(cells, attrs, plan_of(attrs))}
    wanted |= {t.user_attrs.get("cell_id") for t in trials}
    return [c for c in cells if c["cell_id"] in wanted]


def grid_meta(name: str, url: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """study.json's content from a grid study's user attrs (what `GridStorage.prepare` stores)."""
    setup = attrs.get("setup") or {}
    return {
        "kind": GRID_KIND, "study_name": name, "description": attrs.get("description", ""),
        "storage": store.mask_url(url), "grid": attrs.get("grid"), "grid_hash": attrs.get("grid_hash"),
        "cells": len(attrs.get("cells") or []), "models": setup.get("models"), "model_args": setup.get("model_args"),
        "toggles": setup.get("toggles"), "seeds": attrs.get("seeds"), "train": setup.get("train"),
        "max_retries": setup.get("max_retries"), "workers": setup.get("workers"), "command": attrs.get("command"),
        "dataset": attrs.get("dataset"), "tables": {"runs": "runs.csv", "summary": "summary.csv"},
        "decisions": attrs.get("decisions"), "stages": attrs.get("stages"), "cells_per_seed": cells_per_seed(attrs.get("cells") or []),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
