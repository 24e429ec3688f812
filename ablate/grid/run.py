"""Running cells: train a claimed cell into its attempt's own folder, store its record and
files with the trial, and the worker loop (one process or several, `ablate.workers`)."""
from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from ablate import record as records
from ablate import store, workers
from ablate.record import run_flags  # noqa: F401  (grid.run_flags, as before it moved)
from ablate.config import TOGGLES, TrainConfig
from ablate.errors import AblateError
from ablate.workers import INTERRUPTED  # failure reasons, shared with the tuner
from ablate.grid.definition import Cell, Datasets, GridStudy, RUNS, check_execution, resolve_execution
from ablate.grid.claims import GridStorage
from ablate.seedplan import SeedPlan
from ablate.stats import DEFAULT_MIN_EFFECT


# --------------------------------------------------------------------------- running cells
@dataclass(frozen=True)
class CellResult:
    cell_id: str
    label: str
    status: str  # completed | failed
    val_miou: float | None
    test_miou: float | None
    seconds: float
    failure_reason: str | None = None


def run_cell(gs: GridStorage, cell: Cell, trial_id: int, dataset, *, run_dir: Path, progress: bool = False,
             artifacts: store.Artifacts | None = None, keep_checkpoints: str = "best") -> CellResult:
    """Train one claimed cell (on `dataset`, at its image size) into its attempt's own folder (`run_dir`: a worker
    reclaimed while alive writes beside the rerun, never over it) and tell the storage; its files
    go to `artifacts` (see `_tell`). A completed run writes its checkpoint unless
    `keep_checkpoints` is none; `prune_checkpoints` keeps the best ones once the grid is done."""
    # torch; and ablate.engine is looked up when called (tests replace engine.fit_safely)
    from ablate.engine import fit_safely
    from ablate.predict import gallery_predictions

    storage = gs.storage

    def on_epoch(epoch: int, metrics: dict) -> None:
        if metrics.get("miou") is not None and math.isfinite(metrics["miou"]):
            storage.set_trial_intermediate_value(trial_id, epoch, float(metrics["miou"]))

    start = time.perf_counter()
    try:
        with workers.Heartbeat(storage, trial_id):
            try:
                record = fit_safely(cell.config, dataset, out_dir=run_dir, on_epoch=on_epoch, quiet=True, progress=progress,
                                    on_model=lambda model: gallery_predictions(model, dataset, run_dir),
                                    checkpoint=keep_checkpoints != "none")
            except AblateError as exc:  # e.g. a batch larger than the split: this cell's problem only
                record = records.failed(cell.config, reason=str(exc), tb=None)
                records.write(run_dir, record, None)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the bookkeeping
        workers.fail_trial(storage, trial_id, INTERRUPTED)
        raise
    return _tell(storage, cell, trial_id, record, time.perf_counter() - start, run_dir=run_dir, artifacts=artifacts)


def _tell(storage, cell: Cell, trial_id: int, record: dict, seconds: float, *, run_dir: Path | None = None,
          artifacts: store.Artifacts | None = None) -> CellResult:
    """Put the trial's record into the storage (summary, flags, curves and the whole record as
    user attrs, `record.to_attrs`), attach its files to it in `artifacts` (run.json; for a
    completed run its best.pt when the run wrote one (not with --keep-checkpoints none), and the
    predictions.png of the report gallery's val images that `run_cell` drew, so the gallery
    needs no checkpoint), then finish it. The local best.pt is removed afterwards: the artifact
    store holds the one copy (`prune_checkpoints` thins it)."""
    row = records.summary(record)
    row.update(run_flags(record, row))
    value = records.completed_miou(record)
    ok = value is not None
    reason = None if ok else (record.get("failure_reason") or "no finite val mIoU")
    try:
        for key, v in {**row, **_curves(record), **records.to_attrs(record)}.items():
            if key not in ("model", "seed", *TOGGLES):  # already params or set at creation
                storage.set_trial_user_attr(trial_id, key, _plain(v))
        if artifacts is not None and run_dir is not None:  # only a trial not yet finished takes artifacts
            try:
                store.attach_run(storage, trial_id, record, run_dir, artifacts, completed=ok,
                                 with_checkpoint=ok and (run_dir / records.CHECKPOINT_FILE).is_file())
            except AblateError as exc:  # the store is the record: a cell whose files are not there failed
                ok, reason = False, str(exc)
        storage.set_trial_user_attr(trial_id, "failure_reason", reason)
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE if ok else TrialState.FAIL, [value] if ok else None)
    except UpdateFinishedTrialError:  # another worker reclaimed it; the cell's result is that worker's
        print(f"warning: cell {cell.label} was reclaimed by another worker while it ran; this attempt's result "
              "is dropped", file=sys.stderr)
        reason = workers.RECLAIMED
        ok = False
    finally:
        if artifacts is not None and run_dir is not None:
            (run_dir / records.CHECKPOINT_FILE).unlink(missing_ok=True)
    return CellResult(cell.cell_id, cell.label, "completed" if ok else "failed", row.get("val_miou"),
                      row.get("test_miou"), seconds, reason)


