"""Running cells: train a claimed cell into its attempt's own folder, store its record and
files with the trial, and the worker loop (one process or several, `ablate.workers`)."""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ablate import store, workers
from ablate.config import TOGGLES, TrainConfig
from ablate.errors import AblateError
from ablate.workers import INTERRUPTED  # failure reasons, shared with the tuner
from ablate.grid.definition import Cell, Datasets, GridStudy, RUNS, check_execution, resolve_execution
from ablate.grid.claims import GridStorage


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
    go to `artifacts` (see `_tell`). Its checkpoint is written only when `keep_checkpoints` may
    keep it (`keeps_checkpoint`, judged against every cell the study holds)."""
    from ablate import record as records
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
                                    checkpoint=lambda record: _writes_checkpoint(gs, keep_checkpoints, cell, record,
                                                                                 trial_id))
            except AblateError as exc:  # e.g. a batch larger than the split: this cell's problem only
                record = records.failed(cell.config, reason=str(exc), tb=None)
                records.write(run_dir, record, None)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the bookkeeping
        workers.fail_trial(storage, trial_id, INTERRUPTED)
        raise
    return _tell(storage, cell, trial_id, record, time.perf_counter() - start, run_dir=run_dir, artifacts=artifacts)


def _writes_checkpoint(gs: GridStorage, keep: str, cell: Cell, record: dict, trial_id: int) -> bool:
    """`keeps_checkpoint` against the study's cells (every command's: other machines may run
    other seeds) and trials as they are now; if the storage cannot say, the checkpoint is
    written (`prune_checkpoints` thins it later), never a trained run lost over it."""
    try:
        briefs = (gs.study_attrs() or {}).get("cells") or [cell.brief()]
        return keeps_checkpoint(keep, cell.brief(), record, briefs, gs.trials(),
                                gs.storage.get_trial_number_from_id(trial_id))
    except Exception as exc:  # noqa: BLE001 - the safe answer is to keep it; said, not swallowed
        print(f"warning: cell {cell.label}: could not tell whether its checkpoint may be kept "
              f"({type(exc).__name__}: {exc}); writing it", file=sys.stderr)
        return keep != "none"


def keeps_checkpoint(keep: str, cell: dict, record: dict, cells: list[dict], trials: list[FrozenTrial],
                     number: int) -> bool:
    """Whether a finished cell run (`cell`, a brief as the study attrs keep it; trial `number`)
    writes and stores its best.pt: a completed one with --keep-checkpoints all; never with
    none; with best, unless the completed `trials` already show it can never be the run
    `prune_checkpoints` keeps (`analysis.gallery_keys`: per architecture, the best seed of the
    cell with the best mean val mIoU, ties going to what ran first), i.e. unless
      - another seed of its cell (model, arguments and factor setting) did better, or
      - every seed of its cell has completed, and so has every seed of another cell of its
        architecture with a better mean.
    `cells` are the study's cells (all seeds of every command). Completed trials never change,
    so whatever the order the cells finish in, the run kept when these cells are done has
    written its checkpoint. Seeds added later can make another run the best, one that wrote
    none (as after `prune_checkpoints`); the report's gallery then draws its stored
    predictions. Measured on the default grid: 5 of 32 runs write one (custom and resnet18
    checkpoints are 45-60 MB each).
    """
    from ablate import record as records

    value = records.completed_miou(record)
    if keep == "none" or value is None:
        return False
    if keep == "all":
        return True
    me = cell["cell_id"]
    done = {me: (value, number)}  # cell id -> (val mIoU, trial number) of its completed run
    for t in trials:
        v = t.user_attrs.get("val_miou")
        if t.state == TrialState.COMPLETE and isinstance(v, (int, float)) and t.user_attrs.get("cell_id") != me:
            done[t.user_attrs.get("cell_id")] = (v, t.number)
    settings: dict[tuple, list[str]] = {}
    for c in cells:
        settings.setdefault(_setting_key(c), []).append(c["cell_id"])
    mine = _setting_key(cell)
    if any(_ahead(done[cid], (value, number)) for cid in settings.get(mine, []) if cid in done and cid != me):
        return False

    def standing(ids: list[str]) -> tuple[float, int] | None:
        """(mean val mIoU, first trial number) of a cell whose every seed has completed."""
        if any(cid not in done for cid in ids):
            return None
        return math.fsum(done[cid][0] for cid in ids) / len(ids), min(done[cid][1] for cid in ids)

    own = standing(settings.get(mine, [me]))
    if own is None:
        return True
    rivals = (standing(ids) for key, ids in settings.items() if key != mine and key[:2] == mine[:2])
    return not any(r is not None and _ahead(r, own) for r in rivals)


def _ahead(a: tuple[float, int], b: tuple[float, int]) -> bool:
    """Whether (value, trial number) `a` is chosen over `b`: higher value, or the same and ran first."""
    return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1])


def _setting_key(cell: dict) -> tuple:
    """(model, its arguments, toggles, factor levels) of a cell brief: a cell of the report
    without its seed; the first two name its architecture."""
    return (cell["model"], json.dumps(cell.get("model_args") or {}, sort_keys=True), cell["toggles"],
            json.dumps(cell.get("factors") or {}, sort_keys=True))


def _tell(storage, cell: Cell, trial_id: int, record: dict, seconds: float, *, run_dir: Path | None = None,
          artifacts: store.Artifacts | None = None) -> CellResult:
    """Put the trial's record into the storage (summary, flags, curves and the whole record as
    user attrs, `record.to_attrs`), attach its files to it in `artifacts` (run.json; for a
    completed run its best.pt when the run wrote one (`keeps_checkpoint`), and the
    predictions.png of the report gallery's val images that `run_cell` drew, so the gallery
    needs no checkpoint), then finish it. The local best.pt is removed afterwards: the artifact
    store holds the one copy (`prune_checkpoints` thins it)."""
    from ablate import record as records

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


def run_flags(record: dict, summary: dict) -> dict[str, Any]:
    """A run's learning flags (see `ablate.stats.did_not_learn`), and `flags` in words for the
    dashboard: did not learn, still improving (best epoch = last), early-stopped."""
    from ablate import stats

    m = (record.get("metrics") or {}).get("val") or {}
    bar = stats.majority_bar(record.get("dataset"))
    dnl = stats.did_not_learn(m.get("pixel_acc"), m.get("miou"), bar) if record.get("status") == "completed" else None
    words = [w for w, on in (("did not learn", dnl), ("still improving: budget-limited", summary.get("best_is_last")),
                             ("early-stopped", summary.get("early_stopped"))) if on]
    if record.get("status") == "completed" and bar is None:
        words.append("did-not-learn bar unknown")
    return {"did_not_learn": dnl, "flags": "; ".join(words)}


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
         requested: TrainConfig | None = None, artifacts: str | None = None, keep_checkpoints: str = "best") -> None:
    """Claim and run cells until none is left to claim and none runs elsewhere. `datasets`
    gives the data at an image size; `requested` (the study's [train]) is resolved here and
    must match the execution the study was created for before any cell is claimed. Each
    cell's files go to the artifact store `artifacts` (default: <results_dir>/<study>/artifacts)."""
    if requested is not None:
        check_execution(gs.study_name, (gs.study_attrs() or {}).get("grid") or {}, resolve_execution(requested),
                        requested)
    folder = store.study_dir(results_dir, gs.study_name)
    files = store.artifacts(artifacts or store.default_artifacts(results_dir, gs.study_name))
    while True:
        claimed = gs.claim(cells, max_retries=max_retries)
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
             keep_checkpoints=keep_checkpoints)
    except AblateError as exc:  # e.g. this worker resolves another precision: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run_workers(study: GridStudy, cells: list[Cell], url: str, *, results_dir: Path, cache_dir: Path,
                datasets: Callable[[tuple[int, int]], Any], on_result: Callable[[CellResult], None],
                progress: bool = False, artifacts: str | None = None, keep_checkpoints: str = "best") -> list[int]:
    """Run the grid on `study.workers` processes (in this process for one, with `datasets`;
    spawned workers load their data from `cache_dir`); returns the exit codes of workers
    that failed. A worker killed by a signal is replaced: each crash of a cell after its
    first is charged to --max-retries, so the replacements are bounded by the cells' retry budgets."""
    if study.workers == 1:
        with workers.sigterm_interrupts():
            work(GridStorage(url, study.name), cells, datasets, results_dir=results_dir,
                 max_retries=study.max_retries, on_result=on_result, progress=progress, requested=study.train,
                 artifacts=artifacts, keep_checkpoints=keep_checkpoints)
        return []
    return workers.supervise(_worker, (study, cells, url, results_dir, cache_dir, artifacts, keep_checkpoints),
                             workers=study.workers,
                             device=study.train.device, on_event=on_result,
                             respawns=len(cells) * (study.max_retries + 2))


