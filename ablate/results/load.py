"""Results stage, opening a study by name: from its Optuna storage (a grid's or a tune's, on
any machine that reaches the storage and the artifact store), or from its local results
folder <results-dir>/<study>/ (study.json, the run folders' records, runs.csv or trials.csv)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna

from ablate import record as records
from ablate import store
from ablate.errors import AblateError
from ablate.results.cells import GRID_KIND, cell_states, grid_meta, runs_table, study_cells
from ablate.results.study import Study
from ablate.results.trials import is_tune, trials_frame, tune_meta


def open_study(results_dir: str | Path, study_name: str, *, storage: str | None = None,
               artifacts: str | None = None) -> Study:
    """A study by name, grid or tune, read from its Optuna storage: `storage`, else the one its
    local study.json records (when it is usable here); `artifacts` overrides the artifact
    store the trials recorded. Otherwise (a study whose storage is not here) from the local
    folder <results_dir>/<study_name>/."""
    folder = Path(results_dir) / study_name
    meta_path = folder / "study.json"
    meta = _read_meta(meta_path) if meta_path.is_file() else None
    if storage is None and meta is not None:
        storage = _recorded_storage(meta, results_dir, study_name)
        artifacts = artifacts or meta.get("artifacts")
    if storage is not None:
        return open_stored_study(results_dir, study_name, storage, artifacts=artifacts)
    if meta is None:
        found = sorted(p.parent.name for p in Path(results_dir).glob("*/study.json"))
        hint = f"studies there: {', '.join(found)}" if found else "run `ablate grid` or `ablate tune` first"
        raise AblateError(f"--study-name {study_name}: no {meta_path} (and no --storage); {hint}")
    return _open_folder(folder, study_name, meta)


def _read_meta(meta_path: Path) -> dict:
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise AblateError(f"{meta_path}: cannot read study description ({exc})") from None


def _recorded_storage(meta: dict, results_dir: str | Path, study_name: str) -> str | None:
    """The storage study.json names, when it can be opened from here as written (a masked
    password cannot); else the default storage file of the folder, when it exists."""
    for url in (meta.get("storage"), store.default_storage(results_dir, study_name)):
        if url and "***" not in url and store.storage_exists(url):
            return url
    return None


def optuna_study(url: str, study_name: str) -> optuna.Study:
    """The Optuna study `study_name` in the storage at `url` (a file that is not there is an
    error: opening it would create an empty storage); KeyError when the storage lacks it."""
    if not store.storage_exists(url):
        raise AblateError(f"--storage {store.mask_url(url)}: no such file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
        return optuna.load_study(study_name=study_name, storage=store.open_storage(url))


def open_stored_study(results_dir: str | Path, study_name: str, url: str, *, artifacts: str | None = None) -> Study:
    """A grid or tune study from its storage alone (exports and downloads go under
    <results_dir>/<study_name>/): its table, study.json rebuilt from the study attrs, and per
    finished run its record and its files' artifact ids. A grid's run per cell is the trial
    that speaks for the cell (`cells.cell_states`); a tune's runs are its trials."""
    try:
        ostudy = optuna_study(url, study_name)
    except KeyError:
        names = ", ".join(optuna.get_all_study_names(store.open_storage(url))) or "none"
        raise AblateError(f"--study-name {study_name}: no study {study_name!r} in {store.mask_url(url)} "
                          f"(studies there: {names})") from None
    attrs = ostudy.user_attrs
    folder = Path(results_dir) / study_name
    spec = store.artifact_spec(artifacts) if artifacts else None
    trials = ostudy.get_trials(deepcopy=False)
    if is_tune(attrs):
        study = Study(name=study_name, folder=folder, kind="tune", meta=tune_meta(ostudy, url),
                      table=trials_frame(ostudy), pruned=store.pruned_ids(attrs), source="storage", storage_url=url)
        finished = [(str(t.number), t, f"trial {t.number}") for t in trials
                    if t.state != optuna.trial.TrialState.RUNNING]
    elif attrs.get("kind") == GRID_KIND:
        cells = study_cells(attrs, trials)
        study = Study(name=study_name, folder=folder, kind="grid", meta=grid_meta(study_name, url, attrs),
                      table=runs_table(cells, trials, folder=folder), pruned=store.pruned_ids(attrs),
                      source="storage", storage_url=url)
        finished = [(key, s.trial, f"trial {s.trial.number} ({s.trial.user_attrs.get('label') or key})")
                    for key, s in cell_states(cells, trials).items() if s.trial is not None and s.status != "running"]
    else:
        raise AblateError(f"--study-name {study_name}: {study_name!r} in {store.mask_url(url)} was not made by "
                          "`ablate grid` or `ablate tune`")
    for key, trial, label in finished:
        _add_stored_trial(study, key, trial, label, spec)
    return study


