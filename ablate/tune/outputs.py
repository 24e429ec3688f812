"""Tuner, what a tune writes: one line per trial, trials.csv, study.json (rebuilt from the
storage alone by `results.tune_meta`), the thinning of checkpoints, and the grid study file
that reruns the best trial with seeds (`--export`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import tomli_w
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ablate import _io, store
from ablate import record as records
from ablate.config import TOGGLES, TrainConfig
from ablate.errors import AblateError
from ablate.results.trials import META_ATTR, best_trial, trials_frame, tune_meta
from ablate.tune.space import config_for, default_trial, describe_space
from ablate.tune.spec import TuneSpec


def describe_params(params: dict[str, Any]) -> str:
    """lr=0.001  batch_size=16: a trial's params as its line prints them."""
    return "  ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def describe_trial(t: FrozenTrial) -> str:
    a = t.user_attrs
    params = describe_params(t.params)
    line = f"trial {t.number:>3} {t.state.name.lower():<8}"
    if a.get("val_miou") is not None:
        line += f" val mIoU {a['val_miou']:.4f}"
    if a.get("epochs_run") is not None:
        line += f"  epochs {a['epochs_run']}"
    if a.get("seconds") is not None:
        line += f"  {a['seconds']:.0f}s"
    line += f"  {params}"
    if t.state != TrialState.COMPLETE and a.get("failure_reason"):
        line += f"  ({a['failure_reason']})"
    return line


def store_record(trial: optuna.Trial, record: dict, row: dict) -> None:
    """The run record into the trial's user attrs (a search trial's or a confirmation run's): the
    storage is the record."""
    pruned_at = len(record["curves"]) if record["status"] == "pruned" else None
    attrs = {
        "status": row["status"], "failure_reason": row["failure_reason"], "val_miou": row["val_miou"],
        "test_miou": row["test_miou"], "val_pixel_acc": row["val_pixel_acc"], "epochs_run": row["stopped_epoch"],
        "best_epoch": row["best_epoch"], "pruned_at_epoch": pruned_at, "seconds": round(row["seconds"], 2),
        "images_per_second": round(row["images_per_second"], 1), "run_id": row["run_id"],
    }
    for key, value in {**attrs, **records.to_attrs(record)}.items():
        trial.set_user_attr(key, _attr(value))


def _attr(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_trials_csv(study: optuna.Study, path: Path) -> Path:
    return _io.write_csv(path, trials_frame(study))


def prune_checkpoints(study: optuna.Study, storage: BaseStorage, artifacts: store.Artifacts) -> list[str]:
    """--keep-checkpoints best: remove from `artifacts` the best.pt of every complete trial but
    the best one (a custom net's can be 250 MB). Each removal is marked in a study attr of
    its own (`store.prune_trial_checkpoints`), so workers prune concurrently without a lock.
    `storage` is the study's (a Study does not expose its own). Returns the ids removed now."""
    best = best_trial(study)
    if best is None:
        return []
    return store.prune_trial_checkpoints(storage, storage.get_study_id_from_name(study.study_name),
                                         study.get_trials(deepcopy=False), artifacts, keep={best.number})


def static_meta(spec: TuneSpec, dataset) -> dict:
    """What a tune is, as study.json and the storage keep it: model, space, fixed settings, the
    default trial's params, dataset summary, budget, pruner, sampler (`results.tune_meta` adds
    what the trials say)."""
    return {"kind": "tune", "study_name": spec.study_name, "model": spec.base.model, "direction": "maximize",
            "objective": "val_miou", "space": describe_space(spec.space), "fixed_config": spec.base.to_dict(),
            "defaults": default_trial(spec.space, spec.base, spec.start)[0], "dataset": dataset.summary(),
            "n_trials": spec.n_trials, "pruner": spec.pruner, "sampler": spec.sampler,
            "keep_checkpoints": spec.keep_checkpoints}


def write_study_json(spec: TuneSpec, study: optuna.Study, dataset) -> Path:
    """results/<study>/study.json: what the report needs to find and describe this tune (the
    same document `results.tune_meta` rebuilds from the storage on any machine)."""
    study.set_user_attr(META_ATTR, static_meta(spec, dataset))
    return _io.write_json(spec.folder / "study.json", tune_meta(study, spec.storage))


def export_grid_study(spec: TuneSpec, study: optuna.Study, path: str | Path, *, seeds: int = 3) -> Path:
    """A grid study file (`ablate grid --study PATH`) that reruns the best trial's
    configuration with `seeds` seeds, so it gets confidence intervals like any grid cell."""
    best = best_trial(study)
    if best is None:
        raise AblateError(f"--export: study {spec.study_name!r} has no completed trial yet")
    config = config_for(spec.base, best.params)
    about = f"best trial {best.number} of tune study {spec.study_name!r} (val mIoU {best.value:.4f})"
    return _io.write_text(path, grid_toml(config, name=f"{spec.study_name}-best", seeds=seeds, about=about))



def grid_toml(config: TrainConfig, *, name: str, seeds: int, about: str) -> str:
    """One configuration in the grid's study format (ablate/grid/definition.py, studies/quick.toml)."""
    on = [t for t in TOGGLES if getattr(config, t)]
    header = [f"# Written by `ablate tune --export`: {about}.", "# Run it with: ablate grid --study THIS_FILE"]
    if on:
        # The grid keeps toggles it does not vary off, so a toggle tuned on is varied on/off:
        # the tuned setting is the cell with all of them on.
        header.append(f"# tuned on: {', '.join(on)} (varied on/off here; the tuned setting is all on)")
    train: dict[str, Any] = {"data": config.data, "image_size": list(config.image_size)}
    train.update({key: getattr(config, key) for key in ("num_classes", "val_fraction") if getattr(config, key) is not None})
    if config.ignore_index != 255:
        train["ignore_index"] = config.ignore_index
    train.update({key: getattr(config, key) for key in ("epochs", "batch_size", "lr", "weight_decay", "patience")})
    doc: dict[str, Any] = {"name": name, "description": f"Reruns {about} with {seeds} seeds.",
                           "models": [config.model], "toggles": on, "seeds": seeds, "train": train}
    if config.model_args:
        doc["model_args"] = {config.model: dict(sorted(config.model_args.items()))}
    return "\n".join(header) + "\n" + tomli_w.dumps(doc)
