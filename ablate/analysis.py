"""Analysis stage: turn a study's run tables and records into statistics — per-cell Student-t
intervals over seeds, paired tests against the all-toggles-off cell, 2^k factorial effects,
Holm-corrected verdicts, learning flags, the Findings summary, architecture ranking, cost
Pareto front, and the tuner's expected-best-vs-budget curve (the numerics are in `ablate.stats`).

Every function here returns DataFrames or plain data; `ablate.report` only draws them.

Vocabulary: a *run* is one training (one seed); a *cell* is a model × factor setting (the
toggles on/off and any other factors' levels), i.e. the runs that differ only in their seed
(the grid's per-seed rows are aggregated into cells). The *reference* cell has every toggle
off and every other factor at its first listed level.
"""
from __future__ import annotations

import contextlib
import warnings

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ablate import _io, stats
from ablate.config import TOGGLES
from ablate.errors import AblateError
from ablate.gallery import GALLERY_IMAGES, gallery_indices, read_predictions_png

LEVEL = stats.LEVEL
NO_INTERVAL = "n=1, no interval"
TRACEBACK_LINES = 12
IMPORTANCE_EVALUATOR = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, target quantile 0.1; deterministic)"
METRICS = ("val_miou", "test_miou", "val_pixel_acc", "test_pixel_acc")
METRIC_LABELS = {"val_loss": "val loss", "val_miou": "val mIoU", "test_miou": "test mIoU", "val_pixel_acc": "val pixel acc",
                 "test_pixel_acc": "test pixel acc", "seconds": "seconds", "images_per_second": "images/s"}
TOGGLE_LABELS = {"scheduler": "cosine scheduler", "augment": "augmentation", "weighted_loss": "weighted loss"}


# --------------------------------------------------------------------------- loading
@dataclass
class Study:
    """Everything a study holds, read once: from its Optuna storage (a grid: records from the
    trials' user attrs, files from the artifact store), or from a local study folder."""
    name: str
    folder: Path  # where exports and the report go: <results-dir>/<study>/
    kind: str  # "grid" | "tune"
    meta: dict  # study.json, or the same rebuilt from the storage's study attrs
    table: pd.DataFrame  # runs.csv (grid) or trials.csv (tune): rebuilt from the storage, or as written
    records: dict[str, dict] = field(default_factory=dict)  # run key (cell id) -> run record
    run_dirs: dict[str, Path] = field(default_factory=dict)  # the same keys -> a local folder holding the record
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> {filename: artifact id} (storage)
    stores: dict[str, str] = field(default_factory=dict)  # key -> the artifact store spec its files are in
    labels: dict[str, str] = field(default_factory=dict)  # key -> "trial N (label)", for messages
    pruned: set[str] = field(default_factory=set)  # checkpoint artifact ids removed by --keep-checkpoints best
    source: str = "folder"  # "storage" | "folder"
    storage_url: str | None = None  # the storage it was read from (unmasked; never written anywhere)
    _opened: dict = field(default_factory=dict, repr=False)

    @property
    def dataset(self) -> dict:
        if self.meta.get("dataset"):
            return self.meta["dataset"]
        return next((r["dataset"] for r in self.records.values() if r.get("dataset")), {})

    @property
    def bar(self) -> dict | None:
        """The "did not learn" bar from the val split's class frequencies (None: unknown)."""
        return stats.majority_bar(self.dataset)

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self.dataset.get("class_names", [])]

    def checkpoint_dir(self, key: str) -> Path:
        """A folder holding `key`'s best.pt and run.json (what `ablate predict --run` takes): its
        run folder, or for a stored study a download of its checkpoint artifact under
        <folder>/checkpoints/<artifact id>/. A checkpoint that should be there and is not (or
        an unreadable store) is an AblateError naming the trial; one never kept is `NoCheckpoint`."""
        from ablate import store
        from ablate.record import CHECKPOINT_FILE, RECORD_FILE

        local = self.run_dirs.get(key, self.folder / "runs" / key)
        if key not in self.files:
            return local
        what = self.labels.get(key, key)
        aid = self.files[key].get(CHECKPOINT_FILE)
        if aid is None and (local / CHECKPOINT_FILE).is_file():  # a cell run before checkpoints were artifacts
            return local
        if aid is None:
            never = ("it could never be its architecture's best run" if self.kind == "grid"
                     else "it was never the best trial")
            raise NoCheckpoint(f"{what}: no checkpoint stored (the {self.kind} ran with --keep-checkpoints none, "
                               f"or best and {never})")
        if aid in self.pruned:
            why = ("it was not an architecture's best run when the grid finished" if self.kind == "grid"
                   else "a later trial was better")
            raise NoCheckpoint(f"{what}: checkpoint pruned by --keep-checkpoints best ({why})")
        spec = self.stores.get(key)
        if not spec:
            raise AblateError(f"{what}: the trial records no artifact store; pass --artifacts")
        if spec not in self._opened:
            self._opened[spec] = store.open_artifacts(spec, create=False)
        dest = self.folder / "checkpoints" / aid
        store.fetch(self._opened[spec], aid, dest / CHECKPOINT_FILE, what=f"{what}: {CHECKPOINT_FILE}")
        if not (dest / RECORD_FILE).is_file():
            _io.write_json(dest / RECORD_FILE, self.records[key])
        return dest


    def stored_predictions(self, key: str, ids: list[str], shapes: list[tuple]) -> list[np.ndarray] | None:
        """The masks the trial's worker predicted for the gallery's images (its
        predictions.png artifact), at `shapes`; None when it has none for these images."""
        from ablate import store

        aid = self.files.get(key, {}).get(store.PREDICTIONS_FILE)
        if aid is None or not self.stores.get(key):
            return None
        if self.stores[key] not in self._opened:
            self._opened[self.stores[key]] = store.open_artifacts(self.stores[key], create=False)
        what = f"{self.labels.get(key, key)}: {store.PREDICTIONS_FILE}"
        path = store.fetch(self._opened[self.stores[key]], aid, self.folder / "checkpoints" / aid / store.PREDICTIONS_FILE,
                           what=what)
        stored_ids, masks = read_predictions_png(path, what)
        if stored_ids != list(ids):
            return None
        return [m if m.shape == tuple(s) else _nearest(m, tuple(s)) for m, s in zip(masks, shapes)]