CURVES = ("train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr")


def _curves(record: dict) -> dict[str, list]:
    """Per-epoch series for the dashboard, one user attr each (rounded for reading; the
    analysis reads the full-precision ones in the stored record)."""
    curves = record.get("curves") or []
    return {f"curve_{k}": [None if c.get(k) is None else float(f"{float(c[k]):.5g}") if k == "lr" else round(float(c[k]), 5)
                           for c in curves]
            for k in CURVES if curves}


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def work(gs: GridStorage, cells: list[Cell], datasets: Callable[[tuple[int, int]], Any], *, results_dir: Path,
         max_retries: int, on_result: Callable[[CellResult], None], progress: bool = False,
         requested: TrainConfig | None = None, artifacts: str | None = None, keep_checkpoints: str = "best",
         plan: SeedPlan | None = None, delta: float = DEFAULT_MIN_EFFECT) -> None:
    """Claim and run cells until none is left to claim and none runs elsewhere. `datasets`
    gives the data at an image size; `requested` (the study's [train]) is resolved here and
    must match the execution the study was created for before any cell is claimed. Each
    cell's files go to the artifact store `artifacts` (default: <results_dir>/<study>/artifacts).
    With sequential seeds (`plan`, δ `delta`) a claim opens the next stage when one is due."""
    if requested is not None:
        check_execution(gs.study_name, (gs.study_attrs() or {}).get("grid") or {}, resolve_execution(requested),
                        requested)
    folder = store.study_dir(results_dir, gs.study_name)
    files = store.artifacts(artifacts or store.default_artifacts(results_dir, gs.study_name))
    while True:
        claimed = gs.claim(cells, max_retries=max_retries, plan=plan, delta=delta)
        if claimed is None:
            if not gs.running:
                return
            time.sleep(gs.poll_seconds)  # other workers' cells may fail (retry) or turn out lost (reclaim)
            continue
        cell, trial_id = claimed
        run_dir = f"{RUNS}/{cell.cell_id}/{gs.storage.get_trial_number_from_id(trial_id)}"
        gs.storage.set_trial_user_attr(trial_id, "run_dir", run_dir)  # relative to the study folder
        on_result(run_cell(gs, cell, trial_id, datasets(cell.config.image_size), run_dir=folder / run_dir,
                           progress=progress, artifacts=files, keep_checkpoints=keep_checkpoints))


# --------------------------------------------------------------------------- workers
def _worker(index: int, events, study: GridStudy, cells: list[Cell], url: str, results_dir: Path,
            cache_dir: Path, artifacts: str | None = None, keep_checkpoints: str = "best") -> None:
    """A spawned grid worker (`workers.supervise`): data from the cache, per image size, then cells."""
    try:
        work(GridStorage(url, study.name), cells, Datasets(study.train, cache_dir), results_dir=Path(results_dir),
             max_retries=study.max_retries, on_result=events.put, requested=study.train, artifacts=artifacts,
             keep_checkpoints=keep_checkpoints, plan=study.sequential, delta=study.min_effect)
    except AblateError as exc:  # e.g. this worker resolves another precision: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run_workers(study: GridStudy, cells: list[Cell], url: str, *, results_dir: Path, cache_dir: Path,
                datasets: Callable[[tuple[int, int]], Any], on_result: Callable[[CellResult], None],
                progress: bool = False, artifacts: str | None = None, keep_checkpoints: str = "best") -> list[int]:
    """Run the grid on `study.workers` processes (in this process for one, with `datasets`;
    spawned workers load their data from `cache_dir`); returns the exit codes of workers
    that failed. A worker killed by a signal is replaced and its cell charged to
    --max-retries, so the replacements are bounded by the cells' retry budgets."""
    if study.workers == 1:
        with workers.sigterm_interrupts():
            work(GridStorage(url, study.name), cells, datasets, results_dir=results_dir,
                 max_retries=study.max_retries, on_result=on_result, progress=progress, requested=study.train,
                 artifacts=artifacts, keep_checkpoints=keep_checkpoints, plan=study.sequential, delta=study.min_effect)
        return []
    return workers.supervise(_worker, (study, cells, url, results_dir, cache_dir, artifacts, keep_checkpoints),
                             workers=study.workers,
                             device=study.train.device, on_event=on_result,
                             respawns=len(cells) * (study.max_retries + 1),
                             on_killed=_Settler(url, study.name))


class _Settler:
    """The supervisor's side of a worker killed under its eyes: its cell is charged
    (`workers.settle_killed`), so a cell that kills its own process uses up its retries. The
    storage is opened on the first death only."""

    def __init__(self, url: str, study_name: str):
        self.url, self.study_name, self._gs = url, study_name, None

    def __call__(self, pid: int, how: str) -> None:
        self._gs = self._gs or GridStorage(self.url, self.study_name)
        with self._gs.lock():  # a claim's reclaim reads the same trials
            workers.settle_killed(self._gs.storage, self._gs.trials(), pid, how)