def _add_stored_trial(study: Study, key: str, trial: optuna.trial.FrozenTrial, label: str,
                      artifacts: str | None) -> None:
    """What a stored study keeps of one finished trial under `key`: its label for messages,
    its files' artifact ids and their store (`artifacts` overrides the one it recorded), its
    record (`_stored_record`)."""
    study.labels[key] = label
    study.files[key] = store.artifact_ids(trial.system_attrs)
    study.stores[key] = artifacts or trial.user_attrs.get("artifact_store")
    record = _stored_record(study, key, trial)
    if record is not None:
        study.records[key] = record


def _stored_record(study: Study, key: str, trial: optuna.trial.FrozenTrial) -> dict | None:
    """A trial's run record: its user attrs, else (a study from before records lived in the
    storage) its run folder here, else its run.json artifact. A completed trial without one
    is an error naming it."""
    what = study.labels[key]
    record = records.from_attrs(trial.user_attrs, what)
    run_dir = trial.user_attrs.get("run_dir")
    local = study.folder / run_dir / records.RECORD_FILE if run_dir else None
    if local is not None and local.is_file():
        study.run_dirs[key] = local.parent
    if record is not None:
        return record
    if local is not None and local.is_file():
        return _read_record(local)
    if study.files[key].get(records.RECORD_FILE) and study.stores.get(key):
        return _read_record(study.fetch(key, records.RECORD_FILE))
    if trial.state == optuna.trial.TrialState.COMPLETE:
        raise AblateError(f"{what}: COMPLETE but its run record is in neither the storage (user attr "
                          f"'{records.RECORD_ATTR}') nor the artifact store; rerun the cell")
    return None  # e.g. a worker lost before its record


def _read_record(path: Path) -> dict:
    # Records are written atomically (temp file + rename, `ablate._io`), so a file that
    # does not parse is damaged, not half-written: say which one rather than skip it.
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AblateError(f"{path}: corrupted run record ({type(exc).__name__}: {exc}); "
                          "delete its folder to rerun the cell, or restore the file") from None


def _open_folder(folder: Path, study_name: str, meta: dict) -> Study:
    """A study from its local folder only: study.json, the run folders' records, runs.csv."""
    import pandas as pd

    kind = meta.get("kind") or ("tune" if (folder / "trials.csv").is_file() else "grid")
    records_, run_dirs = {}, {}
    for key, run_dir in _run_folders(folder, kind):
        path = run_dir / records.RECORD_FILE
        if not path.is_file():
            continue  # the attempt is still running, or failed before writing a record
        records_[key] = _read_record(path)
        run_dirs[key] = run_dir
    table_path = folder / ("trials.csv" if kind == "tune" else "runs.csv")
    if table_path.is_file():
        table = pd.read_csv(table_path)
    elif kind == "grid" and records_:
        table = pd.DataFrame([{"cell_id": key, **records.summary(r)} for key, r in records_.items()])
    else:
        table = pd.DataFrame()
    return Study(name=study_name, folder=folder, kind=kind, meta=meta, table=table, records=records_,
                 run_dirs=run_dirs)


def _run_folders(folder: Path, kind: str) -> list[tuple[str, Path]]:
    """(key, folder) of each run record: a grid's runs.csv names, per cell, the folder of the
    attempt that speaks for it (runs/<cell_id>/<trial number>/); else runs/<key>/."""
    import pandas as pd

    if kind == "grid" and (folder / "runs.csv").is_file():
        table = pd.read_csv(folder / "runs.csv")
        if "run_dir" in table:  # a cell run before per-attempt folders has its record in runs/<cell_id>/
            return [(str(k), folder / (d if isinstance(d, str) else f"runs/{k}"))
                    for k, d in zip(table["cell_id"], table["run_dir"])]
    return [(p.parent.name, p.parent) for p in sorted((folder / "runs").glob("*/run.json"))]


def open_optuna(study: Study, storage: str | None = None) -> tuple[optuna.Study | None, str]:
    """The Optuna study behind an opened study, for what reads it through Optuna itself (its
    importance, plots and dashboard notes): from `storage`, else the storage study.json names
    or the folder's default one. (None, why not) when none of them holds it here."""
    name = study.meta.get("study_name", study.name)
    candidates = [storage] if storage else [study.meta.get("storage"), store.default_storage(study.folder.parent, study.name)]
    why = "no storage recorded in study.json; pass --storage"
    for url in dict.fromkeys(u for u in candidates if u):
        if not store.storage_exists(url):
            why = f"storage {store.mask_url(url)} does not exist here; pass --storage"
            continue  # opening would create an empty one
        try:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            return optuna_study(url, name), ""
        except AblateError as exc:
            why = str(exc)
        except KeyError:
            why = f"no study {name!r} in {store.mask_url(url)}"
    return None, why
