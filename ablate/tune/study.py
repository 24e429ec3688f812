"""Tuner, its Optuna study: created or resumed only for the model, space and fixed settings it
was made for (bound in the study attr `results.TUNE_ATTR`). Its counts and best trial are the
read side's (`ablate.results.trials`)."""
from __future__ import annotations

import warnings

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ablate import store
from ablate.config import stable_hash
from ablate.errors import AblateError
from ablate.results.trials import TUNE_ATTR
from ablate.tune.spec import TuneSpec, make_pruner

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards --n-trials


def open_study(spec: TuneSpec, *, sampler: optuna.samplers.BaseSampler | None = None, create: bool = True,
               storage: BaseStorage | None = None) -> optuna.Study:
    """Create or load the study (in `storage` when the caller keeps one: a Study does not
    expose its storage); refuse one made for another model, space or settings."""
    storage = store.open_storage(spec.storage) if storage is None else storage
    pruner = make_pruner(spec.pruner, epochs=spec.base.epochs)
    if create:
        study = optuna.create_study(storage=storage, study_name=spec.study_name, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    else:
        study = optuna.load_study(storage=storage, study_name=spec.study_name, sampler=sampler, pruner=pruner)
    identity = spec.identity()
    bound = study.user_attrs.get(TUNE_ATTR)
    if bound is None:
        if study.trials:
            raise AblateError(f"study {spec.study_name!r} in {store.mask_url(spec.storage)} was not made by "
                              f"`ablate tune`; pass a new --study-name")
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise AblateError(f"study {spec.study_name!r} minimizes; pass a new --study-name")
        study.set_user_attr(TUNE_ATTR, {"kind": "tune", "hash": stable_hash(identity), **identity})
    elif bound.get("hash") != stable_hash(identity):
        raise AblateError(_mismatch(spec, bound, identity))
    if study.metric_names != ["val mIoU"]:  # the dashboard's name for the objective
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val mIoU"])
    return study


def _mismatch(spec: TuneSpec, bound: dict, identity: dict) -> str:
    new_name = f"{spec.study_name}-2"
    if bound.get("kind") != "tune":
        return f"study {spec.study_name!r} is a {bound.get('kind')!r} study, not a tune; pass a new --study-name (e.g. {new_name})"
    if bound.get("model") != identity["model"]:
        what = f"model {bound.get('model')!r}, not {identity['model']!r}"
    elif bound.get("space") != identity["space"]:
        keys = sorted(set(bound.get("space", {})) ^ set(identity["space"])
                      | {k for k in identity["space"] if bound.get("space", {}).get(k) != identity["space"][k]})
        what = f"a different search space ({', '.join(keys)})"
    else:
        old = bound.get("fixed", {})
        new = identity["fixed"]
        changes = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        what = f"different fixed settings ({', '.join(changes)})"
    return (f"study {spec.study_name!r} in {store.mask_url(spec.storage)} was made for {what}; "
            f"rerun with its original settings, or pass a new --study-name (e.g. {new_name})")


def storage_trial_id(storage: BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study`, through the storage's public calls
    (Optuna's Trial and FrozenTrial keep theirs private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