def _nearest(mask: np.ndarray, shape: tuple) -> np.ndarray:
    rows = (np.arange(shape[0]) * mask.shape[0] // shape[0])[:, None]
    cols = (np.arange(shape[1]) * mask.shape[1] // shape[1])[None, :]
    return mask[rows, cols]


class NoCheckpoint(AblateError):
    """A run whose checkpoint was, by the study's choice, not kept."""


def load_study(results_dir: str | Path, study_name: str, *, storage: str | None = None,
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
        return load_stored_study(results_dir, study_name, storage, artifacts=artifacts)
    if meta is None:
        found = sorted(p.parent.name for p in Path(results_dir).glob("*/study.json"))
        hint = f"studies there: {', '.join(found)}" if found else "run `ablate grid` or `ablate tune` first"
        raise AblateError(f"--study-name {study_name}: no {meta_path} (and no --storage); {hint}")
    return _load_folder(folder, study_name, meta)


def _read_meta(meta_path: Path) -> dict:
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise AblateError(f"{meta_path}: cannot read study description ({exc})") from None


def _recorded_storage(meta: dict, results_dir: str | Path, study_name: str) -> str | None:
    """The storage study.json names, when it can be opened from here as written (a masked
    password cannot); else the default storage file of the folder, when it exists."""
    from ablate import store

    for url in (meta.get("storage"), store.default_storage(results_dir, study_name)):
        if not url or "***" in url:
            continue
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else (url if store.is_journal(url) else None)
        if path is None or Path(path).is_file():
            return url
    return None


def load_stored_study(results_dir: str | Path, study_name: str, url: str, *, artifacts: str | None = None) -> Study:
    """A grid study from its storage alone: the cells and study facts from the study attrs,
    one record per cell from the trial that speaks for it (`grid.cell_states`), the files'
    artifact ids from the trials. Exports and downloads go under <results_dir>/<study_name>/."""
    from ablate import grid as grids
    from ablate import store
    from ablate import tune as tuning

    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else (url if store.is_journal(url) else None)
    if path is not None and not Path(path).is_file():
        raise AblateError(f"--storage {store.mask_url(url)}: no such file")
    gs = grids.GridStorage(url, study_name)
    attrs = gs.study_attrs()
    if attrs is None:
        names = ", ".join(s.study_name for s in gs.storage.get_all_studies()) or "none"
        raise AblateError(f"--study-name {study_name}: no study {study_name!r} in {store.mask_url(url)} "
                          f"(studies there: {names})")
    if (attrs.get(tuning.ATTR) or {}).get("kind") == "tune":
        return load_stored_tune(results_dir, study_name, url, gs.storage, artifacts=artifacts)
    if attrs.get("kind") != grids.KIND:
        raise AblateError(f"--study-name {study_name}: {study_name!r} in {store.mask_url(url)} was not made by "
                          "`ablate grid` or `ablate tune`")
    folder = Path(results_dir) / study_name
    trials, cells = gs.trials(), attrs.get("cells") or []
    study = Study(name=study_name, folder=folder, kind="grid", meta=grids.study_meta(study_name, url, attrs),
                  table=grids.runs_table(cells, trials, results_dir=results_dir, study_name=study_name),
                  pruned=store.pruned_ids(attrs), source="storage", storage_url=url)
    spec = store.artifact_spec(artifacts) if artifacts else None
    for key, state in grids.cell_states(cells, trials).items():
        t = state.trial
        if t is not None and state.status != "running":
            _add_stored_trial(study, key, t, f"trial {t.number} ({t.user_attrs.get('label') or key})", spec)
    return study


def load_stored_tune(results_dir: str | Path, study_name: str, url: str, storage, *,
                     artifacts: str | None = None) -> Study:
    """A tune study from its storage alone: study.json rebuilt from the study attrs
    (`tune.stored_meta`), trials.csv from the trials, each finished trial's record from its
    user attrs and its files' artifact ids. Exports and downloads go under <results_dir>/<study_name>/."""
    import optuna

    from ablate import store
    from ablate import tune as tuning

    ostudy = optuna.load_study(study_name=study_name, storage=storage)
    study = Study(name=study_name, folder=Path(results_dir) / study_name, kind="tune",
                  meta=tuning.stored_meta(ostudy, url), table=tuning.trials_frame(ostudy),
                  pruned=store.pruned_ids(ostudy.user_attrs), source="storage", storage_url=url)
    spec = store.artifact_spec(artifacts) if artifacts else None
    for t in ostudy.get_trials(deepcopy=False):
        if t.state != optuna.trial.TrialState.RUNNING:
            _add_stored_trial(study, str(t.number), t, f"trial {t.number}", spec)
    return study


def _add_stored_trial(study: Study, key: str, trial, label: str, artifacts: str | None) -> None:
    """What a stored study keeps of one finished trial under `key`: its label for messages,
    its files' artifact ids and their store (`artifacts` overrides the one it recorded), its
    record (`_stored_record`)."""
    from ablate import store

    study.labels[key] = label
    study.files[key] = store.artifact_ids(trial.system_attrs)
    study.stores[key] = artifacts or trial.user_attrs.get("artifact_store")
    record = _stored_record(study, key, trial, study.folder)
    if record is not None:
        study.records[key] = record


def _stored_record(study: Study, key: str, trial, folder: Path) -> dict | None:
    """A trial's run record: its user attrs, else (a study from before records lived in the
    storage) its run folder here, else its run.json artifact. A completed trial without one
    is an error naming it."""
    from ablate import record as records
    from ablate import store

    what = study.labels[key]
    record = records.from_attrs(trial.user_attrs, what)
    local = folder / trial.user_attrs["run_dir"] / records.RECORD_FILE if trial.user_attrs.get("run_dir") else None
    if local is not None and local.is_file():
        study.run_dirs[key] = local.parent
    if record is not None:
        return record
    if local is not None and local.is_file():
        return _read_record(local)
    aid = study.files[key].get(records.RECORD_FILE)
    if aid is not None and study.stores.get(key):
        if study.stores[key] not in study._opened:
            study._opened[study.stores[key]] = store.open_artifacts(study.stores[key], create=False)
        dest = folder / "checkpoints" / aid / records.RECORD_FILE
        return _read_record(store.fetch(study._opened[study.stores[key]], aid, dest, what=f"{what}: {records.RECORD_FILE}"))
    if trial.state.name == "COMPLETE":
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


def _load_folder(folder: Path, study_name: str, meta: dict) -> Study:
    """A study from its local folder only: study.json, the run folders' records, runs.csv."""
    kind = meta.get("kind") or ("tune" if (folder / "trials.csv").is_file() else "grid")
    records, run_dirs = {}, {}
    for key, run_dir in _run_folders(folder, kind):
        path = run_dir / "run.json"
        if not path.is_file():
            continue  # the attempt is still running, or failed before writing a record
        records[key] = _read_record(path)
        run_dirs[key] = run_dir
    table_path = folder / ("trials.csv" if kind == "tune" else "runs.csv")
    if table_path.is_file():
        table = pd.read_csv(table_path)
    elif kind == "grid" and records:
        from ablate.record import summary

        table = pd.DataFrame([{"cell_id": key, **summary(r)} for key, r in records.items()])
    else:
        table = pd.DataFrame()
    return Study(name=study_name, folder=folder, kind=kind, meta=meta, table=table, records=records, run_dirs=run_dirs)


def _run_folders(folder: Path, kind: str) -> list[tuple[str, Path]]:
    """(key, folder) of each run record: a grid's runs.csv names, per cell, the folder of the
    attempt that speaks for it (runs/<cell_id>/<trial number>/); else runs/<key>/."""
    if kind == "grid" and (folder / "runs.csv").is_file():
        table = pd.read_csv(folder / "runs.csv")
        if "run_dir" in table:  # a cell run before per-attempt folders has its record in runs/<cell_id>/
            return [(str(k), folder / (d if isinstance(d, str) else f"runs/{k}"))
                    for k, d in zip(table["cell_id"], table["run_dir"])]
    return [(p.parent.name, p.parent) for p in sorted((folder / "runs").glob("*/run.json"))]


def _as_bool(col: pd.Series) -> pd.Series:
    return col.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes"))


def _canonical_args(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, sort_keys=True)


def finished_runs(study: Study) -> pd.DataFrame:
    """Completed grid runs (or COMPLETE trials) with `arch`, `cell` and the toggles normalised."""
    t = study.table
    if t.empty:
        return t
    if study.kind == "tune":
        out = t[trial_states(t) == "COMPLETE"].copy()
        out["key"] = out["number"].astype(int).astype(str)
        return out
    out = t[t["status"].astype(str) == "completed"].copy()
    out = out[pd.to_numeric(out["val_miou"], errors="coerce").notna()]
    return with_flags(with_cells(out), study.bar)


def with_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Add `arch` (model, plus its args when one model appears with several), `cell` (a label
    for model × factor setting) and `key` (the run folder name); toggles become real booleans,
    and each factor of the grid's `factors` column (JSON {"loss": "dice"}) a column of level text."""
    out = runs.copy()
    for t in TOGGLES:
        out[t] = _as_bool(out[t]) if t in out else False
    levels = [_json_dict(v) for v in out["factors"]] if "factors" in out else [{} for _ in range(len(out))]
    names = list(dict.fromkeys(k for d in levels for k in d))
    for name in names:
        out[name] = [d.get(name) for d in levels]
    args = out["model_args"].map(_canonical_args) if "model_args" in out else pd.Series("{}", index=out.index)
    out["model_args"] = args
    variants = out.groupby("model")["model_args"].transform("nunique")
    out["arch"] = [m if v <= 1 or a == "{}" else f"{m} {a}" for m, a, v in zip(out["model"], args, variants)]
    out["cell"] = [cell_label(arch, row, lv) for arch, row, lv
                   in zip(out["arch"], out[list(TOGGLES)].to_dict("records"), levels)]
    out["key"] = (out["cell_id"] if "cell_id" in out else out["run_id"]).astype(str)
    for col in (*METRICS, "seconds", "images_per_second"):
        out[col] = pd.to_numeric(out[col], errors="coerce") if col in out else np.nan
    return out


def _json_dict(value) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            raise AblateError(f"runs table: a factors/design entry is not JSON: {value[:80]!r}") from None
        return parsed if isinstance(parsed, dict) else {}
    return {}


def cell_label(arch: str, toggles: dict[str, bool], factors: dict[str, str] | None = None) -> str:
    """'unet · augment', 'unet · no toggles'; with other factors 'unet · loss=dice optimizer=sgd'
    (toggles named first when one is on)."""
    on = [t for t in TOGGLES if toggles.get(t)]
    setting = "+".join(on) if on else "no toggles"
    if factors:
        words = " ".join(f"{k}={v}" for k, v in factors.items())
        setting = f"{setting} {words}" if on else words
    return f"{arch} · {setting}"


def design_of(runs: pd.DataFrame) -> tuple[str, dict[str, list]]:
    """The grid's design ("full" | "fractional" | "one-at-a-time") and every varying factor's
    levels in the design's order, the reference first: toggles as [False, True], other factors
    as level text (as their columns hold them). A study without a `design` column is a full
    design of the toggles that vary in `runs`."""
    design = next((d for d in map(_json_dict, runs["design"]) if d), {}) if "design" in runs else {}
    if not design:
        return "full", {t: [False, True] for t in varying_toggles(runs)}
    levels = {k: ([False, True] if k in TOGGLES else [str(x) for x in v]) for k, v in design.get("levels", {}).items()}
    return str(design.get("kind", "full")), levels


def primary_metric(runs: pd.DataFrame) -> str:
    """Test mIoU where the dataset has a test split, else val mIoU."""
    return "test_miou" if "test_miou" in runs and runs["test_miou"].notna().any() else "val_miou"


def varying_toggles(runs: pd.DataFrame) -> list[str]:
    return [t for t in TOGGLES if t in runs and runs[t].nunique() == 2]


# --------------------------------------------------------------------------- flags
def with_flags(runs: pd.DataFrame, bar: dict | None) -> pd.DataFrame:
    """Add the learning flags (STATISTICS.md): per run `did_not_learn` (val pixel acc or val
    mIoU at or below the all-majority prediction's, see `stats.majority_bar`; None when the
    bar is unknown), and per cell `cell_did_not_learn`: the cell's mean over seeds is at or
    below the bar. `best_is_last` and `early_stopped` become real booleans (NaN: unknown)."""
    out = runs.copy()
    if out.empty:
        return out.assign(did_not_learn=pd.Series(dtype=object), cell_did_not_learn=pd.Series(dtype=bool))
    acc = pd.to_numeric(out["val_pixel_acc"], errors="coerce") if "val_pixel_acc" in out else pd.Series(np.nan, index=out.index)
    out["did_not_learn"] = [stats.did_not_learn(a, m, bar) for a, m in zip(acc, out["val_miou"])]
    means = out.assign(_acc=acc).groupby("cell")[["_acc", "val_miou"]].transform("mean")
    out["cell_did_not_learn"] = [bool(stats.did_not_learn(a, m, bar)) for a, m in zip(means["_acc"], means["val_miou"])]
    for col in ("best_is_last", "early_stopped"):
        raw = out[col] if col in out else pd.Series(np.nan, index=out.index)
        known = raw.notna() & (raw.astype(str).str.strip() != "")
        out[col] = np.where(known, _as_bool(raw), np.nan)
    return out


def cell_flags(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: n, whether it did not learn, and how many of its seeds did not learn, were
    still improving at their last epoch (best epoch = last: budget-limited) or stopped early;
    `flags` says it in words. `runs` comes from `with_flags`."""
    rows = []
    for (arch, cell), g in runs.groupby(["arch", "cell"], sort=False):
        n = len(g)
        counts = {c: int((g[c] == True).sum()) for c in ("did_not_learn", "best_is_last", "early_stopped")}  # noqa: E712
        words = []
        if g["cell_did_not_learn"].iloc[0]:
            words.append("did not learn")
        if counts["best_is_last"]:
            words.append(f"still improving: budget-limited ({counts['best_is_last']}/{n} seeds)")
        if counts["early_stopped"]:
            words.append(f"early-stopped ({counts['early_stopped']}/{n} seeds)")
        rows.append({"arch": arch, "cell": cell, "n": n, "did_not_learn": bool(g["cell_did_not_learn"].iloc[0]),
                     "n_did_not_learn": counts["did_not_learn"], "n_best_is_last": counts["best_is_last"],
                     "n_early_stopped": counts["early_stopped"], "flags": "; ".join(words)})
    return pd.DataFrame(rows, columns=["arch", "cell", "n", "did_not_learn", "n_did_not_learn", "n_best_is_last",
                                       "n_early_stopped", "flags"])


# --------------------------------------------------------------------------- statistics
def _interval(values) -> dict:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    ci = stats.t_interval(v)
    return {
        "n": len(v), "mean": float(v.mean()) if len(v) else np.nan,
        "std": float(v.std(ddof=1)) if len(v) > 1 else np.nan,
        "ci_low": ci[0] if ci else np.nan, "ci_high": ci[1] if ci else np.nan,
        "ci_method": stats.CI_METHOD if ci else (NO_INTERVAL if len(v) == 1 else "no values"),
    }


def cell_stats(runs: pd.DataFrame, *, metrics=(*METRICS, "seconds", "images_per_second")) -> pd.DataFrame:
    """Tidy per-cell statistics: one row per (cell, metric) with n, mean, std and the 95%
    Student-t interval over seeds."""
    rows = []
    for (arch, cell), g in runs.groupby(["arch", "cell"], sort=False):
        for metric in metrics:
            if metric not in g or g[metric].isna().all():
                continue
            rows.append({"arch": arch, "cell": cell, **{t: bool(g[t].iloc[0]) for t in TOGGLES},
                         "metric": metric, "seeds": " ".join(str(s) for s in sorted(g["seed"])),
                         **_interval(g[metric])})
    return pd.DataFrame(rows)


def _baseline_cell(arch_runs: pd.DataFrame) -> str | None:
    """The reference cell: every varying toggle off, every other varying factor at its first
    level (factors fixed by the study stay as they are)."""
    _, levels = design_of(arch_runs)
    if not levels:
        return None
    ref = _at(arch_runs, {k: v[0] for k, v in levels.items()})
    return ref["cell"].iloc[0] if not ref.empty else None


def _at(runs: pd.DataFrame, setting: dict) -> pd.DataFrame:
    """The runs at this setting of the factors ({factor: level})."""
    mask = np.ones(len(runs), dtype=bool)
    for k, v in setting.items():
        mask &= (runs[k] == v).to_numpy() if k in runs else False
    return runs[mask]


def _unlearned(runs: pd.DataFrame, cells) -> list[str]:
    if "cell_did_not_learn" not in runs:
        return []
    sub = runs[runs["cell"].isin(list(cells))]
    return sorted(set(sub.loc[sub["cell_did_not_learn"].astype(bool), "cell"]))


def _test_row(values) -> dict:
    """Estimate, t interval, paired t p and P(>0) of per-seed values (differences or effects).
    Rounded to 1e-12 first: a difference that is 0 up to float error is a tie, not a sign."""
    values = np.round(np.asarray(values, dtype=float), 12)
    s = _interval(values)
    return {"n": s["n"], "estimate": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
            "ci_method": s["ci_method"], "excludes_zero": _excludes_zero(s), "p_value": stats.paired_t_p(values),
            "p_method": stats.P_METHOD if s["n"] >= 2 else "–", "p_improve": stats.p_improve(values)}


def paired_comparisons(runs: pd.DataFrame, *, metrics=("val_miou", "test_miou")) -> pd.DataFrame:
    """Each cell against its architecture's reference cell (`_baseline_cell`), paired
    by seed over the seeds present in both: the per-seed differences, their mean with a 95% t
    interval, the paired t-test p, Holm-adjusted over the family "every cell vs the baseline,
    per architecture and metric" (`p_holm`), P(on > off) over the pairs (`p_improve`), and a
    verdict (see `verdict_word`)."""
    rows = []
    for arch, a in runs.groupby("arch", sort=False):
        base = _baseline_cell(a)
        if base is None:
            continue
        for cell, g in a.groupby("cell", sort=False):
            if cell == base:
                continue
            for metric in metrics:
                if metric not in g or g[metric].isna().all():
                    continue
                y = g.groupby("seed")[metric].mean()
                y0 = a[a["cell"] == base].groupby("seed")[metric].mean()
                seeds = sorted(set(y.dropna().index) & set(y0.dropna().index))
                diffs = np.array([y[s] - y0[s] for s in seeds], dtype=float)
                row = _test_row(diffs)
                rows.append({"arch": arch, "cell": cell, "baseline": base, "metric": metric, "n_pairs": len(seeds),
                             "seeds": " ".join(map(str, seeds)), "diffs": " ".join(f"{d:+.4f}" for d in diffs),
                             **row, "mean_diff": row["estimate"], "unlearned": ", ".join(_unlearned(a, (cell, base)))})
    out = pd.DataFrame(rows)
    return _judge(out, kind="comparison") if not out.empty else out


def _excludes_zero(s: dict) -> bool:
    return bool(s["ci_low"] > 0 or s["ci_high"] < 0)  # False for NaN (no interval)


def factorial_effects(runs: pd.DataFrame, *, metrics=("val_miou", "test_miou")) -> pd.DataFrame:
    """Main effects and two-way interactions of the factors, per architecture.

    Full design (STATISTICS.md, generalised to factors of any number of levels): with y the
    per-seed cell values,
      main effect of F, level l vs the reference r = mean over the other factors' settings of
                         y(F = l) − y(F = r); for a toggle (off, on) it is the classical
                         mean(y | on) − mean(y | off) = (2 / 2^k) Σ_cells s · y
      interaction (F: l vs r) × (G: m vs q) = ½ [(effect of F's l vs r with G = m) − (with G = q)],
                         averaged over the remaining factors (for two toggles the Yates /
                         Box–Hunter–Hunter convention: a pure A·B synergy δ on the (on, on) cell gives δ/2).
    Fractional design: main effects (and, at resolution ≥ V, two-way interactions) from the
    ±1 contrasts of the runs, (2/N) Σ s · y; `aliases` names what each estimate is confounded
    with (effects of order ≤ 3). One-at-a-time: each factor's other levels vs the reference
    cell, paired by seed; no interactions (the design cannot see them).
    Each effect is computed per seed (seeds present in every cell); the per-seed effects get
    the t interval, the t-test p (Holm-adjusted over the architecture's main effects and
    interactions for that metric), P(effect > 0) over seeds and a verdict. An effect of an
    architecture with a cell that did not learn gets no verdict: every cell enters every effect.
    """
    rows = []
    for arch, a in runs.groupby("arch", sort=False):
        kind, levels = design_of(a)
        if not levels:
            continue
        settings, contrasts = _design_contrasts(kind, levels)
        unlearned = ", ".join(_unlearned(a, a["cell"].unique()))
        for metric in metrics:
            if metric not in a or a[metric].isna().all():
                continue
            base = {"arch": arch, "metric": metric, "unlearned": unlearned, "design": kind}
            per_cell = [_at(a, st).groupby("seed")[metric].mean().dropna() for st in settings]
            missing = [_setting_text(arch, st) for st, v in zip(settings, per_cell) if v.empty]
            seeds = sorted(set.intersection(*(set(v.index) for v in per_cell)))
            if missing or not seeds:
                note = f"incomplete design: no finished run in {', '.join(missing)}" if missing else "no seed common to all cells"
                rows.append({**base, "effect": "+".join(levels), "kind": "main", "factors": " ".join(levels),
                             "label": "+".join(levels), "aliases": "", "n_seeds": 0, **_test_row([]),
                             "ci_method": note, "seeds": "", "per_seed": ""})
                continue
            y = np.array([[v[s] for v in per_cell] for s in seeds])  # seeds × cells
            for c in contrasts:
                per_seed = y @ c["weights"]
                rows.append({**base, **{k: v for k, v in c.items() if k != "weights"}, "n_seeds": len(seeds),
                             **_test_row(per_seed), "seeds": " ".join(map(str, seeds)),
                             "per_seed": " ".join(f"{e:+.4f}" for e in per_seed)})
    out = pd.DataFrame(rows)
    return _judge(out, kind="effect") if not out.empty else out


def _setting_text(arch: str, setting: dict) -> str:
    return cell_label(arch, {k: v for k, v in setting.items() if k in TOGGLES},
                      {k: v for k, v in setting.items() if k not in TOGGLES})


def _part(name: str, level, ref) -> tuple[str, str]:
    """(effect text, words) of one factor's contrast: ('augment', 'augmentation') for a toggle,
    ('loss = dice vs ce', 'loss = dice vs ce') otherwise."""
    if name in TOGGLES:
        return name, TOGGLE_LABELS.get(name, name)
    text = f"{name} = {level} vs {ref}"
    return text, text


def _design_contrasts(kind: str, levels: dict[str, list]) -> tuple[list[dict], list[dict]]:
    """The design's settings (cells, in a fixed order) and its contrasts over them: effect,
    kind, factors, label, aliases and the weights that turn per-cell values into the effect."""
    from ablate import design

    names = list(levels)
    if kind == "one-at-a-time":
        settings = design.one_at_a_time(levels)
        contrasts = []
        for i, st in enumerate(settings[1:], start=1):
            name = next(k for k in names if st[k] != settings[0][k])
            effect, label = _part(name, st[name], levels[name][0])
            w = np.zeros(len(settings))
            w[i], w[0] = 1.0, -1.0
            contrasts.append({"effect": effect, "kind": "main", "factors": name, "label": label,
                              "aliases": "not seen: interactions (one-at-a-time)", "weights": w})
        return settings, contrasts
    if kind == "fractional":
        d = design.fractional_factorial(names)
        settings = [{k: levels[k][int(on)] for k, on in run.items()} for run in d.settings()]
        letters = {letter: name for name, letter in d.letters.items()}
        aliases = d.aliases()
        n = len(settings)
        terms = [(i,) for i in range(len(names))]
        if d.resolution >= 5:
            terms += list(itertools.combinations(range(len(names)), 2))
        contrasts = []
        for term in terms:
            parts = [_part(names[i], levels[names[i]][1], levels[names[i]][0]) for i in term]
            word = "".join(d.letters[names[i]] for i in term)
            partners = ["×".join(letters[ch] for ch in w) for w in aliases.get(word, [])]
            contrasts.append({"effect": " × ".join(p[0] for p in parts), "kind": "main" if len(term) == 1 else "interaction",
                              "factors": " ".join(names[i] for i in term),
                              "label": parts[0][1] if len(term) == 1 else " × ".join(p[1] for p in parts) + " interaction",
                              "aliases": "; ".join(partners),
                              "weights": np.prod([d.runs[:, i] for i in term], axis=0) * 2.0 / n})
        return settings, contrasts
    settings = design.full_factorial(levels)
    table = pd.DataFrame(settings)
    contrasts = []
    for name in names:
        ref = levels[name][0]
        for level in levels[name][1:]:
            on, off = (table[name] == level).to_numpy(), (table[name] == ref).to_numpy()
            effect, label = _part(name, level, ref)
            contrasts.append({"effect": effect, "kind": "main", "factors": name, "label": label, "aliases": "",
                              "weights": on / on.sum() - off / off.sum()})
    for f, g in itertools.combinations(names, 2):
        for lf in levels[f][1:]:
            for lg in levels[g][1:]:
                w = np.zeros(len(settings))
                for gl, sign in ((lg, 0.5), (levels[g][0], -0.5)):
                    at = (table[g] == gl).to_numpy()
                    on, off = at & (table[f] == lf).to_numpy(), at & (table[f] == levels[f][0]).to_numpy()
                    w += sign * (on / on.sum() - off / off.sum())
                (ef, lab_f), (eg, lab_g) = _part(f, lf, levels[f][0]), _part(g, lg, levels[g][0])
                contrasts.append({"effect": f"{ef} × {eg}", "kind": "interaction", "factors": f"{f} {g}",
                                  "label": f"{lab_f} × {lab_g} interaction", "aliases": "", "weights": w})
    return settings, contrasts


FAMILY = {"effect": "the main effects (each level vs the reference level) and two-way interactions of the factors, "
                    "per architecture and metric",
          "comparison": "every cell vs the reference cell (toggles off, every other factor at its first level), "
                        "per architecture and metric"}


def _judge(table: pd.DataFrame, *, kind: str) -> pd.DataFrame:
    """Holm-adjust p within each (architecture, metric) family, then give every row its verdict."""
    out = table.copy()
    out["p_holm"] = np.nan
    for _, idx in out.groupby(["arch", "metric"], sort=False).groups.items():
        out.loc[idx, "p_holm"] = stats.holm(out.loc[idx, "p_value"].to_numpy(dtype=float))
    out["family"] = FAMILY[kind]
    out["verdict"] = [verdict_word(r) for r in out.to_dict("records")]
    out["sentence"] = [_sentence(r, kind) for r in out.to_dict("records")]
    return out


def verdict_word(row: dict) -> str:
    """'helps' / 'hurts' (an interaction: 'positive interaction' / 'negative interaction')
    only with n >= 3 paired seeds, a 95% interval that excludes 0, Holm p < 0.05 and no cell
    that did not learn; else 'no clear effect', 'not enough seeds', 'did not learn' or
    'no estimate'."""
    n, est = row["n"], row["estimate"]
    if not n or est is None or np.isnan(est):
        return "no estimate"
    if row.get("unlearned"):
        return "did not learn"
    if n < stats.MIN_VERDICT_N:
        return "not enough seeds"
    if row["excludes_zero"] and row["p_holm"] < stats.ALPHA:
        if row.get("kind") == "interaction":
            return "positive interaction" if est > 0 else "negative interaction"
        return "helps" if est > 0 else "hurts"
    return "no clear effect"


def _subject(row: dict, kind: str) -> str:
    if kind == "comparison":
        return f"{row['cell']} vs {row['baseline'].split(' · ')[-1]}"
    label = row.get("label")
    if not isinstance(label, str) or not label:  # an effects table written before factors
        names = [TOGGLE_LABELS.get(f, f) for f in str(row["factors"]).split()]
        label = names[0] if row["kind"] == "main" else " × ".join(names) + " interaction"
    return f"{row['arch']}: {label}"


def p_text(p) -> str:
    """'= 0.012', '< 0.001', or '–' (no p: n < 2)."""
    if p is None or np.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def interval_text(est, lo, hi) -> str:
    if est is None or np.isnan(est):
        return "–"
    return f"{est:+.3f}" + ("" if np.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]")


def _sentence(row: dict, kind: str) -> str:
    """One plain-language sentence for a comparisons or effects row."""
    metric = METRIC_LABELS.get(row["metric"], row["metric"])
    subject, word, n = _subject(row, kind), row["verdict"], row["n"]
    est = interval_text(row["estimate"], row["ci_low"], row["ci_high"])
    if word == "no estimate":
        return f"{subject}: no estimate ({row['ci_method']})"
    seeds = f"n={n}"
    if word == "did not learn":
        return f"{subject}: no verdict, involves cells that did not learn ({row['unlearned']}); {metric} {est}, {seeds}"
    if word == "not enough seeds":
        return f"{subject}: not enough seeds (n={n}, {stats.MIN_VERDICT_N} needed); {metric} {est}"
    tail = f"{seeds}, Holm p {p_text(row['p_holm'])}, P(improve) = {row['p_improve']:.2f}"
    if word == "no clear effect":
        return f"{subject}: no clear effect on {metric}, {est}; {tail}"
    if word in ("helps", "hurts"):
        return f"{subject} {'raises' if word == 'helps' else 'lowers'} {metric}: {est}; {tail}"
    return f"{subject}: {word} on {metric}, {est}; {tail}"


# --------------------------------------------------------------------------- findings
def more_seeds(study: Study, runs: pd.DataFrame, *, target: int = stats.MIN_VERDICT_N) -> dict | None:
    """When some cell has fewer than `target` seeds: the exact command that adds them (the
    grid command study.json recorded, with --seeds replaced), how many runs it adds, and the
    time it should take (new runs × mean seconds per finished run of this study / workers).
    None when every cell has `target` seeds."""
    if runs.empty:
        return None
    n_min = int(runs.groupby("cell")["seed"].nunique().min())
    if n_min >= target:
        return None
    have = [int(s) for s in (study.meta.get("seeds") or sorted(runs["seed"].unique()))]
    seeds = list(have)
    candidate = 0
    while len(seeds) < target:
        if candidate not in seeds:
            seeds.append(candidate)
        candidate += 1
    new = len(seeds) - len(have)
    per_seed = int(study.meta.get("cells") or runs["cell"].nunique() * len(have)) // max(len(have), 1)
    value = str(target) if sorted(seeds) == list(range(target)) else ",".join(map(str, seeds))
    args = _without_seeds(study.meta.get("command") or ["grid", "--study-name", study.name])
    command = " ".join(["ablate", *map(_quote, args), "--seeds", value])
    new_runs = new * per_seed
    workers = study.meta.get("workers")
    workers = int(workers) if str(workers).isdigit() else 1  # "auto" in a study that never ran: one
    minutes = new_runs * float(runs["seconds"].mean()) / workers / 60
    if new_runs and np.isfinite(minutes):
        text = f"`{command}` adds {new_runs} runs, about {max(1, round(minutes))} min"
    elif new_runs:  # no timings recorded
        text = f"`{command}` adds {new_runs} runs"
    else:  # enough seeds asked for, some runs failed or are missing: rerunning retries them
        text = f"`{command}` reruns the missing runs"
    return {"n_min": n_min, "target": target, "command": command, "new_runs": new_runs,
            "minutes": minutes, "text": text}


def _without_seeds(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--seeds":
            skip = True
        elif not a.startswith("--seeds="):
            out.append(a)
    return out


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


@dataclass
class ArchFindings:
    arch: str
    metric: str
    verdicts: list[dict]  # effects/comparisons rows that carry a verdict word
    main_effects: list[dict]  # every main effect (with or without a verdict)
    flagged: pd.DataFrame  # cell_flags rows with a flag
    n_min: int


@dataclass
class Findings:
    metric: str
    bar: dict | None
    seeds: dict | None  # more_seeds()
    n_max: int
    archs: list[ArchFindings]
    families: dict[str, str] = field(default_factory=lambda: dict(FAMILY))
    design: list[str] = field(default_factory=list)  # the design in words (`design_notes`); empty: full


VERDICT_WORDS = ("helps", "hurts", "positive interaction", "negative interaction")
VERDICT_SHORT = {"did not learn": "no verdict (a cell did not learn)", "not enough seeds": "not enough seeds",
                 "no estimate": "no estimate"}


def findings(study: Study, runs: pd.DataFrame, *, effects: pd.DataFrame | None = None,
             comparisons: pd.DataFrame | None = None) -> Findings:
    """What the Findings panel says, per architecture: the verdicts that meet the rules (on
    the primary metric), every main effect with its interval, the flagged cells; plus the
    "not enough seeds" advice and the did-not-learn bar."""
    metric = primary_metric(runs)
    effects = factorial_effects(runs) if effects is None else effects
    comparisons = paired_comparisons(runs) if comparisons is None else comparisons
    flags = cell_flags(runs)
    archs = []
    for arch, a in runs.groupby("arch", sort=False):
        rows = []
        for table in (effects, comparisons):
            if not table.empty:
                t = table[(table["arch"] == arch) & (table["metric"] == metric)]
                rows += t[t["verdict"].isin(VERDICT_WORDS)].to_dict("records")
        mains = [] if effects.empty else effects[(effects["arch"] == arch) & (effects["metric"] == metric)
                                                 & (effects["kind"] == "main")].to_dict("records")
        f = flags[(flags["arch"] == arch) & (flags["flags"] != "")]
        archs.append(ArchFindings(arch, metric, rows, mains, f, int(a.groupby("cell")["seed"].nunique().min())))
    n_max = int(runs.groupby("cell")["seed"].nunique().max()) if not runs.empty else 0
    return Findings(metric, study.bar, more_seeds(study, runs), n_max, archs, design=design_notes(study, runs))


ONE_AT_A_TIME_NOTE = ("One-at-a-time design: each factor was varied from the reference cell with every other factor "
                      "at its reference level, so these effects hold at that setting only and the design cannot see "
                      "interactions.")


def design_notes(study: Study, runs: pd.DataFrame) -> list[str]:
    """What the Findings panel says about the design: nothing for a full factorial; a
    fractional design's generators and alias structure (as `ablate grid --dry-run` printed them,
    from study.json); one-at-a-time's blind spot for interactions."""
    kind = design_of(runs)[0] if not runs.empty else "full"
    lines = list(((study.meta.get("grid") or {}).get("design") or {}).get("lines") or [])
    if kind == "one-at-a-time":
        return [ONE_AT_A_TIME_NOTE]
    if kind == "fractional":
        return lines or ["Fractional design: main effects are aliased with interactions of three or more factors "
                         "(see effects.csv, column aliases)."]
    return []


def compare_architectures(runs: pd.DataFrame, *, select_by: str = "val_miou", metric: str | None = None) -> pd.DataFrame:
    """Each architecture at its best cell (highest mean `select_by`), scored on `metric` (test
    mIoU by default, so the selection and the score use different data). Rank r means r−1
    architectures are clearly better (their CI lies wholly above this one's); overlapping
    CIs share a rank. With n=1 the point value stands in for the interval."""
    metric = metric or primary_metric(runs)
    rows = []
    for arch, a in runs.groupby("arch", sort=False):
        best = a.groupby("cell")[select_by].mean().idxmax()
        rows.append({"arch": arch, "best_cell": best, "selected_by": select_by, "metric": metric,
                     **_interval(a.loc[a["cell"] == best, metric])})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    lo = out["ci_low"].fillna(out["mean"]).to_numpy()
    hi = out["ci_high"].fillna(out["mean"]).to_numpy()
    out["rank"] = [1 + int(np.sum(lo > hi[i])) for i in range(len(out))]
    out["tied_with"] = [", ".join(out["arch"][j] for j in range(len(out)) if j != i and lo[j] <= hi[i] and lo[i] <= hi[j])
                        for i in range(len(out))]
    return out.sort_values(["rank", "mean"], ascending=[True, False], ignore_index=True)


def pareto_front(cost, quality) -> np.ndarray:
    """True where no other point is at least as cheap and at least as good, and better in one."""
    c, q = np.asarray(cost, dtype=float), np.asarray(quality, dtype=float)
    dominated = ((c[None, :] <= c[:, None]) & (q[None, :] >= q[:, None])
                 & ((c[None, :] < c[:, None]) | (q[None, :] > q[:, None])))
    return ~dominated.any(axis=1)


def cost_table(runs: pd.DataFrame, *, quality: str | None = None) -> pd.DataFrame:
    """Per cell: mean seconds per run, mean training images/s, mean quality (with CI), and
    whether the cell is on the quality-vs-seconds Pareto front."""
    quality = quality or primary_metric(runs)
    rows = []
    for (arch, cell), g in runs.groupby(["arch", "cell"], sort=False):
        q = _interval(g[quality])
        rows.append({"arch": arch, "cell": cell, "n": q["n"], "seconds": g["seconds"].mean(),
                     "images_per_second": g["images_per_second"].mean(), "metric": quality,
                     "quality": q["mean"], "ci_low": q["ci_low"], "ci_high": q["ci_high"]})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["pareto"] = pareto_front(out["seconds"], out["quality"])
    return out


# --------------------------------------------------------------------------- records
def learning_curves(study: Study, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table of per-epoch curves: one row per (run, epoch), with the run's best and stop epochs."""
    rows = []
    for r in runs.itertuples():
        rec = study.records.get(r.key)
        if not rec:
            continue
        epochs = rec["config"].get("epochs")
        for c in rec.get("curves") or []:
            rows.append({"arch": getattr(r, "arch", ""), "cell": getattr(r, "cell", f"trial {r.key}"),
                         "seed": rec["config"].get("seed"), "key": r.key, "best_epoch": rec.get("best_epoch"),
                         "stopped_epoch": rec.get("stopped_epoch"), "max_epochs": epochs,
                         **{k: c.get(k) for k in ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr")}})
    return pd.DataFrame(rows)


def class_iou_table(study: Study, runs: pd.DataFrame, *, split: str | None = None) -> pd.DataFrame:
    """Cells × classes: per-class IoU averaged over seeds (classes absent from the split are NaN)."""
    split = split or primary_metric(runs).split("_")[0]
    names = study.class_names
    rows = {}
    for cell, g in runs.groupby("cell", sort=False):
        ious = [study.records[k]["metrics"].get(split, {}).get("class_iou") for k in g["key"] if k in study.records]
        ious = [[np.nan if x is None else x for x in v] for v in ious if v]
        if ious:
            with warnings.catch_warnings():  # a class absent from every seed's split stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                rows[cell] = np.nanmean(np.array(ious, dtype=float), axis=0) if len(ious) > 1 else np.array(ious[0], dtype=float)
    if not rows:
        return pd.DataFrame()
    k = max(len(v) for v in rows.values())
    columns = [names[i] if i < len(names) else f"class {i}" for i in range(k)]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def failures(study: Study) -> pd.DataFrame:
    """Failed runs or trials: key, label, reason and the last lines of the traceback."""
    t = study.table
    if t.empty:
        return pd.DataFrame(columns=["key", "label", "reason", "traceback"])
    if study.kind == "tune":
        bad = t[trial_states(t) == "FAIL"]
        keys = bad["number"].astype(int).astype(str)
        labels = [f"trial {k}" for k in keys]
    else:
        # "retry": failed, and the grid will try it again on its next run
        bad = with_cells(t[t["status"].astype(str).isin(("failed", "retry"))]) if "status" in t else t.iloc[:0]
        keys = bad["key"] if not bad.empty else pd.Series(dtype=str)
        labels = [f"{c} · seed {s}" + (" (will be retried)" if st == "retry" else "")
                  for c, s, st in zip(bad.get("cell", []), bad.get("seed", []), bad.get("status", []))]
    rows = []
    for key, label in zip(keys, labels):
        rec = study.records.get(key, {})
        tb = rec.get("traceback") or ""
        reason = rec.get("failure_reason")
        if reason is None and "failure_reason" in bad:
            reason = bad.loc[keys == key, "failure_reason"].iloc[0]
        rows.append({"key": key, "label": label, "reason": "" if pd.isna(reason) else str(reason),
                     "traceback": "\n".join(tb.rstrip().splitlines()[-TRACEBACK_LINES:])})
    return pd.DataFrame(rows, columns=["key", "label", "reason", "traceback"])


def overview(study: Study) -> dict:
    """Dataset, hardware, seeds, run counts and total compute, as plain data."""
    t = study.table
    if study.kind == "tune":
        counts = trial_states(t).value_counts().to_dict() if not t.empty else {}
        seeds = sorted({r["config"]["seed"] for r in study.records.values() if r.get("config")})
    else:
        counts = t["status"].astype(str).value_counts().to_dict() if "status" in t else {}
        seeds = sorted(pd.to_numeric(t["seed"], errors="coerce").dropna().astype(int).unique().tolist()) if "seed" in t else []
    hardware: dict[tuple, int] = {}
    for rec in study.records.values():
        env = rec.get("environment") or {}
        if env:
            key = tuple(env.get(k) for k in ("device_name", "device", "threads", "precision", "torch", "python"))
            hardware[key] = hardware.get(key, 0) + 1
    seconds = pd.to_numeric(t["seconds"], errors="coerce").sum() if "seconds" in t else 0.0
    return {
        "kind": study.kind, "storage": study.meta.get("storage"), "dataset": study.dataset,
        "hardware": [dict(zip(("device_name", "device", "threads", "precision", "torch", "python"), k), runs=n)
                     for k, n in hardware.items()],
        "seeds": seeds, "counts": {str(k): int(v) for k, v in counts.items()}, "total_seconds": float(seconds),
    }


def training_setup(study: Study) -> pd.DataFrame:
    """Per architecture, how its runs were trained, as the records say: epoch budget, the
    early-stopping rule, the weights it started from, and the resolution of its metrics.
    Several values in one column mean the runs differ (e.g. a study extended with a flag)."""
    rows: dict[str, dict[str, set]] = {}
    for rec in study.records.values():
        cfg = rec.get("config") or {}
        if not cfg or rec.get("status") != "completed":
            continue
        row = rows.setdefault(str(cfg.get("model")), {k: set() for k in ("epochs", "early_stopping", "weights", "metrics")})
        row["epochs"].add(str(cfg.get("epochs")))
        row["early_stopping"].add(_stopping_rule(rec.get("early_stopping"), cfg))
        row["weights"].add(str(rec.get("weights") or "random init (architecture without pretrained weights)"))
        row["metrics"].add(str(rec.get("metrics_resolution") or "working size"))
    return pd.DataFrame([{"model": m, **{k: "; ".join(sorted(v)) for k, v in r.items()}} for m, r in sorted(rows.items())],
                        columns=["model", "epochs", "early_stopping", "weights", "metrics"])


def _stopping_rule(stop: dict | None, cfg: dict) -> str:
    patience = (stop or {}).get("patience", cfg.get("patience"))
    if not patience:
        return "off (every run trains its whole budget)"
    monitor = (stop or {}).get("monitor") or ("val_loss" if cfg.get("early_stop_on") == "loss" else "val_miou")
    delta = (stop or {}).get("min_delta", cfg.get("min_delta")) or 0
    return f"on {METRIC_LABELS.get(monitor, monitor.replace('_', ' '))}, patience {patience}" + (
        f", min delta {delta}" if delta else "")


# --------------------------------------------------------------------------- tune
def trial_states(trials: pd.DataFrame) -> pd.Series:
    return trials["state"].astype(str).str.split(".").str[-1].str.upper()


def best_so_far(trials: pd.DataFrame, *, value: str = "val_miou") -> pd.DataFrame:
    """Trials in order with their value and the best COMPLETE value reached by then (maximised)."""
    t = trials.assign(state=trial_states(trials)).sort_values("number")
    v = pd.to_numeric(t[value], errors="coerce").where(t["state"] == "COMPLETE")
    return pd.DataFrame({"number": t["number"].astype(int).to_numpy(), "state": t["state"].to_numpy(),
                         "value": v.to_numpy(), "best_so_far": v.cummax().ffill().to_numpy()})


def expected_max(values, n_max: int | None = None) -> pd.DataFrame:
    """Dodge et al. (2019) expected best value among n trials drawn (with replacement) from the
    observed ones: with v_(1) ≤ … ≤ v_(N), E[max_n] = Σ_i v_(i) [(i/N)^n − ((i−1)/N)^n].
    Also the standard deviation of that maximum, from E[max_n²]."""
    v = np.sort(np.asarray(values, dtype=float)[~np.isnan(np.asarray(values, dtype=float))])
    big_n = len(v)
    if big_n == 0:
        return pd.DataFrame(columns=["n", "expected_max", "std"])
    i = np.arange(1, big_n + 1)
    rows = []
    for n in range(1, (n_max or big_n) + 1):
        w = (i / big_n) ** n - ((i - 1) / big_n) ** n
        mean = float(w @ v)
        rows.append({"n": n, "expected_max": mean, "std": float(np.sqrt(max(w @ v**2 - mean**2, 0.0)))})
    return pd.DataFrame(rows)


@contextlib.contextmanager
def quiet_optuna():
    """Optuna logs advice ("too few trials", "unique value length...") that is noise in a report."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def param_importances(optuna_study) -> pd.DataFrame:
    """Hyperparameter importances for val mIoU by PED-ANOVA (no randomness; fANOVA would need
    scikit-learn). Empty when there are too few complete trials."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    try:
        with quiet_optuna():
            imp = get_param_importances(optuna_study, evaluator=PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError, ZeroDivisionError):
        return pd.DataFrame(columns=["param", "importance"])
    return pd.DataFrame({"param": list(imp), "importance": list(imp.values())})


# --------------------------------------------------------------------------- gallery
@dataclass
class Gallery:
    class_names: list[str]
    image_ids: list[str]
    images: list[np.ndarray]  # H×W×3 uint8
    truths: list[np.ndarray]  # H×W uint8, 255 = void
    predictions: list[tuple[str, list[np.ndarray]]]  # (label, one mask per image)
    notes: list[str] = field(default_factory=list)


def gallery_keys(runs_table: pd.DataFrame) -> list[str]:
    """The cell ids of a grid's runs table (`grid.runs_table`) whose checkpoints the gallery
    shows: `best_runs` over its completed rows (what --keep-checkpoints best keeps)."""
    if runs_table.empty:
        return []
    done = runs_table[runs_table["status"].astype(str) == "completed"]
    done = done[pd.to_numeric(done["val_miou"], errors="coerce").notna()]
    return [key for _, key in _best_grid_runs(with_cells(done))] if not done.empty else []


def best_runs(study: Study, runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, run key) of the runs shown in the gallery: per architecture the best-val run of
    its best cell (grid), or the best trial (tune)."""
    if runs.empty:
        return []
    if study.kind == "tune":
        best = runs.loc[pd.to_numeric(runs["val_miou"], errors="coerce").idxmax()]
        return [(f"best trial {best['key']}", best["key"])]
    return _best_grid_runs(runs)


def _best_grid_runs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """Per architecture, the cell with the highest mean val mIoU and, in it, the seed with the
    highest val mIoU. Ties go to what ran first (the lower trial number; for a cell, its first
    run's), and means are exact sums (math.fsum): a grid worker makes the same choice from the
    runs completed so far when it decides whether a run keeps its checkpoint
    (`grid.keeps_checkpoint`). Cells that did not learn often tie exactly."""
    a = runs.assign(_order=pd.to_numeric(runs["trial_number"], errors="coerce") if "trial_number" in runs
                    else np.arange(len(runs), dtype=float))
    a["_order"] = a["_order"].fillna(np.inf)
    out = []
    for arch, runs_of_arch in a.groupby("arch", sort=False):
        cells = runs_of_arch.groupby("cell").agg(mean=("val_miou", lambda v: math.fsum(v) / len(v)),
                                                 first=("_order", "min"))
        cell = cells.sort_values(["mean", "first"], ascending=[False, True], kind="stable").index[0]
        run = runs_of_arch[runs_of_arch["cell"] == cell].sort_values(["val_miou", "_order"], ascending=[False, True],
                                                                     kind="stable").iloc[0]
        out.append((f"{cell} (seed {run['seed']})", run["key"]))
    return out


def gallery(study: Study, runs: pd.DataFrame, *, n_images: int = GALLERY_IMAGES, cache_dir: str | Path | None = None) -> Gallery:
    """A few fixed val images (evenly spaced over the split), their ground truth, and the
    prediction of each run from `best_runs`: the masks its worker stored (predictions.png),
    else predicted here from its checkpoint."""
    from ablate.data import load_dataset
    from ablate.predict import load_run, model_code, predict_masks

    empty = Gallery(study.class_names, [], [], [], [])
    chosen = [(label, key) for label, key in best_runs(study, runs) if key in study.records]
    if not chosen:
        empty.notes.append("no run record to predict with")
        return empty
    cfg = study.records[chosen[0][1]]["config"]
    try:
        ds = load_dataset(cfg["data"], image_size=tuple(cfg["image_size"]), num_classes=cfg["num_classes"],
                          ignore_index=cfg["ignore_index"], val_fraction=cfg["val_fraction"],
                          cache_dir=cache_dir if cache_dir is not None else study.folder.parent / ".cache")
    except AblateError as exc:
        empty.notes.append(f"the dataset could not be loaded: {exc}")
        return empty
    val = ds.splits["val"]
    idx = gallery_indices(len(val), n_images)
    images = val.images[idx]
    out = Gallery(study.class_names or ds.class_names, [val.ids[i] for i in idx],
                  [im.permute(1, 2, 0).numpy() for im in images], [m.numpy() for m in val.masks[idx]], [])
    for label, key in chosen:
        # The masks the run's worker drew with the trained model (its predictions.png), when
        # it stored them for these images: no checkpoint to download and rebuild.
        masks = study.stored_predictions(key, out.image_ids, [t.shape for t in out.truths])
        if masks is not None:
            out.predictions.append((label, masks))
            continue
        module = model_code(study.records[key]["config"]["model"])
        if module is not None:  # a report has no flag to name user code, so it imports none from a stored run
            out.notes.append(f"{label}: its model is user code ({module}), which a report does not run; "
                             "the run stored no predictions for these images")
            continue
        try:
            model, ckpt = load_run(study.checkpoint_dir(key))
        except NoCheckpoint as exc:
            out.notes.append(f"{label}: {exc}")
            continue
        except AblateError as exc:
            if study.source == "storage":  # the storage says the file is there: a damaged study, not a note
                raise
            out.notes.append(f"{label}: {exc}")
            continue
        masks = predict_masks(model, images, tuple(ckpt["image_size"]))
        out.predictions.append((label, [m.numpy() for m in masks]))
    return out


# --------------------------------------------------------------------------- tables on disk
def write_tables(study: Study, runs: pd.DataFrame, *, effects: pd.DataFrame | None = None,
                 comparisons: pd.DataFrame | None = None) -> list[Path]:
    """effects.csv and comparisons.csv beside the grid's runs.csv; for a study read from its
    storage, runs.csv and summary.csv too, or a tune's trials.csv (exports, wherever the
    report runs). `effects` / `comparisons`: the study's, when the caller computed them."""
    if study.kind == "tune":
        return [_io.write_csv(study.folder / "trials.csv", study.table)] if study.source == "storage" else []
    written = []
    if study.source == "storage":
        from ablate import grid as grids

        written += [_io.write_csv(study.folder / "runs.csv", study.table),
                    _io.write_csv(study.folder / "summary.csv", grids.summary_table(study.table, study.bar))]
    if runs.empty:
        return written
    return written + [
        _io.write_csv(study.folder / "effects.csv",
                      (factorial_effects(runs) if effects is None else effects).reindex(columns=EFFECT_COLUMNS)),
        _io.write_csv(study.folder / "comparisons.csv",
                      (paired_comparisons(runs) if comparisons is None else comparisons).reindex(columns=COMPARISON_COLUMNS))]


_TEST_COLUMNS = ["n", "estimate", "ci_low", "ci_high", "ci_method", "excludes_zero", "p_value", "p_method", "p_holm",
                 "p_improve", "verdict", "sentence", "unlearned", "family"]
EFFECT_COLUMNS = ["arch", "metric", "effect", "kind", "factors", "label", "design", "aliases", "n_seeds", *_TEST_COLUMNS,
                  "seeds", "per_seed"]
COMPARISON_COLUMNS = ["arch", "cell", "baseline", "metric", "n_pairs", "mean_diff", *_TEST_COLUMNS, "seeds", "diffs"]
